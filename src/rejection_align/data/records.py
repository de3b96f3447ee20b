"""LLaVA-format records: the typed msgspec Structs, the rules a record must meet, and the wording of every problem.

Each rule is written here once, as a predicate over many records at a time in list operations (:func:`turns_ok`,
:func:`image_count`, :func:`follow_up_flags`): the one-by-one path (:func:`check_record`) and the fast paths of
:mod:`.sharegpt` and :mod:`.reading` all call them. The wording of a broken rule (:func:`_raise_record_error`) walks
the record turn by turn on the error path only, to name the first problem; a test checks that it finds one exactly
when the predicates say a record is bad. Indices of records and turns count from 0, as in
``data[17]["conversations"][3]``.
"""

from __future__ import annotations

import itertools
import operator
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from .. import json_problems
from ..constants import DEFAULT_REJECTION_SENTENCE  # noqa: F401 (the data commands' default)
from ..errors import DataError


HUMAN = "human"
GPT = "gpt"
IMAGE_TAG = "<image>"
WHAT_ABOUT = "what about"

#: what :func:`check_record` reports about a valid record
FLAG_HAS_IMAGE = 1
FLAG_ALL_WHAT_ABOUT = 2  # every question is a "what about" follow-up: unusable for --random-turn


class Turn(msgspec.Struct, gc=False):
    """One turn of a conversation; ``from`` is a Python keyword, hence the rename."""

    from_: str = msgspec.field(name="from")
    value: str


class LlavaRecord(msgspec.Struct, gc=False):
    """The fields of a LLaVA record that the data commands read (other keys are ignored here, kept in outputs)."""

    id: str | int
    conversations: list[Turn]
    image: str | list[str] | None = None


class IdOnly(msgspec.Struct, gc=False):
    """A record's id alone: every record of a file is checked for one, without decoding the rest."""

    id: str | int


RECORD = msgspec.json.Decoder(LlavaRecord)
RECORDS = msgspec.json.Decoder(list[LlavaRecord])
ANY = msgspec.json.Decoder()

_SPEAKERS = [HUMAN, GPT] * 64
_SPEAKER_OF = operator.attrgetter("from_")
_VALUE_OF = operator.attrgetter("value")
_CONVERSATIONS_OF = operator.attrgetter("conversations")
_IMAGE_OF = operator.attrgetter("image")
_ODD = (1).__and__
_SHAREGPT_KEYS = ("id", "image", "conversations")
_TYPE_NAMES = {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean"}


def json_array(raws: list[Any]) -> bytes:
    """The JSON array of the records' raw texts, to decode many records in one call (one copy of their bytes)."""
    if not raws:
        return b"[]"
    parts = [b","] * (2 * len(raws) + 1)
    parts[1::2] = raws
    parts[0], parts[-1] = b"[", b"]"
    return b"".join(parts)


# --------------------------------------------------------------------------------------------------- the rules


def image_count(image: str | list[str] | None) -> int:
    """How many images a record's ``image`` names (absent or null: none, a path: one, a list: its length); -1 when a
    path is empty, which no tag count matches (:func:`turns_ok` then fails)."""
    if image is None:
        return 0
    if type(image) is str:
        return 1 if image else -1
    return len(image) if all(image) else -1


def follow_up_flags(questions: Iterable[str]) -> Iterator[bool]:
    """For each question, whether it is a "what about" follow-up (it only makes sense after the previous turn)."""
    return map(operator.contains, map(str.lower, questions), itertools.repeat(WHAT_ABOUT))


def is_follow_up(question: str) -> bool:
    """:func:`follow_up_flags` of one question."""
    return next(follow_up_flags((question,)))


def _even_lengths(turns_of: list[list[Any]]) -> list[int] | None:
    """Each record's number of turns, or None if one has none or an odd number (then questions cannot be found by
    taking every other turn of all records together)."""
    lengths = list(map(len, turns_of))
    if 0 in lengths or any(map(_ODD, lengths)):
        return None
    return lengths


def turns_ok(turns_of: list[list[Turn]], n_images: list[int]) -> bool:
    """Whether the records whose turns are ``turns_of`` (with ``n_images`` images, from :func:`image_count`) all meet
    the rules of the conversations, in list operations over all their turns (no loop per record or turn):

    a non-zero, even number of turns; ``from`` alternating human, gpt from human; no blank value; no ``<image>`` tag
    in a gpt turn; as many tags in a record's human turns as it has images. (Records of even length whose
    concatenated speakers alternate from human each alternate from human themselves.)
    """
    lengths = _even_lengths(turns_of)
    if lengths is None:
        return False
    turns = turns_of[0] if len(turns_of) == 1 else list(itertools.chain.from_iterable(turns_of))
    n_turns = len(turns)
    expected = _SPEAKERS[:n_turns] if n_turns <= len(_SPEAKERS) else [HUMAN, GPT] * (n_turns // 2)
    if list(map(_SPEAKER_OF, turns)) != expected:
        return False
    values = list(map(_VALUE_OF, turns))
    if not all(map(str.strip, values)) or IMAGE_TAG in "\x00".join(values[1::2]):
        return False
    return _tags_per_record(values[0::2], lengths) == n_images


def _tags_per_record(questions: list[str], lengths: list[int]) -> list[int]:
    """The number of ``<image>`` tags in each record's questions (one record: one count over them all)."""
    if len(lengths) == 1:
        return ["\x00".join(questions).count(IMAGE_TAG)]
    return per_record(map(str.count, questions, itertools.repeat(IMAGE_TAG)), lengths)


def per_record(per_question: Iterable[int], lengths: list[int]) -> list[int]:
    """Sums of a number per question (human turn), record by record (``lengths``: turns per record, all even).

    Running totals read at each record's last question, then differenced: list operations, no loop per record.
    """
    totals = list(itertools.accumulate(per_question))
    ends = itertools.accumulate(map(operator.rshift, lengths, itertools.repeat(1)))
    at_ends = list(map(totals.__getitem__, map(operator.sub, ends, itertools.repeat(1))))
    return list(map(operator.sub, at_ends, [0, *at_ends[:-1]]))


def check_records(records: list[LlavaRecord]) -> bool:
    """Whether every record meets :func:`check_record`'s rules (if not, go one by one to name the first bad one)."""
    n_images = list(map(image_count, map(_IMAGE_OF, records)))
    return turns_ok(list(map(_CONVERSATIONS_OF, records)), n_images) if records else True


def _is_follow_up_only(turns: list[Turn]) -> bool:
    """Every question is a "what about" follow-up; False for turns that break a rule (refused if ever drawn)."""
    return _even_lengths([turns]) is not None and all(follow_up_flags(map(_VALUE_OF, turns[0::2])))


def follow_ups_only(records: list[LlavaRecord]) -> list[bool]:
    """:func:`_is_follow_up_only` of each record, in list operations over all questions when every record has an
    even, non-zero number of turns (then every other turn of all of them together is a question)."""
    turns_of = list(map(_CONVERSATIONS_OF, records))
    lengths = _even_lengths(turns_of)
    if lengths is None:
        return list(map(_is_follow_up_only, turns_of))
    questions = list(map(_VALUE_OF, list(itertools.chain.from_iterable(turns_of))[0::2]))
    follow_ups = per_record(follow_up_flags(questions), lengths)
    return list(map(operator.eq, follow_ups, map(operator.rshift, lengths, itertools.repeat(1))))


def check_record(record: LlavaRecord, label: str, index: int) -> int:
    """The rules a typed record must also meet; return its flags (:data:`FLAG_HAS_IMAGE`, ...).

    Checks what LLaMA-Factory would otherwise reject late (or silently drop): ``conversations`` alternating
    human/gpt and starting with human, an even number of turns, non-empty values, and as many ``<image>`` tags in the
    human turns as there are images. The types were checked by the Struct decoder.
    """
    conversations = record.conversations
    n_images = image_count(record.image)
    if not turns_ok([conversations], [n_images]):
        _raise_record_error(record, label, index)
    all_follow_ups = all(follow_up_flags(map(_VALUE_OF, conversations[0::2])))
    return (FLAG_HAS_IMAGE if n_images else 0) | (FLAG_ALL_WHAT_ABOUT if all_follow_ups else 0)


# --------------------------------------------------------------------------------------------------- wording


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


def _raise_record_error(record: LlavaRecord, label: str, index: int) -> None:
    """Name the first rule a record breaks, in the order: the number of turns, each turn (speaker out of turn, empty
    value, image tag in an answer), the image paths, the tag count. Error path only."""
    where = _where(label, index, record.id)
    conversations = record.conversations
    n_turns = len(conversations)
    if n_turns == 0:
        raise DataError(f"{where}: 'conversations' is empty")
    if n_turns % 2:
        raise DataError(f"{where}: has {n_turns} turns, expected an even number (human/gpt pairs)")
    expected = HUMAN
    for turn_index, turn in enumerate(conversations):
        speaker, value = turn.from_, turn.value
        if speaker != expected:
            _raise_bad_speaker(where, turn_index, speaker, expected)
        if not value.strip():
            raise DataError(f"{where}: turn {turn_index} ({speaker}) has an empty value")
        if expected == GPT and IMAGE_TAG in value:
            raise DataError(
                f"{where}: turn {turn_index} (gpt) contains {IMAGE_TAG!r}; only human turns may hold image tags"
            )
        expected = GPT if expected == HUMAN else HUMAN
    image = record.image
    if image == "":
        raise DataError(f"{where}: 'image' is an empty string")
    for path in image if isinstance(image, list) else ():
        if not path:
            raise DataError(f"{where}: 'image' holds {path!r}, expected non-empty paths")
    tags = "\x00".join(turn.value for turn in conversations[0::2]).count(IMAGE_TAG)
    n_images = image_count(image)
    if tags != n_images:
        raise DataError(
            f"{where}: got {tags} {IMAGE_TAG} tag{'s' if tags != 1 else ''} in the human turns, expected {n_images} "
            "(one per image)"
        )
    raise AssertionError(f"{where}: the rules and their wording disagree")  # pragma: no cover (a bug)


def _raise_bad_speaker(where: str, turn_index: int, speaker: str, expected: str) -> None:
    """Explain a wrong ``from``: unknown speaker, a first turn that is not human, or turns that do not alternate."""
    if speaker not in (HUMAN, GPT):
        raise DataError(f"{where}: turn {turn_index} has from={speaker!r}, expected 'human' or 'gpt'")
    if turn_index == 0:
        raise DataError(f"{where}: first turn has from={speaker!r}, expected 'human'")
    raise DataError(
        f"{where}: turn {turn_index} has from={speaker!r}, expected {expected!r} (turns must alternate human, gpt)"
    )


def _place(path: tuple[str | int, ...]) -> str:
    """``turn 2 'value'`` for a path inside the turns, else the quoted path (``'image[0]'``); "" for the record."""
    if path[:1] == ("conversations",) and len(path) >= 2 and isinstance(path[1], int):
        return f"turn {path[1]}" + "".join(f" {key!r}" if isinstance(key, str) else f"[{key}]" for key in path[2:])
    place = "".join(f".{key}" if isinstance(key, str) else f"[{key}]" for key in path).lstrip(".")
    return repr(place) if place else ""


def validation_message(err: msgspec.ValidationError, raw: Any, label: str, index: int, schema: Any = None) -> str:
    """Our message for a record that is valid JSON but not a ``schema`` (default: :class:`LlavaRecord`).

    msgspec's error gives at most the place (``$.conversations[0].value``); what is wrong there (the type expected,
    the type found, a missing field) is found by :func:`json_problems.schema_problem` on the record decoded
    generically, so the message does not change with msgspec's wording. The path becomes ``turn 0 'value'``; the id
    (if it can be read) joins the record number.
    """
    info = msgspec.inspect.type_info(schema or LlavaRecord)
    try:
        value = ANY.decode(raw)
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


def undecodable_message(raw: Any, label: str, index: int) -> str:
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
        record = RECORD.decode(raw)
    except msgspec.ValidationError as err:
        raise DataError(validation_message(err, raw, label, index)) from None
    except RecursionError:
        raise DataError(
            f"{label}: record {index}: nested too deeply (more than {sys.getrecursionlimit()} levels)"
        ) from None
    except (msgspec.DecodeError, UnicodeDecodeError):  # bad UTF-8 in a string; not JSON (for direct callers)
        raise DataError(undecodable_message(raw, label, index)) from None
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
