"""The resume cache: finished verdicts on disk, so an interrupted run asks the judge only for the rest."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from .base import Verdict


class JudgeCache:
    """Append-only JSONL of finished verdicts, so an interrupted run resumes where it stopped.

    Keys hash the judge's identity (spec and templates), the task and the
    texts. Each :meth:`put` appends its lines and fsyncs them before
    returning, so a verdict is on disk before the next one is asked for. A
    torn last line (a crash mid-write) is cut off when the cache is opened,
    so the next line appended starts on a line of its own.
    """

    def __init__(self, path: str | os.PathLike | None, judge_key: str) -> None:
        self.path = Path(path) if path else None
        self.judge_key = judge_key
        self._data: dict[str, Verdict] = {}
        if self.path and self.path.exists():
            self._load(self.path)

    def _load(self, path: Path) -> None:
        data = path.read_bytes()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            os.truncate(path, complete)
        for line in data[:complete].decode("utf-8", "replace").splitlines():
            try:
                row = json.loads(line)
                self._data[row["key"]] = Verdict(row["p"], row.get("reason"), row.get("raw"))
            except (ValueError, KeyError, TypeError):
                continue

    def key(self, task: str, *texts: str) -> str:
        h = hashlib.blake2b(digest_size=16)
        for part in (self.judge_key, task, *texts):
            h.update(part.encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
        return h.hexdigest()

    def get(self, key: str) -> Verdict | None:
        return self._data.get(key)

    def put(self, key: str, verdict: Verdict) -> None:
        self.put_many([(key, verdict)])

    def put_many(self, pairs: Iterable[tuple[str, Verdict]]) -> None:
        pairs = list(pairs)
        for k, v in pairs:
            self._data[k] = v
        if self.path and pairs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One write call per batch: a kill leaves whole lines and at most one torn tail.
            text = "".join(json.dumps({"key": k, "p": v.p, "reason": v.reason, "raw": v.raw}) + "\n" for k, v in pairs)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
