"""``seal score``: score a pool with the selector a ``seal rank --method seal-probe`` or ``combined`` run trained."""

from __future__ import annotations

from seal_core.ranker.score import ScoreConfig

from .. import options
from ..dataclass_args import ConfigArgs

ARGS = ConfigArgs(ScoreConfig, required=("ranker", "pool", "out"))

DESCRIPTION = """\
Score a pool (seen in training or not) with the selector network of a `seal rank --method
seal-probe` run, or of a `--method combined` run (the default): the run's base model gives each
sample's hidden-state features, the trained selector maps them to a score. For a combined run the
forward-only signals (prior, relevance) are computed on this pool too and rank-averaged with the
selector's score over this pool, with the run's weights. Writes --out/scores.parquet in the schema
of `seal rank` (loss is NaN for seal-probe, the unadapted model's for combined), config.json, and
dropped.parquet for samples tokenisation could not use."""


def register(sub) -> None:
    import argparse

    p = sub.add_parser("score", help="score a pool with a trained seal-probe or combined ranker", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_config_arguments(p, ARGS, set_example="--set batch_size=32")
    p.set_defaults(func=run)


def build_config(args):
    return options.build_config(args, ARGS)


def run(args) -> int:
    from seal_core.ranker.score import score

    path = score(build_config(args))
    print(f"scores: {path}")
    return 0
