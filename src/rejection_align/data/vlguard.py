"""VLGuard's ``train.json`` / ``test.json``: its records, the kind of each instruction/response pair, and the
sharegpt records made of the pairs that ``convert --from vlguard`` keeps.

A VLGuard record is ``{"id", "image", "safe", "harmful_category"?, "harmful_subcategory"?, "instr-resp": [{
"safe_instruction" | "unsafe_instruction" | "instruction", "response"}]}``. A pair's kind, by image safety x
instruction safety: ``safe_safe`` (safe image, safe instruction: a benign question and its answer),
``safe_unsafe`` (safe image, unsafe instruction: a refusal with its reason), ``unsafe`` (an unsafe image, whatever
its instruction: a refusal). See docs/data.md.
"""

from __future__ import annotations

import os
import posixpath
from collections import Counter
from collections.abc import Iterator
from typing import Any, NamedTuple

import msgspec

from .. import json_problems
from ..errors import DataError
from .records import GPT, HUMAN, IMAGE_TAG


SAFE_SAFE, SAFE_UNSAFE, UNSAFE = "safe_safe", "safe_unsafe", "unsafe"
KINDS = (SAFE_SAFE, SAFE_UNSAFE, UNSAFE)
#: --pairs: which kinds of pair are kept
PAIRS = {
    "all": frozenset(KINDS),
    "no-safe-safe": frozenset({SAFE_UNSAFE, UNSAFE}),
    "safe-safe": frozenset({SAFE_SAFE}),
    "unsafe": frozenset({UNSAFE}),
}
TURNS = ("one", "multi")
_INSTRUCTION_KEYS = ("safe_instruction", "unsafe_instruction", "instruction")


class Pair(msgspec.Struct, forbid_unknown_fields=True):
    """One instruction/response pair; exactly one of the three instruction keys is set (checked after decoding).

    Unknown keys are refused: a misspelt ``unsafe_instrution`` would otherwise turn into a pair without instruction.
    """

    response: str
    safe_instruction: str | None = None
    unsafe_instruction: str | None = None
    instruction: str | None = None


class VlguardRecord(msgspec.Struct):
    id: str | int
    image: str
    safe: bool
    instr_resp: list[Pair] = msgspec.field(name="instr-resp")
    harmful_category: str | None = None
    harmful_subcategory: str | None = None


class KeptPair(NamedTuple):
    index: int  # in the record's instr-resp (the k of a one-turn id <id>-<k>)
    kind: str
    instruction: str
    response: str


class VlguardCounts(msgspec.Struct):
    """The manifest's ``counts`` for ``convert --from vlguard``; categories are counted per kept pair."""

    source_records: int
    source_pairs: dict[str, int]
    kept_pairs: dict[str, int]
    records: int
    turns: int
    images: int
    distinct_images: int
    categories: dict[str, int]
    subcategories: dict[str, int]


_RECORD = msgspec.json.Decoder(VlguardRecord)
_SPLIT = msgspec.json.Decoder(list[msgspec.Raw])
_ANY = msgspec.json.Decoder()


def _where(label: str, index: int, rid: Any) -> str:
    if isinstance(rid, str | int) and not isinstance(rid, bool):
        return f"{label}: record {index} (id {rid!r})"
    return f"{label}: record {index}"


def _explain(err: msgspec.ValidationError, raw: msgspec.Raw, label: str, index: int) -> str:
    """``file: record 3 (id 'x'): 'safe': expected `bool`, got `str```: the place from msgspec's error, the problem
    found by our schema walk (``json_problems``), so the words do not change with msgspec's."""
    try:
        value = _ANY.decode(raw)
    except (msgspec.MsgspecError, RecursionError, ValueError):
        value = None
    rid = value.get("id") if isinstance(value, dict) else None
    problem = json_problems.validation_problem(err, value, VlguardRecord) if value is not None else None
    if problem is None:  # not decodable generically (or nothing found): say where, and what was expected there
        path = json_problems.path_of(err) or ()
        expected = json_problems.expected_at(msgspec.inspect.type_info(VlguardRecord), path)
        place = json_problems.dotted(path)
        return (
            f"{_where(label, index, rid)}: {place + ': ' if place else ''}expected `{expected or 'a VLGuard record'}`"
        )
    place = json_problems.dotted(problem.path)
    if problem.missing:
        return f"{_where(label, index, rid)}: {place + ' ' if place else ''}has no {problem.missing!r}"
    if not place and not isinstance(value, dict):
        return f"{_where(label, index, rid)}: expected an object"
    if place == "id":
        return f"{label}: record {index} has id {rid!r} ({type(rid).__name__}), expected a string or an integer"
    if problem.unknown:
        what = f"object contains unknown field `{problem.unknown}`"
    else:
        what = f"expected `{problem.expected}`" + (f" {problem.constraint}" if problem.constraint else "")
        what += f", got `{problem.found}`" if not problem.constraint else ""
    return f"{_where(label, index, rid)}: {place!r}: {what}" if place else f"{_where(label, index, rid)}: {what}"


def read_vlguard(data: bytes, label: str) -> list[VlguardRecord]:
    """Every record decoded and checked; the first bad one is a DataError naming file, record and field."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        raws = _SPLIT.decode(data)
    except RecursionError:
        raise DataError(f"{label}: not a JSON array of VLGuard records (nested too deeply)") from None
    except (msgspec.MsgspecError, UnicodeDecodeError) as err:
        why = json_problems.why_refused(err, data)
        raise DataError(f"{label}: not a JSON array of VLGuard records ({why})") from None
    records = []
    for index, raw in enumerate(raws):
        try:
            record = _RECORD.decode(raw)
        except msgspec.ValidationError as err:
            raise DataError(_explain(err, raw, label, index)) from None
        except RecursionError:
            raise DataError(f"{label}: record {index}: nested too deeply") from None
        except (msgspec.DecodeError, UnicodeDecodeError):
            raise DataError(f"{label}: record {index}: {json_problems.describe(raw)}") from None
        _check(record, _where(label, index, record.id))
        records.append(record)
    return records


def _check(record: VlguardRecord, where: str) -> None:
    if not record.image.strip():
        raise DataError(f"{where}: 'image' is empty")
    if not record.instr_resp:
        raise DataError(f"{where}: 'instr-resp' is empty")
    for k, pair in enumerate(record.instr_resp):
        given = [key for key in _INSTRUCTION_KEYS if getattr(pair, key) is not None]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise DataError(f"{where}: instr-resp[{k}] needs one of {', '.join(_INSTRUCTION_KEYS)}; found {found}")
        if record.safe and given[0] == "instruction":
            raise DataError(
                f"{where}: instr-resp[{k}]: a safe image's pair says whether its instruction is safe "
                "(safe_instruction or unsafe_instruction), found 'instruction'"
            )
        for key in (given[0], "response"):
            text = getattr(pair, key)
            if not text.strip():
                raise DataError(f"{where}: instr-resp[{k}].{key} is empty")
            if IMAGE_TAG in text:
                raise DataError(f"{where}: instr-resp[{k}].{key} contains {IMAGE_TAG!r} (the image tag is added here)")


def pair_kind(record: VlguardRecord, pair: Pair) -> str:
    if not record.safe:
        return UNSAFE
    return SAFE_SAFE if pair.safe_instruction is not None else SAFE_UNSAFE


def kept_pairs(record: VlguardRecord, kinds: frozenset[str]) -> list[KeptPair]:
    """The record's pairs of the kept kinds, in order, their texts stripped of surrounding white space."""
    kept = []
    for k, pair in enumerate(record.instr_resp):
        kind = pair_kind(record, pair)
        if kind in kinds:
            instruction = pair.safe_instruction or pair.unsafe_instruction or pair.instruction or ""
            kept.append(KeptPair(k, kind, instruction.strip(), pair.response.strip()))
    return kept


def image_path(image: str, prefix: str | None) -> str:
    """The image as the dataset names it: joined to ``prefix`` (``--image-prefix vlguard`` -> ``vlguard/bad_ads/1.png``)."""
    return posixpath.join(prefix, image) if prefix else image


def _conversation(pairs: list[KeptPair]) -> list[dict[str, str]]:
    """LLaVA style: the image tag opens the first question only."""
    turns = []
    for number, pair in enumerate(pairs):
        question = IMAGE_TAG + "\n" + pair.instruction if number == 0 else pair.instruction
        turns += [{"from": HUMAN, "value": question}, {"from": GPT, "value": pair.response}]
    return turns


def sharegpt_records(
    records: list[VlguardRecord], turns: str, kinds: frozenset[str], prefix: str | None
) -> Iterator[tuple[dict, VlguardRecord, list[KeptPair]]]:
    """The sharegpt records (``--turns one``: one per kept pair, id ``<id>-<k>``; ``multi``: one per record with its
    kept pairs as turns, in order), each with the VLGuard record and the pairs it holds. Records left without a
    pair are skipped."""
    for record in records:
        pairs = kept_pairs(record, kinds)
        image = [image_path(record.image, prefix)]
        if turns == "multi" and pairs:
            yield {"id": str(record.id), "image": image, "conversations": _conversation(pairs)}, record, pairs
        elif turns == "one":
            for pair in pairs:
                out = {"id": f"{record.id}-{pair.index}", "image": image, "conversations": _conversation([pair])}
                yield out, record, [pair]


class Tally:
    """Counts what a conversion read and kept (the manifest's :class:`VlguardCounts`)."""

    def __init__(self, records: list[VlguardRecord]) -> None:
        self.source_records = len(records)
        self.source_pairs = Counter(pair_kind(r, p) for r in records for p in r.instr_resp)
        self.kept = Counter[str]()
        self.categories = Counter[str]()
        self.subcategories = Counter[str]()
        self.records = self.turns = 0
        self.images: list[str] = []

    def add(self, out: dict, record: VlguardRecord, pairs: list[KeptPair]) -> None:
        self.records += 1
        self.turns += len(out["conversations"])
        self.images += out["image"]
        for pair in pairs:
            self.kept[pair.kind] += 1
            if record.harmful_category is not None:
                self.categories[record.harmful_category] += 1
            if record.harmful_subcategory is not None:
                self.subcategories[record.harmful_subcategory] += 1

    def counts(self) -> VlguardCounts:
        return VlguardCounts(
            source_records=self.source_records,
            source_pairs={kind: self.source_pairs[kind] for kind in KINDS},
            kept_pairs={kind: self.kept[kind] for kind in KINDS},
            records=self.records,
            turns=self.turns,
            images=len(self.images),
            distinct_images=len(set(self.images)),
            categories=dict(sorted(self.categories.items())),
            subcategories=dict(sorted(self.subcategories.items())),
        )


def default_name(path: str | os.PathLike, turns: str, pairs: str) -> str:
    """``vlguard_<stem>_<turns>_turn[_<pairs>]``, e.g. ``vlguard_train_one_turn_no_safe_safe``."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return f"vlguard_{stem}_{turns}_turn" + ("" if pairs == "all" else "_" + pairs.replace("-", "_"))
