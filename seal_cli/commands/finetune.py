"""``seal finetune``: LoRA fine-tuning on selected samples."""

from __future__ import annotations

from seal_core.finetune import FinetuneConfig

from .. import options
from ..dataclass_args import ConfigArgs

ARGS = ConfigArgs(FinetuneConfig, required=("data", "out"))


def register(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="LoRA fine-tune a model on selected samples (writes an adapter)",
        description="LoRA fine-tuning on canonical samples, loss on assistant tokens only. "
        "Defaults follow the paper's recipe: 2 epochs, constant lr 1e-5, LoRA r=16 alpha=16 on q_proj, v_proj. "
        "--objective ta-sft (or unlikelihood) with --unsafe FILE also pushes the model away from unsafe "
        "answers (docs/finetune.md).",
    )
    options.add_config_arguments(p, ARGS, set_example="--set lora.r=8 --set batch_size=16",
                                 resume_help="continue from out/checkpoints/last.safetensors")
    p.set_defaults(func=run)


def build_config(args):
    return options.build_config(args, ARGS)


def run(args) -> int:
    from seal_core.finetune import finetune
    from seal_core.training import is_main_process

    cfg = build_config(args)
    out = finetune(cfg, resume=args.resume)
    if not is_main_process():
        return 0
    print(f"adapter: {out / 'adapter'}")
    if cfg.merge:
        print(f"merged model: {out / 'merged'}")
    return 0
