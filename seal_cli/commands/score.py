"""``seal score``: score a pool with the selector a ``seal rank --method seal-probe`` run trained."""

from __future__ import annotations

from seal_core.ranker.score import ScoreConfig

from .. import options
from ..dataclass_args import ConfigArgs

ARGS = ConfigArgs(ScoreConfig, required=("ranker", "pool", "out"))

DESCRIPTION = """\
Score a pool (seen in training or not) with the selector network of a `seal rank --method
seal-probe` run: the run's base model gives each sample's hidden-state features, the trained
selector maps them to a score. Writes --out/scores.parquet in the schema of `seal rank` (loss is
NaN), config.json, and dropped.parquet for samples tokenisation could not use."""


def register(sub) -> None:
    import argparse

    p = sub.add_parser("score", help="score a pool with a trained seal-probe selector", description=DESCRIPTION,
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
