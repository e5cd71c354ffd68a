"""What every judge shares: the items it is asked about, its verdicts, its error and its base class."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from ...errors import SealError


class JudgeError(SealError):
    """The judge could not be reached or gave an unusable answer after retries."""


@dataclass(frozen=True)
class PairItem:
    instruction: str
    output_1: str
    output_2: str


@dataclass(frozen=True)
class SingleItem:
    instruction: str
    output: str


@dataclass(frozen=True)
class Verdict:
    """``p``: probability of "output_1 is better" (pairwise) or "harmful" (single).

    ``p`` is None only for a harmfulness rating that could not be read; a
    pairwise verdict that cannot be read is a tie (0.5) with ``reason`` set.
    ``raw`` keeps the judge's text or scores for tracing.
    """

    p: float | None
    reason: str | None = None
    raw: str | None = None


@dataclass(frozen=True)
class PairJudgement:
    """One prompt judged in both orders; ``p`` is the candidate-preference probability."""

    p_first: float  # P(candidate better) with the candidate shown first
    p_swapped: float  # P(baseline better) with the baseline shown first
    p: float
    consistent: bool  # both orders prefer the same answer (or both call it a tie)
    reason: str | None = None
    raw_first: str | None = None
    raw_swapped: str | None = None


@dataclass(frozen=True)
class JudgeSpec:
    """A parsed judge spec: ``kind:model``, with ``@base_url`` for kinds served over HTTP."""

    kind: str
    model: str = ""
    base_url: str | None = None

    def __str__(self) -> str:
        if self.kind == "none":
            return "none"
        return f"{self.kind}:{self.model}" + (f"@{self.base_url}" if self.base_url else "")


class Judge:
    """Base class. Subclasses implement :meth:`compare` and, if they can, :meth:`rate_harm`.

    A kind that is built from a spec (``kind:TARGET``) sets :attr:`kind` and
    :attr:`spec_form`, implements :meth:`from_config`, and is registered with
    :func:`~seal_core.evaluation.judges.registry.register_judge`.
    """

    kind: ClassVar[str] = ""  # the spec prefix: "hf" in "hf:MODEL"
    spec_form: ClassVar[str] = ""  # how a spec of this kind is written, for help and errors
    spec: str = "judge"
    supports_harm: bool = False
    harm_note: str | None = None  # why harmfulness is not rated, when it is not

    @classmethod
    def parse_target(cls, target: str, spec: str) -> JudgeSpec:
        """The spec ``kind:TARGET``; kinds whose target has parts (``MODEL@URL``) override this."""
        return JudgeSpec(cls.kind, target)

    @classmethod
    def from_config(cls, spec: JudgeSpec, config: Any, prompts: Any) -> Judge:
        """Build the judge ``spec`` names, with the settings of ``config`` (a ``JudgeConfig``)
        and the prompt texts of ``prompts`` (a ``JudgePrompts``)."""
        raise NotImplementedError(f"{cls.__name__} is not built from a judge spec")

    def compare(self, items: Sequence[PairItem]) -> list[Verdict]:
        raise NotImplementedError

    def rate_harm(self, items: Sequence[SingleItem]) -> list[Verdict]:
        raise NotImplementedError(self.harm_note or f"judge {self.spec} does not rate harmfulness")

    def cache_key(self) -> str | None:
        """Identifies the judge's behaviour (spec, templates) for the resume cache; None: never cache.

        The base class returns None because an arbitrary judge object cannot
        promise that the same spec string means the same verdicts next time.
        """
        return None

    def close(self) -> None:
        pass


def check_p(p: Any, who: str) -> float:
    """``p`` as a float in [0, 1]; JudgeError naming judge ``who`` otherwise."""
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise JudgeError(f"judge {who} returned {p!r}, not a probability") from None
    if not (0.0 <= p <= 1.0) or math.isnan(p):
        raise JudgeError(f"judge {who} returned {p!r}, outside [0, 1]")
    return p


def snippet(text: str, n: int = 80) -> str:
    """``text`` on one line, cut to ``n`` characters, for error messages."""
    t = " ".join((text or "").split())
    return t if len(t) <= n else t[: n - 1] + "…"
