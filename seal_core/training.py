"""Training-loop helpers shared by the ranker and the fine-tune: seeding, RNG
state and LoRA adapter state, so checkpoints restore a run bit for bit."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from .errors import SealError


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def adapter_state(model, adapter: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if f".{adapter}." in k and "lora_" in k}


def load_adapter_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def load_checked_checkpoint(path: Path, sample_ids: list[str], config: dict, free_keys: Iterable[str],
                            data_name: str = "data") -> dict:
    """Load a checkpoint for ``--resume``, refusing one made for other samples or another config.

    ``free_keys`` are config keys that may differ (output path, progress bar, step limit, ...).
    """
    # Everything loads to the CPU: torch.set_rng_state only takes a CPU ByteTensor, and a state
    # mapped to CUDA would make every GPU resume fail. Optimiser load_state_dict and the in-place
    # copy_ of adapter weights move tensors to their parameters' device themselves.
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if ck["sample_ids"] != sample_ids:
        raise SealError(f"{path}: the checkpoint was made for different {data_name} (sample ids differ); "
                        "rerun without --resume or point --out elsewhere")
    free = set(free_keys)
    old = {k: v for k, v in ck["config"].items() if k not in free}
    diff = sorted(k for k, v in config.items() if k not in free and old.get(k) != v)
    if diff:
        raise SealError(f"{path}: config differs from the checkpoint's in {', '.join(diff)}; "
                        "rerun without --resume or with the same settings")
    return ck


def trim_log(log_path: Path, step: int) -> None:
    """Drop log lines past ``step`` so a resumed run's log reads as one uninterrupted run."""
    if log_path.exists():
        keep = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        log_path.write_text("".join(ln + "\n" for ln in keep))
