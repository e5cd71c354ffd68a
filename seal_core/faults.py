"""Named kill points, for the crash tests.

``SEAL_KILL_AT="write:scores.parquet"`` (or ``"step:3"``, several separated by commas)
makes the process SIGKILL itself the n-th time (default the first) it reaches that point,
so a test can stop a real stage exactly while it writes an output or between two training
steps, then check that nothing half-written is visible and that a rerun ends with the
same bytes. Unset, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

_ENV = "SEAL_KILL_AT"
_lock = threading.Lock()
_hits: dict[str, int] = {}
_plan: dict[str, int] | None = None


def _parse(spec: str) -> dict[str, int]:
    plan = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, count = item.rpartition(":") if item.rsplit(":", 1)[-1].isdigit() else (item, "", "1")
        plan[name] = int(count)
    return plan


def fault_point(name: str) -> None:
    """SIGKILL this process if ``SEAL_KILL_AT`` names ``name`` and this is its n-th hit."""
    global _plan
    if _plan is None:
        _plan = _parse(os.environ.get(_ENV, ""))
    if name not in _plan:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        if _hits[name] == _plan[name]:
            os.kill(os.getpid(), signal.SIGKILL)
