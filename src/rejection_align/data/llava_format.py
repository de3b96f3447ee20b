"""LLaVA-format records: typed msgspec Structs, validation, and conversion to sharegpt.

A LLaVA-format file is a JSON array of ``{"id", "image"?, "conversations": [{"from", "value"}, ...]}``. The 665k-record
``llava_v1_5_mix665k.json`` is about 1 GB, so it is never decoded whole into Python objects: :class:`LlavaFile` reads
the bytes once and splits the array into each record's raw JSON (``msgspec.Raw``, no decoding) in about half a
second; a one-field Struct gives every id; only the records a command uses are decoded and validated with the typed
Structs below. Indices of records and turns count from 0, as in ``data[17]["conversations"][3]``.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import json
import logging
import operator
import os
import re
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

from ..errors import DataError
from ..hook.settings import DEFAULT_SENTENCE as DEFAULT_REJECTION_SENTENCE  # noqa: F401 (re-exported for the data commands)
from . import json_problems
from .forked import Forked


logger = logging.getLogger(__name__)

HUMAN = "human"
GPT = "gpt"
IMAGE_TAG = "<image>"
WHAT_ABOUT = "what about"

#: the columns of a LLaMA-Factory sharegpt dataset registered for our output files
SHAREGPT_COLUMNS = {"messages": "conversations", "images": "image"}

#: what :func:`check_record` reports about a valid record
FLAG_HAS_IMAGE = 1
FLAG_ALL_WHAT_ABOUT = 2  # every question is a "what about" follow-up: unusable for --random-turn

#: files at least this large have their ids decoded by a forked child (:meth:`LlavaFile.read`)
IDS_IN_CHILD_BYTES = 32 << 20

#: the writer of an output array syncs it to disk every this many bytes (JsonArrayWriter)
SYNC_BYTES = 64 << 20

#: nesting allowed while splitting a file (records deeper than Python's limit are then reported by number)
SPLIT_RECURSION_LIMIT = 20_000
_UTF8_BOM = b"\xef\xbb\xbf"


class Turn(msgspec.Struct, gc=False):
    """One turn of a conversation; ``from`` is a Python keyword, hence the rename."""

    from_: str = msgspec.field(name="from")
    value: str


class LlavaRecord(msgspec.Struct, gc=False):
    """The fields of a LLaVA record that the data commands read (other keys are ignored here, kept in outputs)."""

    id: str | int
    conversations: list[Turn]
    image: str | list[str] | None = None


class _IdOnly(msgspec.Struct, gc=False):
    id: str | int


_SPLIT = msgspec.json.Decoder(list[msgspec.Raw])
_RECORD = msgspec.json.Decoder(LlavaRecord)
_RECORDS = msgspec.json.Decoder(list[LlavaRecord])
_TURNS = msgspec.json.Decoder(list[Turn])
_TURNS_OF = msgspec.json.Decoder(list[list[Turn]])
_ID = msgspec.json.Decoder(_IdOnly)
_IDS = msgspec.json.Decoder(list[_IdOnly])
_ANY = msgspec.json.Decoder()
_ID_LIST = msgspec.msgpack.Decoder(list[str])

# The plain layout up to the value of "conversations", matched at a record's start (see plain_sharegpt_bytes)
_WS = r"[ \t\n\r]*"
_STRING = r'"[^"\\\x00-\x1f]*(?:\\.[^"\\\x00-\x1f]*)*"'
_PLAIN_PREFIX = re.compile(
    rf'\{{{_WS}"id"{_WS}:{_WS}(?P<id>{_STRING}|-?(?:0|[1-9][0-9]*)){_WS},{_WS}'
    rf'(?:"image"{_WS}:{_WS}(?P<image>{_STRING}){_WS},{_WS})?"conversations"{_WS}:{_WS}'.encode()
)
_ID_PREFIX = re.compile(rf'\{{{_WS}"id"{_WS}:{_WS}({_STRING}|-?(?:0|[1-9][0-9]*)){_WS}[,}}]'.encode())
_SHAREGPT_KEYS = ("id", "image", "conversations")
_SPEAKERS = [HUMAN, GPT] * 64
_SPEAKER_OF = operator.attrgetter("from_")
_VALUE_OF = operator.attrgetter("value")
_ID_OF = operator.attrgetter("id")
_CONVERSATIONS_OF = operator.attrgetter("conversations")
_IMAGE_OF = operator.attrgetter("image")
_TYPE_NAMES = {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean"}


def describe(path: str | os.PathLike) -> str:
    """The name used in messages: the path as the user gave it."""
    return os.fspath(path)


def _where(label: str, index: int, rid: Any = None) -> str:
    """``file: record 17 (id '0042')``: the prefix of every message about one record."""
    if isinstance(rid, str | int) and not isinstance(rid, bool):
        return f"{label}: record {index} (id {rid!r})"
    return f"{label}: record {index}"


def _type_name(value: Any) -> str:
    return "null" if value is None else _TYPE_NAMES.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------------------------------- validation


def _turns_ok(turns: list[Turn], n_images: int) -> bool:
    """Whether the turns pass every rule of :func:`check_record`; C-level list operations, for the fast path."""
    n_turns = len(turns)
    if n_turns == 0 or n_turns % 2:
        return False
    expected = _SPEAKERS[:n_turns] if n_turns <= len(_SPEAKERS) else [HUMAN, GPT] * (n_turns // 2)
    if list(map(_SPEAKER_OF, turns)) != expected:
        return False
    values = list(map(_VALUE_OF, turns))
    if not all(map(str.strip, values)) or IMAGE_TAG in "\x00".join(values[1::2]):
        return False
    return "\x00".join(values[0::2]).count(IMAGE_TAG) == n_images


def _all_turns_ok(turns_of: list[list[Turn]], n_images: list[int]) -> bool:
    """:func:`_turns_ok` for many records at once, in list operations over all their turns (no loop per record).

    Records of even length whose concatenated speakers alternate from human each alternate from human themselves.
    """
    lengths = list(map(len, turns_of))
    if 0 in lengths or any(map(operator.and_, lengths, itertools.repeat(1))):
        return False
    turns = list(itertools.chain.from_iterable(turns_of))
    n_turns = len(turns)
    if list(map(_SPEAKER_OF, turns)) != [HUMAN, GPT] * (n_turns // 2):
        return False
    values = list(map(_VALUE_OF, turns))
    if not all(map(str.strip, values)) or IMAGE_TAG in "\x00".join(values[1::2]):
        return False
    return _per_record(map(str.count, values[0::2], itertools.repeat(IMAGE_TAG)), lengths) == n_images


def _per_record(per_question: Iterable[int], lengths: list[int]) -> list[int]:
    """Sums of a number per question (human turn), record by record (``lengths``: turns per record, all even).

    Running totals read at each record's last question, then differenced: list operations, no loop per record.
    """
    totals = list(itertools.accumulate(per_question))
    ends = itertools.accumulate(map(operator.rshift, lengths, itertools.repeat(1)))
    at_ends = list(map(totals.__getitem__, map(operator.sub, ends, itertools.repeat(1))))
    return list(map(operator.sub, at_ends, [0, *at_ends[:-1]]))


def _image_count(image: str | list[str] | None) -> int:
    """:func:`_count_images` for a valid record; -1 (never a tag count) for an empty path, which it reports."""
    if image is None:
        return 0
    if type(image) is str:
        return 1 if image else -1
    return len(image) if all(image) else -1


def check_records(records: list[LlavaRecord]) -> bool:
    """Whether every record meets :func:`check_record`'s rules (if not, go one by one to name the first bad one).

    The rules are checked in list operations over all turns (:func:`_all_turns_ok`); only the images are looked at
    record by record.
    """
    n_images = list(map(_image_count, map(_IMAGE_OF, records)))
    return _all_turns_ok(list(map(_CONVERSATIONS_OF, records)), n_images) if records else True


def _is_follow_up_only(turns: list[Turn]) -> bool:
    """Every question is a "what about" follow-up; False for turns that break a rule (refused if ever drawn)."""
    return len(turns) > 0 and not len(turns) % 2 and all(WHAT_ABOUT in turn.value.lower() for turn in turns[0::2])


def follow_ups_only(records: list[LlavaRecord]) -> list[bool]:
    """:func:`_is_follow_up_only` of each record, in list operations over all questions when every record has an
    even, non-zero number of turns (then every other turn of all of them together is a question)."""
    turns_of = list(map(_CONVERSATIONS_OF, records))
    lengths = list(map(len, turns_of))
    if 0 in lengths or any(map(operator.and_, lengths, itertools.repeat(1))):
        return list(map(_is_follow_up_only, turns_of))
    questions = list(map(_VALUE_OF, list(itertools.chain.from_iterable(turns_of))[0::2]))
    follow_ups = _per_record(map(operator.contains, map(str.lower, questions), itertools.repeat(WHAT_ABOUT)), lengths)
    return list(map(operator.eq, follow_ups, map(operator.rshift, lengths, itertools.repeat(1))))


def check_record(record: LlavaRecord, label: str, index: int) -> int:
    """The rules a typed record must also meet; return its flags (:data:`FLAG_HAS_IMAGE`, ...).

    Checks what LLaMA-Factory would otherwise reject late (or silently drop): ``conversations`` alternating
    human/gpt and starting with human, an even number of turns, non-empty values, and as many ``<image>`` tags in the
    human turns as there are images. The types were checked by the Struct decoder.
    """
    conversations = record.conversations
    n_turns = len(conversations)
    if n_turns == 0:
        raise DataError(f"{_where(label, index, record.id)}: 'conversations' is empty")
    if n_turns % 2:
        raise DataError(
            f"{_where(label, index, record.id)}: has {n_turns} turns, expected an even number (human/gpt pairs)"
        )
    speakers = [turn.from_ for turn in conversations]
    values = [turn.value for turn in conversations]
    expected = _SPEAKERS[:n_turns] if n_turns <= len(_SPEAKERS) else [HUMAN, GPT] * (n_turns // 2)
    # the common case in C-level operations; the turn-by-turn loop below only words the error
    if speakers != expected or not all(map(str.strip, values)) or IMAGE_TAG in "\x00".join(values[1::2]):
        _raise_turn_error(record, label, index)
    humans = values[0::2]
    tags = "\x00".join(humans).count(IMAGE_TAG)
    all_what_about = not any(WHAT_ABOUT not in question.lower() for question in humans)

    n_images = _count_images(record, label, index)
    if tags != n_images:
        raise DataError(
            f"{_where(label, index, record.id)}: got {tags} {IMAGE_TAG} tag{'s' if tags != 1 else ''} in the human "
            f"turns, expected {n_images} (one per image)"
        )
    return (FLAG_HAS_IMAGE if n_images else 0) | (FLAG_ALL_WHAT_ABOUT if all_what_about else 0)


def _raise_turn_error(record: LlavaRecord, label: str, index: int) -> None:
    """Find the first bad turn (speaker out of turn, empty value, image tag in an answer) and raise its error."""
    expected = HUMAN
    for turn_index, turn in enumerate(record.conversations):
        speaker, value = turn.from_, turn.value
        if speaker != expected:
            _raise_bad_speaker(_where(label, index, record.id), turn_index, speaker, expected)
        if not value.strip():
            raise DataError(f"{_where(label, index, record.id)}: turn {turn_index} ({speaker}) has an empty value")
        if expected == GPT and IMAGE_TAG in value:
            raise DataError(
                f"{_where(label, index, record.id)}: turn {turn_index} (gpt) contains {IMAGE_TAG!r}; "
                "only human turns may hold image tags"
            )
        expected = GPT if expected == HUMAN else HUMAN
    raise AssertionError("no bad turn found")  # pragma: no cover (called only when one exists)


def _raise_bad_speaker(where: str, turn_index: int, speaker: str, expected: str) -> None:
    """Explain a wrong ``from``: unknown speaker, a first turn that is not human, or turns that do not alternate."""
    if speaker not in (HUMAN, GPT):
        raise DataError(f"{where}: turn {turn_index} has from={speaker!r}, expected 'human' or 'gpt'")
    if turn_index == 0:
        raise DataError(f"{where}: first turn has from={speaker!r}, expected 'human'")
    raise DataError(
        f"{where}: turn {turn_index} has from={speaker!r}, expected {expected!r} (turns must alternate human, gpt)"
    )


def _count_images(record: LlavaRecord, label: str, index: int) -> int:
    """Number of images of a record: ``image`` may be absent/null, one path, or a list of paths."""
    image = record.image
    if image is None:
        return 0
    if isinstance(image, str):
        if not image:
            raise DataError(f"{_where(label, index, record.id)}: 'image' is an empty string")
        return 1
    for path in image:
        if not path:
            raise DataError(f"{_where(label, index, record.id)}: 'image' holds {path!r}, expected non-empty paths")
    return len(image)


def _place(path: tuple[str | int, ...]) -> str:
    """``turn 2 'value'`` for a path inside the turns, else the quoted path (``'image[0]'``); "" for the record."""
    if path[:1] == ("conversations",) and len(path) >= 2 and isinstance(path[1], int):
        return f"turn {path[1]}" + "".join(f" {key!r}" if isinstance(key, str) else f"[{key}]" for key in path[2:])
    place = "".join(f".{key}" if isinstance(key, str) else f"[{key}]" for key in path).lstrip(".")
    return repr(place) if place else ""


def _explain_validation(err: msgspec.ValidationError, raw: Any, label: str, index: int, schema: Any = None) -> str:
    """Our message for a record that is valid JSON but not a ``schema`` (default: :class:`LlavaRecord`).

    msgspec's error gives at most the place (``$.conversations[0].value``); what is wrong there (the type expected,
    the type found, a missing field) is found by :func:`json_problems.schema_problem` on the record decoded
    generically, so the message does not change with msgspec's wording. The path becomes ``turn 0 'value'``; the id
    (if it can be read) joins the record number.
    """
    info = msgspec.inspect.type_info(schema or LlavaRecord)
    try:
        value = _ANY.decode(raw)
    except (ValueError, msgspec.MsgspecError, RecursionError):  # bad UTF-8, too deep, a number out of range
        value, problem = None, None
    else:
        problem = json_problems.schema_problem(value, info, json_problems.path_of(err))
    rid = value.get("id") if isinstance(value, dict) else None
    if problem is None:  # not decodable generically: say where, and what was expected there
        path = json_problems.path_of(err) or ()
        kind = json_problems.kind_of_text(raw)
        if not path and kind not in (None, "object"):  # (a value nested too deeply to decode, as a record)
            return f"{label}: record {index} is {json_problems.a_kind(kind)}, expected an object"
        expected = json_problems.expected_at(info, path)
        place = _place(path)
        return f"{_where(label, index)}: {place + ': ' if place else ''}expected `{expected or 'the record layout'}`"
    place = _place(problem.path)
    if problem.missing:
        if not place and problem.missing == "id":
            return f"{label}: record {index} has no 'id'"
        return f"{_where(label, index, rid)}: {place + ' ' if place else ''}has no {problem.missing!r}"
    if not place:
        name = _type_name(value)
        return f"{label}: record {index} is a{'n' if name[0] in 'aeiou' else ''} {name}, expected an object"
    if place == "'id'":
        return f"{label}: record {index} has id {rid!r} ({_type_name(rid)}), expected a string or an integer"
    return f"{_where(label, index, rid)}: {place}: expected `{problem.expected}`, got `{problem.found}`"


def _undecodable(raw: Any, label: str, index: int) -> str:
    """Our message for a record msgspec could not decode at all: bytes that are not UTF-8, or not JSON.

    Found by looking at the bytes ourselves (msgspec 0.18 raised ``UnicodeDecodeError``, 0.23 a ``DecodeError`` with
    its own words), on the error path only.
    """
    bad_utf8 = json_problems.utf8_problem(raw)
    if bad_utf8 is not None:
        return f"{label}: record {index}: not valid UTF-8 ({bad_utf8} of the record)"
    found = json_problems.syntax_problem(raw)
    if found is None:  # (msgspec refused what the grammar allows: say so without guessing)
        return f"{label}: record {index}: not valid JSON"
    if found.position is None:
        words = (
            "a string holds an invalid \\u escape" if found.problem == json_problems.LONE_SURROGATE else "truncated"
        )
        return f"{label}: record {index}: not valid JSON: {words}"
    return f"{label}: record {index}: not valid JSON: {found.problem} at byte {found.position} of the record"


def decode_record(raw: Any, label: str, index: int) -> LlavaRecord:
    """Decode and validate one record's raw JSON with the typed Structs; every problem is a :class:`DataError`."""
    try:
        record = _RECORD.decode(raw)
    except msgspec.ValidationError as err:
        raise DataError(_explain_validation(err, raw, label, index)) from None
    except RecursionError:
        raise DataError(
            f"{label}: record {index}: nested too deeply (more than {sys.getrecursionlimit()} levels)"
        ) from None
    except (msgspec.DecodeError, UnicodeDecodeError):  # bad UTF-8 in a string; not JSON (for direct callers)
        raise DataError(_undecodable(raw, label, index)) from None
    check_record(record, label, index)
    return record


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
    """A new record in LLaMA-Factory sharegpt shape: ``id`` a string, ``image`` a list, other keys kept in order."""
    out = {"id": record_id(record), "image": record_images(record), "conversations": record["conversations"]}
    if len(record) > 3 or any(key not in _SHAREGPT_KEYS for key in record):
        for key, value in record.items():
            if key not in _SHAREGPT_KEYS:
                out[key] = value
    return out


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


# --------------------------------------------------------------------------------------------------- encoding

_ENCODER = json.JSONEncoder(ensure_ascii=False)


def encode_record(record: dict) -> bytes:
    """One record as compact UTF-8 JSON (``", "`` and ``": "`` separators, as the earlier releases wrote)."""
    return _ENCODER.encode(record).encode("utf-8")


def _literal(literal: bytes) -> str | int:
    """The value of an id or image literal matched by ``_PLAIN_PREFIX`` (``UnicodeDecodeError`` on bad UTF-8)."""
    if literal[:1] != b'"':
        return int(literal)
    if b"\\" in literal:
        return msgspec.json.decode(literal)
    return literal[1:-1].decode("utf-8")


def plain_sharegpt_bytes(raw: Any) -> tuple[bytes, list[str]] | None:
    """The sharegpt line and images of a valid plain-layout record, made from its bytes; None for any other record.

    Plain layout: exactly ``{"id", "image"?, "conversations"}`` in that order, ``image`` one path. The bytes after
    the ``"conversations":`` key, up to the closing brace, must decode as one list of turns: that proves the layout
    and checks the turns' types in one parse; :func:`_turns_ok` checks the rules. The conversations are then copied
    as they are in the input, with line breaks deleted so that each record is one output line (JSON strings hold no
    raw line breaks); only ``id`` (quoted if an integer) and ``image`` (put in a list) are rewritten. None also for a
    plain record that breaks a rule: the typed decoder then words the error.
    """
    data = bytes(raw)
    match = _PLAIN_PREFIX.match(data)
    if match is None or data[-1:] != b"}":
        return None
    conversations = data[match.end() : -1].rstrip(b" \t\r\n")
    rid, image = match.group("id", "image")
    try:
        turns = _TURNS.decode(conversations)
        _literal(rid)  # valid UTF-8
        images = [] if image is None else [_literal(image)]
    except (msgspec.MsgspecError, RecursionError, UnicodeDecodeError):
        return None
    if "" in images or not _turns_ok(turns, len(images)):
        return None
    return b"".join(
        (
            b'{"id": ',
            rid if rid[:1] == b'"' else b'"' + rid + b'"',
            b', "image": [',
            image or b"",
            b'], "conversations": ',
            conversations.translate(None, b"\r\n"),
            b"}",
        )
    ), images


# A whole plain-layout record (see plain_sharegpt_bytes): the id's content (a string's, or an integer), the image
# literal, and the conversations up to the last "]" before the closing brace (a key after them: another layout)
_PLAIN_RECORD = re.compile(
    rf'\{{{_WS}"id"{_WS}:{_WS}(?:"([^"\\\x00-\x1f]*(?:\\.[^"\\\x00-\x1f]*)*)"|(-?(?:0|[1-9][0-9]*))){_WS},{_WS}'
    rf'(?:"image"{_WS}:{_WS}({_STRING}){_WS},{_WS})?"conversations"{_WS}:{_WS}'
    r"((?s:.*)\])[ \t\n\r]*\}\Z".encode()
)
_PLAIN_LINE = b'{"id": "%b%b", "image": [%b], "conversations": %b}'
_GROUPS = operator.methodcaller("groups", b"")
_CONVERSATION_OF = operator.itemgetter(3)
_IMAGE_LITERAL_OF = operator.itemgetter(2)
_ONE_LINE = operator.methodcaller("translate", None, b"\r\n")  # JSON strings hold no raw line breaks


def _interleave(items: list[Any], separator: Any) -> list[Any]:
    """``[a, sep, b, sep, c]`` in list operations."""
    out = [separator] * (2 * len(items) - 1) if items else []
    out[0::2] = items
    return out


def plain_sharegpt_lines(groups: list[tuple[bytes, bytes, bytes, bytes]]) -> list[bytes] | None:
    """:func:`plain_sharegpt_bytes` of many plain-layout records (``_PLAIN_RECORD``'s groups).

    The turns of all the records are decoded in one parse and checked in list operations (:func:`_all_turns_ok`),
    the id and image literals in one UTF-8 decode; each line is made by one ``%`` and one translate. None when any
    record is in doubt (a broken rule, a backslash in a literal, an empty image): then go one by one, which names the
    first bad record. Never a different line.
    """
    if not groups:
        return []
    literals = b"".join(itertools.chain.from_iterable(map(operator.itemgetter(0, 1, 2), groups)))
    image_literals = list(map(_IMAGE_LITERAL_OF, groups))
    if b"\\" in literals or b'""' in image_literals:
        return None
    try:
        literals.decode("utf-8")
        turns_of = _TURNS_OF.decode(b"".join([b"[", *_interleave(list(map(_CONVERSATION_OF, groups)), b","), b"]"]))
    except (msgspec.MsgspecError, RecursionError, UnicodeDecodeError):
        return None
    if len(turns_of) != len(groups) or not _all_turns_ok(turns_of, list(map(bool, image_literals))):
        return None
    return list(map(_ONE_LINE, map(_PLAIN_LINE.__mod__, groups)))


def sharegpt_bytes(raw: Any, copy_plain: bool = True) -> tuple[bytes, list[str]]:
    """A validated record's sharegpt output line and its images.

    ``copy_plain``: plain-layout records keep the input's formatting (``mix``, the fast path); otherwise every record
    is re-encoded (``convert``, whose output earlier releases always re-encoded).
    """
    plain = plain_sharegpt_bytes(raw) if copy_plain else None  # (validated again: cheap, and never wrong)
    if plain is not None:
        return plain
    record = to_sharegpt(_ANY.decode(raw))
    return encode_record(record), record["image"]


class JsonArrayWriter:
    """Writes records into an open binary file as a JSON array, one record per line; hashes what it writes.

    Batches of about 4 MiB are written and hashed by a second thread (file writes and sha256 release the GIL), so a
    full mix encodes records on one core while the other writes. Use it as a context manager: on an error the thread
    is stopped, and an error of the thread (disk full) is raised by :meth:`close`.
    """

    def __init__(self, handle: Any, hasher: Any | None = None) -> None:
        import queue

        self._handle = handle
        self._hasher = hasher
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self.count = 0
        self.bytes_written = 0
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, daemon=True, name="json-array-writer")
        self._thread.start()

    def __enter__(self) -> JsonArrayWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _drain(self) -> None:
        unsynced = 0
        while True:
            data = self._queue.get()
            if data is None:
                return
            if self._error is not None:
                continue
            try:
                self._handle.write(data)
                if self._hasher is not None:
                    self._hasher.update(data)
                unsynced += len(data)
                if unsynced >= SYNC_BYTES:  # to disk now, while the main thread works: the final fsync waits little
                    unsynced = 0
                    self._sync()
            except BaseException as err:  # raised in the main thread by close()
                self._error = err

    def _sync(self) -> None:
        try:
            fd = self._handle.fileno()
        except (OSError, ValueError):  # not a file (an in-memory buffer)
            return
        self._handle.flush()
        os.fdatasync(fd)

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def write(self, record: dict) -> None:
        self.write_bytes(encode_record(record))

    def write_bytes(self, data: bytes) -> None:
        """Write one record already encoded as JSON (one line, no trailing comma)."""
        self._batch.append(data)
        self._batch_bytes += len(data)
        self.count += 1
        if self._batch_bytes >= 4 << 20:
            self._flush()

    def write_lines(self, lines: list[bytes]) -> None:
        """Write records already encoded as JSON (each one line, no trailing comma)."""
        self._batch += lines
        self._batch_bytes += sum(map(len, lines))
        self.count += len(lines)
        if self._batch_bytes >= 4 << 20:
            self._flush()

    def write_joined(self, joined: bytes, count: int) -> None:
        """Write ``count`` records already encoded and joined with ``b",\\n"``."""
        self._batch.append(joined)
        self._batch_bytes += len(joined)
        self.count += count
        if self._batch_bytes >= 4 << 20:
            self._flush()

    def _flush(self) -> None:
        if not self._batch:
            return
        self._emit(b",\n" if self.bytes_written else b"[\n")  # (not joined to the batch: one copy less)
        self._emit(b",\n".join(self._batch))
        self._batch = []
        self._batch_bytes = 0

    def _emit(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(data)
        self.bytes_written += len(data)

    def close(self) -> None:
        """Finish the array (``[]`` when no record was written); wait until everything is written and hashed."""
        self._flush()
        self._emit(b"\n]\n" if self.bytes_written else b"[]\n")
        self._stop()
        if self._error is not None:
            raise self._error


# --------------------------------------------------------------------------------------------------- reading


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
        match_id = _ID_PREFIX.match
        for index, raw in enumerate(self.raws):
            match = match_id(raw)
            if match is not None:
                literal = match.group(1)
                if literal[:1] != b'"':
                    append(str(int(literal)))
                    continue
                if b"\\" not in literal:
                    try:
                        append(literal[1:-1].decode("utf-8"))
                        continue
                    except UnicodeDecodeError:
                        pass
            try:
                rid = _ID.decode(raw).id
            except msgspec.ValidationError as err:
                raise DataError(_explain_validation(err, raw, self.label, index, _IdOnly)) from None
            except RecursionError:
                raise DataError(f"{self.label}: record {index}: nested too deeply") from None
            except (msgspec.DecodeError, UnicodeDecodeError):  # bad UTF-8 in a string
                raise DataError(_undecodable(raw, self.label, index)) from None
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
        matches = list(map(_PLAIN_RECORD.match, map(self.raws.__getitem__, indices)))
        is_plain = list(map(operator.is_not, matches, itertools.repeat(None)))
        groups = list(map(_GROUPS, itertools.compress(matches, is_plain)))
        lines = plain_sharegpt_lines(groups)
        if lines is None:
            return None
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
            plain_images = iter(map(_IMAGE_LITERAL_OF, groups))
            for position, plain in zip(positions, is_plain):
                if plain:
                    literal = next(plain_images)
                    if literal:
                        images.append(literal[1:-1].decode("utf-8"))
                else:
                    images += images_of[position]
        return out, images

    def follow_ups_only(self) -> list[bool]:
        """For each record, whether every question is a "what about" follow-up (``--random-turn`` leaves those out).

        One typed decode of the whole array; a record that does not decode, or breaks a rule, counts as usable: it
        is refused by :meth:`check` if it is drawn.
        """
        try:
            records = _RECORDS.decode(self._text)
        except (msgspec.MsgspecError, RecursionError, ValueError):
            records = None
        if records is not None and len(records) == len(self.raws):
            return follow_ups_only(records)
        out = []
        for raw in self.raws:  # a record that is not a LlavaRecord: decode one by one
            try:
                out.append(_is_follow_up_only(_RECORD.decode(raw).conversations))
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
            records = _RECORDS.decode(
                b"".join([b"[", *_interleave(list(map(self.raws.__getitem__, indices)), b","), b"]"])
            )
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
        return _ANY.decode(self.raws[index])


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
