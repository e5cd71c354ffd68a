"""Per-sample data rankers: SEAL (bilevel) and baselines, all writing one scores format."""
