"""``seal evaluate``: win rate of a candidate against baselines, plus refusal/harmfulness rates."""

from __future__ import annotations

import argparse

from seal_core.evaluation.evaluate import EvaluateConfig

from .. import options
from ..dataclass_args import ConfigArgs

HELP = "compare generations with a judge (win rate) and measure refusals on harmful prompts"

DESCRIPTION = """\
Compare a candidate model's answers with one or more baselines' answers to the
same prompts, and measure refusals on harmful prompts.

Inputs are generation JSONL files from `seal generate` (id, prompt, response;
optional origin/category). Candidate and baseline files are aligned by id.

{judges}
Every pairwise verdict is asked in both orders and averaged.

Examples:
  seal evaluate --candidate runs/seal/gen.jsonl --baseline runs/random/gen.jsonl \\
      --harmful-candidate runs/seal/harm.jsonl --harmful-baseline runs/random/harm.jsonl \\
      --judge openai:gpt-4o-mini@https://api.openai.com/v1 --out runs/eval
  seal evaluate --harmful-candidate runs/seal/harm.jsonl --judge none --out runs/eval
"""


# The judge's settings get flags too; the flag names are today's, declared once here.
ARGS = ConfigArgs(
    EvaluateConfig, expand=("judge",), exclude=("candidate", "baselines"), title="evaluation settings",
    aliases={"out_dir": "--out", "judge.spec": "--judge", "judge.template": "--judge-template",
             "judge.harm_template": "--harm-template", "judge.key_env": "--judge-key-env",
             "judge.max_tokens": "--judge-max-tokens", "judge.concurrency": "--concurrency",
             "judge.timeout": "--timeout", "judge.max_retries": "--max-retries", "judge.device": "--device",
             "judge.dtype": "--dtype", "judge.batch_size": "--batch-size"},
)


def _judges_help() -> str:
    """The --judge forms, one line each, from the judge registry (a new kind lists itself)."""
    from seal_core.evaluation.judges import JUDGE_KINDS

    rows = [("none", "refusal metrics only")]
    for kind, cls in JUDGE_KINDS.items():
        doc = (cls.__doc__ or "").strip().splitlines()
        rows.append((cls.spec_form or f"{kind}:MODEL", doc[0].replace("``", "") if doc else ""))
    width = max(len(form) for form, _ in rows) + 2
    lines = ["Judges (--judge, required; 'none' for refusal metrics only):"]
    lines += [f"  {form.ljust(width)}{text}" for form, text in rows]
    return "\n".join(lines) + "\n"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help=HELP, description=DESCRIPTION.format(judges=_judges_help()),
        formatter_class=options.DefaultsHelpFormatter
    )
    io = p.add_argument_group("generations (candidate and baselines)")
    io.add_argument("--candidate", metavar="FILE", help="candidate generations on the comparison prompts")
    io.add_argument("--baseline", metavar="FILE", action="append", default=[], help="baseline generations (repeat for several baselines)")
    io.add_argument("--harmful-candidate", metavar="FILE", help="candidate generations on harmful prompts")
    io.add_argument("--harmful-baseline", metavar="FILE", action="append", default=[], help="baseline generations on harmful prompts (one per --baseline, same order)")
    io.add_argument("--candidate-name", metavar="NAME", help="display name (the file's stem when not given)")
    io.add_argument("--baseline-name", metavar="NAME", action="append", default=[], help="display name per baseline, same order")
    options.add_config_arguments(p, ARGS, set_example="--set n_bootstrap=5000 --set judge.batch_size=4")
    p.set_defaults(func=run)


def _models_from_args(args: argparse.Namespace) -> tuple[dict | None, list[dict] | None]:
    from seal_core.errors import ConfigError

    cand = None
    if args.candidate or args.harmful_candidate or args.candidate_name:
        # None values are left out so they do not blank keys set in --config.
        cand = {k: v for k, v in (("outputs", args.candidate), ("harmful", args.harmful_candidate), ("name", args.candidate_name)) if v}
    n_b, n_h, n_n = len(args.baseline), len(args.harmful_baseline), len(args.baseline_name)
    if not (n_b or n_h or n_n):
        return cand, None
    if n_b and n_h and n_b != n_h:
        raise ConfigError(f"give one --harmful-baseline per --baseline, in the same order (got {n_b} --baseline, {n_h} --harmful-baseline)")
    n = max(n_b, n_h)
    if n_n and n_n != n:
        raise ConfigError(f"give one --baseline-name per baseline (got {n_n} names for {n} baselines)")
    baselines = []
    for i in range(n):
        b = {"outputs": args.baseline[i] if n_b else None, "harmful": args.harmful_baseline[i] if n_h else None}
        if n_n:
            b["name"] = args.baseline_name[i]
        baselines.append(b)
    return cand, baselines


def _flag_values(args: argparse.Namespace) -> dict:
    """The config keys the flags given on the command line set (the judge's under `judge`)."""
    flags = ARGS.values(args)
    cand, baselines = _models_from_args(args)
    if cand is not None:
        flags["candidate"] = cand
    if baselines is not None:
        flags["baselines"] = baselines
    return flags


def run(args: argparse.Namespace) -> int:
    from seal_core.config import deep_merge, from_dict, load_yaml, parse_overrides, upgrade_layout
    from seal_core.errors import ConfigError
    from seal_core.evaluation.evaluate import evaluate, summary_lines
    from seal_core.evaluation.judges import spec_forms

    # Both sides in the nested layout before merging, so `judge: SPEC` in the file and
    # --batch-size on the command line combine instead of one replacing the other.
    data = upgrade_layout(EvaluateConfig, load_yaml(args.config)) if args.config else {}
    overrides = upgrade_layout(EvaluateConfig, parse_overrides(args.overrides))
    merged = deep_merge(deep_merge(data, _flag_values(args)), overrides)
    judge = merged.get("judge")
    if judge is None or (isinstance(judge, dict) and "spec" not in judge):
        raise ConfigError(f"--judge is required ({' | '.join(spec_forms())}); use --judge none for refusal metrics only")
    if "candidate" not in merged:
        raise ConfigError("give --candidate FILE (comparison prompts) and/or --harmful-candidate FILE")
    if "out_dir" not in merged:
        raise ConfigError("--out DIR is required")
    cfg = from_dict(EvaluateConfig, merged)
    out = evaluate(cfg)
    for line in summary_lines(out):
        print(line)
    print(f"report: {out / 'report.md'}")
    return 0
