"""Ingestion throughput and peak memory vs pandas.read_json(lines=True).

Generates N rows (default 1M) of ~1 KB OpenAI-messages JSONL in a temporary
directory, then runs, each in its own subprocess so peak RSS is measured
separately: ``seal_core.ingest.ingest`` and ``pandas.read_json(lines=True)``
on the same file. Prints a table of rows/s and peak RSS.

    python bench/ingest.py                 # 1M rows (~1 GB file)
    python bench/ingest.py --rows 100000   # quick check

Targets: >= 50k rows/s on one core, peak RSS < 1 GB, faster than pandas.
"""

from __future__ import annotations

import os
import sys

# Python puts this script's folder first on sys.path; bench/ holds scripts named
# like stdlib modules (select.py), which would shadow them for the imports below.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

WORDS = (
    "the model data safety answer question user assistant train sample quality ranker select prompt "
    "response token batch loss gradient weight learning rate epoch step value score harmful helpful "
    "refuse explain because which where when there their about would could should python code list"
).split()

CHILD_OURS = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from seal_core.ingest import IngestConfig, ingest
ru0 = resource.getrusage(resource.RUSAGE_SELF)
cpu0 = ru0.ru_utime + ru0.ru_stime
t0 = time.perf_counter()
r = ingest([{path!r}], {out!r}, IngestConfig(progress=False))
dt = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"seconds": dt, "rows": r.kept, "read": r.rows_read, "cpu": ru.ru_utime + ru.ru_stime - cpu0,
                  "maxrss_kb": ru.ru_maxrss}}))
"""

CHILD_PANDAS = """
import json, resource, time
import pandas as pd
ru0 = resource.getrusage(resource.RUSAGE_SELF)
cpu0 = ru0.ru_utime + ru0.ru_stime
t0 = time.perf_counter()
df = pd.read_json({path!r}, lines=True{extra})
dt = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"seconds": dt, "rows": len(df), "read": len(df), "cpu": ru.ru_utime + ru.ru_stime - cpu0,
                  "maxrss_kb": ru.ru_maxrss}}))
"""


def _text(rng: random.Random, n_chars: int) -> str:
    words = []
    size = 0
    while size < n_chars:
        w = rng.choice(WORDS)
        words.append(w)
        size += len(w) + 1
    return " ".join(words)


def generate(path: Path, rows: int, row_bytes: int, seed: int = 0) -> None:
    import orjson

    rng = random.Random(seed)
    with open(path, "wb") as fh:
        buf = []
        for i in range(rows):
            pairs = rng.choice((1, 1, 1, 2))
            budget = max(80, row_bytes - 120) // (2 * pairs)
            msgs = []
            if i % 10 == 0:
                msgs.append({"role": "system", "content": "You are a helpful assistant."})
            for _ in range(pairs):
                q = max(10, int(budget * 0.4))
                msgs.append({"role": "user", "content": f"#{i} " + _text(rng, q)})
                msgs.append({"role": "assistant", "content": _text(rng, 2 * budget - q)})
            buf.append(orjson.dumps({"id": f"row-{i:08d}", "messages": msgs, "lang": "en"}))
            if len(buf) >= 10_000:
                fh.write(b"\n".join(buf) + b"\n")
                buf = []
        if buf:
            fh.write(b"\n".join(buf) + b"\n")


def run_child(code: str) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"child failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall"] = wall
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows to generate")
    ap.add_argument("--row-bytes", type=int, default=1000, help="approximate bytes per JSONL row")
    ap.add_argument("--workdir", help="where to write the data (default: a temporary directory, removed after)")
    ap.add_argument("--skip-pandas", action="store_true", help="only measure our ingest")
    ap.add_argument("--pandas-pyarrow", action="store_true", help="also measure read_json(engine='pyarrow')")
    args = ap.parse_args(argv)

    tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="seal-bench-ingest-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        data = tmp / "pool.jsonl"
        t0 = time.perf_counter()
        generate(data, args.rows, args.row_bytes)
        size = data.stat().st_size
        print(f"generated {args.rows:,} rows, {size / 1e6:,.0f} MB ({size / args.rows:,.0f} B/row) "
              f"in {time.perf_counter() - t0:.1f}s: {data}", file=sys.stderr)
        try:
            load = os.getloadavg()
            print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs",
                  file=sys.stderr)
        except OSError:
            pass

        results = [("seal ingest (stream -> Parquet)", run_child(CHILD_OURS.format(root=str(ROOT), path=str(data),
                                                                              out=str(tmp / "out"))))]
        if not args.skip_pandas:
            results.append(("pandas.read_json(lines=True)", run_child(CHILD_PANDAS.format(path=str(data), extra=""))))
            if args.pandas_pyarrow:
                results.append(("pandas.read_json(engine=pyarrow)",
                                run_child(CHILD_PANDAS.format(path=str(data), extra=", engine='pyarrow'"))))

        print()
        print(f"{'method':<34} {'rows':>10} {'wall s':>7} {'rows/s':>9} {'CPU s':>6} {'rows/CPU-s':>10} "
              f"{'peak RSS MB':>11}")
        print("-" * 93)
        for name, r in results:
            print(f"{name:<34} {r['rows']:>10,} {r['seconds']:>7.1f} {r['rows'] / r['seconds']:>9,.0f} "
                  f"{r['cpu']:>6.1f} {r['rows'] / r['cpu']:>10,.0f} {r['maxrss_kb'] / 1024:>11,.0f}")
        ours = results[0][1]
        rate, cpu_rate = ours["rows"] / ours["seconds"], ours["rows"] / ours["cpu"]
        rss_mb = ours["maxrss_kb"] / 1024
        print()
        print(f"targets: >= 50,000 rows/s: {'ok' if rate >= 50_000 else 'MISSED'} ({rate:,.0f} wall, "
              f"{cpu_rate:,.0f} per CPU-second); peak RSS < 1024 MB: {'ok' if rss_mb < 1024 else 'MISSED'} "
              f"({rss_mb:,.0f} MB)")
        if not args.skip_pandas:
            base = results[1][1]
            print(f"vs pandas: {base['seconds'] / ours['seconds']:.2f}x wall, {base['cpu'] / ours['cpu']:.2f}x CPU "
                  f"({'faster' if ours['seconds'] < base['seconds'] else 'SLOWER'} by wall clock)")
        try:
            load = os.getloadavg()
            print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", file=sys.stderr)
        except OSError:
            pass
    finally:
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
