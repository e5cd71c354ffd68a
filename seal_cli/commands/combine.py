"""``seal combine``: one ranking from several scores files of the same pool (weighted rank average)."""

from __future__ import annotations

from seal_core.ranker.combine_files import CombineConfig

from .. import options
from ..dataclass_args import ConfigArgs

ARGS = ConfigArgs(CombineConfig, required=("scores", "out"))

DESCRIPTION = """\
Blend the rankings of several `seal rank` (or `seal score`) runs over the same pool without
rescoring: each file's scores become normalised ranks in (0, 1] and the result is their weighted
mean (higher = keep), so signals on unrelated scales count by their weights alone. A sample
unscored in any file stays unscored and ranks last; files that score different sets of samples are
refused. Writes --out/scores.parquet in the schema of `seal rank` and config.json.

    seal combine --scores rank/probe rank/compliance rank/loss --out rank/blend
    seal combine --scores a/scores.parquet b/scores.parquet --weights 2 1 --out blend"""


def register(sub) -> None:
    import argparse

    p = sub.add_parser("combine", help="rank-average several scores files of one pool", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_config_arguments(p, ARGS, set_example="--set progress=false")
    p.set_defaults(func=run)


def build_config(args):
    return options.build_config(args, ARGS)


def run(args) -> int:
    from seal_core.ranker.combine_files import combine

    cfg = build_config(args)
    path = combine(cfg)
    print(f"combined {len(cfg.scores)} scores files: {path}")
    return 0
