"""What is wrong with JSON that msgspec refused, found and worded by us (error paths only).

msgspec's error *text* changes between releases (0.23 words invalid UTF-8 in a string "Invalid UTF-8 encoded string",
0.18 raised Python's ``UnicodeDecodeError``), so users' messages never quote it. From msgspec's errors we take at
most a location, parsed defensively: the ``(byte N)`` of a decode error, the ``$[i].field`` path of a validation
error. What is wrong there is found here: a small JSON grammar scanner (one record, not the file) for syntax, a
walk over the generically decoded value against the Struct's schema (``msgspec.inspect``) for types and missing
fields, and Python's UTF-8 decoder for the bytes. The fast paths never come here.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import msgspec


# --------------------------------------------------------------------------------------------------- locations

_BYTE = re.compile(r"\(byte (\d+)\)")
_PATH = re.compile(r"`\$((?:\.[^.\[\]`]+|\[\d+\])*)`")
_PATH_PART = re.compile(r"\.([^.\[\]`]+)|\[(\d+)\]")


def byte_of(err: BaseException) -> int | None:
    """The byte a decode error points at, if its text gives one (never required: the scanner finds it too)."""
    match = _BYTE.search(str(err))
    return int(match.group(1)) if match else None


def path_of(err: BaseException) -> tuple[str | int, ...] | None:
    """The ``$.conversations[2].value`` of a validation error as ``("conversations", 2, "value")``; None if absent."""
    match = _PATH.search(str(err))
    if match is None:
        return None
    return tuple(key if key else int(number) for key, number in _PATH_PART.findall(match.group(1)))


# --------------------------------------------------------------------------------------------------- UTF-8


def utf8_problem(data: Any) -> str | None:
    """``byte 0xff at byte 9`` for bytes that are not UTF-8; None when they are."""
    data = bytes(data)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"byte 0x{data[err.start]:02x} at byte {err.start}"
    return None


# --------------------------------------------------------------------------------------------------- syntax

TRUNCATED = "truncated"  # the data ended inside a value (no position)
LONE_SURROGATE = "lone surrogate"  # a \ud800-\udbff escape closing its string (msgspec calls it truncated)


class SyntaxProblem(NamedTuple):
    """The first place where a text breaks the JSON grammar."""

    problem: str  # our wording ("expected ',' or ']'"), or TRUNCATED / LONE_SURROGATE
    position: int | None  # byte offset in the scanned text; None for TRUNCATED / LONE_SURROGATE
    depth: int  # containers open there: 0 is outside the top-level value (trailing characters)
    item: int  # the index of the top-level array's element being read (meaningful when depth >= 1)


_SPACE = re.compile(rb"[ \t\n\r]*")
_STRING_PART = re.compile(rb'[^"\\\x00-\x1f]*')
_INTEGER = re.compile(rb"-?(?:0|[1-9][0-9]*)")
_DIGITS = re.compile(rb"[0-9]+")
_HEX4 = re.compile(rb"[0-9a-fA-F]{4}")
_SIMPLE_ESCAPES = frozenset(b'"\\/bfnrt')
_LITERALS = (b"true", b"false", b"null")

# scanner states: what may come next
_VALUE, _FIRST_ITEM, _NEXT_ITEM, _FIRST_KEY, _NEXT_KEY, _COLON, _AFTER_VALUE, _DONE = range(8)
_CLOSE_ARRAY, _CLOSE_OBJECT = ord("]"), ord("}")


class _Bad(Exception):
    def __init__(self, problem: str, position: int | None) -> None:
        self.problem, self.position = problem, position


def _string_end(data: bytes, pos: int) -> int:
    """The offset after the string opening at ``pos``; :class:`_Bad` if it breaks the grammar."""
    n = len(data)
    i = pos + 1
    while True:
        i = _STRING_PART.match(data, i).end()
        if i >= n:
            raise _Bad(TRUNCATED, None)
        char = data[i]
        if char == 0x22:  # "
            return i + 1
        if char != 0x5C:  # a control character
            raise _Bad("invalid character", i)
        if i + 1 >= n:
            raise _Bad(TRUNCATED, None)
        escape = data[i + 1]
        if escape in _SIMPLE_ESCAPES:
            i += 2
            continue
        if escape != 0x75:  # u
            raise _Bad("invalid escaped character", i + 1)
        code = _hex4(data, i + 2)
        i += 6
        if 0xDC00 <= code < 0xE000:
            raise _Bad("invalid utf-16 surrogate pair", i)
        if 0xD800 <= code < 0xDC00:
            if data[i : i + 1] == b'"':
                raise _Bad(LONE_SURROGATE, None)
            if data[i : i + 2] != b"\\u" or not 0xDC00 <= _hex4(data, i + 2) < 0xE000:
                raise _Bad("invalid utf-16 surrogate pair", i)
            i += 6


def _hex4(data: bytes, pos: int) -> int:
    digits = data[pos : pos + 4]
    if _HEX4.fullmatch(digits):
        return int(digits, 16)
    bad = next((k for k, char in enumerate(digits) if chr(char) not in "0123456789abcdefABCDEF"), len(digits))
    if pos + bad >= len(data):
        raise _Bad(TRUNCATED, None)
    raise _Bad("invalid character in unicode escape", pos + bad)


def _number_end(data: bytes, pos: int) -> int:
    """The offset after the number starting at ``pos``; :class:`_Bad` if it breaks the grammar."""
    match = _INTEGER.match(data, pos)
    if match is None:  # a "-" not followed by a digit (-Infinity): the character after it is the bad one
        if pos + 1 >= len(data):
            raise _Bad(TRUNCATED, None)
        raise _Bad("invalid character", pos + 1)
    end = match.end()
    if data[end : end + 1].isdigit():  # a leading zero
        raise _Bad("invalid number", end)
    if data[end : end + 1] == b".":
        end = _digits_end(data, end + 1)
    if data[end : end + 1] in (b"e", b"E"):
        end += 1
        if data[end : end + 1] in (b"+", b"-"):
            end += 1
        end = _digits_end(data, end)
    return end


def _digits_end(data: bytes, pos: int) -> int:
    match = _DIGITS.match(data, pos)
    if match is None:
        if pos >= len(data):
            raise _Bad(TRUNCATED, None)
        raise _Bad("invalid number", pos)
    return match.end()


def syntax_problem(
    data: Any, start: int = 0, in_array: bool = False, item: int = 0, limit: int | None = None
) -> SyntaxProblem | None:
    """The first place from ``start`` where ``data`` breaks the JSON grammar; None if there is none.

    ``in_array``: ``start`` is the start of element ``item`` of the top-level array (just after its ``[`` when
    ``item`` is 0, else just after a comma), so a record can be scanned without the records before it. ``limit``:
    give up (None) at this offset. Pure Python: error paths only, on one record or a small file.
    """
    data = bytes(data)
    n = len(data)
    scan = _Scan(data, in_array, item)
    pos = start
    try:
        while True:
            pos = _SPACE.match(data, pos).end()
            if pos >= n:
                if scan.state == _DONE:
                    return None
                raise _Bad(TRUNCATED, None)
            if limit is not None and pos >= limit:
                return None
            pos = scan.step(pos)
    except _Bad as bad:
        return SyntaxProblem(bad.problem, bad.position, len(scan.stack), scan.item)


class _Scan:
    """The grammar's state between tokens: the closing byte of every open container, what may come next, and the
    index of the top-level array's element being read. ``step`` reads one token; :class:`_Bad` where it breaks."""

    def __init__(self, data: bytes, in_array: bool, item: int) -> None:
        self.data = data
        self.stack = [_CLOSE_ARRAY] if in_array else []
        self.state = (_FIRST_ITEM if item == 0 else _NEXT_ITEM) if in_array else _VALUE
        self.item = item

    def step(self, pos: int) -> int:
        """Read the token at ``pos`` (not white space); the offset after it."""
        char = self.data[pos]
        if self.state == _DONE:
            raise _Bad("trailing characters", pos)
        if self.state == _AFTER_VALUE:
            return self._after_value(char, pos)
        if self.state in (_FIRST_KEY, _NEXT_KEY):
            return self._key(char, pos)
        if self.state == _COLON:
            if char != 0x3A:  # :
                raise _Bad("expected ':'", pos)
            self.state = _VALUE
            return pos + 1
        return self._value(char, pos)

    def _close(self, pos: int) -> int:
        self.stack.pop()
        self.state = _AFTER_VALUE if self.stack else _DONE
        return pos + 1

    def _after_value(self, char: int, pos: int) -> int:
        if char == 0x2C:  # ,
            if self.stack[-1] == _CLOSE_ARRAY:
                self.state = _NEXT_ITEM
                self.item += len(self.stack) == 1
            else:
                self.state = _NEXT_KEY
            return pos + 1
        if char == self.stack[-1]:
            return self._close(pos)
        raise _Bad(f"expected ',' or '{chr(self.stack[-1])}'", pos)

    def _key(self, char: int, pos: int) -> int:
        if char == _CLOSE_OBJECT:
            if self.state == _NEXT_KEY:
                raise _Bad("trailing comma in object", pos)
            return self._close(pos)
        if char != 0x22:
            raise _Bad("expected '\"'", pos)
        self.state = _COLON
        return _string_end(self.data, pos)

    def _value(self, char: int, pos: int) -> int:
        """A value where one may stand (or the ``]`` closing an array before its next element)."""
        if char == _CLOSE_ARRAY and self.state in (_FIRST_ITEM, _NEXT_ITEM):
            if self.state == _NEXT_ITEM:
                raise _Bad("trailing comma in array", pos)
            return self._close(pos)
        if char in (0x7B, 0x5B):  # { or [
            self.stack.append(_CLOSE_OBJECT if char == 0x7B else _CLOSE_ARRAY)
            self.state = _FIRST_KEY if char == 0x7B else _FIRST_ITEM
            return pos + 1
        if char == 0x22:
            pos = _string_end(self.data, pos)
        elif char == 0x2D or 0x30 <= char <= 0x39:  # - or a digit
            pos = _number_end(self.data, pos)
        else:
            pos += len(_literal(self.data, pos))
        self.state = _AFTER_VALUE if self.stack else _DONE
        return pos


def _literal(data: bytes, pos: int) -> bytes:
    """The ``true``/``false``/``null`` at ``pos``; :class:`_Bad` (truncated where the text ends in one's prefix)."""
    literal = next((word for word in _LITERALS if data.startswith(word, pos)), None)
    if literal is None:
        rest = data[pos : pos + 5]
        if pos + len(rest) == len(data) and any(word.startswith(rest) for word in _LITERALS):
            raise _Bad(TRUNCATED, None)
        raise _Bad("invalid character", pos)
    return literal


_KIND_OF_FIRST_BYTE = {
    ord("{"): "object",
    ord("["): "array",
    ord('"'): "string",
    ord("t"): "boolean",
    ord("f"): "boolean",
}
_KIND_OF_FIRST_BYTE.update({ord("n"): "null", ord("-"): "number", **{char: "number" for char in b"0123456789"}})


def kind_of_text(data: Any) -> str | None:
    """The JSON type of a text from its first byte (``array``): for values too deep to decode generically."""
    head = bytes(memoryview(data)[:64]).lstrip(b" \t\r\n")
    return _KIND_OF_FIRST_BYTE.get(head[0]) if head else None


def a_kind(kind: str | None) -> str:
    """``an array``, ``a string``; ``an unknown value`` for None."""
    kind = kind or "unknown value"
    return f"a{'n' if kind[0] in 'aeiou' else ''} {kind}"


def describe(data: Any, hint: int | None = None, scan_bytes: int = 16 << 20) -> str:
    """Why ``data`` is not JSON, in our words: ``not valid JSON: expected ':' at line 3, column 7``.

    ``hint``: the byte a decode error pointed at, used when ``data`` is too large (``scan_bytes``) to scan in Python.
    """
    found = syntax_problem(data) if len(data) <= scan_bytes else None
    if found is None:
        bad = utf8_problem(data) if len(data) <= scan_bytes else None
        if bad is not None:
            return f"not valid UTF-8 ({bad})"
        if hint is None:
            return "not valid JSON"
        line, column = line_column(data, hint)
        return f"not valid JSON at line {line}, column {column}"
    if found.position is None:
        return "not valid JSON: " + (
            "truncated" if found.problem == TRUNCATED else "a string holds an invalid \\u escape"
        )
    line, column = line_column(data, found.position)
    return f"not valid JSON: {found.problem} at line {line}, column {column}"


def why_refused(err: BaseException, data: Any) -> str:
    """Why msgspec refused ``data`` as one value of the type it was asked for, in our words: the value's type for a
    validation error (``it is an array``), else :func:`describe`."""
    if isinstance(err, msgspec.ValidationError):
        return f"it is {a_kind(kind_of_text(data))}"
    return describe(data, byte_of(err))


def line_column(data: Any, position: int) -> tuple[int, int]:
    """1-based line and column of byte ``position``."""
    head = bytes(data[:position])
    return head.count(b"\n") + 1, position - (head.rfind(b"\n") + 1) + 1


# --------------------------------------------------------------------------------------------------- schema


class SchemaProblem(NamedTuple):
    """Where a decoded value breaks a Struct's schema, and how."""

    path: tuple[str | int, ...]  # ("conversations", 2, "value"); () for the value itself
    expected: str  # the type expected there, in msgspec's spelling ("str | array | null")
    found: str  # the JSON type found ("int"); "" for a missing field
    missing: str = ""  # the name of a missing required field (then ``path`` is the object's)
    unknown: str = ""  # a key a Struct that forbids unknown fields does not have (then ``path`` is the object's)
    constraint: str = ""  # the bound the value breaks (``>= 0``, ``<= 1.0``), its type being right


_KIND_ORDER = ("bool", "int", "float", "str", "object", "array", "null")
_KIND_OF_INFO = {
    msgspec.inspect.BoolType: "bool",
    msgspec.inspect.IntType: "int",
    msgspec.inspect.FloatType: "float",
    msgspec.inspect.StrType: "str",
    msgspec.inspect.StructType: "object",
    msgspec.inspect.DictType: "object",
    msgspec.inspect.ListType: "array",
    msgspec.inspect.TupleType: "array",
    msgspec.inspect.VarTupleType: "array",
    msgspec.inspect.NoneType: "null",
}
_KIND_OF_VALUE = {
    type(None): "null",
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    list: "array",
    dict: "object",
}


def json_kind(value: Any) -> str:
    """The JSON type of a generically decoded value, in msgspec's spelling (``int``, ``str``, ``array``...)."""
    return _KIND_OF_VALUE.get(type(value), type(value).__name__)


def _choices(info: Any) -> dict[str, Any]:
    """The JSON kinds a schema type accepts, each with the type that reads it."""
    members = info.types if isinstance(info, msgspec.inspect.UnionType) else (info,)
    out = {}
    for member in members:
        if isinstance(member, msgspec.inspect.LiteralType):
            out.update((json_kind(literal), member) for literal in member.values)
            continue
        kind = _KIND_OF_INFO.get(type(member))
        if kind is None:  # Any, Raw, or a type this walk does not know: accept anything rather than invent a problem
            return {kind: member for kind in _KIND_ORDER}
        out[kind] = member
    return out


def _expected(choices: dict[str, Any]) -> str:
    return " | ".join(kind for kind in _KIND_ORDER if kind in choices)


def _accepts(choices: dict[str, Any], kind: str) -> Any:
    """The schema type reading a value of JSON kind ``kind``, or None."""
    if kind in choices:
        return choices[kind]
    return choices.get("float") if kind == "int" else None


def _problem_here(value: Any, info: Any, path: tuple[str | int, ...]) -> SchemaProblem | None:
    """A wrong type of ``value`` itself, or a required field missing from it (its children are not looked at)."""
    choices = _choices(info)
    reader = _accepts(choices, json_kind(value))
    if reader is None:
        return SchemaProblem(path, _expected(choices), json_kind(value))
    if isinstance(reader, msgspec.inspect.StructType):
        if reader.forbid_unknown_fields:
            names = {field.encode_name for field in reader.fields}
            unknown = next((key for key in value if key not in names), None)
            if unknown is not None:
                return SchemaProblem(path, "object", "object", unknown=unknown)
        for field in reader.fields:
            if field.required and field.encode_name not in value:
                return SchemaProblem(path, "object", "object", field.encode_name)
    bound = _broken_bound(value, reader)
    if bound:
        return SchemaProblem(path, _expected({json_kind(value): reader}), json_kind(value), constraint=bound)
    return None


_BOUNDS = (("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b), ("le", "<=", lambda v, b: v <= b),
           ("lt", "<", lambda v, b: v < b), ("min_length", "of length >=", lambda v, b: len(v) >= b),
           ("max_length", "of length <=", lambda v, b: len(v) <= b))  # fmt: skip


def _broken_bound(value: Any, reader: Any) -> str:
    """``>= 0`` when ``value`` breaks a bound of its schema type (``msgspec.Meta``), a literal's values; else ""."""
    if isinstance(reader, msgspec.inspect.LiteralType):
        return "" if value in reader.values else "in " + " | ".join(map(repr, reader.values))
    if isinstance(reader, msgspec.inspect.TupleType) and len(value) != len(reader.item_types):
        return f"of length {len(reader.item_types)}"
    for name, words, holds in _BOUNDS:
        bound = getattr(reader, name, None)
        if bound is not None and not holds(value, bound):
            return f"{words} {bound}"
    pattern = getattr(reader, "pattern", None)
    if pattern is not None and isinstance(value, str) and not re.search(pattern, value):
        return f"matching {pattern!r}"
    return ""


def _children(value: Any, reader: Any) -> list[tuple[str | int, Any, Any]]:
    """(key, child value, child schema) of a value its schema type reads, in document order."""
    if isinstance(reader, msgspec.inspect.ListType | msgspec.inspect.VarTupleType):
        return [(index, item, reader.item_type) for index, item in enumerate(value)]
    if isinstance(reader, msgspec.inspect.TupleType):
        return list(zip(range(len(value)), value, reader.item_types, strict=False))
    if isinstance(reader, msgspec.inspect.DictType):
        return [(key, item, reader.value_type) for key, item in value.items()]
    if isinstance(reader, msgspec.inspect.StructType):
        fields = {field.encode_name: field.type for field in reader.fields}
        return [(key, item, fields[key]) for key, item in value.items() if key in fields]
    return []


def first_problem(value: Any, info: Any, path: tuple[str | int, ...] = ()) -> SchemaProblem | None:
    """The first place where ``value`` breaks schema ``info``, in the order msgspec reads: depth first in document
    order, an object's missing fields after its keys."""
    choices = _choices(info)
    reader = _accepts(choices, json_kind(value))
    if reader is None:
        return SchemaProblem(path, _expected(choices), json_kind(value))
    for key, item, item_info in _children(value, reader):
        problem = first_problem(item, item_info, (*path, key))
        if problem is not None:
            return problem
    return _problem_here(value, info, path)


def schema_problem(value: Any, info: Any, near: tuple[str | int, ...] | None = None) -> SchemaProblem | None:
    """What is wrong with ``value`` against schema ``info``: at ``near`` (the path a validation error gave) if
    something is wrong right there, else the first problem anywhere; None if it matches."""
    if near is not None:
        node, node_info = value, info
        for key in near:
            reader = _accepts(_choices(node_info), json_kind(node))
            step = next((child for child in _children(node, reader) if child[0] == key), None) if reader else None
            if step is None:
                break
            _, node, node_info = step
        else:
            problem = _problem_here(node, node_info, near)
            if problem is not None:
                return problem
    return first_problem(value, info)


def expected_at(info: Any, path: tuple[str | int, ...]) -> str | None:
    """The type the schema expects at ``path`` (None if the path leaves the schema)."""
    for key in path:
        choices = _choices(info)
        if isinstance(key, int) and isinstance(choices.get("array"), msgspec.inspect.TupleType):
            types = choices["array"].item_types
            if key >= len(types):
                return None
            info = types[key]
        elif isinstance(key, int) and "array" in choices:
            info = choices["array"].item_type
        elif isinstance(key, str) and isinstance(choices.get("object"), msgspec.inspect.DictType):
            info = choices["object"].value_type
        elif isinstance(key, str) and isinstance(choices.get("object"), msgspec.inspect.StructType):
            fields = {field.encode_name: field.type for field in choices["object"].fields}
            if key not in fields:
                return None
            info = fields[key]
        else:
            return None
    return _expected(_choices(info))


def validation_problem(err: BaseException, value: Any, schema: Any) -> SchemaProblem | None:
    """What is wrong with ``value`` (the generically decoded JSON) as a ``schema`` (a Struct or other type).

    The one way every module turns a msgspec ``ValidationError`` into its own message: the error gives at most the
    place (:func:`path_of`), the problem there is found by :func:`schema_problem`. None when the walk finds nothing
    (then a caller says where, with :func:`expected_at`, and not what).
    """
    return schema_problem(value, msgspec.inspect.type_info(schema), path_of(err))


def dotted(path: tuple[str | int, ...]) -> str:
    """``files[0].n`` for ``("files", 0, "n")``; "" for the value itself."""
    return "".join(f".{key}" if isinstance(key, str) else f"[{key}]" for key in path).lstrip(".")


def problem_words(problem: SchemaProblem) -> str:
    """A schema problem in a few words, without its place: ``expected `str | int`, got `float```."""
    if problem.missing:
        return f"missing the required field {problem.missing!r}"
    if problem.unknown:
        return f"object contains unknown field `{problem.unknown}`"
    if problem.constraint:
        return f"expected `{problem.expected}` {problem.constraint}"
    return f"expected `{problem.expected}`, got `{problem.found}`"
