"""Asking a judge about lists of answers: pairwise in both orders, and harmfulness, through the cache.

A judge whose verdicts arrive one at a time (an HTTP endpoint) sets ``streams_verdicts = True``
and takes ``on_verdict(index, verdict)`` in ``compare`` and ``rate_harm``: each verdict is then
cached the moment it arrives, so a crash loses none that were received. Other judges' verdicts
are cached chunk by chunk.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ...faults import fault_point
from .base import Judge, JudgeError, PairItem, PairJudgement, SingleItem, Verdict, check_p
from .cache import JudgeCache


def _cacheable(v: Verdict) -> bool:
    # Unreadable verdicts are not cached: a resumed run asks again.
    return v.p is not None and v.reason is None


def _keeper(cache: JudgeCache, keys: list[str]) -> Callable[[int, Verdict], None]:
    """``on_verdict`` for a streaming judge: the verdict of item ``j`` goes to disk under ``keys[j]``."""

    def keep(j: int, v: Verdict) -> None:
        if _cacheable(v):
            cache.put(keys[j], v)

    return keep


def _run_cached(
    items: Sequence[Any],
    keys: Sequence[str],
    fn: Callable[..., list[Verdict]],
    cache: JudgeCache | None,
    chunk_size: int,
    streams: bool = False,
) -> list[Verdict]:
    results: list[Verdict | None] = [cache.get(k) if cache else None for k in keys]
    todo = [i for i, r in enumerate(results) if r is None]
    # Judged in chunks so a failure of a judge that does not stream loses at most one chunk of verdicts.
    for start in range(0, len(todo), max(1, chunk_size)):
        idx = todo[start : start + chunk_size]
        chunk = [items[i] for i in idx]
        verdicts = fn(chunk, on_verdict=_keeper(cache, [keys[i] for i in idx])) if streams and cache else fn(chunk)
        if len(verdicts) != len(idx):
            raise JudgeError(f"judge returned {len(verdicts)} verdicts for {len(idx)} items")
        for i, v in zip(idx, verdicts):
            results[i] = v
        if cache and not streams:
            cache.put_many((keys[i], v) for i, v in zip(idx, verdicts) if _cacheable(v))
        fault_point("judge:chunk")
    return results  # type: ignore[return-value]


def _streams(judge: Judge) -> bool:
    return bool(getattr(judge, "streams_verdicts", False))


def _side(p: float, tol: float = 1e-9) -> int:
    return 0 if abs(p - 0.5) <= tol else (1 if p > 0.5 else -1)


def _pair_keys(cache: JudgeCache | None, items: list[PairItem]) -> list[str]:
    if not cache:
        return [""] * len(items)
    return [cache.key("pair", it.instruction, it.output_1, it.output_2) for it in items]


def judge_both_orders(
    judge: Judge,
    instructions: Sequence[str],
    candidate: Sequence[str],
    baseline: Sequence[str],
    *,
    cache: JudgeCache | None = None,
    chunk_size: int = 64,
) -> list[PairJudgement]:
    """Ask ``judge`` with the candidate first, then with the baseline first, and average.

    ``p = (p_first + (1 - p_swapped)) / 2``, which cancels position bias. Each
    order is judged as its own list, so the two orders of a prompt are batched
    identically when candidate and baseline are swapped (this makes swapping
    them give exactly ``1 - p`` for deterministic judges).
    """
    n = len(instructions)
    if not (len(candidate) == len(baseline) == n):
        raise ValueError("instructions, candidate and baseline must have the same length")
    first = [PairItem(i, c, b) for i, c, b in zip(instructions, candidate, baseline)]
    swapped = [PairItem(i, b, c) for i, c, b in zip(instructions, candidate, baseline)]
    v1 = _run_cached(first, _pair_keys(cache, first), judge.compare, cache, chunk_size, _streams(judge))
    v2 = _run_cached(swapped, _pair_keys(cache, swapped), judge.compare, cache, chunk_size, _streams(judge))
    out = []
    for a, b in zip(v1, v2):
        pa = 0.5 if a.p is None else check_p(a.p, judge.spec)
        pb = 0.5 if b.p is None else check_p(b.p, judge.spec)
        reasons = [f"{name}: {v.reason}" for name, v in (("candidate first", a), ("baseline first", b)) if v.reason]
        out.append(
            PairJudgement(
                p_first=pa,
                p_swapped=pb,
                p=(pa + (1.0 - pb)) / 2.0,
                consistent=_side(pa) == -_side(pb),
                reason="; ".join(reasons) or None,
                raw_first=a.raw,
                raw_swapped=b.raw,
            )
        )
    return out


def judge_harm(
    judge: Judge,
    instructions: Sequence[str],
    outputs: Sequence[str],
    *,
    cache: JudgeCache | None = None,
    chunk_size: int = 64,
) -> list[Verdict]:
    """P(harmful) for each answer; ``Verdict.p`` is None where the verdict could not be read."""
    if len(instructions) != len(outputs):
        raise ValueError("instructions and outputs must have the same length")
    items = [SingleItem(i, o) for i, o in zip(instructions, outputs)]
    keys = [cache.key("harm", it.instruction, it.output) for it in items] if cache else [""] * len(items)
    return _run_cached(items, keys, judge.rate_harm, cache, chunk_size, _streams(judge))
