"""Reading preference pairs and answer sets for the likelihood measures (:mod:`.likelihood`).

A pairs file is JSONL (optionally gzipped), one pair per line, in either form:

- ``prompt`` (one user turn) or ``messages`` (the conversation up to the answer, ending with a
  user turn), plus ``chosen`` (the safe answer) and ``rejected`` (the unsafe answer), strings;
- Anthropic hh-rlhf rows: ``chosen`` and ``rejected`` are whole transcripts
  (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``). Every turn before the final assistant turn is the
  prompt, and both transcripts must share it; the two final assistant turns are the answers.

An optional ``id`` names the pair (default: a hash of prompt and answers). An answer set
(``--references``, ``--unsafe``) holds one answer per row: ``messages`` ending with the
assistant's answer, ``prompt`` (or ``instruction`` + ``input``) with the answer in
``reference``, ``response``, ``output``, ``answer`` or ``completion``, or a pair row, of which
a reference set takes the ``chosen`` answer and an unsafe set the ``rejected`` one.

A row that cannot be used becomes a reject ``{source, line, field, reason, detail, raw}``,
the fields of ingest's rejects file.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError
from ..ingest import RowReject, parse_hh
from ..schema import compute_sample_id

Messages = list[dict[str, str]]
ANSWER_FIELDS = ("reference", "response", "output", "answer", "completion")
ROLES = ("system", "user", "assistant")
_RAW_CHARS = 2000


@dataclass
class Pair:
    id: str
    prompt: Messages  # the conversation up to the answers
    chosen: str
    rejected: str
    line: int


@dataclass
class Answer:
    id: str
    prompt: Messages
    answer: str
    line: int


def _str_field(row: dict, key: str) -> str:
    v = row.get(key)
    if v is None:
        raise RowReject("missing_field", key, f"field '{key}' is {'null' if key in row else 'missing'}")
    if not isinstance(v, str):
        raise RowReject("wrong_type", key, f"field '{key}' must be a string, got {type(v).__name__}")
    if not v.strip():
        raise RowReject("empty_field", key, f"field '{key}' is empty")
    return v.strip()


def _messages(row: dict) -> Messages:
    v = row["messages"]
    if not isinstance(v, list) or not v:
        raise RowReject("wrong_type", "messages", "field 'messages' must be a non-empty list of {role, content}")
    out: Messages = []
    for i, m in enumerate(v):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RowReject("wrong_type", where, f"{where} must be an object, got {type(m).__name__}")
        if m.get("role") not in ROLES:
            raise RowReject("unknown_role", f"{where}.role", f"{where}.role must be one of {', '.join(ROLES)}, got {m.get('role')!r}")
        content = m.get("content")
        if not isinstance(content, str) or not content.strip():
            raise RowReject("empty_field", f"{where}.content", f"{where}.content must be a non-empty string")
        out.append({"role": m["role"], "content": content.strip()})
    return out


def _prompt(row: dict) -> Messages:
    """The conversation up to the answer, from ``messages``, ``prompt`` or ``instruction`` (+ ``input``)."""
    if "messages" in row:
        msgs = _messages(row)
    elif "prompt" in row:
        msgs = [{"role": "user", "content": _str_field(row, "prompt")}]
    elif "instruction" in row:
        text = _str_field(row, "instruction")
        extra = row.get("input")
        if isinstance(extra, str) and extra.strip():
            text += "\n\n" + extra.strip()
        msgs = [{"role": "user", "content": text}]
    else:
        raise RowReject("missing_field", "prompt", "no 'prompt' or 'messages' field (nor hh-rlhf transcripts in chosen/rejected)")
    if msgs[-1]["role"] != "user":
        raise RowReject("bad_prompt", "messages", "'messages' must end with the user turn the answers reply to")
    return msgs


def _is_transcript(v: Any) -> bool:
    return isinstance(v, str) and v.lstrip().startswith(("Human:", "\n\nHuman:"))


def _hh_pair(row: dict) -> tuple[Messages, str, str]:
    """(prompt, chosen answer, rejected answer) of an hh-rlhf row."""
    sides = {}
    for key in ("chosen", "rejected"):
        if not isinstance(row.get(key), str):
            _str_field(row, key)  # raises the missing/wrong-type reject
        turns = parse_hh(row[key], key)
        if turns[-1][0] != "assistant":
            raise RowReject("no_answer", key, f"transcript '{key}' does not end with an Assistant turn")
        if not any(role == "user" for role, _ in turns[:-1]):
            raise RowReject("no_prompt", key, f"transcript '{key}' has no Human turn before its final answer")
        sides[key] = turns
    if sides["chosen"][:-1] != sides["rejected"][:-1]:
        raise RowReject("prompt_mismatch", "rejected",
                        "transcripts 'chosen' and 'rejected' differ before their final Assistant turn")
    prompt = [{"role": r, "content": c} for r, c in sides["chosen"][:-1]]
    return prompt, sides["chosen"][-1][1], sides["rejected"][-1][1]


def _pair_parts(row: dict) -> tuple[Messages, str, str]:
    if "prompt" not in row and "messages" not in row and (_is_transcript(row.get("chosen")) or _is_transcript(row.get("rejected"))):
        return _hh_pair(row)
    return _prompt(row), _str_field(row, "chosen"), _str_field(row, "rejected")


def _row_id(row: dict, prompt: Messages, answers: list[str]) -> str:
    rid = row.get("id")
    if rid is None or rid == "":
        return compute_sample_id(prompt + [{"role": "assistant", "content": a} for a in answers])
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise RowReject("wrong_type", "id", f"field 'id' must be a string or integer, got {type(rid).__name__}")
    return str(rid)


def _records(path: Path) -> Iterator[tuple[int, str, dict | None, RowReject | None]]:
    """(line, raw text, object or None, reject or None) per non-blank line."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    yield lineno, line, None, RowReject("malformed_json", "", f"not valid JSON ({e.msg} at column {e.colno})")
                    continue
                if not isinstance(obj, dict):
                    yield lineno, line, None, RowReject("not_an_object", "", f"expected a JSON object, got {type(obj).__name__}")
                    continue
                yield lineno, line, obj, None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason})") from None
    except (OSError, EOFError) as e:
        raise InputError(f"cannot read {path}: {e}") from None


def reject_row(path: str | os.PathLike, line: int, r: RowReject, raw: str) -> dict[str, Any]:
    return {"source": str(path), "line": line, "field": r.field, "reason": r.reason, "detail": r.detail,
            "raw": raw.rstrip("\n")[:_RAW_CHARS]}


def _read(path: str | os.PathLike, parse, what: str) -> tuple[list, list[dict[str, Any]]]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"{what} {path} does not exist" if not p.exists() else f"{what} {path} is not a file")
    items, rejects, seen = [], [], {}
    for lineno, raw, obj, bad in _records(p):
        try:
            if bad is not None:
                raise bad
            item = parse(obj, lineno)
            if item.id in seen:
                raise RowReject("duplicate_id", "id", f"duplicate id {item.id!r} (first on line {seen[item.id]})")
        except RowReject as r:
            rejects.append(reject_row(path, lineno, r, raw))
            continue
        seen[item.id] = lineno
        items.append(item)
    return items, rejects


def read_pairs(path: str | os.PathLike) -> tuple[list[Pair], list[dict[str, Any]]]:
    """The pairs of a pairs file, in file order, and the rejected rows (see the module doc)."""
    def parse(row: dict, line: int) -> Pair:
        prompt, chosen, rejected = _pair_parts(row)
        if chosen == rejected:
            raise RowReject("identical_answers", "rejected", "'chosen' and 'rejected' are the same answer")
        return Pair(_row_id(row, prompt, [chosen, rejected]), prompt, chosen, rejected, line)

    return _read(path, parse, "pairs file")


def read_answers(path: str | os.PathLike, pair_side: str) -> tuple[list[Answer], list[dict[str, Any]]]:
    """The answers of an answer set; ``pair_side`` ("chosen" or "rejected") is the answer a pair row gives."""
    def parse(row: dict, line: int) -> Answer:
        if "chosen" in row and "rejected" in row:
            prompt, chosen, rejected = _pair_parts(row)
            answer = chosen if pair_side == "chosen" else rejected
        elif "messages" in row:
            msgs = _messages(row)
            if msgs[-1]["role"] != "assistant" or len(msgs) < 2:
                raise RowReject("no_answer", "messages", "'messages' must end with the assistant's answer to a user turn")
            prompt, answer = msgs[:-1], msgs[-1]["content"]
        else:
            key = next((k for k in ANSWER_FIELDS if k in row), None)
            if key is None:
                raise RowReject("missing_field", "reference", f"no answer field (one of {', '.join(ANSWER_FIELDS)})")
            prompt, answer = _prompt(row), _str_field(row, key)
        return Answer(_row_id(row, prompt, [answer]), prompt, answer, line)

    return _read(path, parse, "answers file")


__all__ = ["Pair", "Answer", "read_pairs", "read_answers", "reject_row", "ANSWER_FIELDS"]
