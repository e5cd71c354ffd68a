"""Run a training stage on N local processes by relaunching it under ``torchrun``.

``processes: N`` in a stage's config (``seal rank --processes 2``, or ``rank.processes`` in a
run config, which a Prefect GPU deployment then honours) makes the stage write its resolved
config beside its outputs and start ``torchrun --standalone --nproc_per_node=N -m seal_cli
STAGE --config FILE``; the workers see ``WORLD_SIZE`` and train as one group. Several
machines: launch ``torchrun --nnodes ...`` yourself with the same command.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, TypeVar

import yaml

from ..config import to_dict
from ..errors import SealError
from ..io import write_text
from .distributed import Dist, init_distributed, shutdown_distributed
from .run import CheckpointMismatch

T = TypeVar("T")

# The CLI's exit code for CheckpointMismatch, so a launcher can tell "another run's checkpoint"
# (start afresh) from every other failure (keep the checkpoint, fail the stage).
EXIT_CHECKPOINT_MISMATCH = 3


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def launch_processes(stage: str, cfg, processes: int, resume: bool) -> None:
    """Run ``seal STAGE`` with ``cfg`` on ``processes`` local processes and wait for it."""
    out = Path(cfg.out)
    config_file = out / f".{stage}-launch.yaml"
    write_text(config_file, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    # The input and output flags the commands require, then every other setting from the file.
    given = ["--pool", cfg.pool] if stage == "rank" else ["--data", cfg.data]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           "-m", "seal_cli", stage, *given, "--out", cfg.out, "--config", str(config_file)] + (["--resume"] if resume else [])
    print(f"{stage}: launching {processes} processes: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    rc = subprocess.run(cmd, env=env).returncode
    if rc == EXIT_CHECKPOINT_MISMATCH:
        raise CheckpointMismatch(out / "checkpoints", ["see the workers' output"], "another run")
    if rc != 0:
        raise SealError(f"{stage} on {processes} processes failed (torchrun exit {rc}); its output is above")


def run_training_stage(stage: str, cfg, resume: bool, body: Callable[[Dist], T], launched: Callable[[], T]) -> T:
    """A training stage's entry point, one process or many.

    ``processes > 1`` outside torchrun: relaunch under torchrun and return ``launched()``.
    Otherwise join the torchrun group (if any); rank 0 holds the run directory's lock while
    ``body(dist)`` runs on every rank, and the ranks leave together.
    """
    from ..runlock import run_lock

    if cfg.processes > 1 and not under_torchrun():
        launch_processes(stage, cfg, cfg.processes, resume)
        return launched()
    dist = init_distributed(cfg.device)
    try:
        with run_lock(cfg.out) if dist.is_main else contextlib.nullcontext():
            result = body(dist)
        dist.barrier()
        return result
    finally:
        shutdown_distributed()
