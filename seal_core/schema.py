"""The canonical sample schema shared by every stage.

A sample is one conversation:

- ``sample_id``: a stable content hash of the conversation (roles and contents
  only), so the same conversation gets the same id in any input format and on
  any run;
- ``messages``: a list of ``{role, content}``, roles ``system``/``user``/
  ``assistant``, the last turn being the assistant's;
- ``source``: the input file it came from;
- ``metadata``: JSON text holding every other field of the input record.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Mapping, Sequence

import pyarrow as pa

ROLES = ("system", "user", "assistant")

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])

CANONICAL_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("messages", pa.list_(MESSAGE_TYPE)),
        ("source", pa.string()),
        ("metadata", pa.string()),
    ]
)

# 96 bits: the birthday bound for 10M samples is ~1e-15, and the id stays short
# enough to read in a table.
_ID_BYTES = 12


def _length_prefixed(s: str) -> bytes:
    b = s.encode("utf-8")
    return len(b).to_bytes(8, "little") + b


# Prebuilt: ingestion hashes millions of conversations.
_ROLE_FIELDS = {r: _length_prefixed(r) for r in ROLES}


def sample_digest(turns: Iterable[Sequence[str]]) -> bytes:
    """The ``sample_id`` of ``(role, content)`` turns as raw bytes (its hex form is the id).

    Each role and content is length-prefixed so that no two different conversations
    can serialise to the same byte string (``"ab" + "c"`` vs ``"a" + "bc"``).
    """
    h = hashlib.blake2b(digest_size=_ID_BYTES)
    update = h.update
    for role, content in turns:
        b = content.encode("utf-8")
        update(_ROLE_FIELDS.get(role) or _length_prefixed(role))
        update(len(b).to_bytes(8, "little"))
        update(b)
    return h.digest()


def compute_sample_id(messages: Iterable[Mapping[str, str]] | Sequence[tuple[str, str]]) -> str:
    """Hash a conversation's roles and contents (messages or ``(role, content)`` pairs) into a stable hex id."""
    return sample_digest((m["role"], m["content"]) if isinstance(m, Mapping) else m for m in messages).hex()
