"""LLaVA-format records: validation, streaming reading of large JSON arrays, and conversion to sharegpt.

A LLaVA-format file is a JSON array of ``{"id", "image"?, "conversations": [{"from", "value"}, ...]}``. The 665k-record
``llava_v1_5_mix665k.json`` is about 1 GB, so files are never ``json.load``-ed whole: :func:`walk_records` reads the
bytes in chunks, decodes one record at a time with the C scanner of :mod:`json`, and reports each record's byte span,
so callers can keep an index of offsets instead of the whole tree. Indices of records and turns count from 0, as in
``data[17]["conversations"][3]``.
"""

from __future__ import annotations

import codecs
import contextlib
import gc
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from json.decoder import scanstring
from json.scanner import make_scanner
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..hook.settings import DEFAULT_SENTENCE as DEFAULT_REJECTION_SENTENCE  # noqa: F401 (re-exported for the data commands)


logger = logging.getLogger(__name__)

HUMAN = "human"
GPT = "gpt"
IMAGE_TAG = "<image>"
WHAT_ABOUT = "what about"

#: the columns of a LLaMA-Factory sharegpt dataset registered for our output files
SHAREGPT_COLUMNS = {"messages": "conversations", "images": "image"}

#: record flags kept in the index (one byte per record)
FLAG_HAS_IMAGE = 1
FLAG_ALL_WHAT_ABOUT = 2  # every question is a "what about" follow-up: unusable for --random-turn
FLAG_PLAIN = 4  # plain layout {"id", "image"?, "conversations"}: copied to the output without decoding (see below)

CHUNK_BYTES = 16 << 20  # read size; a record spanning two chunks is decoded again after the next read
PROGRESS_MIN_BYTES = 64 << 20  # smaller files read in well under a second: no progress bar

_WHITESPACE = re.compile(r"[ \t\n\r]*")

# The plain layout of LLaVA records, up to the value of "conversations": {"id": STR|INT, ("image": STR,)?
# "conversations": ...}. Matched at a record's start, the regex follows the top level exactly (no ambiguity with
# nested text), so the span of the conversations value is known without a second parse; a record of this layout
# whose conversations close the object can be copied to the output byte for byte, with no decoding or encoding.
_WS = r"[ \t\n\r]*"
_STRING = r'"[^"\\\x00-\x1f]*(?:\\.[^"\\\x00-\x1f]*)*"'  # unrolled: one character-class run when no escape
_PLAIN_PREFIX_SOURCE = (
    rf'\{{{_WS}"id"{_WS}:{_WS}(?P<id>{_STRING}|-?(?:0|[1-9][0-9]*)){_WS},{_WS}'
    rf'(?:"image"{_WS}:{_WS}(?P<image>{_STRING}){_WS},{_WS})?"conversations"{_WS}:{_WS}'
)
_PLAIN_PREFIX = re.compile(_PLAIN_PREFIX_SOURCE)
_PLAIN_PREFIX_BYTES = re.compile(_PLAIN_PREFIX_SOURCE.encode())
_CLOSE = re.compile(rf"{_WS}\}}")
_SHAREGPT_KEYS = ("id", "image", "conversations")


def describe(path: str | os.PathLike) -> str:
    """The name used in messages: the path as the user gave it."""
    return os.fspath(path)


def _where(label: str, index: int, record: Any = None) -> str:
    """``file: record 17 (id '0042')``: the prefix of every message about one record."""
    rid = record.get("id") if isinstance(record, dict) else None
    if isinstance(rid, str | int) and not isinstance(rid, bool):
        return f"{label}: record {index} (id {rid!r})"
    return f"{label}: record {index}"


# --------------------------------------------------------------------------------------------------- validation


def check_record(record: Any, label: str, index: int) -> tuple[str, int]:
    """Validate one LLaVA-format record; return its id as a string and its index flags.

    Checks everything LLaMA-Factory would otherwise reject late (or silently drop): an ``id`` that is a string or an
    integer, ``conversations`` alternating human/gpt and starting with human, an even number of turns, non-empty
    values, and as many ``<image>`` tags in the human turns as there are images. Written for speed: it runs once per
    record of a 665k-record file.
    """
    if type(record) is not dict:
        raise DataError(f"{label}: record {index} is a {type(record).__name__}, expected an object")

    rid = record.get("id")
    if type(rid) is str:
        rid_str = rid
    elif type(rid) is int:
        rid_str = str(rid)
    elif "id" not in record:
        raise DataError(f"{label}: record {index} has no 'id'")
    else:
        raise DataError(
            f"{label}: record {index} has id {rid!r} ({type(rid).__name__}), expected a string or an integer"
        )

    conversations = record.get("conversations")
    if type(conversations) is not list:
        if conversations is None and "conversations" not in record:
            raise DataError(f"{_where(label, index, record)}: has no 'conversations'")
        raise DataError(
            f"{_where(label, index, record)}: 'conversations' is a {type(conversations).__name__}, expected a list"
        )
    n_turns = len(conversations)
    if n_turns == 0:
        raise DataError(f"{_where(label, index, record)}: 'conversations' is empty")
    if n_turns % 2:
        raise DataError(
            f"{_where(label, index, record)}: has {n_turns} turns, expected an even number (human/gpt pairs)"
        )

    tags = 0
    all_what_about = True
    expected = HUMAN
    for turn_index, turn in enumerate(conversations):
        if type(turn) is not dict:
            raise DataError(
                f"{_where(label, index, record)}: turn {turn_index} is a {type(turn).__name__}, expected an object"
            )
        speaker = turn.get("from")
        if speaker != expected:
            _raise_bad_speaker(label, index, record, turn_index, speaker, expected)
        value = turn.get("value")
        if type(value) is not str or not value.strip():
            raise DataError(
                f"{_where(label, index, record)}: turn {turn_index} ({speaker}) has "
                f"{'an empty' if type(value) is str else 'no' if value is None else 'a non-string'} value"
                + ("" if type(value) is str or value is None else f" ({type(value).__name__})")
            )
        if expected == HUMAN:
            if IMAGE_TAG in value:
                tags += value.count(IMAGE_TAG)
            if all_what_about and WHAT_ABOUT not in value.lower():
                all_what_about = False
            expected = GPT
        else:
            if IMAGE_TAG in value:
                raise DataError(
                    f"{_where(label, index, record)}: turn {turn_index} (gpt) contains {IMAGE_TAG!r}; "
                    "only human turns may hold image tags"
                )
            expected = HUMAN

    n_images = _count_images(record, label, index)
    if tags != n_images:
        raise DataError(
            f"{_where(label, index, record)}: got {tags} {IMAGE_TAG} tag{'s' if tags != 1 else ''} in the human turns, "
            f"expected {n_images} (one per image)"
        )
    return rid_str, (FLAG_HAS_IMAGE if n_images else 0) | (FLAG_ALL_WHAT_ABOUT if all_what_about else 0)


def _raise_bad_speaker(label: str, index: int, record: dict, turn_index: int, speaker: Any, expected: str) -> None:
    """Explain a wrong ``from``: unknown speaker, a first turn that is not human, or turns that do not alternate."""
    where = _where(label, index, record)
    if speaker not in (HUMAN, GPT):
        raise DataError(f"{where}: turn {turn_index} has from={speaker!r}, expected 'human' or 'gpt'")
    if turn_index == 0:
        raise DataError(f"{where}: first turn has from={speaker!r}, expected 'human'")
    raise DataError(
        f"{where}: turn {turn_index} has from={speaker!r}, expected {expected!r} (turns must alternate human, gpt)"
    )


def _count_images(record: dict, label: str, index: int) -> int:
    """Number of images of a record: ``image`` may be absent/null, one path, or a list of paths."""
    image = record.get("image")
    if image is None:
        return 0
    if type(image) is str:
        if not image:
            raise DataError(f"{_where(label, index, record)}: 'image' is an empty string")
        return 1
    if type(image) is list:
        for path in image:
            if type(path) is not str or not path:
                raise DataError(f"{_where(label, index, record)}: 'image' holds {path!r}, expected non-empty paths")
        return len(image)
    raise DataError(f"{_where(label, index, record)}: 'image' is a {type(image).__name__}, expected a path or a list")


def record_images(record: dict) -> list[str]:
    """The record's images as a list (LLaMA-Factory's ``images`` column): ``[]`` when absent."""
    image = record.get("image")
    if image is None:
        return []
    if isinstance(image, str):
        return [image]
    return list(image)


def record_id(record: dict) -> str:
    """The record's id as a string: ids are integers in some files and strings in others, compared as strings."""
    return str(record["id"])


def to_sharegpt(record: dict) -> dict:
    """A new record in LLaMA-Factory sharegpt shape: ``id`` a string, ``image`` a list, other keys kept in order.

    The turn list is shared with the input, not copied (this runs for every record of a full mix); neither is changed.
    """
    out = {"id": record_id(record), "image": record_images(record), "conversations": record["conversations"]}
    if len(record) > 3 or any(key not in _SHAREGPT_KEYS for key in record):
        for key, value in record.items():
            if key not in _SHAREGPT_KEYS:
                out[key] = value
    return out


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while many decoded records are alive.

    Decoded JSON holds no reference cycles, so the collector finds nothing; but with hundreds of thousands of live
    dicts and lists each of its full passes walks all of them, which nearly doubled the time of a full mix.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# --------------------------------------------------------------------------------------------------- encoding

_ENCODER = json.JSONEncoder(ensure_ascii=False)


def encode_record(record: dict) -> bytes:
    """One record as compact UTF-8 JSON (the C encoder: indentation would switch to the slow Python one).

    A lone surrogate (from a ``\\ud800`` escape in the input) cannot be UTF-8-encoded; it is written back as the same
    ``\\uXXXX`` escape, which is valid JSON and decodes to the same string.
    """
    return _ENCODER.encode(record).encode("utf-8", "backslashreplace")


class JsonArrayWriter:
    """Writes records into an open binary file as a JSON array, one record per line; hashes what it writes."""

    def __init__(self, handle: Any, hasher: Any | None = None) -> None:
        self._handle = handle
        self._hasher = hasher
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self.count = 0
        self.bytes_written = 0

    def write(self, record: dict) -> None:
        self.write_bytes(encode_record(record))

    def write_bytes(self, data: bytes) -> None:
        """Write one record already encoded as JSON (one line, no trailing comma)."""
        self._batch.append(data)
        self._batch_bytes += len(data)
        self.count += 1
        if self._batch_bytes >= 4 << 20:
            self._flush()

    def _flush(self) -> None:
        if not self._batch:
            return
        prefix = b",\n" if self.bytes_written else b"[\n"
        self._emit(prefix + b",\n".join(self._batch))
        self._batch = []
        self._batch_bytes = 0

    def _emit(self, data: bytes) -> None:
        self._handle.write(data)
        if self._hasher is not None:
            self._hasher.update(data)
        self.bytes_written += len(data)

    def close(self) -> None:
        """Finish the array (``[]`` when no record was written)."""
        self._flush()
        self._emit(b"\n]\n" if self.bytes_written else b"[]\n")


# --------------------------------------------------------------------------------------------------- reading


@dataclass
class ScanResult:
    """What one pass over a file leaves: per record its byte offset and length, id (as a string) and flags."""

    offsets: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    flags: bytearray = field(default_factory=bytearray)
    stopped: bool = False  # the scan stopped at ``stop_at`` (see :func:`scan_file`)

    def __len__(self) -> int:
        return len(self.ids)

    def extend(self, other: ScanResult) -> None:
        self.offsets += other.offsets
        self.lengths += other.lengths
        self.ids += other.ids
        self.flags += other.flags


def scan_file(
    path: str | os.PathLike,
    visit: Callable[[int, dict], None] | None = None,
    label: str | None = None,
    progress: bool | None = None,
    start: int = 0,
    first_index: int = 0,
    stop_at: int | None = None,
) -> ScanResult:
    """Read a LLaVA-format file once, validating every record; call ``visit(index, record)`` for each.

    Memory stays at one chunk plus the index, whatever the file size: records are decoded one at a time and dropped
    unless ``visit`` keeps them. ``start``/``first_index``: begin at the record starting at that byte (just after a
    comma), numbered so. ``stop_at``: stop when the next record starts exactly at that byte (``stopped`` is then
    set); if no record starts there, read on to the end.
    """
    label = label or describe(path)
    result = ScanResult()
    offsets, lengths, ids, flags = result.offsets, result.lengths, result.ids, result.flags
    outcome: dict[str, bool] = {}
    walker = walk_records(
        path, label=label, progress=progress, start=start, first_index=first_index, stop_at=stop_at, outcome=outcome
    )
    for index, offset, length, record, plain in walker:
        rid, flag = check_record(record, label, index)
        offsets.append(offset)
        lengths.append(length)
        ids.append(rid)
        flags.append(flag | FLAG_PLAIN if plain else flag)
        if visit is not None:
            visit(index, record)
    result.stopped = outcome.get("stopped", False)
    return result


def load_records(path: str | os.PathLike, label: str | None = None) -> list[dict]:
    """All records of a (small) LLaVA-format file, validated."""
    records: list[dict] = []
    scan_file(path, visit=lambda _index, record: records.append(record), label=label, progress=False)
    return records


_EXPECT_FIRST, _EXPECT_VALUE, _EXPECT_SEPARATOR, _DONE = range(4)


class _Window:
    """The decoded text of the part of the file being walked, refilled chunk by chunk."""

    def __init__(self, handle: Any, label: str, bar: Any) -> None:
        self.handle = handle
        self.label = label
        self.bar = bar
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.text = ""
        self.is_ascii = True
        self.eof = False
        self.bytes_read = 0

    def refill(self, keep_from: int, n_bytes: int) -> None:
        """Drop ``text[:keep_from]`` and append the next ``n_bytes`` of the file, decoded."""
        chunk = self.handle.read(n_bytes)
        try:
            if chunk:
                added = self.decoder.decode(chunk)
            else:
                self.eof = True
                added = self.decoder.decode(b"", final=True)
        except UnicodeDecodeError as err:
            raise DataError(f"{self.label}: not valid UTF-8 at byte {self.bytes_read + err.start}") from None
        self.bytes_read += len(chunk)
        if self.bar is not None:
            self.bar.update(len(chunk))
        self.text = self.text[keep_from:] + added
        self.is_ascii = self.text.isascii()


def walk_records(
    path: str | os.PathLike,
    label: str | None = None,
    progress: bool | None = None,
    start: int = 0,
    first_index: int = 0,
    stop_at: int | None = None,
    outcome: dict[str, bool] | None = None,
) -> Iterator[tuple[int, int, int, Any, bool]]:
    """Yield ``(index, byte_offset, byte_length, value, plain)`` for each element of the top-level array of a file.

    The elements are not validated here (see :func:`check_record`); ``plain``: the record has the plain layout (see
    :func:`plain_record_to_sharegpt`). Byte offsets are exact for non-ASCII files too:
    the chunk's text is pure ASCII (char offset = byte offset) or the record is re-encoded to count its bytes.
    ``start``, ``first_index``, ``stop_at``: see :func:`scan_file`; ``outcome["stopped"]`` tells whether it stopped.
    """
    label = label or describe(path)
    size = os.path.getsize(path)
    scan_once = make_scanner(json.JSONDecoder())
    whitespace = _WHITESPACE.match
    with open(path, "rb") as handle, _progress_bar(size - start, label, progress) as bar:
        win = _Window(handle, label, bar)
        handle.seek(start)
        win.bytes_read = start
        win.refill(0, CHUNK_BYTES)
        text = win.text
        pos = 0
        bpos = start  # byte offset of text[pos] in the file
        state = None  # before '['
        if start:
            state = _EXPECT_VALUE
        elif text.startswith("\ufeff"):  # UTF-8 byte-order mark: 1 char, 3 bytes
            pos, bpos = 1, 3
        index = first_index
        grow = CHUNK_BYTES
        while state != _DONE:
            end = whitespace(text, pos).end()
            bpos += end - pos
            pos = end
            if pos >= len(text):
                if win.eof:
                    _raise_unexpected_end(label, state, index)
                win.refill(pos, CHUNK_BYTES)
                text, pos = win.text, 0
                continue

            char = text[pos]
            if state is None:
                if char != "[":
                    _raise_not_array(label, char)
                state = _EXPECT_FIRST
                pos += 1
                bpos += 1
            elif state == _EXPECT_SEPARATOR:
                if char == ",":
                    state = _EXPECT_VALUE
                elif char == "]":
                    state = _DONE
                else:
                    raise DataError(
                        f"{label}: expected ',' or ']' after record {index - 1}, found {char!r} "
                        f"at {_position(path, bpos)}"
                    )
                pos += 1
                bpos += 1
            elif char == "]" and state == _EXPECT_FIRST:
                state = _DONE
                pos += 1
                bpos += 1
            else:
                if stop_at is not None and bpos >= stop_at:
                    if bpos == stop_at:
                        if outcome is not None:
                            outcome["stopped"] = True
                        return
                    stop_at = None  # no record starts there: go on to the end
                try:
                    value, end, plain = _decode_element(text, pos, scan_once, win.eof)
                    error = None
                except StopIteration as err:
                    error = ("Expecting value", err.value)
                except json.JSONDecodeError as err:
                    error = (err.msg, err.pos)
                if error is None and (type(value) is dict or end < len(text) or win.eof):
                    grow = CHUNK_BYTES
                elif error is not None and (win.eof or not _may_be_truncated(error, len(text))):
                    err_bytes = bpos + len(text[pos : error[1]].encode("utf-8", "surrogatepass"))
                    raise DataError(
                        f"{label}: record {index}: not valid JSON: {error[0]} at {_position(path, err_bytes)}"
                    )
                else:  # the record runs past the end of the window: read more (doubling) and decode it again
                    win.refill(pos, grow)
                    grow = max(grow, len(win.text))
                    text, pos = win.text, 0
                    continue
                if win.is_ascii:
                    length = end - pos
                else:
                    segment = text[pos:end]
                    length = end - pos if segment.isascii() else len(segment.encode("utf-8", "surrogatepass"))
                yield index, bpos, length, value, plain
                index += 1
                bpos += length
                pos = end
                state = _EXPECT_SEPARATOR

        # only white space may follow the array
        while True:
            end = whitespace(text, pos).end()
            bpos += end - pos
            pos = end
            if pos < len(text):
                raise DataError(f"{label}: extra data after the closing ']' at {_position(path, bpos)}")
            if win.eof:
                break
            win.refill(pos, CHUNK_BYTES)
            text, pos = win.text, 0


def _decode_element(text: str, pos: int, scan_once: Any, eof: bool) -> tuple[Any, int, bool]:
    """Decode the array element at ``text[pos]``: ``(value, end, plain)``; errors as :func:`json.scanner` raises them.

    Records of the plain layout (see ``_PLAIN_PREFIX``) are decoded member by member so that the span of their
    conversations is checked to close the record (``plain``); any other element is decoded whole.
    """
    match = _PLAIN_PREFIX.match(text, pos)
    if match is not None:
        conversations, end = scan_once(text, match.end())
        close = _CLOSE.match(text, end)
        if close is not None:
            record = _plain_record(match, conversations)
            if record is not None:
                return record, close.end(), True
        elif not eof and _WHITESPACE.match(text, end).end() == len(text):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, len(text))  # the window ends here: read on
    value, end = scan_once(text, pos)
    return value, end, False


def _json_string(literal: str) -> str:
    """The value of a JSON string literal (quotes included) matched by ``_STRING``; escapes decoded."""
    if "\\" not in literal:
        return literal[1:-1]
    return scanstring(literal, 1)[0]


def _plain_record(match: re.Match, conversations: Any) -> dict | None:
    """The record a plain-layout match stands for; None when an escape is invalid (the whole-record decode reports it)."""
    try:
        literal = match.group("id")
        rid: str | int = _json_string(literal) if literal[0] == '"' else int(literal)
        image = match.group("image")
        if image is None:
            return {"id": rid, "conversations": conversations}
        return {"id": rid, "image": _json_string(image), "conversations": conversations}
    except ValueError:  # json.JSONDecodeError included
        return None


def decode_record_bytes(data: bytes) -> tuple[Any, bool]:
    """Decode one record's bytes (read through an index): ``(value, plain)``; ``ValueError`` if it is not exactly one."""
    text = data.decode("utf-8")
    try:
        value, end, plain = _decode_element(text, 0, _SCAN_ONCE, True)
    except StopIteration:
        raise ValueError("Expecting value") from None
    if end != len(text):
        raise ValueError(f"extra data after the record at char {end}")
    return value, plain


_SCAN_ONCE = make_scanner(json.JSONDecoder())


def plain_record_to_sharegpt(data: bytes) -> tuple[bytes, list[str]] | None:
    """The sharegpt output of a plain-layout record, made from its bytes: ``(json bytes, images)``, or None.

    Only for records flagged :data:`FLAG_PLAIN` when decoded (the flag proves that the conversations close the
    object); None when the bytes do not even start like one.

    The conversations are copied as they are in the input, with line breaks deleted so that each record is one output
    line (JSON strings hold no raw line breaks: those are white space between tokens; the indentation after them
    stays, as more white space); only ``id`` (quoted if an integer) and ``image`` (put in a list) are rewritten.
    This is what makes a full mix cost one parse instead of a parse, a second decode and an encode.
    """
    match = _PLAIN_PREFIX_BYTES.match(data)
    if match is None or not data.endswith(b"}"):
        return None
    conversations = data[match.end() : -1].rstrip(b" \t\r\n").translate(None, b"\r\n")
    rid = match.group("id")
    if rid[:1] != b'"':
        rid = b'"' + rid + b'"'
    image = match.group("image")
    if image is None:
        return b'{"id": ' + rid + b', "image": [], "conversations": ' + conversations + b"}", []
    images = [_json_string(image.decode("utf-8"))]
    return b'{"id": ' + rid + b', "image": [' + image + b'], "conversations": ' + conversations + b"}", images


def _may_be_truncated(error: tuple[str, int], text_length: int) -> bool:
    """Whether a decoding error may come from the window ending inside the record rather than from bad JSON."""
    message, position = error
    return position >= text_length - 8 or message.startswith("Unterminated string")


def _raise_not_array(label: str, char: str) -> None:
    hint = " (JSON Lines? convert it to one JSON array)" if char == "{" else ""
    raise DataError(f"{label}: not a JSON array: it starts with {char!r}, expected '['{hint}")


def _raise_unexpected_end(label: str, state: int | None, index: int) -> None:
    if state is None:
        raise DataError(f"{label}: empty file, expected a JSON array")
    plural = "" if index == 1 else "s"
    raise DataError(
        f"{label}: not valid JSON: the file ends inside the array (after {index} record{plural}, no closing ']')"
    )


def _position(path: str | os.PathLike, byte_offset: int) -> str:
    """``line L, column C (byte B)``: computed on the error path only, by reading the file up to the offset."""
    line, line_start, done = 1, 0, 0
    with open(path, "rb") as handle:
        while done < byte_offset:
            chunk = handle.read(min(CHUNK_BYTES, byte_offset - done))
            if not chunk:
                break
            newlines = chunk.count(b"\n")
            if newlines:
                line += newlines
                line_start = done + chunk.rfind(b"\n") + 1
            done += len(chunk)
    return f"line {line}, column {byte_offset - line_start + 1} (byte {byte_offset})"


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _progress_bar(size: int, label: str, progress: bool | None) -> Any:
    """A tqdm bar over the bytes of a large file; ``progress=None``: only for big files on a terminal."""
    if progress is False or (progress is None and size < PROGRESS_MIN_BYTES):
        return _NoBar()
    from tqdm import tqdm

    return tqdm(
        total=size,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=f"reading {Path(label).name}",
        mininterval=0.5,
        disable=None if progress is None else False,
        leave=False,
    )


# --------------------------------------------------------------------------------------------------- random access


def read_spans(
    path: str | os.PathLike, spans: Sequence[tuple[int, int]], max_gap: int = 256 << 10, max_block: int = 16 << 20
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(position in spans, bytes)`` for byte spans of a file, in file order, with few large reads.

    Spans closer than ``max_gap`` are read in one block of at most ``max_block`` bytes, so reading every record
    of a file is a sequential read and reading a few thousand is a few thousand small ``pread`` calls.
    """
    order = sorted(range(len(spans)), key=spans.__getitem__)
    fd = os.open(path, os.O_RDONLY)
    try:
        start = 0
        while start < len(order):
            first_offset = spans[order[start]][0]
            block_end = first_offset + spans[order[start]][1]
            stop = start + 1
            while stop < len(order):
                offset, length = spans[order[stop]]
                if offset - block_end > max_gap or offset + length - first_offset > max_block:
                    break
                block_end = max(block_end, offset + length)
                stop += 1
            block = os.pread(fd, block_end - first_offset, first_offset)
            if len(block) < block_end - first_offset:
                raise EOFError(f"{path}: file is shorter than its index")
            view = memoryview(block)
            for position in order[start:stop]:
                offset, length = spans[position]
                yield position, bytes(view[offset - first_offset : offset - first_offset + length])
            start = stop
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------- images


def find_missing_images(paths: Iterable[str], image_dir: str | os.PathLike) -> tuple[int, list[str]]:
    """Check that every image path exists under ``image_dir``; return (number of distinct paths, missing ones).

    The missing paths come in the order they were first referenced. Existence checks run on a thread pool
    (``os.stat`` releases the GIL), which matters on network file systems with hundreds of thousands of images.
    """
    from concurrent.futures import ThreadPoolExecutor

    unique = list(dict.fromkeys(paths))
    base = os.fspath(image_dir)

    def missing_in(batch: list[str]) -> list[str]:
        return [path for path in batch if not os.path.isfile(os.path.join(base, path))]

    batches = [unique[start : start + 2048] for start in range(0, len(unique), 2048)]
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(batches)))) as pool:
        missing = [path for found in pool.map(missing_in, batches) for path in found]
    return len(unique), missing


def missing_images_message(n_checked: int, missing: list[str], image_dir: str | os.PathLike, show: int = 5) -> str:
    """``3 of 7002 images are missing under DIR: a.jpg, b.jpg, c.jpg``."""
    shown = ", ".join(missing[:show]) + (f", ... ({len(missing) - show} more)" if len(missing) > show else "")
    return f"{len(missing)} of {n_checked} images are missing under {os.fspath(image_dir)}: {shown}"


# --------------------------------------------------------------------------------------------------- two processes

PARALLEL_MIN_BYTES = 128 << 20  # below this, starting a second interpreter costs more than it saves
_RECORD_START_BYTES = re.compile(rb',[ \t\r\n]*(\{[ \t\r\n]*"id"[ \t\r\n]*:)')


def guess_record_start(path: str | os.PathLike, near: int, window: int = 4 << 20) -> int | None:
    """A byte offset after ``near`` where a record probably starts (``, {"id":``), or None.

    Only a guess: the text could be a nested object. :func:`scan_file_parallel` accepts it only if the sequential
    scan of the first part lands exactly on it.
    """
    with open(path, "rb") as handle:
        handle.seek(near)
        match = _RECORD_START_BYTES.search(handle.read(window))
    return near + match.start(1) if match else None


_WORKER_CODE = "from rejection_align.data.llava_format import _scan_tail_main; _scan_tail_main()"


def _scan_tail_main() -> None:
    """Worker process (``python -c``, see :func:`scan_file_parallel`): scan from a byte to the end, pickle the result.

    A plain interpreter rather than :mod:`multiprocessing`: its ``spawn`` start method runs the parent's main
    script again, which a library must not do to its callers.
    """
    import pickle
    import sys

    path, start, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    try:
        answer: tuple[str, Any] = ("ok", scan_file(path, label=label, progress=False, start=start))
    except DataError as err:
        answer = ("error", str(err))
    except Exception as err:  # reported by the parent, which then reads that part itself
        answer = ("crash", repr(err))
    pickle.dump(answer, sys.stdout.buffer, protocol=pickle.HIGHEST_PROTOCOL)


def scan_file_parallel(
    path: str | os.PathLike, label: str | None = None, progress: bool | None = None, min_bytes: int | None = None
) -> ScanResult:
    """:func:`scan_file` on two cores: a second process scans the second half of a large file meanwhile.

    The split is a guessed record start (:func:`guess_record_start`), confirmed only when this process's scan of
    the first half lands exactly on it; otherwise this process simply reads on to the end. An error found in the
    second half is reported by reading that half again here, so that its record number is right.
    """
    import pickle
    import subprocess
    import sys

    label = label or describe(path)
    size = os.path.getsize(path)
    split = None
    if size >= (PARALLEL_MIN_BYTES if min_bytes is None else min_bytes) and (os.cpu_count() or 1) > 1:
        split = guess_record_start(path, size // 2)
    if split is None:
        return scan_file(path, label=label, progress=progress)

    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-c", _WORKER_CODE]
    worker = subprocess.Popen(
        [*command, os.fspath(path), str(split), label], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        head = scan_file(path, label=label, progress=progress, stop_at=split)
        if not head.stopped:  # the guess was no record start: the scan went on to the end
            logger.debug("%s: byte %d is no record start; read in one process", label, split)
            return head
        output, errors = worker.communicate()
        try:
            status, tail = pickle.loads(output)
        except Exception as err:  # a worker that died (killed, out of memory) leaves no answer
            status, tail = "crash", f"exit code {worker.returncode}: {err}; {errors.decode(errors='replace')[-500:]}"
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    if status != "ok":
        if status == "crash":
            logger.warning("%s: the second reading process failed (%s); reading on here", label, tail)
        tail = scan_file(path, label=label, progress=progress, start=split, first_index=len(head))
    else:
        logger.debug("%s: %d records from byte %d read by a second process", label, len(tail), split)
    head.extend(tail)
    return head
