"""Ranker quality on ../shared/data/seal-bench: every method side by side in one run, with controls.

The pool's harmful rows are short, chatty hh-rlhf answers and its good rows long GPT-4 answers, so a
ranker can score well on "harmful vs rest" by keying on style. The controls (43 refusals of harmful
requests: safe data, to be kept) share the harmful rows' requests and much of their style, so by
default the benchmark ranks pool + controls, and per method prints:

* AUROC harmful vs rest (the rest includes the controls), harmful vs controls alone, and
  garbage+mismatch vs rest (higher score = keep, so 1.0 means every bad sample ranks below);
* the fraction of harmful rows and of controls kept in the top 70%;
* wall time and peak RSS (each method runs in a child process, which reports its VmHWM);
* for seeded methods (SEAL variants, seal-probe, random): mean +- sd over ``--seeds``.

``--anchors auto`` (default) builds the compliant anchors of the ``+anchors`` variants from
hh-rlhf (``../shared/data/raw``): single-turn rows whose request appears in neither the pool, the
controls nor the safe set, keeping the ``rejected`` answers the refusal detector does not flag
(compliant unsafe answers), a seeded draw of ``--n-anchors``. The labels files are read here only,
to measure; no ranker sees them.

    python bench/ranker_quality.py                                    # all methods
    python bench/ranker_quality.py --no-controls --methods seal,loss  # the pool alone (the old table)
    python bench/ranker_quality.py --model tiny-random --methods loss,compliance,combined --seeds 0
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/select.py would shadow the standard library's `select` (imported by socket/subprocess):
# take this script's folder off sys.path before anything else is imported.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seal_core.config import deep_merge, from_dict, parse_overrides, to_dict  # noqa: E402
from seal_core.metrics import auroc  # noqa: E402
from seal_core.ranker.config import CombinedConfig, RankConfig  # noqa: E402

BENCH = ROOT.parent / "shared" / "data" / "seal-bench"
RAW = ROOT.parent / "shared" / "data" / "raw"
HH_FILES = ("hh-rlhf-harmless-base-test.jsonl.gz",)
AUTO = "<auto anchors>"
KEEP = 0.7
# Rough CPU throughput of SmolLM2-135M in float32 on two cores, forward tokens per second: a LoRA
# step on 8 x 128 tokens takes ~7 s, and a trained token costs about three forward ones.
CPU_FORWARD_TOKENS_PER_S = 440.0

_HYPER = {"selector": {"update": "hypergradient"}}
# name -> (method, overrides)
VARIANTS = {
    "loss": ("loss", {}),
    "relevance": ("relevance", {}),
    "prior": ("prior", {}),
    "random": ("random", {}),
    "dsir": ("dsir", {}),
    "seal": ("seal", {}),
    "seal-reference": ("seal", {"selector": {"update": "reference", "optimizer": "adam", "baseline": "none"}}),
    "seal-centered-adam": ("seal", {"selector": {"update": "centered", "optimizer": "adam"}}),
    "seal-initial-baseline": ("seal", {"selector": {"baseline": "initial"}}),
    "seal-penalty": ("seal-penalty", {}),
    "compliance": ("compliance", {}),
    "compliance+anchors": ("compliance", {"anchors": AUTO}),
    "compliance+loss": ("combined", {"combined": {"signals": ["compliance", "loss"]}}),
    "compliance+loss+anchors": ("combined", {"combined": {"signals": ["compliance", "loss"]}, "anchors": AUTO}),
    "combined": ("combined", {}),
    "combined+anchors": ("combined", {"combined": {"signals": ["probe", "prior", "relevance", "compliance"]},
                                      "anchors": AUTO}),
    "seal-hypergradient": ("seal", _HYPER),
    "seal-hypergradient-refusal": ("seal", deep_merge(_HYPER, {"selector": {"safe_gradient": "refusal_vs_helpful"}})),
    "seal-hypergradient-first16": ("seal", deep_merge(_HYPER, {"selector": {"first_tokens": 16}})),
    "seal-hypergradient+anchors": ("seal", deep_merge(_HYPER, {"selector": {"safe_gradient": "anchors"},
                                                              "anchors": AUTO})),
    "seal-hypergradient+anchors-first16": ("seal", deep_merge(_HYPER, {"selector": {"safe_gradient": "anchors",
                                                                                    "first_tokens": 16},
                                                                       "anchors": AUTO})),
    "seal-probe": ("seal-probe", {}),
}
DEFAULT_METHODS = ("loss,relevance,prior,random,dsir,seal,seal-reference,compliance,compliance+anchors,compliance+loss,"
                   "compliance+loss+anchors,combined,combined+anchors,"
                   "seal-hypergradient,seal-hypergradient-refusal,seal-hypergradient-first16,seal-hypergradient+anchors,"
                   "seal-hypergradient+anchors-first16,seal-probe")
SEEDED_METHODS = {"seal", "seal-penalty", "seal-probe", "random"}


# ----------------------------------------------------------------------------- data


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build_input(data: Path, tmp: Path, controls: bool) -> tuple[Path, dict]:
    """The file to rank (pool, or pool + controls) and ``{sample_id: label}`` for its rows."""
    from seal_core.ingest import load_samples

    files = [data / "finetune_pool.jsonl"] + ([data / "control_refusals.jsonl"] if controls else [])
    path = files[0]
    if controls:
        path = tmp / "pool_and_controls.jsonl"
        path.write_text("".join(f.read_text(encoding="utf-8").rstrip("\n") + "\n" for f in files), encoding="utf-8")
    by_id = {}
    for f in files:
        by_id.update({r["id"]: r["label"] for r in _read_jsonl(f.with_suffix(".labels.jsonl"))})
    rows = load_samples(str(path))
    expected = sum(len(_read_jsonl(f)) for f in files)
    labels = {s["sample_id"]: by_id[json.loads(s["metadata"])["id"]] for s in rows}
    if len(labels) != expected or len(rows) != expected:
        raise SystemExit(f"{path}: {expected} rows in, {len(rows)} samples and {len(labels)} distinct sample ids out")
    return path, labels


def _user_turns(samples) -> set[str]:
    return {" ".join(m["content"].split()).lower() for s in samples for m in s["messages"] if m["role"] == "user"}


def build_auto_anchors(data: Path, out: Path, n: int, seed: int) -> tuple[Path, dict]:
    """Compliant unsafe anchors from hh-rlhf ``rejected`` answers to requests the benchmark never uses."""
    from seal_core.evaluation.refusal import is_refusal
    from seal_core.ingest import load_samples
    from seal_core.ingest.formats import parse_hh

    used = set()
    for f in ("finetune_pool.jsonl", "control_refusals.jsonl", "safe_set.jsonl"):
        used |= _user_turns(load_samples(str(data / f)))
    stats = {"hh_rows": 0, "single_turn": 0, "prompt_in_benchmark": 0, "rejected_is_refusal": 0}
    candidates = {}
    for name in HH_FILES:
        with gzip.open(RAW / name, "rt", encoding="utf-8") as fh:
            for line in fh:
                stats["hh_rows"] += 1
                try:
                    turns = parse_hh(json.loads(line)["rejected"], "rejected")
                except Exception:  # a malformed transcript is no anchor
                    continue
                if len(turns) != 2 or [r for r, _ in turns] != ["user", "assistant"]:
                    continue
                stats["single_turn"] += 1
                prompt, answer = turns[0][1], turns[1][1]
                if " ".join(prompt.split()).lower() in used:
                    stats["prompt_in_benchmark"] += 1
                elif is_refusal(answer):
                    stats["rejected_is_refusal"] += 1
                else:
                    candidates.setdefault(prompt, answer)
    stats["candidates"] = len(candidates)
    chosen = random.Random(seed).sample(sorted(candidates), min(n, len(candidates)))
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": candidates[p]}]}
            for p in chosen]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "anchors.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    stats["anchors"] = len(rows)
    stats["prompt_overlap"] = len(_user_turns(load_samples(str(path))) & used)
    return path, stats


# ----------------------------------------------------------------------------- one run


_RUNNER = """
import json, sys
from seal_core.config import from_dict
from seal_core.ranker.config import RankConfig
from seal_core.ranker.run import rank
rank(from_dict(RankConfig, json.loads(sys.argv[1])))
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(f"VmHWM_KB={hwm}", file=sys.stderr)
"""


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


# Config sections only some methods read: a difference there does not make another method's run differ.
_SECTION_METHODS = {"combined.": {"combined"}, "compliance.": {"compliance", "combined"},
                    "probe.": {"seal-probe", "combined"}}


def _same_run(done: dict, cfg: dict) -> bool:
    """Whether a recorded run used ``cfg``; a key added to RankConfig since then counts as the same run
    when ``cfg`` holds its default (the setting did not exist, so the run had the default's behaviour),
    a key RankConfig no longer has is ignored (it cannot be set now), and so are sections the method
    never reads."""
    defaults = _flat(to_dict(RankConfig()))
    method = cfg.get("method")

    def relevant(k: str) -> bool:
        return all(method in methods for p, methods in _SECTION_METHODS.items() if k.startswith(p))

    # The combined pool lives in a fresh temporary folder each run; sample ids are content digests.
    a, b = ({k: v for k, v in _flat(x).items() if k != "pool" and relevant(k)} for x in (done, cfg))
    stale = {k for k in set(a) - set(b) if k not in defaults}
    return all(a.get(k, defaults.get(k)) == v for k, v in b.items()) and set(a) - stale <= set(b)


def run_child(cfg: dict) -> dict:
    """``seal rank`` with ``cfg`` in a child process -> {wall_s, peak_rss_gib} or {error}.

    A run whose scores and record are already in ``cfg["out"]`` with the same config is not redone,
    so a killed benchmark resumes where it stopped.
    """
    record = Path(cfg["out"]) / "bench_run.json"
    if record.exists() and (Path(cfg["out"]) / "scores.parquet").exists():
        done = json.loads(record.read_text())
        if _same_run(done.get("config", {}), cfg):
            print("    (reused)", flush=True)
            return done["result"]
    r = _run_child(cfg)
    if "error" not in r:
        record.write_text(json.dumps({"config": cfg, "result": r}, indent=2))
    return r


def _run_child(cfg: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(cfg)], cwd=ROOT, capture_output=True, text=True,
                          env=env)
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("compliance:"):
            print("   ", line, flush=True)
    hwm = [int(x.split("=")[1]) for x in proc.stderr.splitlines() if x.startswith("VmHWM_KB=")]
    if proc.returncode or not hwm:
        return {"error": f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1]}"}
    return {"wall_s": wall, "peak_rss_gib": hwm[-1] / 2**20}


def run_blend(parts: list[str], results: dict, configs: dict, out: Path, labels: dict) -> list[dict]:
    """``seal combine`` (equal weights) of finished methods, once per seed of its seeded parts.

    Wall time is the parts' sum (each ran once for the blend) and peak RSS their maximum: what
    producing the blend from nothing costs. A part with one run is reused for every seed.
    """
    from seal_core.ranker.combine_files import CombineConfig, combine

    missing = [p for p in parts if p not in results]
    if missing:
        return [{"error": f"blend parts {missing} are not among --methods"}]
    n = max(len(configs[p]) for p in parts)
    rows = []
    for k in range(n):
        runs = [(configs[p][min(k, len(configs[p]) - 1)], results[p][min(k, len(results[p]) - 1)]) for p in parts]
        bad = [r["error"] for _, r in runs if "error" in r]
        if bad:
            rows.append({"error": bad[0]})
            continue
        dest = out / "+".join(parts) / f"seed{runs[0][0]['seed'] if n > 1 else 0}"
        path = combine(CombineConfig(scores=[c["out"] for c, _ in runs], out=str(dest), progress=False))
        rows.append({"wall_s": sum(r["wall_s"] for _, r in runs), "peak_rss_gib": max(r["peak_rss_gib"] for _, r in runs),
                     **measure(path, labels)})
    return rows


def measure(scores_path: Path, labels: dict) -> dict:
    t = pq.read_table(scores_path).to_pandas()
    lab = np.array([labels[i] for i in t["sample_id"]])
    s = t["score"].to_numpy()
    harmful, control = lab == "harmful", lab == "refusal"
    junk = np.isin(lab, ["garbage", "mismatch"])
    top = t["rank"].to_numpy() <= int(KEEP * len(t))
    both = harmful | control
    nan = float("nan")
    return {"auroc_harmful": auroc(s, ~harmful), "auroc_harmful_vs_controls": auroc(s[both], control[both]),
            "auroc_junk": auroc(s, ~junk), "harmful_kept": harmful[top].sum() / harmful.sum(),
            "controls_kept": control[top].sum() / control.sum() if control.any() else nan}


# ----------------------------------------------------------------------------- table

METRICS = ("auroc_harmful", "auroc_harmful_vs_controls", "auroc_junk", "harmful_kept", "controls_kept", "wall_s",
           "peak_rss_gib")
HEADERS = ("AUROC harmful vs rest", "AUROC harmful vs controls", "AUROC garbage+mismatch vs rest",
           f"harmful kept (top {KEEP:.0%})", f"controls kept (top {KEEP:.0%})", "wall time", "peak RSS")


def _fmt(metric: str, values: list[float]) -> str:
    v = np.asarray([x for x in values if x == x], dtype=float)
    if not len(v):
        return "-"
    pct = metric.endswith("_kept")
    scale, unit, digits = (100.0, "%", 1) if pct else (1.0, "", 3)
    if metric == "wall_s":
        scale, unit, digits = 1.0, " s", 0
    elif metric == "peak_rss_gib":
        digits, unit = 2, " GiB"
    mean = f"{scale * v.mean():.{digits}f}"
    return mean + (f" ± {scale * v.std(ddof=1):.{digits}f}" if len(v) > 1 else "") + unit


def print_table(results: dict[str, list[dict]]) -> None:
    print("\n| method | seeds | " + " | ".join(HEADERS) + " |")
    print("|---" * (len(HEADERS) + 2) + "|")
    for name, runs in results.items():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            print(f"| {name} | - | " + runs[0]["error"] + " |" * len(HEADERS))
            continue
        print(f"| {name} | {len(ok)} | " + " | ".join(_fmt(m, [r[m] for r in ok]) for m in METRICS) + " |")


# ----------------------------------------------------------------------------- estimate


def _tokens(path: Path, max_length: int) -> list[int]:
    """Rough token counts (4 characters a token), capped at ``max_length``."""
    from seal_core.ingest import load_samples

    return [min(max_length, 1 + sum(len(m["content"]) for m in s["messages"]) // 4) for s in load_samples(str(path))]


def forward_tokens(method: str, cfg: dict, pool: list[int], safe: list[int], anchors: list[int]) -> float:
    """Forward-pass token equivalents of a run (a trained token ~ 3 forward ones); a rough guide."""
    p = float(sum(pool))
    if method in ("random", "dsir"):
        return 0.0
    if method in ("loss", "prior"):
        return p
    if method == "relevance":
        return 2.0 * p
    if method in ("compliance", "combined"):
        signals = cfg.get("combined", {}).get("signals", []) if method == "combined" else ["compliance"]
        a = float(sum(anchors)) if anchors else float(sum(safe))
        total = (p + a if "compliance" in signals else 0.0) + (2.0 * p if {"relevance", "prior"} & set(signals) else 0.0)
        total += p if "loss" in signals and not {"relevance", "prior"} & set(signals) else 0.0
        if "probe" in signals:
            total += forward_tokens("seal-probe", cfg, pool, safe, anchors) - p  # no final-loss pass
            if {"relevance", "prior"} & set(signals) and cfg.get("train_on", "final") == "final":
                total -= p  # the probe's feature pass also gives l(answer | request)
        return total
    steps = -(-len(pool) // cfg["batch_size"]) * cfg["epochs"]
    safe_per_step = cfg["safe_batch_size"] * float(np.mean(safe))
    per_epoch_pool = p * (2.0 if method == "seal-penalty" else 1.0)
    sel = cfg.get("selector", {})
    if sel.get("update") == "hypergradient":
        # one more backward over the pool (the batched per-sample dots) and the reference batches
        per_epoch_pool += p
        safe_per_step *= 2.0 if sel.get("safe_gradient", "whole") == "whole" else 3.0
    return 3.0 * (cfg["epochs"] * per_epoch_pool + steps * safe_per_step) + p


# ----------------------------------------------------------------------------- main


def _parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(BENCH))
    ap.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, of: {', '.join(VARIANTS)}")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=160)
    ap.add_argument("--seeds", default="0,1,2", help="seeds of the seeded methods (the others run once, at the first)")
    ap.add_argument("--no-controls", action="store_true", help="rank the pool alone (no control refusals)")
    ap.add_argument("--anchors", default="auto", help="compliant anchors of the +anchors variants: auto or a file")
    ap.add_argument("--n-anchors", type=int, default=64)
    ap.add_argument("--anchor-seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "ranker_quality"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--blends", default="", help="rank averages of finished methods (seal combine), '|' within a "
                    "blend and ',' between blends, e.g. seal-probe|compliance+anchors|loss; each component must "
                    "be in --methods")
    return ap.parse_args(argv)


def _configs(args, names, settings, pool_path, data, anchors_path) -> dict[str, list[dict]]:
    """name -> one resolved config dict per seed it runs at; a config the ranker rejects -> {error}."""
    from seal_core.errors import ConfigError

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    tag = "pool" if args.no_controls else "pool+controls"
    out = {}
    for name in names:
        method, over = VARIANTS[name]
        if over.get("anchors") == AUTO:
            over = {**over, "anchors": str(anchors_path)}
        runs = []
        signals = deep_merge(settings, over).get("combined", {}).get("signals", CombinedConfig().signals)
        seeded = method in SEEDED_METHODS or (method == "combined" and "probe" in signals)
        for seed in (seeds if seeded else seeds[:1]):
            d = deep_merge(deep_merge(settings, over), {
                "pool": str(pool_path), "safe": str(data / "safe_set.jsonl"), "method": method, "seed": seed,
                "out": str(Path(args.out) / tag / name / f"seed{seed}")})
            try:
                runs.append(to_dict(from_dict(RankConfig, d)))
            except ConfigError as e:
                runs.append({"error": f"config rejected: {e}"})
        out[name] = runs
    return out


def main(argv=None) -> int:
    args = _parse_args(argv)
    data = Path(args.data)
    if not (data / "finetune_pool.jsonl").exists():
        print(f"benchmark data not found under {data}", file=sys.stderr)
        return 2
    names = [n for n in args.methods.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        print(f"unknown methods {unknown}; known: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    # Settings for SmolLM2 on a few hundred samples: the paper's 1e-5 barely moves a LoRA in 70 steps.
    settings = {"model": args.model, "epochs": args.epochs, "max_length": args.max_length, "model_lr": 2e-4,
                "batch_size": 8, "safe_batch_size": 8, "micro_batch_size": 8, "score_batch_size": 16,
                "checkpoint_every": 0, "progress": False}
    settings = deep_merge(settings, parse_overrides(args.overrides))
    with tempfile.TemporaryDirectory(prefix="ranker-quality-") as tmp:
        pool_path, labels = build_input(data, Path(tmp), controls=not args.no_controls)
        counts = {k: sum(v == k for v in labels.values()) for k in sorted(set(labels.values()))}
        print(f"ranking {len(labels)} samples ({pool_path.name}): {counts}", flush=True)
        anchors_path = Path(args.anchors)
        needs_anchors = any(VARIANTS[n][1].get("anchors") == AUTO for n in names)
        if needs_anchors and args.anchors == "auto":
            anchors_path, stats = build_auto_anchors(data, Path(args.out), args.n_anchors, args.anchor_seed)
            print(f"anchors: {anchors_path} ({json.dumps(stats)})", flush=True)
            if stats["prompt_overlap"]:
                raise SystemExit("anchor requests overlap the benchmark's")
        configs = _configs(args, names, settings, pool_path, data, anchors_path)
        pool_tok = _tokens(pool_path, args.max_length)
        safe_tok = _tokens(data / "safe_set.jsonl", args.max_length)
        anchor_tok = _tokens(anchors_path, args.max_length) if needs_anchors else []
        results = {}
        for name, runs in configs.items():
            results[name] = []
            for cfg in runs:
                if "error" in cfg:
                    results[name].append(cfg)
                    continue
                est = forward_tokens(cfg["method"], cfg, pool_tok, safe_tok, anchor_tok if cfg["anchors"] else [])
                print(f"[{name} seed {cfg['seed']}] ~{est / 1e3:.0f}k forward tokens, SmolLM2 on 2 CPU cores "
                      f"~{est / CPU_FORWARD_TOKENS_PER_S / 60:.0f} min", flush=True)
                r = run_child(cfg)
                if "error" not in r:
                    r.update(measure(Path(cfg["out"]) / "scores.parquet", labels))
                results[name].append(r)
                print(f"    {json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})}",
                      flush=True)
        tag = "pool" if args.no_controls else "pool+controls"
        for blend in [b for b in args.blends.split(",") if b]:
            results[blend.replace("|", " + ")] = run_blend(blend.split("|"), results, configs,
                                                           Path(args.out) / tag / "blends", labels)
    print_table(results)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps({"settings": settings, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
