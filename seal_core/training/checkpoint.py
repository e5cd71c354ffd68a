"""Checkpoint files that cannot run code when read.

A checkpoint is one safetensors file: every tensor of the state goes into the tensor
table, and everything else (config, positions, RNG states, optimiser scalars) into a
JSON document stored in the file's metadata, with each tensor replaced by a reference to
its entry. Neither part is unpickled, so a run directory on shared storage cannot make
the next ``--resume`` execute code (``torch.load`` without ``weights_only`` can).

Types JSON lacks are tagged so the state comes back exactly: tuples (Python's RNG state
must be one), dicts with non-string keys (optimiser state is keyed by parameter index),
NumPy arrays (NumPy's RNG state) and non-finite floats.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import SealError
from ..io import atomic_path

FORMAT = "seal-checkpoint/1"
_META_KEY = "seal_state"


class CheckpointError(SealError):
    """A file that is not a readable checkpoint of this format."""


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = path or "tensor"
        if key in tensors:
            key = f"{key}#{len(tensors)}"
        # safetensors refuses views that share storage; a contiguous copy owns its memory.
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return _encode(obj.item(), tensors, path)
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{path}/{k}") for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors, f"{path}/key{i}"), _encode(v, tensors, f"{path}/{i}")]
                              for i, (k, v) in enumerate(obj.items())]}
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (at {path or 'top level'})")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=np.dtype(obj["dtype"]))
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: a crash mid-write keeps the previous checkpoint."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    doc = _encode(state, tensors, "")
    meta = {_META_KEY: json.dumps({"format": FORMAT, "state": doc}, allow_nan=False)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; anything else is a :class:`CheckpointError`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        doc = json.loads(meta[_META_KEY])
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT!r}")
        return _decode(doc["state"], tensors)
    except Exception as e:  # safetensors, JSON and layout errors alike: the file is not a checkpoint
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is not a valid checkpoint ({reason}); "
                              "rerun without --resume or point --out elsewhere") from None
