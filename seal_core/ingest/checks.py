"""Checks of a normalised conversation, in the style of datatrove's filters.

A check is called with the conversation's turns and its total number of
characters and returns ``(True, None)`` to keep the row or ``(False, reject)``
to drop it, ``reject`` being the :class:`RowReject` (reason, field, detail)
that ingestion writes to ``rejects.parquet``. The pipeline runs
:func:`conversation_checks` in order and drops a row at the first failure.
"""

from __future__ import annotations

from typing import Optional, Protocol

from .formats import RowReject, Turns

CheckResult = tuple[bool, Optional[RowReject]]
KEEP: CheckResult = (True, None)


class RowCheck(Protocol):
    def __call__(self, turns: Turns, n_chars: int) -> CheckResult: ...


class EndsWithAssistantTurn:
    """A sample is trained on its final turn, so that turn must be the assistant's."""

    def __init__(self, field: str):
        self.field = field

    def __call__(self, turns: Turns, n_chars: int) -> CheckResult:
        if not turns:
            return False, RowReject("no_final_assistant_turn", self.field, "conversation has no turn with content")
        if turns[-1][0] != "assistant":
            return False, RowReject("no_final_assistant_turn", self.field,
                                    f"conversation ends with a {turns[-1][0]} turn, not an assistant turn")
        return KEEP


class HasUserTurn:
    def __init__(self, field: str):
        self.field = field

    def __call__(self, turns: Turns, n_chars: int) -> CheckResult:
        for role, _ in turns:
            if role == "user":
                return KEEP
        return False, RowReject("no_user_turn", self.field, "conversation has no user turn")


class MaxChars:
    def __init__(self, max_chars: int):
        self.max_chars = max_chars

    def __call__(self, turns: Turns, n_chars: int) -> CheckResult:
        if n_chars > self.max_chars:
            detail = f"{n_chars} characters, over the limit of {self.max_chars} (max_chars)"
            return False, RowReject("too_long", "", detail)
        return KEEP


def conversation_checks(field: str, max_chars: int) -> tuple[RowCheck, ...]:
    """The checks every sample passes, in order; ``field`` is the one the rejects name for the conversation."""
    return (EndsWithAssistantTurn(field), HasUserTurn(field), MaxChars(max_chars))
