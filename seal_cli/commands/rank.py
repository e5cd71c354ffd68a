"""``seal rank``: learn a per-sample ranking of a fine-tuning pool and score every sample."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "rank",
        help="train the SEAL data ranker (or a baseline) and write scores.parquet",
        description="Train the SEAL bilevel data ranker (or compute a baseline) and score every pool sample.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--pool", required=True, help="fine-tuning pool: ingest output dir, canonical Parquet or raw file")
    p.add_argument("--safe", help="safe set (needed by seal, seal-penalty, dsir)")
    p.add_argument("--model", help="named default, Hub id, local dir or .gguf file (default: smollm2-135m-instruct)")
    p.add_argument("--method", choices=["seal", "seal-penalty", "random", "loss", "dsir"], help="ranking method (default: seal)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--epochs", type=int, help="passes over the pool (default 3)")
    p.add_argument("--max-length", type=int, help="token limit per sample (default 512)")
    p.add_argument("--config", help="YAML file with rank settings (keys of RankConfig)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set selector.update=reference --set model_lr=2e-4")
    p.add_argument("--resume", action="store_true", help="continue from out/checkpoints/last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def build_config(args):
    from seal_core.config import deep_merge, from_dict, load_yaml, parse_overrides
    from seal_core.ranker.config import RankConfig

    data = load_yaml(args.config) if args.config else {}
    flags = {"pool": args.pool, "out": args.out}
    for key in ("safe", "model", "method"):
        if getattr(args, key):
            flags[key] = getattr(args, key)
    if args.epochs is not None:
        flags["epochs"] = args.epochs
    if args.max_length is not None:
        flags["max_length"] = args.max_length
    if args.no_progress:
        flags["progress"] = False
    data = deep_merge(deep_merge(data, flags), parse_overrides(args.overrides))
    return from_dict(RankConfig, data)


def run(args) -> int:
    from seal_core.errors import SealError
    from seal_core.ranker.run import rank

    cfg = build_config(args)
    if cfg.method in ("seal", "seal-penalty", "dsir") and not cfg.safe:
        raise SealError(f"--method {cfg.method} needs --safe")
    path = rank(cfg, resume=args.resume)
    print(f"scores: {path}")
    return 0
