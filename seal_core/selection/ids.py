"""Sample ids as fixed-width byte strings, so that numpy sorts and searches them without Python objects."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..errors import InputError


def _string_buffers(arr: pa.Array, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, data bytes) of a string/binary array, without Python objects."""
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.cast(t.value_type)
        t = arr.type
    if pa.types.is_string(t) or pa.types.is_binary(t):
        off_dtype = np.int32
    elif pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        off_dtype = np.int64
    elif pa.types.is_string_view(t) or pa.types.is_binary_view(t):
        arr = arr.cast(pa.large_binary())
        off_dtype = np.int64
    else:
        raise InputError(f"{what}: column sample_id must be text, got {t}")
    if arr.null_count:
        raise InputError(f"{what}: column sample_id has {arr.null_count} empty (null) values")
    bufs = arr.buffers()
    n = len(arr)
    offsets = np.frombuffer(bufs[1], dtype=off_dtype)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return offsets.astype(np.int64, copy=False), data


def max_id_bytes(arr: pa.Array, what: str) -> int:
    """Length in bytes of the longest id of ``arr``."""
    offsets, _ = _string_buffers(arr, what)
    return int(np.diff(offsets).max()) if len(offsets) > 1 else 0


def fixed_width_ids(arr: pa.Array, width: int, what: str = "ids") -> tuple[np.ndarray, np.ndarray]:
    """Ids as a numpy ``S{width}`` array, plus a mask of the ids that fit in ``width`` bytes.

    Byte order of UTF-8 equals code-point order, so sorting these arrays sorts
    ids exactly as Python sorts the strings. Ids longer than ``width`` are left
    as ``b""`` and flagged False (they cannot equal any id of that width).
    """
    offsets, data = _string_buffers(arr, what)
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    start = offsets[0] if n else 0
    if n and np.all(lengths == width):
        return data[start : offsets[-1]].copy().view(f"S{width}"), np.ones(n, bool)
    fits = lengths <= width
    used = np.where(fits, lengths, 0)
    out = np.zeros((n, width), np.uint8)
    total = int(used.sum())
    if total:
        rows = np.repeat(np.arange(n), used)
        ends = np.cumsum(used)
        within = np.arange(total) - np.repeat(ends - used, used)
        out[rows, within] = data[np.repeat(offsets[:-1], used) + within]
    return out.view(f"S{width}").reshape(n), fits
