"""``seal rank``: learn a per-sample ranking of a fine-tuning pool and score every sample."""

from __future__ import annotations

from seal_core.ranker.config import RankConfig

from .. import options
from ..dataclass_args import ConfigArgs

ARGS = ConfigArgs(RankConfig, required=("pool", "out"))


def register(sub) -> None:
    p = sub.add_parser(
        "rank",
        help="train the SEAL data ranker (or a baseline) and write scores.parquet",
        description="Train the SEAL bilevel data ranker (or compute a baseline) and score every pool sample.",
    )
    options.add_config_arguments(p, ARGS, set_example="--set selector.update=reference --set model_lr=2e-4",
                                 resume_help="continue from out/checkpoints/last.safetensors")
    p.set_defaults(func=run)


def build_config(args):
    return options.build_config(args, ARGS)


def run(args) -> int:
    from seal_core.errors import SealError
    from seal_core.ranker.run import rank
    from seal_core.training import is_main_process

    cfg = build_config(args)
    if cfg.method in ("seal", "seal-penalty", "seal-probe", "dsir", "compliance", "combined") and not cfg.safe:
        raise SealError(f"--method {cfg.method} needs --safe")
    path = rank(cfg, resume=args.resume)
    if is_main_process():
        print(f"scores: {path}")
    return 0
