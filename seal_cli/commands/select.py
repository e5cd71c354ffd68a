"""``seal select``: keep the best-scored samples of a pool (reads scores only; never rescores)."""

from __future__ import annotations

import argparse
import sys

from seal_core.config import deep_merge, from_dict, parse_overrides
from seal_core.selection import SelectConfig

from .. import options
from ..dataclass_args import ConfigArgs

DESCRIPTION = """\
Keep the best-scored samples of a pool. Give exactly one of --top-k, --top-p, --min-score,
or --bottom-k to keep the N lowest-ranked instead (e.g. an unsafe set for ta-sft).

Candidates are the pool samples that have a score; order is score descending, then
sample_id ascending (ties are exact and reproducible). --top-p keeps k = floor(p*N + 0.5)
(nearest, halves up; at least 1) of the N candidates; --min-score is inclusive.
A NaN score ranks last. --bottom-k keeps the last N of that order, written worst first
(score ascending, then sample_id descending). Only scores.parquet is read: a new k never rescores.

Writes to --out: selected.parquet (canonical schema, pool rows unchanged, best first;
--bottom-k: worst first), selected.jsonl (--export messages: {"sample_id", "messages"}; --export alpaca:
{"sample_id", "instruction", "input", "output"[, "system"][, "history"]}), and with alpaca,
export_rejects.jsonl listing selected conversations that have no Alpaca form (multi-turn
unless --alpaca-multiturn history; they stay in selected.parquet), selection.json (counts,
threshold score, k, fraction, input fingerprints) and config.json.
"""


ARGS = ConfigArgs(SelectConfig, exclusive=(("top_k", "top_p", "min_score", "bottom_k"),))


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "select",
        help="keep the top-scored (or, with --bottom-k, the lowest-ranked) samples of a pool",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--scores", required=True, metavar="SCORES",
                   help="scores.parquet (or the `seal rank` output directory holding it)")
    p.add_argument("--pool", required=True, metavar="POOL",
                   help="the pool: `seal ingest` output dir, canonical .parquet, or a raw data file")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    options.add_config_arguments(p, ARGS, set_example="--set top_k=100", section="select")
    p.set_defaults(func=run)


def build_config(args):
    data = options.read_config_file(args.config, section="select")
    # In `seal select` the flags are applied after --set (so they win), unlike the other
    # commands; kept so that existing command lines mean what they meant.
    data = deep_merge(deep_merge(data, parse_overrides(args.overrides)), ARGS.values(args))
    return from_dict(SelectConfig, data)


def run(args) -> int:
    from seal_core.selection import select

    cfg = build_config(args)
    res = select(args.scores, args.pool, args.out, cfg, warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    s = res.summary
    thr = s["threshold_score"]
    print(
        f"selected {s['k']:,} of {s['n_candidates']:,} scored pool samples ({100 * s['fraction']:.1f}%)"
        + (f", score {'<=' if cfg.mode == 'bottom_k' else '>='} {thr:.6g}" if thr is not None else "")
        + f" -> {res.selected}"
    )
    if res.export is not None:
        print(f"{cfg.export} export: {s['export']['rows']:,} rows -> {res.export}")
    return 0
