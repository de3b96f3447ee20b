"""JSON and JSON Lines for evaluation files, read one way: msgspec decoding, strict types, one rule for a cut-off line.

The rule for a cut-off last line (the same for every caller): ``generate`` appends one line per answer and a killed
run can leave its last append unfinished, so **the last line, when it has no closing newline and does not parse, is
a cut-off write**. Answer files drop it with a warning (``generate`` also removes it from the file before appending);
input files call it an error (``cut_off="error"``), since a prompt file that ends mid-record is incomplete. Any other
line that does not parse, or does not have the expected types, is damage: a ``DataError`` naming file, line and field.

Decoding goes through msgspec (a typed Struct per record kind, ``eval/records.py``). msgspec refuses what Python's
``json`` lets through (NaN, a lone surrogate such as ``"\\ud800"``), and its words change between releases, so no
message quotes it or Python's ``json``: a failed decode is explained by ``explain`` (our UTF-8 check, grammar scanner
and a walk for lone surrogates), a wrong type by ``rejection_align.json_problems`` (the place from msgspec's error,
the problem from our schema walk).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec

from .. import json_problems
from ..errors import DataError


logger = logging.getLogger(__name__)

_ANY = msgspec.json.Decoder()
MAX_DEPTH_WORDS = "nested too deeply to read (more than about 1,000 levels)"


def _kind(value: Any) -> str:
    """``an int``, ``a dict``: the type of a wrong value, for messages."""
    name = {"str": "string", "dict": "object", "list": "list", "NoneType": "null"}.get(type(value).__name__)
    name = name or type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _lone_surrogate(value: Any, path: str = "") -> str | None:
    """The JSON path of the first string (or key) holding a lone surrogate, which is not valid Unicode text."""
    stack = [(value, path)]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return path or "$"
        elif isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                if _lone_surrogate(key) is not None:
                    return f"{path}.{key.encode('utf-8', 'backslashreplace').decode()} (the key)"
                stack.append((item, f"{path}.{key}"))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]") for i, item in reversed(list(enumerate(value))))
    return None


class _Constant(ValueError):
    """NaN or Infinity, which Python's ``json`` reads and JSON does not have."""


def _refuse_constant(name: str) -> Any:
    raise _Constant(name)


def explain(data: bytes | str) -> str:
    """Why ``data`` is not a valid JSON document, in our words (never msgspec's or ``json``'s)."""
    if isinstance(data, str):
        raw = data.encode("utf-8", "surrogatepass")
    else:
        raw, bad = data, json_problems.utf8_problem(data)
        if bad is not None:
            return f"not UTF-8 text ({bad})"
    try:
        value = json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:
        return MAX_DEPTH_WORDS
    except _Constant as err:
        return f"not valid JSON ({err.args[0]} is not a JSON value: JSON has no NaN or Infinity)"
    except ValueError:  # not JSON (or an integer too long for Python): our scanner says where and what
        return json_problems.describe(raw)
    where = _lone_surrogate(value)
    if where is not None:
        field = where.lstrip("$.")
        return f"{('field ' + repr(field)) if field else 'the value'} is not valid Unicode text (a lone surrogate)"
    return json_problems.describe(raw)


def field_of(err: msgspec.ValidationError) -> str:
    """The field a validation error is at (``benign``, ``[1].prompt``): its location only, never its words."""
    return json_problems.dotted(json_problems.path_of(err) or ())


def decode(data: bytes | str, decoder: msgspec.json.Decoder = _ANY, *, where: str) -> Any:
    """One JSON document with ``decoder``'s types; every failure a ``DataError`` that names ``where`` and the field."""
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as err:
        if decoder.type is Any:  # no types asked for: a number JSON allows but msgspec cannot hold (1e400)
            raise DataError(f"{where} is not valid JSON here (a number too large to read)") from None
        try:
            value = _ANY.decode(data)
        except msgspec.ValidationError:  # a number too large to read: say where, and what was expected there
            value = None
        except (msgspec.DecodeError, UnicodeDecodeError):  # (msgspec checks types before the broken part)
            why = explain(data)
            raise DataError(f"{where}{': ' if why.startswith(('field', 'the value')) else ' is '}{why}") from None
        except (msgspec.MsgspecError, RecursionError):
            value = None
        problem = json_problems.validation_problem(err, value, decoder.type) if value is not None else None
        field = json_problems.dotted(problem.path) if problem else field_of(err)
        if problem is None:
            expected = json_problems.expected_at(
                msgspec.inspect.type_info(decoder.type), json_problems.path_of(err) or ()
            )
            words = f"expected `{expected or 'the record layout'}`"
        else:
            words = json_problems.problem_words(problem)
        raise DataError(f"{where}: {('field ' + repr(field) + ': ') if field else ''}{words}") from None
    except RecursionError:
        raise DataError(f"{where} is {MAX_DEPTH_WORDS}") from None
    except (msgspec.DecodeError, UnicodeDecodeError):  # (msgspec 0.18 raised the latter for bad UTF-8 in a string)
        why = explain(data)
        raise DataError(f"{where}{': ' if why.startswith(('field', 'the value')) else ' is '}{why}") from None


def read_bytes(path: Path) -> bytes:
    """A file's bytes without a leading UTF-8 byte order mark (editors on Windows write one)."""
    data = path.read_bytes()
    return data[3:] if data.startswith(b"\xef\xbb\xbf") else data


@dataclass(frozen=True)
class Line:
    """One decoded line: its 1-based number and its value."""

    number: int
    value: Any


@dataclass(frozen=True)
class JsonLines:
    """A JSON Lines file read: the good lines, and where the good part ends (bytes) when a cut-off line was dropped."""

    lines: list[Line]
    good_size: int
    cut_off: bool
    needs_newline: bool


def _split(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset of the line's end including its newline, line) for every line."""
    start = 0
    number = 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end + 1
        number += 1
        yield number, end, data[start:end]
        start = end


def read_jsonl(
    path: str | os.PathLike,
    decoder: msgspec.json.Decoder = _ANY,
    *,
    cut_off: Literal["drop", "error"] = "drop",
    data: bytes | None = None,
) -> JsonLines:
    """Decode each non-blank line of ``path`` with ``decoder``; a cut-off last line dropped (or an error).

    ``data``: the file's bytes when the caller has them already.
    """
    path = Path(path)
    data = read_bytes(path) if data is None else data
    lines: list[Line] = []
    good_size = 0
    for number, end, raw in _split(data):
        if not raw.strip():
            good_size = end
            continue
        where = f"{path}: line {number}"
        is_cut = end == len(data) and not raw.endswith(b"\n")
        try:
            value = decoder.decode(raw)
        except msgspec.ValidationError:  # (a DecodeError too: caught first) a wrong type is damage, cut or not
            decode(raw, decoder, where=where)  # raises the DataError that names the field
            raise
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as err:
            if is_cut and not isinstance(err, RecursionError) and explain(raw).startswith("not valid JSON"):
                if cut_off == "error":
                    raise DataError(f"{where} is cut off (the file ends in the middle of a record)") from None
                logger.warning("%s: dropping the cut-off last line %d (an interrupted run)", path, number)
                return JsonLines(lines, good_size, cut_off=True, needs_newline=False)
            decode(raw, decoder, where=where)  # raises the DataError that says what is wrong
            raise
        lines.append(Line(number, value))
        good_size = end
    needs_newline = bool(data) and not data.endswith(b"\n")
    return JsonLines(lines, good_size, cut_off=False, needs_newline=needs_newline)
