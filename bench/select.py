"""Benchmark `seal select` against a pandas baseline on synthetic scores and pool files.

Generates a scores file (random scores with many ties, stored best-first like
`seal rank` writes it) and a pool in the canonical schema holding the same ids in
another order, then runs each method in its own subprocess and prints wall time,
rows/s (scored rows per second) and peak RSS (from wait4, per process). Both
methods keep the top k by (score desc, sample_id asc) and write Parquet; the
script checks that they select the same ids in the same order.

    python bench/select.py                 # 10M rows, k = 80%
    python bench/select.py --rows 1000000 --methods seal,pandas

Ids are random 24-hex strings (the shape of real sample_ids; computing content
hashes for 10M rows would only slow the set-up down).
"""

from __future__ import annotations

import os
import sys

# This file shadows the stdlib `select` module (which subprocess imports) when run as a
# script: take its own directory off sys.path first.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import subprocess  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

METHODS = {
    "seal": """
        from seal_core.selection import SelectConfig, select
        select(SCORES, POOL, OUT, SelectConfig(top_k=K, export="none", progress=False))
    """,
    "seal+jsonl": """
        from seal_core.selection import SelectConfig, select
        select(SCORES, POOL, OUT, SelectConfig(top_k=K, export="messages", progress=False))
    """,
    "pandas": """
        import os
        import pandas as pd
        backend = os.environ.get("BENCH_PANDAS_BACKEND", "numpy_nullable")
        kw = {"dtype_backend": "pyarrow"} if backend == "pyarrow" else {}
        s = pd.read_parquet(SCORES, columns=["sample_id", "score"], **kw)
        top = s.sort_values(["score", "sample_id"], ascending=[False, True]).head(K)[["sample_id"]]
        pool = pd.read_parquet(POOL, **kw)
        sel = top.merge(pool, on="sample_id", how="left")  # keeps the left (rank) order
        os.makedirs(OUT, exist_ok=True)
        sel.to_parquet(os.path.join(OUT, "selected.parquet"), index=False)
    """,
}


def generate(work: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from seal_core.ranker.scores import SCORES_SCHEMA
    from seal_core.schema import CANONICAL_SCHEMA

    scores_path, pool_path = work / f"scores-{n}.parquet", work / f"pool-{n}.parquet"
    if scores_path.exists() and pool_path.exists():
        return scores_path, pool_path
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n, 12), dtype=np.uint8)
    hexd = np.frombuffer(b"0123456789abcdef", np.uint8)
    h = np.empty((n, 24), np.uint8)
    h[:, 0::2], h[:, 1::2] = hexd[raw >> 4], hexd[raw & 15]
    del raw
    ids_s = h.view("S24").ravel()

    def strings(fixed: np.ndarray) -> pa.Array:
        w = fixed.dtype.itemsize
        offsets = pa.py_buffer(np.arange(0, w * (len(fixed) + 1), w, dtype=np.int32))
        return pa.StringArray.from_buffers(len(fixed), offsets, pa.py_buffer(fixed.tobytes()))

    # ~100k distinct values: about n/100k samples share each score, so ties matter at any k.
    score = rng.integers(0, 100_000, n) / 1000.0
    order = np.lexsort((ids_s, -score))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(1, n + 1)
    t = pa.table({"sample_id": strings(ids_s[order]), "score": score[order], "rank": rank[order],
                  "weight": np.full(n, np.nan), "loss": np.full(n, np.nan)}, schema=SCORES_SCHEMA)
    pq.write_table(t, scores_path, row_group_size=1 << 20)
    del t, order, rank, score

    perm = rng.permutation(n)
    ids = strings(ids_s[perm])
    del perm, ids_s, h
    roles = pa.array(["user", "assistant"]).take(pa.array(np.tile(np.array([0, 1], np.int8), n)))
    # Contents interleaved: user i at 2i, assistant i at 2i+1.
    users = pc.binary_join_element_wise("please answer question ", ids, "")
    answers = pc.binary_join_element_wise("here is a short answer to ", ids, "")
    idx = np.empty(2 * n, np.int64)
    idx[0::2], idx[1::2] = np.arange(n), np.arange(n) + n
    contents = pa.concat_arrays([users, answers]).take(pa.array(idx))
    del users, answers, idx
    msgs = pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)),
                                    pa.StructArray.from_arrays([roles, contents], names=["role", "content"]))
    src = pa.array(["bench.jsonl"]).take(pa.array(np.zeros(n, np.int8)))
    meta = pa.array(["{}"]).take(pa.array(np.zeros(n, np.int8)))
    pool = pa.Table.from_arrays([ids, msgs, src, meta], schema=CANONICAL_SCHEMA)
    pq.write_table(pool, pool_path, row_group_size=100_000)
    return scores_path, pool_path


# The child reports its own peak RSS: a child's ru_maxrss from wait4 also counts the
# parent's pages it shared between fork and exec.
_EPILOGUE = """
with open("/proc/self/status") as _f:
    _hwm = next(int(l.split()[1]) for l in _f if l.startswith("VmHWM:"))
import sys as _sys
print(f"VmHWM_KB={_hwm}", file=_sys.stderr)
"""


def run_one(method: str, scores: Path, pool: Path, out: Path, k: int, timeout: float, env: dict) -> dict:
    code = textwrap.dedent(METHODS[method]) + _EPILOGUE
    prelude = f"SCORES, POOL, OUT, K = {str(scores)!r}, {str(pool)!r}, {str(out)!r}, {k}\n"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", prelude + code], env=env, cwd=ROOT,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    deadline = t0 + timeout
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            pid, status, ru = os.wait4(proc.pid, 0)
            return {"method": method, "error": f"timed out after {timeout:.0f}s"}
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace").strip()
    code_ = os.waitstatus_to_exitcode(status)
    if code_ != 0:
        return {"method": method, "error": f"exit {code_}: {err.splitlines()[-1] if err else ''}", "wall_s": wall}
    hwm = [int(x.split("=")[1]) for x in err.splitlines() if x.startswith("VmHWM_KB=")]
    return {"method": method, "wall_s": wall, "peak_rss_mb": hwm[-1] / 1024 if hwm else float("nan")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--keep", type=float, default=0.8, help="fraction kept (k = keep * rows)")
    ap.add_argument("--methods", default="seal,seal+jsonl,pandas")
    ap.add_argument("--pandas-backend", choices=["numpy_nullable", "pyarrow"], default="numpy_nullable",
                    help="pandas dtype backend (default: pandas' default conversion)")
    ap.add_argument("--workdir", default=str(ROOT / "bench" / "out" / "select"))
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--repeat", type=int, default=1, help="rounds; the table shows each method's fastest")
    ap.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    work = Path(args.workdir)
    t = time.perf_counter()
    if args.generate_only:
        generate(work, args.rows)
        return 0
    # Generated in a child so that this process stays small while it launches the runs.
    subprocess.run([sys.executable, __file__, "--generate-only", "--rows", str(args.rows), "--workdir", str(work)],
                   check=True, cwd=ROOT)
    scores, pool = generate(work, args.rows)  # returns the existing files
    print(f"data: {args.rows:,} scored rows, pool {pool.stat().st_size / 2**20:.0f} MiB on disk "
          f"(generated/reused in {time.perf_counter() - t:.1f}s); k = {int(args.keep * args.rows):,}; "
          f"{os.cpu_count()} CPUs", flush=True)
    k = int(args.keep * args.rows)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_PANDAS_BACKEND": args.pandas_backend}
    methods = args.methods.split(",")
    best: dict[str, dict] = {}
    # Rounds interleave the methods so that load from other processes hits them alike;
    # the table keeps each method's fastest round and its highest peak RSS.
    for rnd in range(args.repeat):
        for m in methods:
            r = run_one(m, scores, pool, work / f"out-{m}", k, args.timeout, env)
            print(f"  round {rnd + 1} {m}: {r}", file=sys.stderr, flush=True)
            b = best.setdefault(m, r)
            if "error" in r or "error" in b:
                best[m] = r if "error" in r else b
            else:
                b["wall_s"] = min(b["wall_s"], r["wall_s"])
                b["peak_rss_mb"] = max(b["peak_rss_mb"], r["peak_rss_mb"])
    results = [best[m] for m in methods]
    import pyarrow as pa
    import pyarrow.parquet as pq

    outs = {r["method"]: work / f"out-{r['method']}" / "selected.parquet" for r in results if "error" not in r}
    ref = None
    for m, p in outs.items():
        col = pq.read_table(p, columns=["sample_id"]).column(0).cast(pa.large_string())
        if ref is None:
            ref, ref_m = col, m
        else:
            same = col.equals(ref)
            print(f"check: {m} selects {'the same ids in the same order as' if same else 'DIFFERENT ids than'} {ref_m}")
    print()
    print(f"| method | rows | wall s (best of {args.repeat}) | rows/s | peak RSS MiB |")
    print(f"|---|---:|---:|---:|---:|")
    for r in results:
        if "error" in r:
            print(f"| {r['method']} | {args.rows:,} | - | - | - | ({r['error']})")
        else:
            print(f"| {r['method']} | {args.rows:,} | {r['wall_s']:.1f} | {args.rows / r['wall_s']:,.0f} | "
                  f"{r['peak_rss_mb']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
