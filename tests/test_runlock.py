"""seal_core.runlock: one writer per run directory; stale locks of dead processes are taken over."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from seal_core.runlock import LOCK_NAME, RunDirLocked, run_lock


def test_lock_is_held_then_released(tmp_path):
    with run_lock(tmp_path / "out") as path:
        holder = json.loads(path.read_text())
        assert holder["host"] == socket.gethostname() and isinstance(holder["pid"], int)
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_second_writer_fails_at_once_naming_the_holder(tmp_path):
    # A live process elsewhere holds the directory.
    code = ("import sys, time; from seal_core.runlock import run_lock\n"
            "with run_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunDirLocked, match=rf"in use by pid {proc.pid} on {socket.gethostname()}"):
            with run_lock(tmp_path):
                pass
    finally:
        proc.kill()
        proc.wait()
    # Once that process is dead (SIGKILL: it never released), its lock is stale and is taken over.
    assert (tmp_path / LOCK_NAME).exists()
    with run_lock(tmp_path) as path:
        assert json.loads(path.read_text())["pid"] != proc.pid


def test_stale_lock_takeover_warns(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "started": "x"}))
    with run_lock(tmp_path):
        pass
    assert "taking over the lock" in capsys.readouterr().err


def test_lock_of_another_host_is_not_taken(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "t"}))
    with pytest.raises(RunDirLocked, match="pid 1 on elsewhere"):
        with run_lock(tmp_path):
            pass
    assert (tmp_path / LOCK_NAME).exists()


@pytest.mark.parametrize("stage", ["rank", "finetune", "generate"])
def test_stages_refuse_a_directory_another_run_holds(tmp_path, stage):
    import os

    from seal_core.finetune import FinetuneConfig, finetune
    from seal_core.generate import GenerateConfig, generate
    from seal_core.ranker.config import RankConfig
    from seal_core.ranker.run import rank

    live = {"host": socket.gethostname(), "pid": os.getppid(), "started": "t"}
    out = tmp_path / "out"
    out.mkdir()
    if stage == "generate":
        (out / ".gen.jsonl.lock").write_text(json.dumps(live))
        call = lambda: generate(GenerateConfig(prompts=str(tmp_path / "p.jsonl"), out=str(out / "gen.jsonl")))
    else:
        (out / LOCK_NAME).write_text(json.dumps(live))
        call = {"rank": lambda: rank(RankConfig(pool=str(tmp_path / "missing.jsonl"), out=str(out))),
                "finetune": lambda: finetune(FinetuneConfig(data=str(tmp_path / "missing.jsonl"), out=str(out)))}[stage]
    # The lock is checked before any input is read: the missing input is never reported.
    with pytest.raises(RunDirLocked, match=f"pid {os.getppid()}"):
        call()
