"""Where each stage writes under ``run_dir``: fixed, so a rerun finds the finished stages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The sets ingest normalises: the pool to curate and the safe set (the ranker's upper level).
INGESTED = ("pool", "safe")

# The fine-tuned arms of the comparison: on the SEAL selection, and on a random subset of the same
# size (the base model, untuned, is the third model evaluated).
ARMS = ("seal", "random")

# The prompt sets each model answers: helpfulness prompts and harmful prompts.
EVAL_KINDS = ("helpful", "harmful")


@dataclass(frozen=True)
class Layout:
    """Where each stage writes under ``run_dir`` (fixed, so a rerun finds finished stages)."""

    root: Path

    def ingested(self, which: str) -> Path:
        return self.root / "ingest" / which

    @property
    def pool(self) -> Path:
        return self.ingested("pool") / "samples.parquet"

    @property
    def safe(self) -> Path:
        return self.ingested("safe") / "samples.parquet"

    @property
    def rank_dir(self) -> Path:
        return self.root / "rank"

    @property
    def scores(self) -> Path:
        return self.rank_dir / "scores.parquet"

    def selection_dir(self, arm: str) -> Path:
        return self.root / "select" / arm

    def selection(self, arm: str) -> Path:
        return self.selection_dir(arm) / "selected.parquet"

    def finetune_dir(self, arm: str) -> Path:
        return self.root / "finetune" / arm

    def generations_dir(self, model: str) -> Path:
        return self.root / "generate" / model

    def generations(self, model: str, kind: str) -> Path:
        return self.generations_dir(model) / f"{kind}.jsonl"

    def generated(self) -> dict[str, dict[str, str]]:
        """The generation files present: ``{model: {kind: path}}``, models without any left out."""
        found = {}
        for model in ("seal", "random", "base"):
            files = {k: str(self.generations(model, k)) for k in EVAL_KINDS if self.generations(model, k).exists()}
            if files:
                found[model] = files
        return found

    @property
    def evaluate_dir(self) -> Path:
        return self.root / "evaluate"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"
