"""LLaVA records as LLaMA-Factory sharegpt lines: the encoder, and the fast paths that copy plain-layout records.

Plain layout: exactly ``{"id", "image"?, "conversations"}`` in that order, ``image`` one path (the layout of
``llava_v1_5_mix665k.json``). Such a record's line is made from its bytes: the conversations are copied as they are in
the input, with line breaks deleted so that each record is one output line (JSON strings hold no raw line breaks);
only ``id`` (quoted if an integer) and ``image`` (put in a list) are rewritten. Decoding the conversations as a list
of turns proves the layout and checks the turns' types in one parse; the rules are :mod:`.records`' own. A plain
record in doubt (a broken rule, bad UTF-8, an escape where the batch path does not decode them) gets None, and the
typed decoder then validates it and words the error: never a different line.
"""

from __future__ import annotations

import itertools
import json
import operator
import re
from typing import Any

import msgspec

from .records import ANY, Turn, image_count, json_array, to_sharegpt, turns_ok


#: the columns of a LLaMA-Factory sharegpt dataset registered for our output files
SHAREGPT_COLUMNS = {"messages": "conversations", "images": "image"}

_ENCODER = json.JSONEncoder(ensure_ascii=False)
_TURNS_OF = msgspec.json.Decoder(list[list[Turn]])

# The plain layout, from pieces shared with the id pass of reading.py (ID_FIRST)
_WS = r"[ \t\n\r]*"
_STRING_CONTENT = r'[^"\\\x00-\x1f]*(?:\\.[^"\\\x00-\x1f]*)*'
_STRING = rf'"{_STRING_CONTENT}"'
_INTEGER = r"-?(?:0|[1-9][0-9]*)"
_OPEN_ID = rf'\{{{_WS}"id"{_WS}:{_WS}'
#: a record that opens with its id (the usual layout): the id's literal
ID_FIRST = re.compile(rf"{_OPEN_ID}({_STRING}|{_INTEGER}){_WS}[,}}]".encode())
#: a whole plain-layout record: the id's content (a string's, or an integer), the image literal, and the
#: conversations up to the last "]" before the closing brace (a key after them: another layout)
_PLAIN_RECORD = re.compile(
    rf'{_OPEN_ID}(?:"({_STRING_CONTENT})"|({_INTEGER})){_WS},{_WS}'
    rf'(?:"image"{_WS}:{_WS}({_STRING}){_WS},{_WS})?"conversations"{_WS}:{_WS}'
    r"((?s:.*)\])[ \t\n\r]*\}\Z".encode()
)
_PLAIN_LINE = b'{"id": "%b%b", "image": [%b], "conversations": %b}'
_GROUPS = operator.methodcaller("groups", b"")
_LITERALS_OF = operator.itemgetter(0, 1, 2)
_CONVERSATION_OF = operator.itemgetter(3)
_IMAGE_LITERAL_OF = operator.itemgetter(2)
_ONE_LINE = operator.methodcaller("translate", None, b"\r\n")  # JSON strings hold no raw line breaks


def encode_record(record: dict) -> bytes:
    """One record as compact UTF-8 JSON (``", "`` and ``": "`` separators, as the earlier releases wrote)."""
    return _ENCODER.encode(record).encode("utf-8")


def literal_value(literal: bytes) -> str | int:
    """The value of a string or integer literal (``UnicodeDecodeError`` on bad UTF-8)."""
    if literal[:1] != b'"':
        return int(literal)
    if b"\\" in literal:
        return msgspec.json.decode(literal)
    return literal[1:-1].decode("utf-8")


def _image_path(literal: bytes) -> str | None:
    """A plain record's image path; None when it has no ``image`` key."""
    return literal_value(literal) if literal else None  # type: ignore[return-value]


def plain_matches(raws: list[Any]) -> tuple[list[bool], list[tuple[bytes, bytes, bytes, bytes]]]:
    """Which records have the plain layout, and the parts of those (for :func:`plain_sharegpt_lines`)."""
    matches = list(map(_PLAIN_RECORD.match, raws))
    is_plain = list(map(operator.is_not, matches, itertools.repeat(None)))
    return is_plain, list(map(_GROUPS, itertools.compress(matches, is_plain)))


def _plain_lines(groups: list[tuple[bytes, bytes, bytes, bytes]], n_images: list[int]) -> list[bytes] | None:
    """The lines of plain-layout records whose literals are valid, if their turns meet the rules (else None): the
    turns of all of them decoded in one parse and checked in list operations; each line one ``%`` and a translate."""
    try:
        turns_of = _TURNS_OF.decode(json_array(list(map(_CONVERSATION_OF, groups))))
    except (msgspec.MsgspecError, RecursionError, UnicodeDecodeError):
        return None
    if len(turns_of) != len(groups) or not turns_ok(turns_of, n_images):
        return None
    return list(map(_ONE_LINE, map(_PLAIN_LINE.__mod__, groups)))


def plain_sharegpt_bytes(raw: Any) -> tuple[bytes, list[str]] | None:
    """The sharegpt line and images of a valid plain-layout record, made from its bytes; None for any other record
    (and for a plain one that breaks a rule: the typed decoder then words the error)."""
    match = _PLAIN_RECORD.match(bytes(raw))
    if match is None:
        return None
    groups = match.groups(b"")
    try:
        if groups[0]:
            literal_value(b'"' + groups[0] + b'"')  # valid UTF-8 (escapes decoded)
        path = _image_path(groups[2])
    except (msgspec.MsgspecError, UnicodeDecodeError):
        return None
    lines = _plain_lines([groups], [image_count(path)])
    return None if lines is None else (lines[0], [] if path is None else [path])


def plain_sharegpt_lines(
    groups: list[tuple[bytes, bytes, bytes, bytes]],
) -> tuple[list[bytes], list[str | None]] | None:
    """:func:`plain_sharegpt_bytes` of many plain-layout records (:func:`plain_matches`): their lines and each one's
    image path (None: no image).

    The id and image literals are checked in one UTF-8 decode. None when any record is in doubt (a broken rule, a
    backslash in a literal, an empty image): then go one by one, which names the first bad record.
    """
    if not groups:
        return [], []
    literals = b"".join(itertools.chain.from_iterable(map(_LITERALS_OF, groups)))
    if b"\\" in literals:
        return None
    try:
        literals.decode("utf-8")
    except UnicodeDecodeError:
        return None
    paths = list(map(_image_path, map(_IMAGE_LITERAL_OF, groups)))
    lines = _plain_lines(groups, list(map(image_count, paths)))
    return None if lines is None else (lines, paths)


def sharegpt_bytes(raw: Any, copy_plain: bool = True) -> tuple[bytes, list[str]]:
    """A validated record's sharegpt output line and its images.

    ``copy_plain``: plain-layout records keep the input's formatting (``mix``, the fast path); otherwise every record
    is re-encoded (``convert``, whose output earlier releases always re-encoded).
    """
    plain = plain_sharegpt_bytes(raw) if copy_plain else None  # (validated again: cheap, and never wrong)
    if plain is not None:
        return plain
    record = to_sharegpt(ANY.decode(raw))
    return encode_record(record), record["image"]
