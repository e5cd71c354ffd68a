"""What ingestion counts: per input file and for the whole run, and the summary ``seal ingest`` prints."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class FileStats:
    source: str
    type: str
    format: str
    format_note: str = ""
    rows_read: int = 0
    kept: int = 0
    duplicates: int = 0
    rejected_by_reason: Counter = field(default_factory=Counter)
    rejected_fields: Counter = field(default_factory=Counter)  # (reason, field), for the log only

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "type": self.type,
            "format": self.format,
            "format_note": self.format_note,
            "rows_read": self.rows_read,
            "kept": self.kept,
            "rejected": self.rejected,
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "duplicates": self.duplicates,
        }


@dataclass
class IngestResult:
    """What :func:`ingest` wrote and counted."""

    out_dir: Path
    samples_path: Path
    rejects_path: Path
    summary_path: Path
    config_path: Path
    rows_read: int
    kept: int
    rejected: int
    duplicates: int
    rejected_by_reason: dict[str, int]
    files: list[dict[str, Any]]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_read": self.rows_read,
            "kept": self.kept,
            "rejected": self.rejected,
            "rejected_by_reason": self.rejected_by_reason,
            "duplicates": self.duplicates,
            "files": self.files,
            "seconds": round(self.seconds, 3),
            "outputs": {
                "samples": str(self.samples_path),
                "rejects": str(self.rejects_path),
                "summary": str(self.summary_path),
                "config": str(self.config_path),
            },
        }


def format_summary(result: IngestResult) -> str:
    """The human-readable summary printed by ``seal ingest``."""
    rows = [(f["source"], f["type"], f["format"], f["rows_read"], f["kept"], f["rejected"], f["duplicates"])
            for f in result.files]
    w = max([len("source")] + [len(r[0]) for r in rows])
    wt = max([len("type")] + [len(r[1]) for r in rows])
    wf = max([len("format")] + [len(r[2]) for r in rows])
    head = f"{'source':<{w}}  {'type':<{wt}}  {'format':<{wf}}  {'read':>9}  {'kept':>9}  {'rejected':>9}  {'duplicates':>10}"
    lines = [head, "-" * len(head)]
    for f, r in zip(result.files, rows):
        lines.append(f"{r[0]:<{w}}  {r[1]:<{wt}}  {r[2]:<{wf}}  {r[3]:>9,}  {r[4]:>9,}  {r[5]:>9,}  {r[6]:>10,}")
        lines.append(f"    format {f['format']}: {f['format_note']}")
        if f["rejected_by_reason"]:
            lines.append(" " * 4 + "rejected: " + ", ".join(f"{k} {v:,}" for k, v in f["rejected_by_reason"].items()))
    lines.append("-" * len(head))
    lines.append(
        f"{'total':<{w}}  {'':<{wt}}  {'':<{wf}}  {result.rows_read:>9,}  {result.kept:>9,}  {result.rejected:>9,}  {result.duplicates:>10,}"
    )
    if result.rejected_by_reason:
        lines.append("rejected by reason: " + ", ".join(f"{k} {v:,}" for k, v in result.rejected_by_reason.items()))
    lines.append(f"samples: {result.samples_path} ({result.kept:,} rows)")
    lines.append(f"rejects: {result.rejects_path} ({result.rejected:,} rows)")
    lines.append(f"summary: {result.summary_path}")
    lines.append(f"config:  {result.config_path}")
    lines.append(f"time:    {result.seconds:.1f}s")
    return "\n".join(lines)
