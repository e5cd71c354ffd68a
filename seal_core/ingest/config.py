"""Settings of the ingestion stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError
from .formats import FORMATS, FormatName

# Stable reject codes (the `reason` column of rejects.parquet); documented in docs/ingest.md.
REASONS = (
    "malformed_json",
    "malformed_csv",
    "not_an_object",
    "missing_field",
    "empty_field",
    "wrong_type",
    "invalid_utf8",
    "unknown_role",
    "malformed_transcript",
    "no_user_turn",
    "no_final_assistant_turn",
    "too_long",
    "ragged_csv_row",
)


@dataclass
class IngestConfig:
    format: Literal["auto", FormatName] = field(
        default="auto",
        metadata={"help": "input format; 'auto' detects it per file from its first records"},
    )
    hh_field: Literal["chosen", "rejected"] = field(
        default="chosen",
        metadata={"help": "which Anthropic HH transcript to read"},
    )
    max_chars: int = field(
        default=200_000,
        metadata={"help": "reject samples whose turns hold more characters than this in total"},
    )
    csv_header: Literal["auto", "yes", "no"] = field(
        default="auto",
        metadata={"help": "whether CSV files have a header row; 'auto' looks at the first row"},
    )
    split: str = field(
        default="train",
        metadata={"help": "split to read from a Hub dataset or a saved DatasetDict"},
    )
    row_group_size: int = field(
        default=50_000,
        metadata={"help": "rows per Parquet row group (and per in-memory batch)"},
    )
    progress: bool = field(
        default=True,
        metadata={"help": "show a progress bar per file on stderr (only on a terminal)"},
    )

    def __post_init__(self) -> None:
        if self.format not in ("auto",) + FORMATS:
            raise ConfigError(f"ingest format must be one of auto, {', '.join(FORMATS)}; got {self.format!r}")
        if self.hh_field not in ("chosen", "rejected"):
            raise ConfigError(f"hh_field must be 'chosen' or 'rejected', got {self.hh_field!r}")
        if self.csv_header not in ("auto", "yes", "no"):
            raise ConfigError(f"csv_header must be auto, yes or no, got {self.csv_header!r}")
        if not isinstance(self.max_chars, int) or isinstance(self.max_chars, bool) or self.max_chars < 1:
            raise ConfigError(f"max_chars must be a positive integer, got {self.max_chars!r}")
        if not isinstance(self.row_group_size, int) or isinstance(self.row_group_size, bool) or self.row_group_size < 1:
            raise ConfigError(f"row_group_size must be a positive integer, got {self.row_group_size!r}")
        if not isinstance(self.split, str) or not self.split:
            raise ConfigError(f"split must be a non-empty string, got {self.split!r}")
