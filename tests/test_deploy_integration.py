"""End to end through a real Prefect server: pools, `prefect deploy --all`, process workers, runs.

This is the path a user takes in docs/orchestration.md, with the smoke config passed as a
parameter so that a run finishes in about a minute. Ranker training goes to the `seal-gpu` pool
(the `rank/gpu` deployment, through run_deployment) and exchanges its files over a file://
fsspec URL, as it would over s3:// between machines. One server (with the pools, the `gpu`
limit and the deployments) serves every test here; each test starts its own workers. Every
process started here is stopped at the end, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import psutil  # a dependency of peft, hence always installed
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 420
FINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _signal_groups(pids: Iterable[int], sig: int) -> None:
    """Send ``sig`` to the process group of each pid (never to this test's own group)."""
    own = os.getpgid(0)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            if (group := os.getpgid(pid)) != own:
                os.killpg(group, sig)


def _running(proc: psutil.Process) -> bool:
    """True while ``proc`` runs (a zombie has exited; only its parent has not collected it yet)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until each process has exited; returns those still running after ``timeout`` s."""
    deadline = time.time() + timeout
    alive = [p for p in procs if _running(p)]
    while alive and time.time() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if _running(p)]
    return alive


def _descendants(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return psutil.Process(pid).children(recursive=True)
    return []


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM ``proc``'s process group (SIGKILL after 20 s), then whatever it started in sessions of
    its own: a process worker starts each flow run in a new session, out of reach of its group."""
    started = _descendants(proc.pid)
    if proc.poll() is None:
        _signal_groups([proc.pid], signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            _signal_groups([proc.pid], signal.SIGKILL)
            proc.wait(timeout=10)
    alive = _wait_gone(started, timeout=10)
    _signal_groups([p.pid for p in alive], signal.SIGKILL)
    _wait_gone(alive, timeout=10)


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


def _server_env(home: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        # No scheduled runs of curate/nightly may start while the tests run (hermetic, whatever the hour).
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
    return env


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A Prefect server on loopback with both pools, the `gpu` limit and every deployment of prefect.yaml."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = _server_env(home, port)
    log = home / "server.log"
    with open(log, "w") as fh:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(env["PREFECT_API_URL"], server, log)
        for pool in ("seal-cpu", "seal-gpu"):
            _prefect(["work-pool", "create", pool, "--type", "process"], env)
        _prefect(["gcl", "create", "gpu", "--limit", "1"], env)
        out = _prefect(["--no-prompt", "deploy", "--all"], env, timeout=180)
        for name in ("curate/nightly", "curate/demo", "rank/gpu", "finetune/gpu"):
            assert name in out, out
        yield {"env": env, "url": env["PREFECT_API_URL"]}
    finally:
        _stop(server)


@pytest.fixture
def start_worker(prefect_server, tmp_path):
    """Starts a process worker on a pool (logging to ``tmp_path/worker-<name>.log``); all are stopped at the end.

    Workers get ``tmp_path/tmp`` as TMPDIR, so the scratch space of remote stages (``flows.common.localized``)
    lies under the test's directory.
    """
    env = {**prefect_server["env"], "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    started: list[subprocess.Popen] = []

    def start(pool: str, name: str = "") -> subprocess.Popen:
        with open(tmp_path / f"worker-{name or pool}.log", "w") as fh:
            started.append(subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"],
                cwd=tmp_path, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True))
        return started[-1]

    yield start
    for proc in reversed(started):
        _stop(proc)


def _logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name} ---\n{p.read_text()[-4000:]}" for p in sorted(tmp_path.glob("worker-*.log")))


def _run_curate(env: dict, tmp_path: Path, *overrides: str) -> tuple[str, Path, Path]:
    """Start curate/demo on the smoke config with rank on seal-gpu; returns (flow run id, run_dir, exchange)."""
    run_dir, exchange = tmp_path / "run", tmp_path / "exchange"
    params = {"config": "configs/smoke.yaml",
              "overrides": [f"run_dir={run_dir}", "workers.rank_pool=seal-gpu", f"workers.storage=file://{exchange}",
                            *overrides]}
    out = _prefect(["deployment", "run", "curate/demo", "--params", json.dumps(params)], env)
    m = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    assert m, out
    return m.group(1), run_dir, exchange


def _wait(done: Callable[[], bool], workers: list[subprocess.Popen], tmp_path: Path, what: str,
          timeout: float = RUN_TIMEOUT, interval: float = 2) -> None:
    """Poll ``done`` until it is true, failing at once if a worker exits and after ``timeout`` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for w in workers:
            assert w.poll() is None, f"a worker exited while waiting for {what}:\n{_logs(tmp_path)}"
        if done():
            return
        time.sleep(interval)
    raise AssertionError(f"no {what} after {timeout} s\n{_logs(tmp_path)}")


def _wait_final(client, run_id: str, workers: list[subprocess.Popen], tmp_path: Path) -> dict:
    """The flow run's state once it is final."""
    states: list[dict] = []

    def final() -> bool:
        states.append(client.get(f"/flow_runs/{run_id}").json()["state"])
        return bool(states[-1]) and states[-1]["type"] in FINAL_STATES

    _wait(final, workers, tmp_path, f"final state of flow run {run_id} (last: {states[-1:]})")
    return states[-1]


def _remote_children(client, run_id: str) -> list[dict]:
    """The deployment runs (remote stages) started by flow run ``run_id``."""
    children = client.post("/flow_runs/filter", json={"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}}).json()
    return [r for r in children if r.get("deployment_id")]


def _check_scores(run_dir: Path) -> None:
    scores = pq.read_table(run_dir / "rank" / "scores.parquet")
    assert scores.column_names[:3] == ["sample_id", "score", "rank"]
    assert scores.num_rows == 64
    assert sorted(scores.column("rank").to_pylist()) == list(range(1, 65))


def test_deploy_and_run_curate_demo(prefect_server, start_worker, tmp_path):
    import httpx

    env, url = prefect_server["env"], prefect_server["url"]
    workers = [start_worker(pool) for pool in ("seal-cpu", "seal-gpu")]
    run_id, run_dir, exchange = _run_curate(env, tmp_path)

    client = httpx.Client(base_url=url, timeout=10)
    state = _wait_final(client, run_id, workers, tmp_path)
    assert state["type"] == "COMPLETED", f"run ended {state}\n{_logs(tmp_path)}"

    arts = client.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}).json()
    by_key = {a["key"]: a for a in arts if a.get("key")}
    assert by_key["seal-summary"]["type"] == "markdown"
    assert "Selected" in by_key["seal-summary"]["data"] and "AUROC" in by_key["seal-summary"]["data"]
    assert by_key["seal-scores-extremes"]["type"] == "table"
    # Prefect stores a link artifact as Markdown: [text](url).
    link = re.search(r"\]\((.+)\)", by_key["seal-scores"]["data"])
    assert link and link.group(1) == (run_dir / "rank" / "scores.parquet").resolve().as_uri()

    # The rank stage ran as its own deployment run on the GPU pool, a child of the curate run.
    remote = _remote_children(client, run_id)
    assert len(remote) == 1 and remote[0]["state"]["type"] == "COMPLETED"
    assert client.get(f"/deployments/{remote[0]['deployment_id']}").json()["work_pool_name"] == "seal-gpu"
    assert any(exchange.rglob("scores.parquet"))  # published by the GPU side, fetched back
    # Progress artifacts live in the stage subflow runs; training finished, so they read 100%.
    prog = client.post("/artifacts/filter", json={"artifacts": {"key": {"any_": ["rank-progress"]},
                                                                "flow_run_id": {"any_": [remote[0]["id"]]}}}).json()
    assert prog and prog[0]["type"] == "progress" and float(prog[0]["data"]) == pytest.approx(100.0)

    _check_scores(run_dir)
    assert (run_dir / "report.md").exists()
    # Every GPU stage held, then released, its slot of the `gpu` limit.
    gcl = client.get("/v2/concurrency_limits/gpu").json()
    assert gcl["limit"] == 1 and gcl["active_slots"] == 0


def _kill_worker(worker: subprocess.Popen) -> None:
    """SIGKILL a worker's process group and the flow runs it started (each in a session of its own),
    as a machine losing power would: nothing gets to report a state or release a lock."""
    tree = [psutil.Process(worker.pid), *_descendants(worker.pid)]
    assert len(tree) > 1, "the worker runs no flow run"
    _signal_groups([p.pid for p in tree], signal.SIGKILL)
    worker.wait(timeout=10)
    assert not _wait_gone(tree[1:], timeout=20), "the killed worker's flow run outlived it"


# About two minutes with its teardown; the kill-and-resume of a rank stage itself stays in the default
# run (tests/test_kill_resume.py), this adds the worker process around it.
@pytest.mark.slow
def test_killed_gpu_worker_resumes_rank_from_checkpoint(prefect_server, start_worker, tmp_path):
    import httpx

    from seal_core.training.checkpoint import load_checkpoint

    env, url = prefect_server["env"], prefect_server["url"]
    client = httpx.Client(base_url=url, timeout=10)
    cpu, gpu = start_worker("seal-cpu"), start_worker("seal-gpu")
    # 64 samples in batches of 8 for 3 epochs: 24 steps (0.2 to 3 s each on 2 CPU cores), a checkpoint every 2.
    epochs, total = 3, 24
    run_id, run_dir, exchange = _run_curate(env, tmp_path, f"rank.epochs={epochs}", "rank.checkpoint_every=2")

    # The GPU side trains in its scratch copy of the rank output (flows.common.localized) under TMPDIR.
    scratch = tmp_path / "tmp" / "seal-remote"
    logs: list[Path] = []

    def trained_a_while() -> bool:
        logs[:] = list(scratch.glob("*/out/train_log.jsonl"))
        checkpointed = bool(logs) and (logs[0].parent / "checkpoints" / "last.safetensors").exists()
        if checkpointed and len(logs[0].read_text().splitlines()) >= 4:
            return True
        state = client.get(f"/flow_runs/{run_id}").json()["state"]
        assert state["type"] not in FINAL_STATES, f"the run ended before the kill: {state}\n{_logs(tmp_path)}"
        return False

    _wait(trained_a_while, [cpu, gpu], tmp_path, "ranker training with a checkpoint", interval=0.1)
    (child,) = _remote_children(client, run_id)
    assert child["state"]["type"] == "RUNNING"
    _kill_worker(gpu)

    out = logs[0].parent
    logged = len(logs[0].read_text().splitlines())
    assert logged < total, f"training finished before the kill; make it longer\n{_logs(tmp_path)}"
    step = load_checkpoint(out / "checkpoints" / "last.safetensors")["step"]
    assert 2 <= step <= logged and (out / ".seal.lock").exists()
    assert client.get(f"/flow_runs/{child['id']}").json()["state"]["type"] == "RUNNING"  # nobody reports the crash
    # The dead run's slot of `gpu` would come back only when its lease expires (300 s); the operator frees it.
    assert client.get("/v2/concurrency_limits/gpu").json()["active_slots"] == 1
    _prefect(["gcl", "update", "gpu", "--active-slots", "0"], env)

    new_gpu = start_worker("seal-gpu", "seal-gpu-2")
    # Retry the rank run as the UI's Retry does: the same flow run goes back to Scheduled/AwaitingRetry and the
    # pool's (new) worker picks it up. It goes there straight from Running: marking it Crashed first would let
    # the curate run, whose run_deployment polls the child every 5 s, see a final state and fail.
    answer = client.post(f"/flow_runs/{child['id']}/set_state",
                         json={"state": {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the UI"},
                               "force": False}).json()
    assert answer["status"] == "ACCEPT", answer

    state = _wait_final(client, run_id, [cpu, new_gpu], tmp_path)
    assert state["type"] == "COMPLETED", f"run ended {state}\n{_logs(tmp_path)}"
    (retried,) = _remote_children(client, run_id)
    assert retried["id"] == child["id"] and retried["state"]["type"] == "COMPLETED" and retried["run_count"] == 2

    worker_log = (tmp_path / "worker-seal-gpu-2.log").read_text()
    assert f"rank[seal]: resuming from step {step} (" in worker_log, _logs(tmp_path)
    assert "taking over the lock" in worker_log
    published = list(exchange.rglob("train_log.jsonl"))
    assert len(published) == 1
    steps = [json.loads(line)["step"] for line in published[0].read_text().splitlines()]
    assert steps == list(range(1, total + 1))
    _check_scores(run_dir)
    assert client.get("/v2/concurrency_limits/gpu").json()["active_slots"] == 0
