"""End to end through a real Prefect server: pools, `prefect deploy --all`, a process worker, a run.

This is the path a user takes in docs/orchestration.md, with the smoke config passed as a
parameter so that it finishes in about a minute. Ranker training goes to the `seal-gpu` pool
(the `rank/gpu` deployment, through run_deployment) and exchanges its files over a file://
fsspec URL, as it would over s3:// between machines. Every process started here is stopped at
the end, whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 420


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, name: str) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        # No scheduled runs of curate/nightly may start while the test runs (hermetic, whatever the hour).
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        # Workers and flow-run processes import flows/, tasks/ and seal_core/ from this checkout
        # (an installed checkout has them on the path already).
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        PWD=str(ROOT),  # prefect.yaml's pull step resolves {{ $PWD }} when deploying
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return {"env": env, "home": home, "port": port, "url": env["PREFECT_API_URL"]}


def _prefect(args: list[str], env: dict, timeout: float = 120) -> str:
    proc = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"prefect {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def _wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"prefect server exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"prefect server not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


def _logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name} ---\n{p.read_text()[-4000:]}" for p in sorted(tmp_path.glob("worker-*.log")))


def test_deploy_and_run_curate_demo(prefect_env, tmp_path):
    import httpx

    env, url = prefect_env["env"], prefect_env["url"]
    procs: list[tuple[subprocess.Popen, str]] = []
    server_log = tmp_path / "server.log"
    try:
        with open(server_log, "w") as fh:
            server = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                 "--port", str(prefect_env["port"])],
                cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append((server, "server"))
        _wait_healthy(url, server, server_log)

        for pool in ("seal-cpu", "seal-gpu"):
            _prefect(["work-pool", "create", pool, "--type", "process"], env)
        _prefect(["gcl", "create", "gpu", "--limit", "1"], env)
        out = _prefect(["--no-prompt", "deploy", "--all"], env, timeout=180)
        for name in ("curate/nightly", "curate/demo", "rank/gpu", "finetune/gpu"):
            assert name in out, out

        workers = []
        for pool in ("seal-cpu", "seal-gpu"):
            with open(tmp_path / f"worker-{pool}.log", "w") as fh:
                w = subprocess.Popen(
                    [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"],
                    cwd=tmp_path, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
            procs.append((w, f"worker {pool}"))
            workers.append(w)

        run_dir = tmp_path / "run"
        exchange = tmp_path / "exchange"
        params = {"config": "configs/smoke.yaml",
                  "overrides": [f"run_dir={run_dir}", "workers.rank_pool=seal-gpu", f"workers.storage=file://{exchange}"]}
        out = _prefect(["deployment", "run", "curate/demo", "--params", json.dumps(params)], env)
        m = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
        assert m, out
        run_id = m.group(1)

        client = httpx.Client(base_url=url, timeout=10)
        deadline = time.time() + RUN_TIMEOUT
        state = None
        while time.time() < deadline:
            for w in workers:
                assert w.poll() is None, f"a worker exited:\n{_logs(tmp_path)}"
            state = client.get(f"/flow_runs/{run_id}").json()["state"]
            if state and state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(2)
        assert state and state["type"] == "COMPLETED", (
            f"run ended {state}\n{_logs(tmp_path)}")

        arts = client.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}).json()
        by_key = {a["key"]: a for a in arts if a.get("key")}
        assert by_key["seal-summary"]["type"] == "markdown"
        assert "Selected" in by_key["seal-summary"]["data"] and "AUROC" in by_key["seal-summary"]["data"]
        assert by_key["seal-scores-extremes"]["type"] == "table"
        # Prefect stores a link artifact as Markdown: [text](url).
        link = re.search(r"\]\((.+)\)", by_key["seal-scores"]["data"])
        assert link and link.group(1) == (run_dir / "rank" / "scores.parquet").resolve().as_uri()
        # Progress artifacts live in the stage subflow runs; training finished, so they read 100%.
        prog = client.post("/artifacts/filter", json={"artifacts": {"key": {"any_": ["rank-progress"]}}}).json()
        assert prog and prog[0]["type"] == "progress" and float(prog[0]["data"]) == pytest.approx(100.0)

        # The rank stage ran as its own deployment run on the GPU pool, a child of the curate run.
        children = client.post("/flow_runs/filter", json={"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}}).json()
        remote = [r for r in children if r.get("deployment_id")]
        assert len(remote) == 1 and remote[0]["state"]["type"] == "COMPLETED"
        assert client.get(f"/deployments/{remote[0]['deployment_id']}").json()["work_pool_name"] == "seal-gpu"
        assert any(exchange.rglob("scores.parquet"))  # published by the GPU side, fetched back

        scores = pq.read_table(run_dir / "rank" / "scores.parquet")
        assert scores.column_names[:3] == ["sample_id", "score", "rank"]
        assert scores.num_rows == 64
        assert sorted(scores.column("rank").to_pylist()) == list(range(1, 65))
        assert (run_dir / "report.md").exists()
        # Every GPU stage held, then released, its slot of the `gpu` limit.
        gcl = client.get("/v2/concurrency_limits/gpu").json()
        assert gcl["limit"] == 1 and gcl["active_slots"] == 0
    finally:
        for proc, _name in reversed(procs):
            _stop(proc, _name)
