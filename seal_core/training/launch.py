"""Run a training stage on N local processes by relaunching it under ``torchrun``.

``processes: N`` in a stage's config (``seal rank --processes 2``, or ``rank.processes`` in a
run config, which a Prefect GPU deployment then honours) makes the stage write its resolved
config beside its outputs and start ``torchrun --standalone --nproc_per_node=N -m seal_cli
STAGE --config FILE``; the workers see ``WORLD_SIZE`` and train as one group. Several
machines: launch ``torchrun --nnodes ...`` yourself with the same command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from ..config import to_dict
from ..errors import SealError
from ..io import write_text
from .run import CheckpointMismatch

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
    given = {"rank": ["--pool", cfg.pool, "--out", cfg.out], "finetune": ["--data", cfg.data, "--out", cfg.out]}[stage]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           "-m", "seal_cli", stage, *given, "--config", str(config_file)] + (["--resume"] if resume else [])
    print(f"{stage}: launching {processes} processes: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    rc = subprocess.run(cmd, env=env).returncode
    if rc == EXIT_CHECKPOINT_MISMATCH:
        raise CheckpointMismatch(out / "checkpoints", ["see the workers' output"], "another run")
    if rc != 0:
        raise SealError(f"{stage} on {processes} processes failed (torchrun exit {rc}); its output is above")
