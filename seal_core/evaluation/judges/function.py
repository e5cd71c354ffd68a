"""A judge made of Python callables: for tests, custom heuristics, or a judge implemented elsewhere."""

from __future__ import annotations

from typing import Callable, Sequence

from .base import Judge, PairItem, SingleItem, Verdict, check_p


class FunctionJudge(Judge):
    """Wraps Python callables: ``fn(instruction, output_1, output_2) -> P(output_1 better)``.

    ``harm_fn(instruction, output) -> P(harmful)`` is optional. Not built from a
    spec: pass the object to ``evaluate(cfg, judge=...)``.
    """

    def __init__(
        self,
        fn: Callable[[str, str, str], float],
        harm_fn: Callable[[str, str], float | None] | None = None,
        spec: str = "python",
    ) -> None:
        self.fn = fn
        self.harm_fn = harm_fn
        self.spec = spec
        self.supports_harm = harm_fn is not None
        self.harm_note = None if harm_fn else f"judge {spec} has no harmfulness function"

    def compare(self, items: Sequence[PairItem]) -> list[Verdict]:
        return [Verdict(check_p(self.fn(it.instruction, it.output_1, it.output_2), self.spec)) for it in items]

    def rate_harm(self, items: Sequence[SingleItem]) -> list[Verdict]:
        if self.harm_fn is None:
            return super().rate_harm(items)
        out = []
        for it in items:
            p = self.harm_fn(it.instruction, it.output)
            out.append(Verdict(None if p is None else check_p(p, self.spec)))
        return out
