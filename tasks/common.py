"""What every stage task shares: retries, caching, the GPU slot and progress artifacts.

Every stage task is made from its declaration in ``seal_core.stages`` (see ``tasks.stages``), so
these policies stay generic: the cache key is built from the stage's config (paths included), its
code and the content of the files its declaration names as inputs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext

from seal_core.errors import SealError
from seal_core.stages import Stage

from .storage import fingerprint

log = logging.getLogger("seal.tasks")

# Not transient: retrying cannot make a missing file appear or a permission appear.
_PERMANENT_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def is_transient(exc: BaseException | None) -> bool:
    """True for errors worth retrying: I/O hiccups and judge endpoint failures.

    A :class:`SealError` means the user's input or config is wrong, so it is never retried, except
    the judge's own error (raised after its client gave up on timeouts, 429s and 5xx answers).
    """
    if exc is None:
        return False
    from seal_core.evaluation.judges import JudgeError

    if isinstance(exc, JudgeError):
        return True
    if isinstance(exc, SealError):
        return False
    try:
        import httpx

        if isinstance(exc, httpx.TransportError):
            return True
        if isinstance(exc, httpx.HTTPStatusError):
            return exc.response.status_code == 429 or exc.response.status_code >= 500
    except ImportError:  # pragma: no cover - httpx comes with prefect
        pass
    if isinstance(exc, _PERMANENT_OS_ERRORS):
        return False
    return isinstance(exc, (OSError, TimeoutError, ConnectionError))


def retry_on_transient(task, task_run, state) -> bool:
    """``retry_condition_fn`` for stage tasks: retry only :func:`is_transient` failures."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as e:  # the result itself could not be read: that is an I/O problem
        exc = e
    return isinstance(exc, BaseException) and is_transient(exc)


@dataclass
class InputFingerprints(CachePolicy):
    """Cache key part: content fingerprints of every file the stage's config names as an input.

    Paths alone are not enough: a rerun after the data changed under the same name must recompute.
    """

    stage: Optional[Stage] = None

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> Optional[str]:
        from prefect.utilities.hashing import hash_objects

        files = self.stage.inputs((inputs or {})["config"])
        return hash_objects({k: fingerprint(v) for k, v in sorted(files.items())}, raise_on_failure=True)


@dataclass
class StageSource(CachePolicy):
    """Cache key part: the stage's name and the source of its run function (the stage's own code;
    TASK_SOURCE sees only the adapter every stage task shares)."""

    stage: Optional[Stage] = None

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> Optional[str]:
        import inspect

        from prefect.utilities.hashing import hash_objects

        return hash_objects(self.stage.name, inspect.getsource(self.stage.run), raise_on_failure=True)


def stage_cache_policy(stage: Stage) -> CachePolicy:
    """Resolved stage config and label (INPUTS), the task's and the stage's code and the inputs'
    content: an unchanged stage is skipped on a rerun of the same run directory."""
    return INPUTS + TASK_SOURCE + StageSource(stage=stage) + InputFingerprints(stage=stage)


# The options of every stage task besides its cache policy (stage_cache_policy).
STAGE_TASK_OPTIONS: dict[str, Any] = dict(
    persist_result=True,
    result_serializer="json",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=retry_on_transient,
)


def outputs_exist(paths: Mapping[str, Any] | list[Any]) -> bool:
    """True when every expected output is still there (a cached result with deleted outputs is stale)."""
    values = paths.values() if isinstance(paths, Mapping) else paths
    return all(os.path.exists(p) for p in values if p)


def run_cached(task, expected: Mapping[str, Any] | list[Any], **kwargs):
    """Call a stage ``task``, recomputing (and re-caching) it when one of its outputs was deleted."""
    if not outputs_exist(expected):
        task = task.with_options(refresh_cache=True)
    return task(**kwargs)


GPU_LIMIT = "gpu"


def _limit_exists(name: str) -> bool:
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_global_concurrency_limit_by_name(name)
        return True
    except ObjectNotFound:
        return False
    except Exception:  # noqa: BLE001 - let `concurrency` itself decide (it will not fail: strict=False)
        return True


@contextlib.contextmanager
def gpu_slot() -> Iterator[None]:
    """Hold one slot of the global concurrency limit ``gpu`` while a GPU stage runs.

    Where the limit does not exist (a laptop, the tests) this does nothing: ``strict=False`` never
    fails, and checking first avoids Prefect's warning on every stage.
    """
    from prefect.concurrency.sync import concurrency

    if not _limit_exists(GPU_LIMIT):
        run_logger().debug("no global concurrency limit '%s'; not limiting GPU stages", GPU_LIMIT)
        yield
        return
    with concurrency(GPU_LIMIT, occupy=1, strict=False):
        yield


def artifact_key(*parts: str) -> str:
    """An artifact key Prefect accepts: lowercase letters, digits and dashes."""
    import re

    key = "-".join(p for p in parts if p).lower()
    return re.sub(r"[^a-z0-9-]+", "-", key).strip("-")[:100] or "seal"


class ProgressArtifact:
    """A Prefect progress artifact fed by a stage's ``on_progress`` callback.

    Updates are throttled (the callback fires every training step) and any API failure only
    logs a warning: a progress bar must never fail a training run.
    """

    def __init__(self, key: str, description: str, min_interval: float = 2.0, log_every: int = 10):
        self.description = description
        self.min_interval = min_interval
        self.log_every = max(1, log_every)
        self._last = 0.0
        self._failed = False
        self.id = None
        self.last_progress = 0.0
        self.logger = run_logger()
        try:
            from prefect.artifacts import create_progress_artifact

            self.id = create_progress_artifact(0.0, key=key, description=description)
        except Exception as e:  # noqa: BLE001 - see class docstring
            self._warn(e)

    def _warn(self, e: Exception) -> None:
        if not self._failed:
            self._failed = True
            self.logger.warning("progress artifact unavailable (%s); training continues", e)

    def __call__(self, rec: Mapping[str, Any]) -> None:
        step, total = int(rec.get("step", 0)), int(rec.get("total_steps") or 0)
        if total <= 0:
            return
        pct = min(100.0, 100.0 * step / total)
        if step % self.log_every == 0 or step == total:
            extra = ", ".join(f"{k} {v:.4g}" for k, v in rec.items()
                              if k in ("loss", "safe_loss", "pool_loss", "gamma", "selector_entropy")
                              and isinstance(v, (int, float)))
            self.logger.info("%s: step %d/%d%s", self.description, step, total, f" ({extra})" if extra else "")
        now = time.monotonic()
        if self.id is None or (now - self._last < self.min_interval and step < total):
            return
        self._last = now
        self.update(pct)

    def update(self, pct: float) -> None:
        if self.id is None:
            return
        try:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self.id, pct)
            self.last_progress = pct
        except Exception as e:  # noqa: BLE001
            self._warn(e)

    def finish(self) -> None:
        self.update(100.0)


def run_logger():
    """The Prefect run logger inside a flow or task run, else the ``seal.tasks`` logger."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return log


def str_paths(d: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in d.items() if v is not None}

