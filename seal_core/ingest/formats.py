"""The supported record formats: how each is recognised and normalised.

Each format is one :class:`RecordFormat` in :data:`RECORD_FORMATS` (and its name
in :data:`FormatName`); adding a format means adding one class here. Its
``normalise`` takes one record (a dict) and returns ``(turns, metadata)``:
``turns`` is a list of ``(role, content)`` tuples with contents stripped and
consecutive turns of the same role merged (joined with a blank line), and
``metadata`` is the record without the fields that made the conversation. A
record that cannot become a sample raises :class:`RowReject` with a stable
reason code and the offending field.
"""

from __future__ import annotations

import re
import typing
from abc import ABC, abstractmethod
from collections import Counter
from typing import Any, ClassVar, Iterable, Literal

import orjson

from ..errors import InputError


Turns = list[tuple[str, str]]


class RowReject(Exception):
    """One record is unusable; it goes to rejects.parquet and ingestion goes on."""

    __slots__ = ("reason", "field", "detail")

    def __init__(self, reason: str, field: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.field = field
        self.detail = detail


MESSAGE_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
}

# Response column names accepted by the prompt-response format, in order of preference.
RESPONSE_KEYS = ("response", "completion", "answer")

# "\n\nHuman: " / "\n\nAssistant: " open a turn; the space is optional so that a
# transcript ending in "\n\nAssistant:" (trailing space stripped by some tools) still parses.
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")


def _text(rec: dict, key: str, *, required: bool = True) -> str:
    v = rec.get(key)
    if v is None:
        if required:
            what = "is null" if key in rec else "is missing"
            raise RowReject("missing_field", key, f"field '{key}' {what}")
        return ""
    if type(v) is not str:
        raise RowReject("wrong_type", key, f"field '{key}' must be a string, got {type(v).__name__}")
    v = v.strip()
    if required and not v:
        raise RowReject("empty_field", key, f"field '{key}' is empty")
    return v


def _json_list(rec: dict, key: str) -> list:
    if key not in rec or rec[key] is None:
        raise RowReject("missing_field", key, f"field '{key}' is {'null' if key in rec else 'missing'}")
    v = rec[key]
    if type(v) is str and v.lstrip().startswith("["):
        # A CSV cell (or a stringified column) holding the list as JSON text.
        try:
            v = orjson.loads(v)
        except orjson.JSONDecodeError as e:
            raise RowReject("malformed_json", key, f"field '{key}' is a string but not valid JSON: {e}") from None
    if type(v) is not list:
        raise RowReject("wrong_type", key, f"field '{key}' must be a list of turns, got {type(v).__name__}")
    if not v:
        raise RowReject("empty_field", key, f"field '{key}' is an empty list")
    return v


def _turns(items: list, key: str, role_key: str, content_key: str, role_map: dict[str, str],
           alt_keys: tuple[str, str] | None = None) -> Turns:
    """The careful path: names the first offending field of a list of turns."""
    turns: Turns = []
    for i, m in enumerate(items):
        if type(m) is not dict:
            raise RowReject("wrong_type", f"{key}[{i}]", f"{key}[{i}] must be an object, got {type(m).__name__}")
        rk, ck = role_key, content_key
        # A turn may also use the alternative keys; in Parquet (one column per key) the unused pair is null.
        if alt_keys is not None and alt_keys[0] in m and (rk not in m or (m[rk] is None and m[alt_keys[0]] is not None)):
            rk, ck = alt_keys
        role = m.get(rk)
        if type(role) is not str:
            if role is None:
                raise RowReject("missing_field", f"{key}[{i}].{rk}", f"{key}[{i}] has no '{rk}'")
            raise RowReject("wrong_type", f"{key}[{i}].{rk}", f"{key}[{i}].{rk} must be a string, got {type(role).__name__}")
        r = role_map.get(role)
        if r is None:
            r = role_map.get(role.strip().lower())
            if r is None:
                raise RowReject("unknown_role", f"{key}[{i}].{rk}",
                                f"unknown role {role!r} in {key}[{i}] (expected {', '.join(sorted(role_map))})")
        content = m.get(ck)
        if type(content) is not str:
            if content is None:
                raise RowReject("missing_field", f"{key}[{i}].{ck}", f"{key}[{i}] has no '{ck}'")
            raise RowReject("wrong_type", f"{key}[{i}].{ck}",
                            f"{key}[{i}].{ck} must be a string, got {type(content).__name__}")
        content = content.strip()
        if not content:
            if r == "system":
                continue  # an empty system prompt says nothing; many ShareGPT dumps carry one
            raise RowReject("empty_field", f"{key}[{i}].{ck}", f"{key}[{i}] ({r}) has empty content")
        if turns and turns[-1][0] == r:
            turns[-1] = (r, turns[-1][1] + "\n\n" + content)
        else:
            turns.append((r, content))
    return turns


_ALPACA_KEYS = ("instruction", "input", "output")


def parse_hh(text: str, field: str) -> Turns:
    """Split an Anthropic HH transcript into merged, stripped turns."""
    if not text.startswith("\n\n"):
        s = text.lstrip()
        if s.startswith(("Human:", "Assistant:")):
            text = "\n\n" + s  # leading blank line lost by some exports
    parts = _HH_TURN.split(text)
    if len(parts) == 1:
        raise RowReject("malformed_transcript", field, f"field '{field}' has no '\\n\\nHuman: ' / '\\n\\nAssistant: ' turns")
    if parts[0].strip():
        # A preamble cannot be attributed to a speaker; guessing would train on a wrong role.
        raise RowReject("malformed_transcript", field,
                        f"field '{field}' has text before its first '\\n\\nHuman: ' turn: {parts[0].strip()[:60]!r}")
    turns: Turns = []
    n = (len(parts) - 1) // 2
    for j in range(n):
        role = "user" if parts[1 + 2 * j] == "Human" else "assistant"
        content = parts[2 + 2 * j].strip()
        if not content:
            if j == n - 1 and role == "assistant":
                raise RowReject("empty_field", field, f"field '{field}': the final assistant turn is empty")
            raise RowReject("empty_field", field, f"field '{field}': turn {j + 1} ({role}) is empty")
        if turns and turns[-1][0] == role:
            turns[-1] = (role, turns[-1][1] + "\n\n" + content)
        else:
            turns.append((role, content))
    return turns


def _is_hh_text(v: Any) -> bool:
    return type(v) is str and ("\n\nHuman:" in v[:4000] or v.lstrip().startswith("Human:"))


class RecordFormat(ABC):
    """One record format: how a record of it is recognised, normalised and described."""

    name: ClassVar[str]
    # CSV column names that mark a first row as a header (--csv-header auto).
    header_fields: ClassVar[tuple[str, ...]]
    # How the error for an undetectable file names this format's fields.
    fields_hint: ClassVar[str]

    @abstractmethod
    def looks_like(self, rec: dict) -> bool:
        """Whether a record has this format's fields (format detection)."""

    @abstractmethod
    def normalise(self, rec: dict, cfg: Any = None) -> tuple[Turns, dict]:
        """``(turns, metadata)`` of a record; raises :class:`RowReject` naming the offending field."""

    def parse(self, rec: dict, cfg: Any = None) -> tuple[Turns, dict]:
        """What ingestion calls for each record: :meth:`normalise`, or a faster path to the same result."""
        return self.normalise(rec, cfg)

    def conversation_field(self, cfg: Any = None) -> str:
        """The field conversation-level rejects name ('' when the format always makes a user + assistant pair)."""
        return ""

    def label(self, cfg: Any = None) -> str:
        """The format as logged and summarised."""
        return self.name


class TurnListFormat(RecordFormat):
    """A record holding a list of turn objects under ``list_key``."""

    list_key: ClassVar[str]
    role_key: ClassVar[str]
    content_key: ClassVar[str]
    roles: ClassVar[dict[str, str]]
    alt_keys: ClassVar[tuple[str, str] | None] = None  # (role, content) keys also accepted in a turn

    def looks_like(self, rec: dict) -> bool:
        return self.list_key in rec

    def normalise(self, rec: dict, cfg: Any = None) -> tuple[Turns, dict]:
        key = self.list_key
        turns = _turns(_json_list(rec, key), key, self.role_key, self.content_key, self.roles, self.alt_keys)
        return turns, {k: v for k, v in rec.items() if k != key}

    def parse(self, rec: dict, cfg: Any = None) -> tuple[Turns, dict]:
        turns = self._well_formed_turns(rec.get(self.list_key))
        if not turns:
            return self.normalise(rec, cfg)
        meta = rec.copy()
        del meta[self.list_key]
        return turns, meta

    def _well_formed_turns(self, items: Any) -> Turns | None:
        """The common case in one pass: known roles, non-empty string contents, alternating speakers.

        None for anything else, which :meth:`normalise` then merges, drops or rejects naming the field.
        """
        if type(items) is not list:
            return None
        roles, role_key, content_key = self.roles, self.role_key, self.content_key
        turns: Turns = []
        prev = None
        try:
            for m in items:
                role = roles[m[role_key]]
                content = str.strip(m[content_key])  # TypeError, not bytes.strip, for a binary column
                if not content or role == prev:
                    return None
                turns.append((role, content))
                prev = role
        except (KeyError, TypeError, AttributeError):
            return None
        return turns

    def conversation_field(self, cfg: Any = None) -> str:
        return self.list_key


class MessagesFormat(TurnListFormat):
    name = "messages"
    header_fields = ("messages",)
    fields_hint = "messages"
    list_key, role_key, content_key, roles = "messages", "role", "content", MESSAGE_ROLES


class ShareGPTFormat(TurnListFormat):
    name = "sharegpt"
    header_fields = ("conversations",)
    fields_hint = "conversations"
    list_key, role_key, content_key, roles = "conversations", "from", "value", SHAREGPT_ROLES
    alt_keys = ("role", "content")


class HHFormat(RecordFormat):
    name = "hh"
    header_fields = ("chosen", "rejected")
    fields_hint = "chosen/rejected (HH)"

    def looks_like(self, rec: dict) -> bool:
        return _is_hh_text(rec.get("chosen")) or _is_hh_text(rec.get("rejected"))

    def normalise(self, rec: dict, cfg: Any = None) -> tuple[Turns, dict]:
        field = self.conversation_field(cfg)
        v = rec.get(field)
        if v is None:
            raise RowReject("missing_field", field, f"field '{field}' is {'null' if field in rec else 'missing'}")
        if type(v) is not str:
            raise RowReject("wrong_type", field, f"field '{field}' must be a transcript string, got {type(v).__name__}")
        return parse_hh(v, field), {k: v for k, v in rec.items() if k != field}

    def conversation_field(self, cfg: Any = None) -> str:
        return cfg.hh_field if cfg is not None else "chosen"

    def label(self, cfg: Any = None) -> str:
        return f"hh ({self.conversation_field(cfg)})"


class AlpacaFormat(RecordFormat):
    name = "alpaca"
    header_fields = _ALPACA_KEYS
    fields_hint = "instruction+output (Alpaca)"

    def looks_like(self, rec: dict) -> bool:
        return "instruction" in rec and "output" in rec

    def normalise(self, rec: dict, cfg: Any = None) -> tuple[Turns, dict]:
        instruction = _text(rec, "instruction")
        inp = _text(rec, "input", required=False)
        output = _text(rec, "output")
        user = instruction + "\n\n" + inp if inp else instruction
        return [("user", user), ("assistant", output)], {k: v for k, v in rec.items() if k not in _ALPACA_KEYS}


def _response_key(rec: dict) -> str:
    """The first response field holding a value, else the first present (its reject says null), else 'response'."""
    # In Parquet every row has every column, so the response may sit under a later name, the others null.
    for k in RESPONSE_KEYS:
        if rec.get(k) is not None:
            return k
    return next((k for k in RESPONSE_KEYS if k in rec), "response")


class PromptResponseFormat(RecordFormat):
    name = "prompt-response"
    header_fields = ("prompt",) + RESPONSE_KEYS
    fields_hint = "prompt+response"

    def looks_like(self, rec: dict) -> bool:
        return "prompt" in rec

    def normalise(self, rec: dict, cfg: Any = None) -> tuple[Turns, dict]:
        prompt = _text(rec, "prompt")
        key = _response_key(rec)
        response = _text(rec, key)
        return [("user", prompt), ("assistant", response)], {k: v for k, v in rec.items() if k != "prompt" and k != key}


# The names --format accepts, in the order help and errors list them.
FormatName = Literal["messages", "alpaca", "sharegpt", "hh", "prompt-response"]
FORMATS: tuple[str, ...] = typing.get_args(FormatName)

# Most specific first: a record is of the first format it looks like, and a tied vote goes the same way.
RECORD_FORMATS: dict[str, RecordFormat] = {
    f.name: f for f in (MessagesFormat(), ShareGPTFormat(), HHFormat(), AlpacaFormat(), PromptResponseFormat())
}


def record_format(rec: dict) -> str | None:
    """The format a single record looks like, most specific first; None if none."""
    return next((f.name for f in RECORD_FORMATS.values() if f.looks_like(rec)), None)


def detect_format(records: Iterable[Any], source: str) -> tuple[str, str]:
    """Majority format of the given sample of records, with a short explanation."""
    votes: Counter[str] = Counter()
    keys: Counter[str] = Counter()
    n_objects = 0
    for rec in records:
        if type(rec) is not dict:
            continue
        n_objects += 1
        keys.update(rec.keys())
        fmt = record_format(rec)
        if fmt is not None:
            votes[fmt] += 1
    if not votes:
        if n_objects == 0:
            raise InputError(f"{source}: cannot detect the format: no JSON object among the first records")
        seen = ", ".join(k for k, _ in keys.most_common(8))
        *hints, last = (f.fields_hint for f in RECORD_FORMATS.values())
        raise InputError(
            f"{source}: cannot detect the format from fields [{seen}]; expected {', '.join(hints)} or {last}; "
            "pass --format"
        )
    order = {f: i for i, f in enumerate(RECORD_FORMATS)}
    fmt = min(votes, key=lambda f: (-votes[f], order[f]))
    return fmt, f"{votes[fmt]} of the first {n_objects} records"
