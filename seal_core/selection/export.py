"""The JSONL export of the selection (``selected.jsonl``) for other trainers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from ..io import atomic_path

# Rows converted to Python objects at a time when writing the JSONL export.
_EXPORT_CHUNK = 4096


def alpaca_record(messages: list[dict], multiturn: str = "reject") -> tuple[dict | None, str | None]:
    """Alpaca form of a conversation, or (None, reason) when it has none."""
    roles = [m["role"] for m in messages]
    system = None
    turns = messages
    if roles and roles[0] == "system":
        system = messages[0]["content"]
        turns = messages[1:]
    turn_roles = [m["role"] for m in turns]
    if len(turn_roles) < 2 or len(turn_roles) % 2 or any(
        r != ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(turn_roles)
    ):
        return None, "not_alternating_user_assistant"
    if len(turn_roles) > 2 and multiturn != "history":
        return None, "multi_turn"
    rec: dict[str, Any] = {"instruction": turns[-2]["content"], "input": "", "output": turns[-1]["content"]}
    if system is not None:
        rec["system"] = system
    if len(turn_roles) > 2:
        rec["history"] = [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns) - 2, 2)]
    return rec, None


class JsonlExporter:
    """Writes ``selected.jsonl`` (and, for alpaca, ``export_rejects.jsonl``) atomically, as rows come."""

    def __init__(self, mode: str, multiturn: str, out_dir: Path):
        import orjson

        self._dumps = orjson.dumps
        self.mode = mode
        self.multiturn = multiturn
        self.out_dir = out_dir
        self.n_written = 0
        self.rejects: dict[str, int] = {}
        self._fh = self._rejects_fh = None
        self._ctx = self._rejects_ctx = None

    def __enter__(self) -> "JsonlExporter":
        if self.mode != "none":
            self._ctx = atomic_path(self.out_dir / "selected.jsonl")
            self._fh = open(self._ctx.__enter__(), "wb")
        if self.mode == "alpaca":
            self._rejects_ctx = atomic_path(self.out_dir / "export_rejects.jsonl")
            self._rejects_fh = open(self._rejects_ctx.__enter__(), "wb")
        return self

    def __exit__(self, *exc) -> None:
        for fh, ctx in ((self._fh, self._ctx), (self._rejects_fh, self._rejects_ctx)):
            if fh is not None:
                fh.close()
                ctx.__exit__(*exc)

    def write(self, table: pa.Table) -> None:
        if self.mode == "none":
            return
        dumps = self._dumps
        for off in range(0, table.num_rows, _EXPORT_CHUNK):
            part = table.slice(off, _EXPORT_CHUNK)
            ids = part.column("sample_id").to_pylist()
            msgs = part.column("messages").to_pylist()
            lines = []
            for sid, m in zip(ids, msgs):
                if self.mode == "messages":
                    lines.append(dumps({"sample_id": sid, "messages": m}))
                    continue
                rec, reason = alpaca_record(m, self.multiturn)
                if rec is None:
                    self.rejects[reason] = self.rejects.get(reason, 0) + 1
                    self._rejects_fh.write(dumps({"sample_id": sid, "reason": reason}) + b"\n")
                    continue
                lines.append(dumps({"sample_id": sid, **rec}))
            if lines:
                self._fh.write(b"\n".join(lines) + b"\n")
                self.n_written += len(lines)
