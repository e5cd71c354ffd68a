"""``seal finetune``: LoRA fine-tuning on selected samples."""

from __future__ import annotations



def register(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="LoRA fine-tune a model on selected samples (writes an adapter)",
        description="LoRA supervised fine-tuning on canonical samples, loss on assistant tokens only. "
        "Defaults follow the paper's recipe: 2 epochs, constant lr 1e-5, LoRA r=16 alpha=16 on q_proj, v_proj.",
    )
    p.add_argument("--data", required=True,
                   help="`seal select` output dir, ingest output dir, canonical Parquet or raw file")
    p.add_argument("--model", help="named default, Hub id, local dir or .gguf file (default smollm2-135m-instruct)")
    p.add_argument("--out", required=True, help="output directory (adapter/, config.json, summary.json, ...)")
    p.add_argument("--epochs", type=int, help="passes over the data (default 2)")
    p.add_argument("--lr", type=float, help="learning rate, constant (default 1e-5)")
    p.add_argument("--max-length", type=int, help="token limit per sample (default 512)")
    p.add_argument("--max-samples", type=int, help="use only the first N samples (the N best of a selection)")
    p.add_argument("--mix-safe", metavar="FILE", help="append these safety examples to the training set")
    p.add_argument("--merge", action="store_true", help="also write out/merged/: base model with the adapter merged in")
    p.add_argument("--config", help="YAML file with fine-tuning settings (keys of FinetuneConfig)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set lora.r=8 --set batch_size=16")
    p.add_argument("--resume", action="store_true", help="continue from out/checkpoints/last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def build_config(args):
    from seal_core.config import deep_merge, from_dict, load_yaml, parse_overrides
    from seal_core.finetune import FinetuneConfig

    data = load_yaml(args.config) if args.config else {}
    flags = {"data": args.data, "out": args.out}
    for name in ("model", "epochs", "lr", "max_length", "max_samples", "mix_safe"):
        if getattr(args, name) is not None:
            flags[name] = getattr(args, name)
    if args.merge:
        flags["merge"] = True
    if args.no_progress:
        flags["progress"] = False
    data = deep_merge(deep_merge(data, flags), parse_overrides(args.overrides))
    return from_dict(FinetuneConfig, data)


def run(args) -> int:
    from seal_core.finetune import finetune

    cfg = build_config(args)
    out = finetune(cfg, resume=args.resume)
    print(f"adapter: {out / 'adapter'}")
    if cfg.merge:
        print(f"merged model: {out / 'merged'}")
    return 0
