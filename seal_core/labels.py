"""Labels files: JSONL objects that give samples a label (e.g. ``good``/``harmful``), for AUROC and label mixes.

Each object holds an id field, joined to the samples (``sample_id`` by default, or
a field of the pool's metadata such as the input record's ``id``), and a label
field (``label`` by default).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

from .errors import InputError


def _lines(fh, path: Path):
    """``(line number, text)`` of a file opened in binary; bytes that are not UTF-8 are one error naming the line."""
    for lineno, raw in enumerate(fh, 1):
        try:
            yield lineno, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{path} line {lineno}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def read_labels(
    path: str | os.PathLike,
    id_field: str = "sample_id",
    label_field: str = "label",
    hints: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """``{str(record[id_field]): str(record[label_field])}`` of a JSONL file; blank lines are skipped.

    A line that is not a JSON object, lacks either field, or labels an id already
    labelled otherwise raises :class:`InputError` naming the line. ``hints`` maps a
    field name to text appended to the error when that field is missing (how to
    name another field). A file without labels gives ``{}``.
    """
    p = Path(path)
    try:
        fh = open(p, "rb")
    except OSError as e:
        raise InputError(f"cannot read labels file {p}: {e.strerror or e}") from None
    hints = hints or {}
    out: dict[str, str] = {}
    with fh:
        for lineno, line in _lines(fh, p):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{p} line {lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise InputError(f"{p} line {lineno}: expected a JSON object, got {type(rec).__name__}")
            if label_field not in rec:
                raise InputError(f"{p} line {lineno}: no field {label_field!r}{hints.get(label_field, '')}")
            if id_field not in rec:
                raise InputError(f"{p} line {lineno}: no field {id_field!r} (fields: {', '.join(rec)})"
                                 f"{hints.get(id_field, '')}")
            key, label = str(rec[id_field]), str(rec[label_field])
            if out.get(key, label) != label:
                raise InputError(f"{p} line {lineno}: {id_field} {key!r} labelled both {out[key]!r} and {label!r}")
            out[key] = label
    return out
