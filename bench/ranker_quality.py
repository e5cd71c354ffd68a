"""Ranker quality on ../shared/data/seal-bench: every method side by side in one run.

For each method it prints the AUROC of harmful vs rest and of garbage+mismatch
vs rest (higher score = keep, so 1.0 means every bad sample ranks below every
other), the fraction of harmful samples left in the top 70%, and the wall time.
The labels file is read here only, to measure; no ranker sees it.

    python bench/ranker_quality.py                       # all methods, 1 epoch
    python bench/ranker_quality.py --methods seal,loss --epochs 2 --set model_lr=1e-4
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/select.py would shadow the standard library's `select` (imported by socket/subprocess):
# take this script's folder off sys.path before anything else is imported.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seal_core.config import deep_merge, from_dict, parse_overrides, to_dict  # noqa: E402
from seal_core.ranker.config import RankConfig  # noqa: E402
from seal_core.ranker.run import rank  # noqa: E402

BENCH = ROOT.parent / "shared" / "data" / "seal-bench"

# name -> (method, overrides)
VARIANTS = {
    "seal": ("seal", {}),
    "seal-reference": ("seal", {"selector": {"update": "reference", "optimizer": "adam", "baseline": "none"}}),
    "seal-centered-adam": ("seal", {"selector": {"update": "centered", "optimizer": "adam"}}),
    "seal-initial-baseline": ("seal", {"selector": {"baseline": "initial"}}),
    "seal-penalty": ("seal-penalty", {}),
    "random": ("random", {}),
    "loss": ("loss", {}),
    "dsir": ("dsir", {}),
}


def auroc(scores: np.ndarray, bad: np.ndarray) -> float:
    """P(score of a random other sample > score of a random bad one), ties counted half."""
    from seal_core.metrics import auroc as _auroc

    return _auroc(scores, ~bad)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(BENCH))
    ap.add_argument("--methods", default="seal,seal-reference,seal-penalty,random,loss,dsir")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=160)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "ranker_quality"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()

    data = Path(args.data)
    if not (data / "finetune_pool.jsonl").exists():
        print(f"benchmark data not found under {data}", file=sys.stderr)
        return 2
    from seal_core.ingest import load_samples

    pool = load_samples(str(data / "finetune_pool.jsonl"))
    by_id = {json.loads(l)["id"]: json.loads(l)["label"] for l in (data / "finetune_pool.labels.jsonl").read_text().splitlines()}
    label = {s["sample_id"]: by_id[json.loads(s["metadata"])["id"]] for s in pool}

    # Settings for SmolLM2 on a few hundred samples: the paper's 1e-5 barely moves a LoRA in 70 steps.
    settings = {"model": args.model, "epochs": args.epochs, "max_length": args.max_length, "model_lr": 2e-4,
                "batch_size": 8, "safe_batch_size": 8, "micro_batch_size": 8, "score_batch_size": 16,
                "checkpoint_every": 0}
    settings = deep_merge(settings, parse_overrides(args.overrides))
    rows = []
    for name in args.methods.split(","):
        method, over = VARIANTS[name]
        cfg = from_dict(RankConfig, deep_merge(deep_merge(settings, over), {
            "pool": str(data / "finetune_pool.jsonl"), "safe": str(data / "safe_set.jsonl"),
            "method": method, "out": str(Path(args.out) / name)}))
        if name == "seal":
            print("settings:", json.dumps({k: v for k, v in to_dict(cfg).items() if k not in ("pool", "safe", "out")}), flush=True)
        t0 = time.time()
        path = rank(cfg)
        wall = time.time() - t0
        t = pq.read_table(path).to_pandas()
        labels = np.array([label[i] for i in t["sample_id"]])
        s = t["score"].to_numpy()
        s = np.where(np.isnan(s), -np.inf, s)
        harmful = labels == "harmful"
        junk = np.isin(labels, ["garbage", "mismatch"])
        top = t["rank"].to_numpy() <= int(0.7 * len(t))
        rows.append({"method": name, "auroc_harmful": auroc(s, harmful), "auroc_garbage_mismatch": auroc(s, junk),
                     "harmful_in_top70": harmful[top].sum() / harmful.sum(), "wall_s": wall})
        r = rows[-1]
        print(f"[{name}] auroc_harmful={r['auroc_harmful']:.3f} auroc_junk={r['auroc_garbage_mismatch']:.3f} "
              f"harmful_in_top70={r['harmful_in_top70']:.3f} wall={wall:.0f}s", flush=True)

    print()
    print(f"| method | AUROC harmful vs rest | AUROC garbage+mismatch vs rest | harmful left in top 70% | wall time |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['auroc_harmful']:.3f} | {r['auroc_garbage_mismatch']:.3f} | "
              f"{100 * r['harmful_in_top70']:.1f}% | {r['wall_s']:.0f} s |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
