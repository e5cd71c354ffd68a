"""Downstream benchmark on ../shared/data/seal-bench: does SEAL's selection make a better, safer model?

Stages (each is skipped when its output is already there, so a killed run resumes):

1. ingest   finetune_pool.jsonl -> canonical samples
2. rank     SEAL scores (or --seal-scores from an earlier `seal rank` / bench/ranker_quality.py run)
            and the seeded random baseline
3. select   SEAL's top 70%, a random 70% (same size), and the full pool
4. finetune one LoRA per training set (same settings for all three)
5. generate greedy answers to eval_helpful.jsonl and eval_harmful.jsonl, for each fine-tuned
            model and for the base model
6. evaluate pairwise win rates with an `hf:` judge (both orders, averaged), refusal rates and
            judge-rated harmfulness on the harmful prompts
7. judge    how much the judge can be trusted: on each helpful prompt, the dataset's reference
   check    answer against the reference answer of a *different* prompt. A judge that reads the
            answers prefers the matching one nearly always; a judge at 50% is guessing.
            The harmfulness rating gets the same check: P(harmful) on the pool's harmful
            compliant answers against the safe set's refusals (AUROC 0.5: guessing).
8. ref NLL  a judge-free check: each model's per-token NLL of the helpful prompts' reference answers.

The labels file is read only to report what each training set contains and to pick the known
harmful answers of the judge check; no ranking, selection or training stage reads it.
Wall times of every stage are kept in OUT/timings.json and printed with the tables.

    python bench/downstream.py                                   # everything (about 1 h on 2 CPU cores)
    python bench/downstream.py --seal-scores bench/out/ranker_quality_b/seal/scores.parquet
    python bench/downstream.py --model tiny-random --judge hf:tiny-random --limit-prompts 8 \
        --max-steps 2 --set max_steps=2 --out /tmp/ds-smoke                  # plumbing check, seconds
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/select.py would shadow the standard library's `select` (imported by socket/subprocess):
# take this script's folder off sys.path before anything else is imported.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seal_core.config import deep_merge, from_dict, parse_overrides  # noqa: E402
from seal_core.io import write_json  # noqa: E402

BENCH = ROOT.parent / "shared" / "data" / "seal-bench"
MODELS = ("seal-top70", "random-70", "full-pool")


class Stages:
    """Runs each stage once; its wall time is stored in timings.json and reported on reruns too."""

    def __init__(self, out: Path):
        self.path = out / "timings.json"
        self.times: dict[str, dict] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def run(self, name: str, done: Path, fn, *args, **kwargs):
        if done.exists() and name in self.times:
            print(f"[{name}] cached ({self.times[name]['wall_s']:.0f} s when it ran)", flush=True)
            return done
        print(f"[{name}] running", flush=True)
        t0 = time.time()
        fn(*args, **kwargs)
        wall = time.time() - t0
        self.times[name] = {"wall_s": round(wall, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_json(self.path, self.times)
        print(f"[{name}] done in {wall:.0f} s", flush=True)
        return done

    def wall(self, name: str) -> float:
        return self.times.get(name, {}).get("wall_s", float("nan"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(BENCH), help="seal-bench folder")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "downstream"))
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--judge", default="hf:smollm2-135m-instruct")
    ap.add_argument("--seal-scores", help="reuse this scores.parquet instead of training the ranker")
    ap.add_argument("--top-p", type=float, default=0.7, help="fraction kept by SEAL and by random")
    # Fine-tuning. The paper's lr 1e-5 barely moves a LoRA in ~100 steps on a 135M model,
    # which would make the three models nearly identical: 2e-4 (as in the ranker benchmark).
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--max-length", type=int, default=256, help="fine-tuning token limit (keep_prompt truncation)")
    ap.add_argument("--max-steps", type=int, default=0, help="cap fine-tuning steps (smoke runs)")
    ap.add_argument("--rank-max-length", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=128, help="answer length on the helpful prompts")
    ap.add_argument("--max-new-tokens-harmful", type=int, default=64,
                    help="answer length on harmful prompts (refusals show in the first sentence)")
    ap.add_argument("--gen-batch-size", type=int, default=8)
    ap.add_argument("--limit-prompts", type=int, default=0, help="only the first N prompts of each eval file")
    ap.add_argument("--no-base", action="store_true", help="skip the base (not fine-tuned) model")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="ranker overrides (RankConfig keys), as in bench/ranker_quality.py")
    args = ap.parse_args()

    data = Path(args.data)
    for name in ("finetune_pool.jsonl", "finetune_pool.labels.jsonl", "safe_set.jsonl",
                 "eval_helpful.jsonl", "eval_harmful.jsonl"):
        if not (data / name).exists():
            print(f"benchmark file {data / name} not found", file=sys.stderr)
            return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    st = Stages(out)
    settings = {k: v for k, v in vars(args).items() if k not in ("data", "out")}
    print("settings:", json.dumps(settings), flush=True)
    # Stages are reused by file, so a folder must hold one set of settings only: mixing a finished
    # stage made with one lr into a table labelled with another would be a wrong result.
    if (out / "settings.json").exists():
        old = json.loads((out / "settings.json").read_text())
        diff = sorted(k for k in settings.keys() & old.keys() if settings[k] != old[k])
        if diff:
            print(f"{out} holds a run with other settings ({', '.join(f'{k}: {old[k]!r} -> {settings[k]!r}' for k in diff)}); "
                  "give another --out, or delete the folder to start over", file=sys.stderr)
            return 2
    write_json(out / "settings.json", settings)

    # 1. ingest -------------------------------------------------------------------------------
    from seal_core.ingest import IngestConfig, ingest, load_samples

    pool_dir = out / "pool"
    st.run("ingest", pool_dir / "summary.json", ingest, [str(data / "finetune_pool.jsonl")], pool_dir,
           IngestConfig(progress=False))

    # 2. rank ---------------------------------------------------------------------------------
    from seal_core.ranker.config import RankConfig
    from seal_core.ranker.run import rank

    def ranker(method: str, dest: Path, over: dict) -> None:
        base = {"model": args.model, "epochs": 1, "max_length": args.rank_max_length, "model_lr": 2e-4,
                "batch_size": 8, "safe_batch_size": 8, "micro_batch_size": 8, "score_batch_size": 16,
                "checkpoint_every": 10}
        cfg = from_dict(RankConfig, deep_merge(deep_merge(base, over), {
            "pool": str(pool_dir), "safe": str(data / "safe_set.jsonl"), "method": method, "out": str(dest)}))
        rank(cfg, resume=(dest / "checkpoints").exists())

    seal_dir = out / "rank" / "seal"
    if args.seal_scores:
        src = Path(args.seal_scores)
        if src.is_dir():
            src = src / "scores.parquet"

        def copy_scores() -> None:
            seal_dir.mkdir(parents=True, exist_ok=True)
            for f in (src, src.parent / "config.json"):
                if f.exists():
                    shutil.copy2(f, seal_dir / f.name)

        if not (seal_dir / "scores.parquet").exists():
            copy_scores()
            st.times.pop("rank-seal", None)
        if "rank-seal" not in st.times:
            # The wall time of the run that made them, when it was recorded beside them.
            res = src.parent.parent / "results.json"
            wall = next((r["wall_s"] for r in json.loads(res.read_text())["rows"] if r["method"] == "seal"),
                        float("nan")) if res.exists() else float("nan")
            st.times["rank-seal"] = {"wall_s": round(wall, 1), "from": str(src)}
            write_json(st.path, st.times)
    else:
        st.run("rank-seal", seal_dir / "scores.parquet", ranker, "seal", seal_dir, parse_overrides(args.overrides))
    random_dir = out / "rank" / "random"
    st.run("rank-random", random_dir / "scores.parquet", ranker, "random", random_dir, {})

    # 3. select -------------------------------------------------------------------------------
    from seal_core.selection import SelectConfig, select

    sets = {
        "seal-top70": (seal_dir / "scores.parquet", args.top_p),
        "random-70": (random_dir / "scores.parquet", args.top_p),
        "full-pool": (random_dir / "scores.parquet", 1.0),
    }
    for name, (scores, p) in sets.items():
        st.run(f"select-{name}", out / "select" / name / "selection.json", select, scores, pool_dir,
               out / "select" / name, SelectConfig(top_p=p, export="none", progress=False))

    # What each training set holds (measurement only: no stage above read the labels).
    labels_by_id = {}
    for line in (data / "finetune_pool.labels.jsonl").read_text().splitlines():
        row = json.loads(line)
        labels_by_id[row["id"]] = row["label"]
    mix = {}
    for name in MODELS:
        rows = load_samples(str(out / "select" / name))
        mix[name] = Counter(labels_by_id[json.loads(r["metadata"])["id"]] for r in rows)

    # 4. finetune -----------------------------------------------------------------------------
    from seal_core.finetune import FinetuneConfig, finetune

    ft_cfg = {"model": args.model, "epochs": args.epochs, "lr": args.lr, "max_length": args.max_length,
              "truncation": "keep_prompt", "batch_size": 8, "micro_batch_size": 8, "checkpoint_every": 10,
              "max_steps": args.max_steps, "seed": 0}
    for name in MODELS:
        dest = out / "finetune" / name
        cfg = from_dict(FinetuneConfig, {**ft_cfg, "data": str(out / "select" / name), "out": str(dest)})
        st.run(f"finetune-{name}", dest / "summary.json", lambda c=cfg, d=dest: finetune(c, resume=(d / "checkpoints").exists()))

    # 5. generate -----------------------------------------------------------------------------
    from seal_core.generate import GenerateConfig, generate

    gen_models = {name: str(out / "finetune" / name) for name in MODELS}
    if not args.no_base:
        gen_models["base"] = ""
    for name, adapter in gen_models.items():
        for kind, n_new in (("helpful", args.max_new_tokens), ("harmful", args.max_new_tokens_harmful)):
            dest = out / "generate" / f"{name}.{kind}.jsonl"
            cfg = GenerateConfig(prompts=str(data / f"eval_{kind}.jsonl"), out=str(dest), model=args.model,
                                 adapter=adapter, max_new_tokens=n_new, batch_size=args.gen_batch_size,
                                 limit=args.limit_prompts)
            st.run(f"generate-{name}-{kind}", dest, lambda c=cfg: generate(c, resume=True))

    # 6. evaluate -----------------------------------------------------------------------------
    from seal_core.evaluation.evaluate import EvaluateConfig, ModelOutputs, evaluate
    from seal_core.evaluation.judges import JudgeConfig
    from seal_core.evaluation.report import load_results

    def outputs(name: str) -> ModelOutputs:
        g = out / "generate"
        return ModelOutputs(outputs=str(g / f"{name}.helpful.jsonl"), harmful=str(g / f"{name}.harmful.jsonl"), name=name)

    comparisons = {
        "seal": ("seal-top70", ["random-70", "full-pool"] + ([] if args.no_base else ["base"])),
        "random": ("random-70", ["full-pool"]),
    }
    for tag, (cand, bases) in comparisons.items():
        cfg = EvaluateConfig(candidate=outputs(cand), baselines=[outputs(b) for b in bases],
                             out_dir=str(out / "evaluate" / tag), judge=JudgeConfig(args.judge))
        st.run(f"evaluate-{tag}", out / "evaluate" / tag / "summary.json", evaluate, cfg)

    # 7. judge check --------------------------------------------------------------------------
    check_path = out / "judge_check.json"
    st.run("judge-check", check_path, judge_check, args.judge, data / "eval_helpful.jsonl", check_path,
           args.limit_prompts)

    harm_check_path = out / "harm_judge_check.json"
    st.run("harm-judge-check", harm_check_path, harm_judge_check, args.judge, data, labels_by_id,
           harm_check_path, args.limit_prompts or 60)

    # 8. reference NLL: a judge-free check ------------------------------------------------------
    nll_path = out / "reference_nll.json"
    st.run("reference-nll", nll_path, reference_nll, args.model, gen_models, data / "eval_helpful.jsonl",
           nll_path, args.limit_prompts, args.max_length)
    nll = json.loads(nll_path.read_text())

    # Report ----------------------------------------------------------------------------------
    pairs, safety = [], {}
    for tag in comparisons:
        p, s, _ = load_results(out / "evaluate" / tag)
        pairs += p
        for x in s:
            safety.setdefault(x.model, x)
    ft = {name: json.loads((out / "finetune" / name / "summary.json").read_text()) for name in MODELS}

    judge_model = args.judge.split(":", 1)[-1]
    lines = ["", f"Settings: model {args.model}; fine-tune {args.epochs} epochs, lr {args.lr:g}, max_length "
             f"{args.max_length} (keep_prompt), batch 8, LoRA r16 a16 on q,v; SEAL keeps top {args.top_p:.0%}; "
             f"greedy decoding, {args.max_new_tokens} new tokens on helpful and {args.max_new_tokens_harmful} on "
             f"harmful prompts; judge {args.judge}.",
             "", "Training sets and models", "",
             "| model | train rows | harmful | good | weak | mismatch | garbage | steps | final loss | "
             "fine-tune wall | generate wall | refusal on harmful prompts | judge-rated harmful | reference NLL |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in (*MODELS, *([] if args.no_base else ["base"])):
        m = mix.get(name)
        s = safety.get(name)
        ref = s.harmful_refusal if s else None
        harm = s.harmful_rate if s else None
        gen = st.wall(f"generate-{name}-helpful") + st.wall(f"generate-{name}-harmful")
        if m is not None:
            f = ft[name]
            head = (f"| {name} | {sum(m.values())} | {m['harmful']} | {m['good']} | {m['weak']} | {m['mismatch']} | "
                    f"{m['garbage']} | {f['steps']} | {f['final_loss']:.3f} | {st.wall('finetune-' + name):.0f} s |")
        else:
            head = f"| {name} (no fine-tune) | – | – | – | – | – | – | – | – | – |"
        lines.append(head + f" {gen:.0f} s | {fmt_rate(ref)} | {fmt_rate(harm)} | {nll[name]:.3f} |")
    lines.append(f"\nReference NLL: nats per answer token of eval_helpful.jsonl's {nll['n']} reference answers "
                 "(token-weighted; judge-free; lower is closer to the references).")
    lines += ["", "Reference NLL differences (paired over the same answers; bootstrap 95% CI; negative: the first "
              "model is closer to the references)", "", "| models | difference | 95% CI |", "|---|---|---|"]
    for a, b in (("seal-top70", "random-70"), ("seal-top70", "full-pool"), ("random-70", "full-pool"),
                 *([] if args.no_base else [("seal-top70", "base")])):
        d, lo, hi = paired_nll_difference(nll, a, b)
        lines.append(f"| {a} − {b} | {d:+.4f} | {lo:+.4f} to {hi:+.4f} |")

    lines += ["", f"Pairwise win rates on eval_helpful.jsonl (judge {args.judge}, both orders averaged)", "",
              "| candidate | baseline | n | win rate ± SE | 95% CI | W / L / T | order agreement | first-position preference |",
              "|---|---|---|---|---|---|---|---|"]
    for p in pairs:
        s = p.summary
        if s is None:
            lines.append(f"| {p.candidate} | {p.baseline} | 0 | not judged | | | | |")
            continue
        se = "" if s.standard_error != s.standard_error else f" ± {s.standard_error:.1f}"
        lines.append(f"| {p.candidate} | {p.baseline} | {s.n_total} | {s.win_rate:.1f}{se} | "
                     f"{s.ci_low:.1f}–{s.ci_high:.1f} | {s.n_wins} / {s.n_losses} / {s.n_ties} | "
                     f"{100 * (p.position_consistency or 0):.0f}% | {100 * (p.first_position_preference or 0):.0f}% |")

    if judge_model == args.model and not args.no_base:
        lines.append(f"\nThe judge is the base model itself ({args.model}), so rows against `base` may carry "
                     "self-preference: it may favour answers in its own style.")

    jc = json.loads(check_path.read_text())
    lines += ["", "Judge check: matching reference answer vs another prompt's reference answer", "",
              "| judge | n | prefers the matching answer | mean P(matching) | order agreement | first-position preference |",
              "|---|---|---|---|---|---|",
              f"| {jc['judge']} | {jc['n']} | {100 * jc['accuracy']:.1f}% | {jc['mean_p']:.3f} | "
              f"{100 * jc['order_agreement']:.0f}% | {100 * jc['first_position_preference']:.0f}% |"]

    hc = json.loads(harm_check_path.read_text())
    lines += ["", "Harmfulness-judge check: the pool's harmful compliant answers vs the safe set's refusals", "",
              "| judge | n harmful / n refusals | mean P(harmful): harmful answers | mean P(harmful): refusals | "
              "AUROC | accuracy at 0.5 |",
              "|---|---|---|---|---|---|",
              f"| {hc['judge']} | {hc['n_harmful']} / {hc['n_refusal']} | {hc['mean_p_harmful']:.3f} | "
              f"{hc['mean_p_refusal']:.3f} | {hc['auroc']:.3f} | {100 * hc['accuracy']:.1f}% |"]

    stage_rows = ["", "Wall time per stage", "", "| stage | wall |", "|---|---|"]
    stage_rows += [f"| {k} | {v['wall_s']:.0f} s |" for k, v in st.times.items()]
    total = sum(v["wall_s"] for v in st.times.values() if v["wall_s"] == v["wall_s"])
    stage_rows.append(f"| total | {total:.0f} s ({total / 60:.1f} min) |")
    text = "\n".join(lines + stage_rows) + "\n"
    print(text)
    (out / "results.md").write_text(text)
    return 0


def fmt_rate(r) -> str:
    if r is None or r.rate is None:
        return "–"
    se = "" if r.se is None or r.se != r.se else f" ± {r.se:.1f}"
    return f"{r.rate:.1f}%{se} (n={r.n})"


def reference_rows(prompts_path: Path) -> list[dict]:
    """The evaluation prompts that carry a reference answer, in file order."""
    rows = [json.loads(line) for line in prompts_path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("reference")]


def reference_nll(base: str, adapters: dict[str, str], prompts_path: Path, dest: Path, limit: int,
                  max_length: int) -> None:
    """NLL per answer token of the eval set's reference answers under each model (lower: closer to them).

    A judge-free complement to the win rates: no judge reads anything, so it cannot be fooled by
    position or length, but it measures likelihood of one good answer, not the quality of the model's own.
    """
    import numpy as np

    from seal_core.generate import resolve_adapter
    from seal_core.models import load_adapter, load_model
    from seal_core.tokenization import score_losses
    from seal_core.tokenization import encode_samples

    rows = reference_rows(prompts_path)[: limit or None]
    samples = [{"sample_id": f"{i:06d}", "messages": [{"role": "user", "content": r["prompt"]},
                                                       {"role": "assistant", "content": r["reference"]}]}
               for i, r in enumerate(rows)]
    result = {}
    for name, adapter in adapters.items():
        adapter_dir, _ = resolve_adapter(adapter)
        model, tok = load_adapter(base, str(adapter_dir)) if adapter_dir else load_model(base)
        enc, _ = encode_samples(tok, samples, max_length, "final", "keep_prompt")
        # score_losses gives each answer's mean token loss: weight by token count for nats per token.
        n_tok = np.array([e.n_target_tokens for e in enc], dtype=float)
        per = score_losses(model, tok, enc, 8, progress=False)
        result[name] = float((per * n_tok).sum() / n_tok.sum())
        result.setdefault("per_answer", {})[name] = per.tolist()
        result["n_tokens"] = n_tok.tolist()
        result["n"] = len(enc)
        del model
    write_json(dest, result)


def paired_nll_difference(nll: dict, a: str, b: str, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Token-weighted NLL(a) - NLL(b) over the same reference answers, with a paired bootstrap 95% CI."""
    import numpy as np

    x, y = np.array(nll["per_answer"][a]), np.array(nll["per_answer"][b])
    w = np.array(nll["n_tokens"])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(w), size=(n_boot, len(w)))
    boot = ((x - y)[idx] * w[idx]).sum(1) / w[idx].sum(1)
    return float(((x - y) * w).sum() / w.sum()), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def judge_check(spec: str, prompts_path: Path, dest: Path, limit: int) -> None:
    """Pair each prompt's reference answer with the next prompt's; a reading judge picks the first."""
    from seal_core.evaluation import judges as J

    rows = reference_rows(prompts_path)
    if limit:
        rows = rows[: max(limit, 2)]
    if len(rows) < 2:
        raise SystemExit(f"{prompts_path}: the judge check needs at least 2 prompts with a 'reference' answer")
    instr = [r["prompt"] for r in rows]
    matching = [r["reference"] for r in rows]
    other = [rows[(i + 1) % len(rows)]["reference"] for i in range(len(rows))]
    judge = J.make_judge(J.JudgeConfig(spec))
    try:
        js = J.judge_both_orders(judge, instr, matching, other)
    finally:
        judge.close()
    write_json(dest, {
        "judge": spec, "n": len(js),
        "accuracy": sum(j.p > 0.5 for j in js) / len(js),
        "mean_p": sum(j.p for j in js) / len(js),
        "order_agreement": sum(j.consistent for j in js) / len(js),
        "first_position_preference": sum((j.p_first + j.p_swapped) / 2 for j in js) / len(js),
    })


def harm_judge_check(spec: str, data: Path, labels_by_id: dict[str, str], dest: Path, n: int) -> None:
    """P(harmful) on answers whose harmfulness is known: the pool's answers labelled harmful (hh-rlhf
    compliant answers to harmful requests) and the safe set's answers that the refusal detector flags
    (refusals to harmful requests). A judge that reads them separates the two (AUROC near 1)."""
    from seal_core.evaluation import judges as J
    from seal_core.evaluation.refusal import is_refusal
    from seal_core.metrics import auroc

    harmful = []
    for line in (data / "finetune_pool.jsonl").read_text().splitlines():
        row = json.loads(line)
        if labels_by_id.get(row["id"]) == "harmful" and len(harmful) < n:
            msgs = row["messages"]
            user = next(m["content"] for m in reversed(msgs[:-1]) if m["role"] == "user")
            harmful.append((user, msgs[-1]["content"]))
    refusals = []
    for line in (data / "safe_set.jsonl").read_text().splitlines():
        row = json.loads(line)
        instr = "\n\n".join(x for x in (row["instruction"], row.get("input") or "") if x)
        if is_refusal(row["output"]) and len(refusals) < n:
            refusals.append((instr, row["output"]))
    if not harmful or not refusals:
        raise SystemExit(f"{data}: the harmfulness check needs harmful pool answers and safe-set refusals")
    items = harmful + refusals
    judge = J.make_judge(J.JudgeConfig(spec))
    try:
        vs = J.judge_harm(judge, [i for i, _ in items], [o for _, o in items])
    finally:
        judge.close()
    # An unreadable verdict counts as "unsure" (0.5), as in the evaluation's ties.
    ps = [0.5 if v.p is None else v.p for v in vs]
    is_harmful = [True] * len(harmful) + [False] * len(refusals)
    write_json(dest, {
        "judge": spec, "n_harmful": len(harmful), "n_refusal": len(refusals),
        "mean_p_harmful": sum(ps[: len(harmful)]) / len(harmful),
        "mean_p_refusal": sum(ps[len(harmful):]) / len(refusals),
        "auroc": auroc(ps, is_harmful),
        "accuracy": sum((p > 0.5) == h for p, h in zip(ps, is_harmful)) / len(ps),
        "n_unreadable": sum(v.p is None for v in vs),
    })


if __name__ == "__main__":
    sys.exit(main())
