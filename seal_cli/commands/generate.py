"""``seal generate``: batched responses to a prompts file, for evaluation."""

from __future__ import annotations

from seal_core.generate import GenerateConfig

from .. import options
from ..dataclass_args import ConfigArgs

ARGS = ConfigArgs(GenerateConfig, required=("prompts", "out"))


def register(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="generate responses to a prompts JSONL (base model or base + adapter)",
        description="Generate one response per prompt through the model's chat template. Prompts: JSONL with "
        "`prompt` (or `instruction` + `input`), optional `id` (default: a hash of the prompt text) and any "
        "other fields, which are copied to the output rows.",
    )
    options.add_config_arguments(p, ARGS, set_example="--set top_p=0.95",
                                 resume_help="keep the rows of an interrupted run (OUT.partial)")
    p.set_defaults(func=run)


def build_config(args):
    return options.build_config(args, ARGS)


def run(args) -> int:
    from seal_core.generate import generate

    path = generate(build_config(args), resume=args.resume)
    print(f"responses: {path}")
    return 0
