"""``seal generate``: batched responses to a prompts file, for evaluation."""

from __future__ import annotations



def register(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="generate responses to a prompts JSONL (base model or base + adapter)",
        description="Generate one response per prompt through the model's chat template. Prompts: JSONL with "
        "`prompt` (or `instruction` + `input`), optional `id` (default: a hash of the prompt text) and any "
        "other fields, which are copied to the output rows.",
    )
    p.add_argument("--prompts", required=True, help="prompts JSONL file")
    p.add_argument("--out", required=True, help="output JSONL file")
    p.add_argument("--model", help="base model (default: the adapter's base model, else smollm2-135m-instruct)")
    p.add_argument("--adapter", help="`seal finetune` output dir or adapter dir")
    p.add_argument("--max-new-tokens", type=int, help="tokens generated per prompt at most (default 256)")
    p.add_argument("--decoding", choices=["greedy", "paper"],
                   help="greedy (default, deterministic) or the paper's seeded sampling "
                   "(top_p 0.9, temperature 1.0, repetition_penalty 1.2)")
    p.add_argument("--batch-size", type=int, help="prompts per batch (default 8)")
    p.add_argument("--limit", type=int, help="only the first N prompts")
    p.add_argument("--seed", type=int, help="sampling seed (default 0)")
    p.add_argument("--config", help="YAML file with generation settings (keys of GenerateConfig)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set top_p=0.95")
    p.add_argument("--resume", action="store_true", help="keep the rows of an interrupted run (OUT.partial)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def build_config(args):
    from seal_core.config import deep_merge, from_dict, load_yaml, parse_overrides
    from seal_core.generate import GenerateConfig

    data = load_yaml(args.config) if args.config else {}
    flags = {"prompts": args.prompts, "out": args.out}
    for name in ("model", "adapter", "max_new_tokens", "decoding", "batch_size", "limit", "seed"):
        if getattr(args, name) is not None:
            flags[name] = getattr(args, name)
    if args.no_progress:
        flags["progress"] = False
    data = deep_merge(deep_merge(data, flags), parse_overrides(args.overrides))
    return from_dict(GenerateConfig, data)


def run(args) -> int:
    from seal_core.generate import generate

    path = generate(build_config(args), resume=args.resume)
    print(f"responses: {path}")
    return 0
