"""Does a trained selector generalise? Train on one half of the pool, score the other half.

The pool (+ the control refusals, as in bench/ranker_quality.py) is split into halves A and B by a
hash of each sample's ``sample_id`` (no label is involved). ``seal rank --method seal-probe`` (or
``--method combined``, the default ranker: the probe plus the forward-only prior and relevance)
trains on A alone; ``seal score`` then scores B, which the selector never saw, with the network it
learnt (for combined, prior and relevance are computed on B and the three rank-averaged over B).
Printed per half: AUROC harmful vs rest (A from the rank run's own scores, B from ``seal score``;
higher score = keep, so 1.0 means every harmful sample ranks below the rest), harmful vs controls,
garbage+mismatch vs rest, and harmful and controls kept in the half's top 70%. A selector that
generalises has B close to A. The labels files are read here only, to measure; the ranker never
sees them.

    python bench/probe_generalisation.py                                  # SmolLM2, the whole pool
    python bench/probe_generalisation.py --method combined                # the default ranker
    python bench/probe_generalisation.py --model tiny-random --limit 40   # smoke test, seconds
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/select.py would shadow the standard library's `select`: take this folder off sys.path first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seal_core.config import deep_merge, from_dict, parse_overrides  # noqa: E402
from seal_core.metrics import auroc  # noqa: E402

BENCH = ROOT.parent / "shared" / "data" / "seal-bench"
KEEP = 0.7  # the kept fraction of bench/ranker_quality.py's "kept" columns


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_labelled(data: Path, controls: bool) -> tuple[list[dict], dict]:
    """Canonical rows of the pool (+ controls) and ``{sample_id: label}``."""
    from seal_core.ingest import load_samples

    rows, labels = [], {}
    for name in ["finetune_pool.jsonl"] + (["control_refusals.jsonl"] if controls else []):
        by_id = {r["id"]: r["label"] for r in _read_jsonl((data / name).with_suffix(".labels.jsonl"))}
        for s in load_samples(str(data / name)):
            if s["sample_id"] not in labels:
                labels[s["sample_id"]] = by_id[json.loads(s["metadata"])["id"]]
                rows.append(s)
    return rows, labels


def half_of(sample_id: str) -> str:
    return "A" if hashlib.sha256(sample_id.encode()).digest()[0] % 2 == 0 else "B"


def write_canonical(rows: list[dict], path: Path) -> str:
    from seal_core.schema import CANONICAL_SCHEMA

    pq.write_table(pa.Table.from_pylist(rows, schema=CANONICAL_SCHEMA), path)
    return str(path)


def measure(scores_path: Path, labels: dict) -> dict:
    t = pq.read_table(scores_path).to_pandas()
    lab = np.array([labels[i] for i in t["sample_id"]])
    s = t["score"].to_numpy()
    harmful, control = lab == "harmful", lab == "refusal"
    junk = np.isin(lab, ["garbage", "mismatch"])
    both = harmful | control
    # The file is best first (rank 1 = keep first): the top 70% is its first 70% of rows.
    top = np.arange(len(t)) < int(round(KEEP * len(t)))
    return {"n": len(t), "harmful": int(harmful.sum()), "auroc_harmful": auroc(s, ~harmful),
            "auroc_harmful_vs_controls": auroc(s[both], control[both]) if control.any() else float("nan"),
            "auroc_junk": auroc(s, ~junk),
            "harmful_kept": float(top[harmful].mean()) if harmful.any() else float("nan"),
            "controls_kept": float(top[control].mean()) if control.any() else float("nan")}


def _pct(x: float) -> str:
    return "n/a" if np.isnan(x) else f"{100 * x:.1f}%"


def _parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(BENCH))
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=160)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", default="seal-probe", choices=["seal-probe", "combined"],
                    help="the trained ranker: seal-probe alone, or combined (probe + prior + relevance, the default)")
    ap.add_argument("--no-controls", action="store_true", help="the pool alone (no control refusals)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N samples (by id) and safe rows: smoke tests")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "probe_generalisation"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a RankConfig key, e.g. --set probe.hidden=64")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    from seal_cli.main import main as seal_main
    from seal_core.ranker.config import RankConfig
    from seal_core.ranker.run import rank

    args = _parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    if not (data / "finetune_pool.jsonl").exists():
        print(f"benchmark data not found under {data}", file=sys.stderr)
        return 2
    rows, labels = load_labelled(data, controls=not args.no_controls)
    rows.sort(key=lambda r: r["sample_id"])
    if args.limit:
        rows = rows[: args.limit]
    halves = {h: [r for r in rows if half_of(r["sample_id"]) == h] for h in "AB"}
    print("halves: " + ", ".join(f"{h} {len(v)} samples" for h, v in halves.items()), flush=True)
    # Settings of bench/ranker_quality.py (SmolLM2 on a few hundred samples).
    settings = {"model": args.model, "epochs": args.epochs, "max_length": args.max_length, "model_lr": 2e-4,
                "batch_size": 8, "safe_batch_size": 8, "micro_batch_size": 8, "score_batch_size": 16,
                "checkpoint_every": 0, "progress": False, "method": args.method, "seed": args.seed}
    settings = deep_merge(settings, parse_overrides(args.overrides))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="probe-gen-") as tmp:
        paths = {h: write_canonical(v, Path(tmp) / f"half_{h}.parquet") for h, v in halves.items()}
        safe = str(data / "safe_set.jsonl")
        if args.limit:
            safe_rows = _read_jsonl(data / "safe_set.jsonl")[: args.limit]
            safe = str(Path(tmp) / "safe.jsonl")
            Path(safe).write_text("".join(json.dumps(r) + "\n" for r in safe_rows), encoding="utf-8")
        t0 = time.perf_counter()
        run_dir = out / "rank_A"
        rank(from_dict(RankConfig, {**settings, "pool": paths["A"], "safe": safe, "out": str(run_dir)}))
        t1 = time.perf_counter()
        rc = seal_main(["score", "--ranker", str(run_dir), "--pool", paths["B"], "--out", str(out / "score_B"),
                        "--no-progress"])
        if rc:
            return rc
        t2 = time.perf_counter()
    res = {"A (trained on)": measure(run_dir / "scores.parquet", labels),
           "B (unseen)": measure(out / "score_B" / "scores.parquet", labels)}
    print(f"\nrank A: {t1 - t0:.0f} s, score B: {t2 - t1:.0f} s\n")
    print(f"method {args.method}, seed {args.seed}\n")
    print("| half | samples | harmful | AUROC harmful vs rest | AUROC harmful vs controls | AUROC garbage+mismatch "
          "| harmful kept (top 70%) | controls kept (top 70%) |")
    print("|---|---|---|---|---|---|---|---|")
    for h, r in res.items():
        print(f"| {h} | {r['n']} | {r['harmful']} | {r['auroc_harmful']:.3f} | {r['auroc_harmful_vs_controls']:.3f} "
              f"| {r['auroc_junk']:.3f} | {_pct(r['harmful_kept'])} | {_pct(r['controls_kept'])} |")
    gap = res["B (unseen)"]["auroc_harmful"] - res["A (trained on)"]["auroc_harmful"]
    print(f"\nAUROC harmful vs rest, B - A: {gap:+.3f}")
    (out / "results.json").write_text(json.dumps({"settings": settings, "results": res,
                                                  "seconds": {"rank_A": t1 - t0, "score_B": t2 - t1}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
