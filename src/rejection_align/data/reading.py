"""Reading a LLaVA-format file: its bytes mapped once, the array split into each record's raw JSON, the ids.

A LLaVA-format file is a JSON array of ``{"id", "image"?, "conversations": [{"from", "value"}, ...]}``. The 665k-record
``llava_v1_5_mix665k.json`` is about 1 GB, so it is never decoded whole into Python objects: :class:`LlavaFile` reads
the bytes once and splits the array into each record's raw JSON (``msgspec.Raw``, no decoding) in about half a
second; a one-field Struct gives every id; only the records a command uses are decoded and validated with the typed
Structs of :mod:`.records`.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import operator
import os
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

from .. import json_problems
from ..errors import DataError
from .forked import Forked
from .records import (
    ANY,
    RECORD,
    RECORDS,
    IdOnly,
    LlavaRecord,
    check_records,
    decode_record,
    describe,
    follow_ups_only,
    json_array,
    undecodable_message,
    validation_message,
)
from .sharegpt import (
    ID_FIRST,
    literal_value,
    plain_matches,
    plain_sharegpt_bytes,
    plain_sharegpt_lines,
    sharegpt_bytes,
)


#: files at least this large have their ids decoded by a forked child (:meth:`LlavaFile.read`)
IDS_IN_CHILD_BYTES = 32 << 20

#: nesting allowed while splitting a file (records deeper than Python's limit are then reported by number)
SPLIT_RECURSION_LIMIT = 20_000
_UTF8_BOM = b"\xef\xbb\xbf"

_SPLIT = msgspec.json.Decoder(list[msgspec.Raw])
_ID = msgspec.json.Decoder(IdOnly)
_IDS = msgspec.json.Decoder(list[IdOnly])
_ID_LIST = msgspec.msgpack.Decoder(list[str])
_ID_OF = operator.attrgetter("id")


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while many decoded objects are alive.

    Decoded JSON holds no reference cycles, so the collector finds nothing; but with hundreds of thousands of live
    objects each of its full passes walks all of them.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Sha256(threading.Thread):
    """The file's sha256, for the manifest, computed on the second core (hashlib releases the GIL) while we split."""

    def __init__(self, data: Any) -> None:
        super().__init__(daemon=True, name="sha256")
        self._data = data
        self.digest = ""

    def run(self) -> None:
        self.digest = hashlib.sha256(self._data).hexdigest()


def _map_or_read(handle: Any) -> Any:
    """The file's bytes: mapped where possible, since reading 1 GB into a new buffer costs 0.8 s of page faults and
    copying, and mapping it with its pages populated 0.1 s.

    The map is read-only and private; a file that shrinks while we read it ends the process with SIGBUS (as it would
    any reader of a mapped file). Empty files, pipes and systems without mmap are read.
    """
    import mmap

    try:
        size = os.fstat(handle.fileno()).st_size
        if size > 0:
            flags = mmap.MAP_PRIVATE | getattr(mmap, "MAP_POPULATE", 0)
            return mmap.mmap(handle.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
    except (OSError, ValueError, AttributeError):  # not a regular file, or no POSIX mmap
        pass
    return handle.read()


def _all_ids(text: Any) -> list[str]:
    """Every record's id as a string, in one decode of the whole array (a msgspec error if any record is bad)."""
    return list(map(str, map(_ID_OF, _IDS.decode(text))))


@dataclass
class LlavaFile:
    """One LLaVA-format file in memory: its bytes, each record's raw JSON, and its sha256.

    Records are decoded only when asked for (:meth:`record`, :meth:`decode`), so a mix of a few thousand records
    from a 1 GB file costs one read, one split and the ids.
    """

    path: str  # the real path (symlinks resolved)
    label: str
    size: int
    raws: list[msgspec.Raw]
    _text: Any  # the array's bytes (after a BOM, if any)
    _hasher: _Sha256
    _ids_child: Forked | None = None

    @classmethod
    def read(cls, path: str | os.PathLike, label: str | None = None, ids_in_child: bool = False) -> LlavaFile:
        """Read and split a file; a file that is not one JSON array is a :class:`DataError` naming the problem.

        ``ids_in_child``: a large file's ids are decoded by a forked child while this process splits (saves 0.7 s on
        the 1 GB LLaVA mix); call :meth:`ids`, or :meth:`close` if an error comes first.
        """
        label = label or describe(path)
        try:
            with open(path, "rb") as handle:
                data = _map_or_read(handle)
        except FileNotFoundError:
            raise DataError(f"{label}: no such file") from None
        except IsADirectoryError:
            raise DataError(f"{label}: is a directory, expected a JSON file") from None
        text = memoryview(data)[3:] if data[:3] == _UTF8_BOM else data
        child = None
        if ids_in_child and len(text) >= IDS_IN_CHILD_BYTES:  # (before any thread of ours starts)
            child = Forked.start(lambda send: send(msgspec.msgpack.encode(_all_ids(text))))
        hasher = _Sha256(data)
        if child is None:
            hasher.start()
        try:
            raws = split_array(text, label, len(data) - len(text))
        except BaseException:
            if child is not None:
                child.close()
            raise
        if child is not None:  # (only now: three busy threads on two cores starve the split)
            hasher.start()
        return cls(os.path.realpath(path), label, len(data), raws, text, hasher, child)

    def close(self) -> None:
        """Stop and reap the id child, if :meth:`ids` was not called (an error came first)."""
        if self._ids_child is not None:
            self._ids_child.close()

    def __len__(self) -> int:
        return len(self.raws)

    @property
    def sha256(self) -> str:
        self._hasher.join()
        return self._hasher.digest

    def ids(self) -> list[str]:
        """Every record's id as a string; checks that each record is an object with a string or integer id.

        They come from the child :meth:`read` started, if any. Otherwise one decode of the whole array; if a record
        is bad, record by record: those that open with their id (``{"id": ...``, the usual layout) give it from a
        regex match on their first bytes, others are decoded with a one-field Struct, which names the bad record.
        """
        if self._ids_child is not None:
            payload = self._ids_child.receive()
            self._ids_child.close()
            if payload is not None:  # else the child failed: the loop below names the bad record
                return _ID_LIST.decode(payload)
        try:  # every record valid: one decode of the whole array, in C
            return _all_ids(self._text)
        except (msgspec.MsgspecError, RecursionError, ValueError):
            pass  # the loop below names the bad record
        out: list[str] = []
        append = out.append
        match_id = ID_FIRST.match
        for index, raw in enumerate(self.raws):
            match = match_id(raw)
            if match is not None:
                try:
                    rid = literal_value(match.group(1))
                except (msgspec.MsgspecError, UnicodeDecodeError):
                    pass  # the Struct below words it
                else:
                    append(rid if type(rid) is str else str(rid))
                    continue
            try:
                rid = _ID.decode(raw).id
            except msgspec.ValidationError as err:
                raise DataError(validation_message(err, raw, self.label, index, IdOnly)) from None
            except RecursionError:
                raise DataError(f"{self.label}: record {index}: nested too deeply") from None
            except (msgspec.DecodeError, UnicodeDecodeError):  # bad UTF-8 in a string
                raise DataError(undecodable_message(raw, self.label, index)) from None
            append(rid if type(rid) is str else str(rid))
        return out

    def sharegpt(self, index: int) -> tuple[bytes, list[str]]:
        """Record ``index`` validated and turned into its sharegpt output line, with its images.

        A plain-layout record costs one parse of its turns and is copied from the input (its formatting kept, as
        earlier releases did); any other record is decoded with the typed Structs, then decoded again whole and
        re-encoded.
        """
        raw = self.raws[index]
        plain = plain_sharegpt_bytes(raw)
        if plain is not None:
            return plain
        # any other layout, or a bad record: the typed decoder validates it (and words the error)
        self.record(index)
        return sharegpt_bytes(raw, copy_plain=False)

    def sharegpt_lines(self, items: list[Any], with_images: bool = True) -> tuple[list[bytes], list[str]] | None:
        """The lines of ``items`` (a ready line, or the index of a record to validate and convert as :meth:`sharegpt`
        does), and the images of the records; the same bytes as :meth:`sharegpt` one by one.

        Plain-layout records are checked and made together (:func:`plain_sharegpt_lines`), the others one by one
        after them; None when a plain one is in doubt: then go one by one, which names the first bad record.
        """
        positions = [position for position, item in enumerate(items) if type(item) is int]
        indices = list(map(items.__getitem__, positions))
        is_plain, groups = plain_matches(list(map(self.raws.__getitem__, indices)))
        made = plain_sharegpt_lines(groups)
        if made is None:
            return None
        lines, paths = made
        out = list(items)
        all_plain = all(is_plain)
        deque(map(out.__setitem__, itertools.compress(positions, is_plain), lines), maxlen=0)
        images_of: dict[int, list[str]] = {}
        if not all_plain:  # another layout: one by one, in order (the plain ones are all valid)
            for position, plain in zip(positions, is_plain):
                if not plain:
                    out[position], images_of[position] = self.sharegpt(out[position])
        images: list[str] = []
        if with_images:
            plain_paths = iter(paths)
            for position, plain in zip(positions, is_plain):
                if plain:
                    path = next(plain_paths)
                    if path is not None:
                        images.append(path)
                else:
                    images += images_of[position]
        return out, images

    def follow_ups_only(self) -> list[bool]:
        """For each record, whether every question is a "what about" follow-up (``--random-turn`` leaves those out).

        One typed decode of the whole array; a record that does not decode, or breaks a rule, counts as usable: it
        is refused by :meth:`check` if it is drawn.
        """
        try:
            records = RECORDS.decode(self._text)
        except (msgspec.MsgspecError, RecursionError, ValueError):
            records = None
        if records is not None and len(records) == len(self.raws):
            return follow_ups_only(records)
        out = []
        for raw in self.raws:  # a record that is not a LlavaRecord: decode one by one
            try:
                out += follow_ups_only([RECORD.decode(raw)])
            except (msgspec.MsgspecError, RecursionError, ValueError):
                out.append(False)
        return out

    def check(self, indices: Iterable[int]) -> None:
        """Validate records ``indices``: a :class:`DataError` naming the first bad one in the file's order.

        One typed decode of all of them and the rules in list operations (:func:`check_records`); one by one only to
        word an error.
        """
        indices = sorted(indices)
        try:
            records = RECORDS.decode(json_array(list(map(self.raws.__getitem__, indices))))
        except (msgspec.MsgspecError, RecursionError, ValueError):
            records = None
        if records is not None and len(records) == len(indices) and check_records(records):
            return
        for index in indices:
            self.record(index)

    def record(self, index: int) -> LlavaRecord:
        """Record ``index`` decoded and validated."""
        return decode_record(self.raws[index], self.label, index)

    def decode(self, index: int) -> dict:
        """Record ``index`` as plain Python objects, every key kept (validate it with :meth:`record` first)."""
        return ANY.decode(self.raws[index])


@contextlib.contextmanager
def _deep_nesting_allowed() -> Iterator[None]:
    """Let msgspec skip over deep values while splitting, so that a too-deep record is later named by its number."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, SPLIT_RECURSION_LIMIT))
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def split_array(text: Any, label: str, offset: int = 0) -> list[msgspec.Raw]:
    """Each element's raw JSON; ``text`` must be one JSON array (``offset``: bytes before it, e.g. a BOM)."""
    head = bytes(text[:64]).lstrip(b" \t\r\n")
    if not head:
        if not bytes(text).strip(b" \t\r\n"):
            raise DataError(f"{label}: empty file, expected a JSON array")
    elif head[:1] != b"[":
        char = head[:4].decode("utf-8", "replace")[:1]
        hint = " (JSON Lines? convert it to one JSON array)" if char == "{" else ""
        raise DataError(f"{label}: not a JSON array: it starts with {char!r}, expected '['{hint}")
    with _deep_nesting_allowed():
        try:
            return _SPLIT.decode(text)
        except msgspec.ValidationError:  # (it starts with "[", so this is not expected)
            raise DataError(f"{label}: not a JSON array") from None
        except (msgspec.DecodeError, UnicodeDecodeError) as err:
            raise DataError(_syntax_error(text, label, offset, json_problems.byte_of(err))) from None
        except RecursionError:
            raise DataError(
                f"{label}: not supported: a value is nested more than {SPLIT_RECURSION_LIMIT} levels deep"
            ) from None


#: a broken file whose broken record cannot be found (more than 64 commas into it) is scanned whole up to this size
SCAN_WHOLE_BYTES = 16 << 20

_SYNTAX_WORDS = {
    json_problems.TRUNCATED: "the file ends inside the array (truncated), or a string holds an invalid \\u escape",
    json_problems.LONE_SURROGATE: "the file ends inside the array (truncated), or a string holds an invalid \\u escape",
}


def _syntax_error(text: Any, label: str, offset: int, hint: int | None) -> str:
    """Our message for a file that is not one JSON array (error path only): the record, what, and where.

    The grammar scanner (:func:`json_problems.syntax_problem`) reads only the broken record, found from the byte
    msgspec's error points at (``hint``, if its text gives one; else the end) by :func:`_record_start`; a small file
    is scanned whole if that fails.
    """
    located = _record_start(text, len(text) if hint is None else hint)
    found = None
    if located is not None:
        number, start = located
        limit = None if hint is None else hint + 64
        found = json_problems.syntax_problem(text, start, in_array=True, item=number, limit=limit)
    elif len(text) <= SCAN_WHOLE_BYTES:
        found = json_problems.syntax_problem(text)
    if found is None:  # msgspec refused what the scanner accepts: say where, if known
        if hint is None:
            return f"{label}: not valid JSON"
        line, column = json_problems.line_column(text, hint)
        return f"{label}: not valid JSON at line {line}, column {column} (byte {hint + offset})"
    where = f"{label}: record {found.item}" if found.depth >= 1 else label
    if found.position is None:
        return f"{where}: not valid JSON: {_SYNTAX_WORDS.get(found.problem, found.problem)}"
    position = found.position
    line, column = json_problems.line_column(text, position)
    ahead = bytes(text[position : position + 9])
    literal = next((word for word in ("NaN", "Infinity", "-Infinity") if ahead.startswith(word.encode())), None)
    note = f" ({literal} is not JSON; write null or a number)" if literal else ""
    return f"{where}: not valid JSON: {found.problem} at line {line}, column {column} (byte {position + offset}){note}"


def _record_start(text: Any, position: int, attempts: int = 64) -> tuple[int, int] | None:
    """The number and first byte of the record holding byte ``position`` of a broken array (error path only).

    Tries the commas before it, last first: the first prefix that closes into a valid array ends at a comma between
    records, and its length is the number of the broken record. No comma at all: the first record. None if neither.
    """
    prefix = bytes(text[:position])
    end = len(prefix)
    for _ in range(attempts):
        comma = prefix.rfind(b",", 0, end)
        if comma < 0:
            opening = len(prefix) - len(prefix.lstrip(b" \t\r\n"))
            return (0, opening + 1) if prefix[opening : opening + 1] == b"[" else None
        try:
            return len(_SPLIT.decode(prefix[:comma] + b"]")), comma + 1
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            end = comma
    return None
