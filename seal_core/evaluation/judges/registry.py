"""The judge kinds: one table from a spec's prefix (``hf`` in ``hf:MODEL``) to the class that
parses the rest of the spec and builds the judge.

A kind registers itself with :func:`register_judge`; the package ``__init__`` imports each
kind's module, so the table is complete whenever any part of the package is used.
"""

from __future__ import annotations

from typing import TypeVar

from ...errors import ConfigError
from .base import Judge, JudgeSpec

JUDGE_KINDS: dict[str, type[Judge]] = {}

KindT = TypeVar("KindT", bound=type[Judge])


def register_judge(cls: KindT) -> KindT:
    """Class decorator: specs ``{cls.kind}:TARGET`` parse with ``cls.parse_target`` and build with ``cls.from_config``."""
    if not cls.kind or cls.kind == "none" or ":" in cls.kind:
        raise ValueError(f"{cls.__name__}.kind must be a non-empty prefix other than 'none', got {cls.kind!r}")
    if JUDGE_KINDS.get(cls.kind, cls) is not cls:
        raise ValueError(f"judge kind {cls.kind!r} is already {JUDGE_KINDS[cls.kind].__name__}")
    JUDGE_KINDS[cls.kind] = cls
    return cls


def spec_forms() -> list[str]:
    """How each judge spec is written: ``["none", "openai:MODEL@BASE_URL", ...]``."""
    return ["none", *(cls.spec_form or f"{kind}:MODEL" for kind, cls in JUDGE_KINDS.items())]


def parse_judge_spec(spec: str | None) -> JudgeSpec:
    """Parse ``none`` or ``KIND:TARGET`` for a registered kind (``openai:MODEL[@BASE_URL]``, ``hf:MODEL``, ...)."""
    s = (spec or "").strip()
    if s.lower() in ("", "none"):
        return JudgeSpec("none")
    kind, sep, rest = s.partition(":")
    cls = JUDGE_KINDS.get(kind.lower())
    if not sep or cls is None:
        forms = [f"'{f}'" for f in spec_forms()]
        raise ConfigError(f"unknown judge {spec!r}: expected {', '.join(forms[:-1])} or {forms[-1]}")
    rest = rest.strip()
    if not rest:
        raise ConfigError(f"judge {spec!r} names no model (e.g. 'hf:tiny-random', 'openai:gpt-4o-mini@https://api.openai.com/v1')")
    return cls.parse_target(rest, spec)
