"""Tokenised samples in flat NumPy buffers, so a million-sample pool is a few arrays, not millions of lists.

:class:`EncodedPool` holds every sample's token ids back to back in one int32 buffer, a boolean
target mask beside it (the labels are the ids where the mask is set, ``IGNORE_INDEX`` elsewhere),
row offsets, and the sample ids as an Arrow string array. It behaves like the ``list[Encoded]``
the training and scoring loops index: ``len``, ``pool[i]`` (a :class:`PoolItem`: the fields of
:class:`Encoded`, read from the buffers on use), iteration. :func:`encode_pool` fills it one
shard of rows at a time, so only one shard's Python lists of token ids exist at once.
"""

from __future__ import annotations

from itertools import chain
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .tokenization import IGNORE_INDEX, Encoded, encode_samples

# Rows gathered per step in take(): the position index is int64 per token, so a bounded block
# keeps that temporary small next to the int32 buffer itself.
_TAKE_BLOCK_ROWS = 1 << 13


class EncodedPool(Sequence):
    """Encoded samples in flat buffers; ``pool[i]`` has the fields of the :class:`Encoded` the list held."""

    def __init__(self, sample_ids: pa.Array, tokens: np.ndarray, target: np.ndarray, offsets: np.ndarray,
                 n_target_tokens: np.ndarray, truncated: np.ndarray):
        if len(offsets) != len(sample_ids) + 1 or offsets[-1] != len(tokens) or len(target) != len(tokens):
            raise ValueError("EncodedPool buffers disagree in length")
        self.sample_ids = sample_ids
        self.tokens = tokens
        self.target = target
        self.offsets = offsets
        self.n_target_tokens = n_target_tokens
        self.truncated = truncated

    @classmethod
    def from_encoded(cls, items: Sequence[Encoded]) -> "EncodedPool":
        lengths = np.fromiter((e.n_tokens for e in items), dtype=np.int64, count=len(items))
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        tokens = np.fromiter(chain.from_iterable(e.input_ids for e in items), dtype=np.int32, count=total)
        labels = np.fromiter(chain.from_iterable(e.labels for e in items), dtype=np.int64, count=total)
        return cls(pa.array([e.sample_id for e in items], pa.string()), tokens, labels != IGNORE_INDEX, offsets,
                   np.fromiter((e.n_target_tokens for e in items), dtype=np.int64, count=len(items)),
                   np.fromiter((e.truncated for e in items), dtype=bool, count=len(items)))

    @classmethod
    def concat(cls, parts: Sequence["EncodedPool"]) -> "EncodedPool":
        if not parts:
            return cls.from_encoded([])
        offsets = [np.zeros(1, dtype=np.int64)]
        base = 0
        for p in parts:
            offsets.append(p.offsets[1:] + base)
            base += int(p.offsets[-1])
        ids = pa.concat_arrays([p.sample_ids for p in parts])
        return cls(ids, np.concatenate([p.tokens for p in parts]), np.concatenate([p.target for p in parts]),
                   np.concatenate(offsets), np.concatenate([p.n_target_tokens for p in parts]),
                   np.concatenate([p.truncated for p in parts]))

    @property
    def n_tokens(self) -> np.ndarray:
        """Tokens per sample (int64), the lengths batching groups by."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [PoolItem(self, j) for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"EncodedPool index {i} out of range for {n} samples")
        return PoolItem(self, int(i))

    def __iter__(self) -> Iterator["PoolItem"]:
        return (PoolItem(self, i) for i in range(len(self)))

    def take(self, order: np.ndarray) -> "EncodedPool":
        """The samples at positions ``order``, in that order."""
        order = np.asarray(order, dtype=np.int64)
        lengths = self.n_tokens[order]
        offsets = np.zeros(len(order) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.empty(int(offsets[-1]), dtype=self.tokens.dtype)
        target = np.empty(int(offsets[-1]), dtype=bool)
        for b in range(0, len(order), _TAKE_BLOCK_ROWS):
            rows = order[b: b + _TAKE_BLOCK_ROWS]
            lo, hi = offsets[b], offsets[b + len(rows)]
            # Source position of each destination token: its row's source start plus its offset in the row.
            shift = np.repeat(self.offsets[rows] - offsets[b: b + len(rows)], lengths[b: b + len(rows)])
            src = np.arange(lo, hi, dtype=np.int64) + shift
            tokens[lo:hi] = self.tokens[src]
            target[lo:hi] = self.target[src]
        return EncodedPool(self.sample_ids.take(pa.array(order)), tokens, target, offsets,
                           self.n_target_tokens[order], self.truncated[order])

    def sorted_by_id(self) -> "EncodedPool":
        return self.take(pc.sort_indices(self.sample_ids).to_numpy())


_FIELDS = ("sample_id", "input_ids", "labels", "n_tokens", "n_target_tokens", "truncated")


class PoolItem:
    """One sample of an :class:`EncodedPool`, with the fields of :class:`Encoded`.

    Fields are read from the pool's buffers when used, so a pass that only needs lengths or ids
    never builds token lists; ``input_ids`` and ``labels`` are built once, on first use.
    """

    __slots__ = ("_pool", "_i", "_ids", "_labels")

    def __init__(self, pool: EncodedPool, i: int):
        self._pool, self._i = pool, i
        self._ids = self._labels = None

    def _tokens(self) -> None:
        p, i = self._pool, self._i
        ids = p.tokens[p.offsets[i]: p.offsets[i + 1]]
        self._ids = ids.tolist()
        self._labels = np.where(p.target[p.offsets[i]: p.offsets[i + 1]], ids, IGNORE_INDEX).tolist()

    @property
    def input_ids(self) -> list[int]:
        if self._ids is None:
            self._tokens()
        return self._ids

    @property
    def labels(self) -> list[int]:
        if self._labels is None:
            self._tokens()
        return self._labels

    @property
    def sample_id(self) -> str:
        return self._pool.sample_ids[self._i].as_py()

    @property
    def n_tokens(self) -> int:
        return int(self._pool.offsets[self._i + 1] - self._pool.offsets[self._i])

    @property
    def n_target_tokens(self) -> int:
        return int(self._pool.n_target_tokens[self._i])

    @property
    def truncated(self) -> bool:
        return bool(self._pool.truncated[self._i])

    def to_encoded(self) -> Encoded:
        return Encoded(*(getattr(self, f) for f in _FIELDS))

    def __eq__(self, other) -> bool:
        if not isinstance(other, (Encoded, PoolItem)):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in _FIELDS)

    __hash__ = None

    def __repr__(self) -> str:
        return repr(self.to_encoded()).replace("Encoded(", "PoolItem(", 1)


def encode_pool(tokenizer, shards: Iterable[Sequence[dict]], max_length: int, train_on: str = "final",
                truncation: str = "left") -> tuple[EncodedPool, list[dict]]:
    """Encode canonical samples shard by shard -> (pool sorted by sample_id, rejects sorted by sample_id).

    Each shard is a sequence of row dicts (``sample_id``, ``messages``) as :func:`encode_samples` takes;
    its lists of token ids are packed into flat buffers before the next shard is read.
    """
    parts: list[EncodedPool] = []
    rejects: list[dict] = []
    for rows in shards:
        enc, rej = encode_samples(tokenizer, rows, max_length, train_on, truncation)
        parts.append(EncodedPool.from_encoded(enc))
        rejects.extend(rej)
    pool = EncodedPool.concat(parts)
    del parts  # free the per-shard buffers before the sorted copy is made: at most two copies at once
    rejects.sort(key=lambda r: r["sample_id"])
    return pool.sorted_by_id(), rejects


__all__ = ["EncodedPool", "PoolItem", "encode_pool"]
