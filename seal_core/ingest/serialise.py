"""The text ingestion stores: a sample's metadata column and a rejected row's ``raw`` column."""

from __future__ import annotations

import json
from typing import Any

import orjson

from .formats import RowReject
from .readers import Source, csv_raw_text

RAW_MAX_CHARS = 2000


def clean_text(s: str) -> str:
    """Text safe to store: lone surrogates (undecodable input bytes) become U+FFFD."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _json_default(o: Any) -> Any:
    if isinstance(o, (bytes, bytearray)):
        return bytes(o).decode("utf-8", "replace")
    return str(o)


def raw_text(raw: Any, rec: Any, src: Source) -> str:
    """A rejected row as read (cut to ``RAW_MAX_CHARS``): the line, the CSV cells, or the record as JSON."""
    if type(raw) is bytes:
        s = raw[: RAW_MAX_CHARS * 4].decode("utf-8", "replace").rstrip("\r\n")
    elif type(raw) is list:
        s = csv_raw_text(raw, "\t" if src.kind == "tsv" else ",")
    elif rec is not None and not isinstance(rec, RowReject):
        try:
            s = orjson.dumps(rec, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:
            s = json.dumps(rec, default=_json_default, ensure_ascii=False)
    else:
        s = ""
    return clean_text(s[:RAW_MAX_CHARS])


def dump_metadata(meta: dict) -> str:
    """The metadata column: the record's other fields as JSON text."""
    if not meta:
        return "{}"
    try:
        # decode() also drops the 4 KiB buffer orjson allocates for every output
        return orjson.dumps(meta, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError as e:
        if "surrogates" in str(e):
            raise RowReject("invalid_utf8", "", "record holds bytes that are not valid UTF-8") from None
        # e.g. integers beyond 64 bits, which orjson refuses and json writes exactly
        text = json.dumps(meta, default=_json_default, ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise RowReject("invalid_utf8", "", "record holds text that is not valid UTF-8") from None
        return text


def canonical_metadata(meta: dict) -> str:
    """Metadata of a re-ingested canonical row: its original metadata, not the row's columns."""
    m = meta.get("metadata")
    if type(m) is str:
        try:
            if type(orjson.loads(m)) is dict:
                return m
        except orjson.JSONDecodeError:
            pass
    return dump_metadata(meta)
