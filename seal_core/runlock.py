"""One writer per run directory.

Two runs writing one output directory (a rerun started while a scheduled one still
trains, two workers given the same path) would interleave checkpoints and logs. Each
stage therefore holds ``OUT/.seal.lock`` while it writes: a JSON file naming the host,
pid and start time of its holder, created with ``O_EXCL`` so only one run can make it.
A lock left by a dead process on this host (a killed or pre-empted worker) is taken
over with a warning; one held by a live process, or by another host (whose processes
cannot be checked from here), stops the new run at once with an error naming it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import sys
from pathlib import Path
from typing import Iterator, Optional

from .errors import SealError

LOCK_NAME = ".seal.lock"


class RunDirLocked(SealError):
    """Another live run holds the directory."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _read_holder(path: Path) -> Optional[dict]:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return holder if isinstance(holder, dict) else None
    except (OSError, ValueError):
        return None


def _describe(holder: Optional[dict]) -> str:
    if not holder:
        return "an unknown process (unreadable lock file)"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"


@contextlib.contextmanager
def run_lock(out_dir: str | os.PathLike, name: str = LOCK_NAME) -> Iterator[Path]:
    """Hold ``out_dir``'s lock for the duration of the block; released however the block ends.

    ``name``: the lock file's name; a stage whose output is one file locks that file alone
    (``.NAME.lock`` beside it), so outputs that share a folder do not exclude each other.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_holder(path)
            stale = (holder is not None and holder.get("host") == me["host"] and isinstance(holder.get("pid"), int)
                     and holder["pid"] != me["pid"] and not _pid_alive(holder["pid"]))
            if not stale:
                raise RunDirLocked(f"{out} is in use by {_describe(holder)} (lock file {path}); wait for that run, "
                                   "or delete the lock file if it is gone") from None
            print(f"warning: taking over the lock of {out} from {_describe(holder)}, which is no longer running",
                  file=sys.stderr)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(me, fh)
        break
    else:
        raise RunDirLocked(f"{out}: could not take the lock file {path}")
    try:
        yield path
    finally:
        if (_read_holder(path) or {}).get("pid") == me["pid"]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
