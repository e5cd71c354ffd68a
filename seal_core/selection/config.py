"""Settings of the selection stage and what it returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from ..errors import ConfigError

EXPORTS = ("messages", "alpaca", "none")
MODES = ("top_k", "top_p", "min_score", "bottom_k")


@dataclass
class SelectConfig:
    top_k: Optional[int] = field(default=None, metadata={"help": "Keep the k best-scored samples."})
    top_p: Optional[float] = field(
        default=None,
        metadata={"help": "Keep this fraction of the scored pool: k = floor(p*N + 0.5), at least 1."},
    )
    min_score: Optional[float] = field(default=None, metadata={"help": "Keep every sample with score >= this."})
    bottom_k: Optional[int] = field(
        default=None,
        metadata={"help": "Keep the k lowest-ranked samples instead, worst first (e.g. an unsafe set for "
                          "ta-sft from a SEAL scores file)."},
    )
    export: Literal["messages", "alpaca", "none"] = field(
        default="messages",
        metadata={"help": "Also write selected.jsonl in this form for other trainers ('none': skip)."},
    )
    alpaca_multiturn: Literal["reject", "history"] = field(
        default="reject",
        metadata={
            "help": "Alpaca export of multi-turn conversations: 'reject' lists them in export_rejects.jsonl "
            "(they stay in selected.parquet); 'history' puts earlier turns in a LLaMA-Factory style "
            "'history' field of [user, assistant] pairs."
        },
    )
    batch_size: int = field(default=65536, metadata={"help": "Rows per streamed record batch."})
    memory_mb: int = field(
        default=512,
        metadata={"help": "Approximate memory for reordering the selected rows; larger selections spill to disk."},
    )
    progress: bool = field(default=True, metadata={"help": "Show progress bars on stderr (only on a terminal)."})

    def __post_init__(self) -> None:
        given = [n for n in MODES if getattr(self, n) is not None]
        if len(given) != 1:
            raise ConfigError(
                "select: give exactly one of top_k, top_p, min_score, bottom_k"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.top_k is not None and (isinstance(self.top_k, bool) or self.top_k < 1):
            raise ConfigError(f"select.top_k must be a positive integer, got {self.top_k!r}")
        if self.bottom_k is not None and (isinstance(self.bottom_k, bool) or self.bottom_k < 1):
            raise ConfigError(f"select.bottom_k must be a positive integer, got {self.bottom_k!r}")
        if self.top_p is not None and not (0 < self.top_p <= 1):
            raise ConfigError(f"select.top_p must be in (0, 1], got {self.top_p!r}")
        if self.min_score is not None and math.isnan(self.min_score):
            raise ConfigError("select.min_score must be a number, got NaN")
        if self.export not in EXPORTS:
            raise ConfigError(f"select.export must be one of {', '.join(EXPORTS)}, got {self.export!r}")
        if self.alpaca_multiturn not in ("reject", "history"):
            raise ConfigError(f"select.alpaca_multiturn must be 'reject' or 'history', got {self.alpaca_multiturn!r}")
        if self.batch_size < 1:
            raise ConfigError(f"select.batch_size must be >= 1, got {self.batch_size}")
        if self.memory_mb < 1:
            raise ConfigError(f"select.memory_mb must be >= 1, got {self.memory_mb}")

    @property
    def mode(self) -> str:
        return next(n for n in MODES if getattr(self, n) is not None)


@dataclass
class SelectionResult:
    out_dir: Path
    selected: Path
    export: Optional[Path]
    export_rejects: Optional[Path]
    summary: dict[str, Any]
    warnings: list[str]


def k_for_fraction(p: float, n: int) -> int:
    """Samples kept by a keep fraction ``p`` of ``n``: nearest integer (halves up), at least 1 when n > 0."""
    if n <= 0:
        return 0
    # The epsilon absorbs binary rounding (0.29 * 100 = 28.999999999999996).
    return int(min(n, max(1, math.floor(p * n + 0.5 + 1e-9))))
