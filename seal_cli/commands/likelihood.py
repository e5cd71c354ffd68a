"""``seal likelihood``: judge-free safety and quality measures from a model's own likelihoods."""

from __future__ import annotations

from seal_core.evaluation.likelihood import LikelihoodConfig

from .. import options
from ..dataclass_args import ConfigArgs

ARGS = ConfigArgs(
    LikelihoodConfig, required=("out",), expand=("settings",), title="likelihood settings",
    aliases={f"settings.{k}": "--" + k.replace("_", "-")
             for k in ("max_length", "truncation", "batch_size", "logits_budget", "device", "dtype", "skip_bad_rows", "progress")},
)

DESCRIPTION = """\
Score preference pairs and answer sets with a model (plus an optional LoRA adapter), through
its chat template, without a judge.

Per pair (prompt, chosen = safe answer, rejected = unsafe answer): the margin
m = mean log p(chosen) - mean log p(rejected), per answer token. pair_accuracy is the share of
pairs with m > 0, mean_margin the mean m. With an adapter (or --base-model), the relative margin
(log p(chosen) - log p0(chosen)) - (log p(rejected) - log p0(rejected)) against the base model p0
(the model with its adapter disabled) too. --references / --unsafe: mean per-token NLL of reference
answers (quality) and of held-out unsafe answers (safety). Every number has a seeded 95%
bootstrap interval; --compare DIR adds paired differences with another run on the same inputs.

Pairs: JSONL rows of prompt (or messages) + chosen + rejected, or hh-rlhf chosen/rejected
transcripts (the shared turns are the prompt). Answer sets: prompt + reference/response/output,
messages ending with the answer, or pair rows (references take chosen, unsafe takes rejected).

Examples:
  seal likelihood --model smollm2-135m-instruct --adapter runs/x/finetune/seal \\
      --pairs hh-rlhf-harmless-base-test.jsonl.gz --skip-bad-rows --out runs/x/likelihood/seal
  seal likelihood --adapter runs/x/finetune/random --pairs pairs.jsonl \\
      --references eval_helpful.jsonl --compare runs/x/likelihood/seal --out runs/x/likelihood/random
"""


def register(sub) -> None:
    p = sub.add_parser(
        "likelihood", help="judge-free measures: pair accuracy and margins on safe/unsafe answer pairs, answer NLLs",
        description=DESCRIPTION, formatter_class=options.DefaultsHelpFormatter,
    )
    options.add_config_arguments(p, ARGS, set_example="--set settings.batch_size=32 --set n_bootstrap=5000")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from seal_core.evaluation.likelihood import likelihood

    out = likelihood(options.build_config(args, ARGS))
    s = json.loads((out / "summary.json").read_text())
    for key in ("pair_accuracy", "mean_margin", "relative_pair_accuracy", "mean_relative_margin", "reference_nll",
                "unsafe_nll"):
        e = s.get(key)
        if e:
            print(f"{key}: {e['value']:.4f} (95% CI {e['ci_low']:.4f} to {e['ci_high']:.4f}; n={e['n']})")
    for key, e in (s.get("compare") or {}).items():
        if isinstance(e, dict):
            print(f"{key} minus {s['compare']['other']}: {e['value']:+.4f} (95% CI {e['ci_low']:+.4f} to {e['ci_high']:+.4f}; n={e['n']})")
    print(f"summary: {out / 'summary.json'}")
    return 0
