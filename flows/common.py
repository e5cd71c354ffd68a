"""Helpers shared by the flows: loading the config, staging files for remote stages, remote runs."""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

from seal_core.errors import SealError
from seal_core.pipeline import CurateConfig, config_to_dict, is_url, load_config
from tasks import storage

ConfigParam = Union[str, dict[str, Any]]


def load(config: ConfigParam, overrides: Optional[list[str]] = None) -> CurateConfig:
    """The validated run config from a flow's ``config``/``overrides`` parameters."""
    return load_config(config, overrides or None)


def as_param(cfg: CurateConfig) -> dict[str, Any]:
    """The resolved config as a flow parameter (absolute paths, every default spelled out)."""
    return config_to_dict(cfg)


def first_existing(*candidates: Any) -> str:
    """The first candidate path that exists (URLs are taken on trust), else the last one."""
    for c in candidates:
        if c and (is_url(str(c)) or Path(c).exists()):
            return str(c)
    return str(candidates[-1]) if candidates else ""


def exchange_base(cfg: CurateConfig) -> str:
    """Where this run's files go on ``workers.storage``: one folder per run directory."""
    root = Path(cfg.run_dir)
    tag = hashlib.blake2b(str(root).encode(), digest_size=4).hexdigest()
    return storage.join(cfg.workers.storage, f"{root.name}-{tag}")


@contextlib.contextmanager
def localized(inputs: Mapping[str, str], out: str) -> Iterator[tuple[dict[str, str], str]]:
    """Local copies of URL inputs and a local stand-in for a URL output directory.

    Yields ``(local inputs, local out)``; on success a URL ``out`` receives the local outputs.
    Scratch space is keyed by ``out``, so a retried or resumed stage finds its checkpoints again.
    """
    remote = {k: v for k, v in inputs.items() if v and is_url(v)}
    if not remote and not is_url(out):
        yield dict(inputs), out
        return
    key = hashlib.blake2b(out.encode(), digest_size=8).hexdigest()
    scratch = Path(tempfile.gettempdir()) / "seal-remote" / key
    local = dict(inputs)
    for name, url in remote.items():
        local[name] = str(storage.fetch(url, scratch / "inputs" / name / url.rstrip("/").rsplit("/", 1)[-1]))
    local_out = str(scratch / "out") if is_url(out) else out
    yield local, local_out
    if is_url(out):
        storage.publish(local_out, out)


def remote_outputs(result: Mapping[str, str], local_out: str, out: str) -> dict[str, str]:
    """Rewrite paths under ``local_out`` to the matching place under ``out``."""
    if local_out == out:
        return dict(result)
    res = {}
    for k, v in result.items():
        p = Path(v)
        try:
            rel = p.relative_to(local_out)
        except ValueError:
            res[k] = v
            continue
        res[k] = storage.join(out, str(rel)) if str(rel) != "." else out
    return res


def run_remote_stage(deployment: str, pool: str, parameters: dict[str, Any], timeout: float = 0) -> None:
    """Run ``deployment`` (which must live on work pool ``pool``) and wait for it to complete."""
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.logging import get_run_logger

    with get_client(sync_client=True) as client:
        try:
            dep = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise SealError(
                f"deployment '{deployment}' not found: deploy it first (`prefect --no-prompt deploy --all` "
                "from the project root), or clear workers.*_pool to run the stage in-process"
            ) from None
    if dep.work_pool_name != pool:
        raise SealError(f"deployment '{deployment}' runs on work pool '{dep.work_pool_name}', "
                        f"but the config asks for '{pool}' (workers.*_pool / workers.*_deployment)")
    logger = get_run_logger()
    logger.info("running stage on work pool %s via deployment %s", pool, deployment)
    run = run_deployment(deployment, parameters=parameters, timeout=timeout or None, as_subflow=True)
    state = run.state
    if state is None or not state.is_completed():
        name = state.name if state else "unknown"
        msg = (state.message or "") if state else ""
        if state is not None and not state.is_final():
            raise SealError(f"deployment '{deployment}' run {run.name} did not finish within "
                            f"{timeout:g} s (workers.timeout); it is {name}")
        raise SealError(f"deployment '{deployment}' run {run.name} ended {name}: {msg}".rstrip(": "))
