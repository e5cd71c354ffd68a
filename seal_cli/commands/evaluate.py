"""``seal evaluate``: win rate of a candidate against baselines, plus refusal/harmfulness rates."""

from __future__ import annotations

import argparse

HELP = "compare generations with a judge (win rate) and measure refusals on harmful prompts"

DESCRIPTION = """\
Compare a candidate model's answers with one or more baselines' answers to the
same prompts, and measure refusals on harmful prompts.

Inputs are generation JSONL files from `seal generate` (id, prompt, response;
optional origin/category). Candidate and baseline files are aligned by id.

Judges (--judge):
  none                      refusal metrics only
  openai:MODEL@BASE_URL     OpenAI-compatible /chat/completions endpoint (vLLM,
                            llama.cpp server, hosted API); key from $OPENAI_API_KEY
                            or --judge-key-env
  hf:MODEL                  local causal LM; reads P("A") vs P("B") from logits
  rm:MODEL                  reward model; p = sigmoid(r_candidate - r_baseline)

Every pairwise verdict is asked in both orders and averaged.

Examples:
  seal evaluate --candidate runs/seal/gen.jsonl --baseline runs/random/gen.jsonl \\
      --harmful-candidate runs/seal/harm.jsonl --harmful-baseline runs/random/harm.jsonl \\
      --judge openai:gpt-4o-mini@https://api.openai.com/v1 --out runs/eval
  seal evaluate --harmful-candidate runs/seal/harm.jsonl --judge none --out runs/eval
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--candidate", metavar="FILE", help="candidate generations on the comparison prompts")
    io.add_argument("--baseline", metavar="FILE", action="append", default=[], help="baseline generations (repeat for several baselines)")
    io.add_argument("--harmful-candidate", metavar="FILE", help="candidate generations on harmful prompts")
    io.add_argument("--harmful-baseline", metavar="FILE", action="append", default=[], help="baseline generations on harmful prompts (one per --baseline, same order)")
    io.add_argument("--candidate-name", metavar="NAME", help="display name (default: file stem)")
    io.add_argument("--baseline-name", metavar="NAME", action="append", default=[], help="display name per baseline, same order")
    io.add_argument("--out", metavar="DIR", help="output directory (report.md, summary.json, judgments.jsonl, PNGs)")
    io.add_argument("--config", metavar="YAML", help="EvaluateConfig as YAML; flags override it")
    io.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="override a config key (e.g. n_bootstrap=5000)")

    j = p.add_argument_group("judge")
    j.add_argument("--judge", metavar="SPEC", help="none | openai:MODEL@BASE_URL | hf:MODEL | rm:MODEL (required)")
    j.add_argument("--judge-template", metavar="FILE", help="pairwise prompt with {instruction}, {output_1}, {output_2}")
    j.add_argument("--harm-template", metavar="FILE", help="harmfulness prompt with {instruction}, {output}")
    j.add_argument("--judge-key-env", metavar="VAR", help="environment variable with the API key (default OPENAI_API_KEY)")
    j.add_argument("--concurrency", type=int, metavar="N", help="parallel requests to an openai: judge (default 4)")
    j.add_argument("--timeout", type=float, metavar="S", help="seconds per request (default 60)")
    j.add_argument("--max-retries", type=int, metavar="N", help="retries on 429/5xx/timeouts (default 5)")
    j.add_argument("--judge-max-tokens", type=int, metavar="N", help="max_tokens of a judge reply (default 16)")
    j.add_argument("--device", help="device of an hf:/rm: judge (auto, cpu, cuda, cuda:N, mps)")
    j.add_argument("--dtype", help="dtype of an hf:/rm: judge (auto, float32, bfloat16, float16)")
    j.add_argument("--batch-size", type=int, metavar="N", help="prompts per forward pass of an hf: judge (default 8)")
    j.add_argument("--no-resume", action="store_true", help="ignore verdicts cached in OUT/cache by an earlier run")

    s = p.add_argument_group("metrics")
    s.add_argument("--refusal-method", choices=["seal", "gcg"], help="refusal detector (default seal; gcg = verbatim GCG list)")
    s.add_argument("--seed", type=int, help="bootstrap seed (default 0)")
    s.add_argument("--n-bootstrap", type=int, metavar="N", help="bootstrap resamples (default 2000)")
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


def run(args: argparse.Namespace) -> int:
    from seal_core.config import deep_merge, from_dict, load_yaml, parse_overrides
    from seal_core.errors import ConfigError
    from seal_core.evaluation.evaluate import EvaluateConfig, evaluate, summary_lines

    data = load_yaml(args.config) if args.config else {}
    cand, baselines = _models_from_args(args)
    flags = {
        "out_dir": args.out,
        "judge": args.judge,
        "judge_template": args.judge_template,
        "harm_template": args.harm_template,
        "judge_key_env": args.judge_key_env,
        "concurrency": args.concurrency,
        "timeout": args.timeout,
        "max_retries": args.max_retries,
        "judge_max_tokens": args.judge_max_tokens,
        "device": args.device,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "refusal_method": args.refusal_method,
        "seed": args.seed,
        "n_bootstrap": args.n_bootstrap,
    }
    flags = {k: v for k, v in flags.items() if v is not None}
    if args.no_resume:
        flags["resume"] = False
    if cand is not None:
        flags["candidate"] = cand
    if baselines is not None:
        flags["baselines"] = baselines
    merged = deep_merge(deep_merge(data, flags), parse_overrides(args.set))
    if "judge" not in merged:
        raise ConfigError("--judge is required (none | openai:MODEL@BASE_URL | hf:MODEL | rm:MODEL); use --judge none for refusal metrics only")
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
