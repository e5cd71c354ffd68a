"""``seal select``: keep the best-scored samples of a pool (reads scores only; never rescores)."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Keep the best-scored samples of a pool. Give exactly one of --top-k, --top-p, --min-score.

Candidates are the pool samples that have a score; order is score descending, then
sample_id ascending (ties are exact and reproducible). --top-p keeps k = floor(p*N + 0.5)
(nearest, halves up; at least 1) of the N candidates; --min-score is inclusive.
A NaN score ranks last. Only scores.parquet is read: a new k never rescores.

Writes to --out: selected.parquet (canonical schema, pool rows unchanged, best first),
selected.jsonl (--export messages: {"sample_id", "messages"}; --export alpaca:
{"sample_id", "instruction", "input", "output"[, "system"][, "history"]}), and with alpaca,
export_rejects.jsonl listing selected conversations that have no Alpaca form (multi-turn
unless --alpaca-multiturn history; they stay in selected.parquet), selection.json (counts,
threshold score, k, fraction, input fingerprints) and config.json.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "select",
        help="keep the top-scored samples of a pool",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--scores", required=True, metavar="SCORES",
                   help="scores.parquet (or the `seal rank` output directory holding it)")
    p.add_argument("--pool", required=True, metavar="POOL",
                   help="the pool: `seal ingest` output dir, canonical .parquet, or a raw data file")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--top-k", type=int, metavar="N", help="keep the N best samples")
    g.add_argument("--top-p", type=float, metavar="F", help="keep this fraction of the candidates, in (0, 1]")
    g.add_argument("--min-score", type=float, metavar="X", help="keep every sample with score >= X")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--export", choices=["messages", "alpaca", "none"], default=None,
                   help="form of selected.jsonl (default: messages)")
    p.add_argument("--alpaca-multiturn", choices=["reject", "history"], default=None,
                   help="multi-turn conversations in the alpaca export (default: reject)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per streamed batch (default: 65536)")
    p.add_argument("--memory-mb", type=int, default=None,
                   help="memory for reordering selected rows before spilling to disk (default: 512)")
    p.add_argument("--config", metavar="YAML", help="config file (its `select:` section, or the whole file)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def build_config(args):
    from seal_core.config import deep_merge, from_dict, load_yaml, parse_overrides
    from seal_core.selection import SelectConfig

    data: dict = {}
    if args.config:
        raw = load_yaml(args.config)
        data = dict(raw["select"]) if isinstance(raw.get("select"), dict) else raw
    data = deep_merge(data, parse_overrides(args.set))
    modes = {"top_k": args.top_k, "top_p": args.top_p, "min_score": args.min_score}
    if any(v is not None for v in modes.values()):
        # A mode on the command line replaces whichever mode the config file chose.
        for k, v in modes.items():
            data[k] = v
    for key, val in (("export", args.export), ("alpaca_multiturn", args.alpaca_multiturn),
                     ("batch_size", args.batch_size), ("memory_mb", args.memory_mb)):
        if val is not None:
            data[key] = val
    if args.no_progress:
        data["progress"] = False
    return from_dict(SelectConfig, data)


def run(args) -> int:
    from seal_core.selection import select

    cfg = build_config(args)
    res = select(args.scores, args.pool, args.out, cfg, warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    s = res.summary
    thr = s["threshold_score"]
    print(
        f"selected {s['k']:,} of {s['n_candidates']:,} scored pool samples ({100 * s['fraction']:.1f}%)"
        + (f", score >= {thr:.6g}" if thr is not None else "")
        + f" -> {res.selected}"
    )
    if res.export is not None:
        print(f"{cfg.export} export: {s['export']['rows']:,} rows -> {res.export}")
    return 0
