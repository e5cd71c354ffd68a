"""Hand large freed blocks back to the OS at once, so a training process's RSS follows its live tensors.

PyTorch's CPU tensors come from malloc. glibc serves a block above its mmap threshold with mmap
and unmaps it on free, but raises the threshold to the size of every such block freed (up to
32 MiB). After the first backward pass every activation of a SmolLM2 step (9 and 24 MB at
8 x 512 tokens) then comes from the heap, which only returns free space at its top: the holes
left by one micro-batch's activations do not fit the next one's, and at the peak of a bilevel step
2.3 GB more stayed resident (7.8 GB against 5.5 GB with the threshold fixed; bench/ranker_speed.py).
A fixed threshold costs one mmap and its page faults per large tensor, about 1% of a step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# 1 MiB: every activation and weight gradient of a real model is larger, the many small tensors
# (norm statistics, LoRA factors) stay on the heap where allocation is cheapest.
MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt parameter number, from glibc's malloc.h

def fix_mmap_threshold(nbytes: int = MMAP_THRESHOLD) -> bool:
    """Pin glibc's mmap threshold at ``nbytes`` (which also stops its dynamic adjustment) -> whether it is.

    Does nothing off glibc, or when ``MALLOC_MMAP_THRESHOLD_`` is set (the user's own choice).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes)))


__all__ = ["MMAP_THRESHOLD", "fix_mmap_threshold"]
