"""Mix benign rejection examples into instruction data, as a registered LLaMA-Factory sharegpt dataset.

Samples records of --rejection-source (their first answer, or with --random-turn their one kept answer, becomes a
rejection sentence) and records of --instruct (unchanged), shuffles them, writes OUTPUT/NAME.json in sharegpt format
with a manifest beside it (NAME.manifest.json: inputs with sha256, options, counts), and registers NAME in
--dataset-info. Sizes: --n-rejection N or --rejection-ratio R (the fraction of the mix), --n-instruct M (default:
all). Same inputs and seed give byte-identical files. The default NAME is {n1}_{stem1}_{n2}_{stem2}{suffix}, where
the suffix adds _random_turn, _similar, _seed{S} (seed other than 42), _reply{hash} (replies other than the
default sentence), _keep_replies and _images_{stem}. For the ablations (docs/data.md): --keep-replies keeps the drawn
records' own answers (a curated-data baseline), --replace-images-from FILE gives them random images of FILE, and
--n-rejection 0 --n-instruct M is the no-rejection control.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import logging
import math
import operator
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

import msgspec

from .. import __version__
from ..errors import DataError
from ..files import atomic_open
from ..options import add_arguments as add_option_arguments
from ..options import from_args, option, record
from .checks import check_images, check_name
from .forked import Forked
from .manifest import DatasetRecord, InputRecord, OutputRecord, dataset_record, decode_manifest, encode_manifest
from .outputs import (
    OutputTarget,
    Registers,
    allow_missing_images_field,
    dataset_info_field,
    force_field,
    image_dir_field,
    no_register_field,
    output_field,
)
from .progress import records_bar
from .reading import LlavaFile, gc_paused
from .records import (
    DEFAULT_REJECTION_SENTENCE,
    GPT,
    HUMAN,
    IMAGE_TAG,
    is_follow_up,
    record_images,
    to_sharegpt,
    validation_message,
)
from .registry import (
    add_deprecated_cache_arguments,
    check_output_dir,
    warn_deprecated_cache_arguments,
)
from .sharegpt import encode_record
from .writer import JsonArrayWriter


logger = logging.getLogger(__name__)

DEFAULT_SEED = 42
_CHUNK = 128  # records checked and made together (LlavaFile.sharegpt_lines); more overflow the CPU caches: slower
#: mixes at least this large have every other chunk made by a forked child (_lines_in_child)
LINES_IN_CHILD_RECORDS = 32_768
_IMAGES = msgspec.msgpack.Decoder(list[str])


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0 or math.isnan(value):
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


_INPUTS, _SIZES, _HOW = "inputs", "sizes", "rejection examples"


@dataclass(frozen=True, kw_only=True)
class MixOptions(Registers):
    """Everything that decides the content of a mix: the Python API, the command line and the manifest's options.

    Declared once (:mod:`rejection_align.options`): each field's metadata gives its flag and help; the manifest
    records the fields in this order (the input files and the output folder are recorded elsewhere in it).
    """

    rejection_source: Path = field(
        metadata=option(
            metavar="FILE",
            type=Path,
            group=_INPUTS,
            record=False,
            help="LLaVA-format benign data whose answers become the rejection sentence (e.g. LLaVA-Med)",
        )
    )
    instruct: Path = field(
        metadata=option(
            metavar="FILE",
            type=Path,
            group=_INPUTS,
            record=False,
            help="LLaVA-format instruction data kept as is (e.g. llava_v1_5_mix665k.json)",
        )
    )
    n_rejection: int | None = field(
        default=None,
        metadata=option(
            type=_count, metavar="N", group=_SIZES, exclusive="size", help="rejection examples (default: all)"
        ),
    )
    rejection_ratio: float | None = field(
        default=None,
        metadata=option(
            type=_ratio,
            metavar="R",
            group=_SIZES,
            exclusive="size",
            help="fraction of the final mix that are rejection examples, in [0, 1)",
        ),
    )
    n_instruct: int | None = field(
        default=None,
        metadata=option(
            type=_count,
            metavar="M",
            group=_SIZES,
            help="instruct examples (default: all, minus the ids drawn as rejection examples)",
        ),
    )
    replies: tuple[str, ...] = field(
        default=(DEFAULT_REJECTION_SENTENCE,),
        metadata=option(
            "--reply",
            nargs="+",
            metavar="TEXT",
            group=_HOW,
            help=f"rejection sentence(s); each example takes one at random (default: {DEFAULT_REJECTION_SENTENCE!r})",
        ),
    )
    random_turn: bool = field(
        default=False,
        metadata=option(
            group=_HOW,
            help="reduce each rejection example to one random human/gpt pair (not a 'what about' follow-up)",
        ),
    )
    similar: bool = field(
        default=False,
        metadata=option(group=_HOW, help="draw instruct examples only among the ids drawn as rejection examples"),
    )
    seed: int = field(
        default=DEFAULT_SEED, metadata=option(type=int, group=_HOW, help=f"random seed (default: {DEFAULT_SEED})")
    )
    name: str | None = field(
        default=None,
        metadata=option(
            group="output", help="dataset name and file stem (default: {n1}_{stem1}_{n2}_{stem2}{suffix})"
        ),
    )
    output: Path = output_field("mix")
    dataset_info: Path | None = dataset_info_field("mix")  # None: do not register
    no_register: bool = no_register_field()
    image_dir: Path | None = image_dir_field("mix")
    allow_missing_images: bool = allow_missing_images_field()
    strict: bool = field(
        default=False,
        metadata=option(group=_SIZES, help="a size larger than available is an error, not a warning"),
    )
    force: bool = force_field()
    # the ablations' options (recorded only when used: the manifests of the options above keep their bytes)
    keep_replies: bool = field(
        default=False,
        metadata=option(
            group=_HOW,
            record="if_set",
            help="the drawn --rejection-source records keep their own answers (a curated-data baseline: e.g. VLGuard "
            "with its refusals); no rejection sentence is put in",
        ),
    )
    replace_images_from: Path | None = field(
        default=None,
        metadata=option(
            type=Path,
            metavar="FILE",
            group=_HOW,
            record="if_set",
            help="replace the images of the drawn --rejection-source records by images drawn (seeded, without "
            "replacement) from this LLaVA-format file's records, e.g. benign COCO images of llava_v1_5_mix665k.json",
        ),
    )


@dataclass
class MixResult:
    output: Path
    manifest: Path
    name: str
    n_rejection: int
    n_instruct: int
    registration: str | None
    counts: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------- manifest


class Requested(msgspec.Struct):
    rejection: int
    instruct: int


class MixCounts(msgspec.Struct, omit_defaults=True):
    """The manifest's ``counts``; fields added after release 0.1 have defaults and are left out when unused."""

    rejection: int
    instruct: int
    total: int
    rejection_fraction: float
    requested: Requested
    rejection_by_reply: dict[str, int]
    rejection_source_skipped_what_about: int
    instruct_excluded_by_id: int
    instruct_eligible_similar: int | None
    images_replaced: int | None = None  # --replace-images-from


class MixManifest(msgspec.Struct):
    """``NAME.manifest.json``: what reproduces and audits a mix. No timestamp, no output folder: the same mix gives
    the same bytes. ``options`` is :func:`rejection_align.options.record` of the :class:`MixOptions`."""

    tool: str
    version: str
    seed: int
    inputs: dict[str, InputRecord]
    options: dict[str, Any]
    counts: MixCounts
    output: OutputRecord
    dataset: DatasetRecord | None


def read_manifest(path: str | os.PathLike) -> MixManifest:
    """A mix manifest read back and validated; a bad one is a :class:`DataError` naming the file and the field."""
    return decode_manifest(path, MixManifest)


# --------------------------------------------------------------------------------------------------- transforms


def strip_image_tags(question: str) -> str:
    """The question without its ``<image>`` placeholders (and the line breaks LLaVA puts around them)."""
    return question.replace(IMAGE_TAG + "\n", "").replace("\n" + IMAGE_TAG, "").replace(IMAGE_TAG, "").strip()


def is_what_about(question: str) -> bool:
    """A "what about ..." follow-up only makes sense after the previous turn: never kept alone by --random-turn."""
    return is_follow_up(question)


def make_rejection_record(record: dict, reply: str | None, rng: random.Random | None) -> dict:
    """A new record whose answer is ``reply``: the first answer, or with ``rng`` (--random-turn) one random pair.

    ``reply=None`` (--keep-replies) keeps the record's own answers (with ``rng``: the kept pair's answer).

    With --random-turn the record is reduced to one human/gpt pair whose question is not a "what about" follow-up,
    and the image tags (one per image) are put at the front of that question as ``<image>\\n``, so the tag count still
    equals the image count. Records whose every question is such a follow-up never get here (they are excluded from
    the sample by :meth:`LlavaFile.follow_ups_only`).
    """
    conversations = record["conversations"]
    if rng is None:
        new_conversations = list(conversations)
        if reply is not None:
            new_conversations[1] = {**conversations[1], "value": reply}
    else:
        candidates = [j for j in range(0, len(conversations), 2) if not is_what_about(conversations[j]["value"])]
        if not candidates:
            raise ValueError("record has no question that is not a 'what about' follow-up")
        chosen = rng.choice(candidates)
        question = strip_image_tags(conversations[chosen]["value"])
        n_images = len(record_images(record))
        if n_images:
            question = (IMAGE_TAG + "\n") * n_images + question
        answer = conversations[chosen + 1]["value"] if reply is None else reply
        new_conversations = [{"from": HUMAN, "value": question}, {"from": GPT, "value": answer}]
    return {**record, "conversations": new_conversations}


def default_name(options: MixOptions, n_rejection: int, n_instruct: int) -> str:
    """The reference naming ``{n1}_{stem1}_{n2}_{stem2}``, plus a suffix for each option that changes the content."""
    suffix = ""
    if options.random_turn:
        suffix += "_random_turn"
    if options.similar:
        suffix += "_similar"
    if options.seed != DEFAULT_SEED:
        suffix += f"_seed{options.seed}"
    if tuple(options.replies) != (DEFAULT_REJECTION_SENTENCE,):
        suffix += "_reply" + hashlib.sha256("\n".join(options.replies).encode()).hexdigest()[:8]
    if options.keep_replies:
        suffix += "_keep_replies"
    if options.replace_images_from is not None:
        suffix += f"_images_{options.replace_images_from.stem}"
    return f"{n_rejection}_{options.rejection_source.stem}_{n_instruct}_{options.instruct.stem}{suffix}"


def _rng(seed: int, purpose: str) -> random.Random:
    """One random stream per purpose: changing, say, the replies does not change which records are drawn."""
    return random.Random(f"{seed}:{purpose}")


# --------------------------------------------------------------------------------------------------- sizing


def _clamp(wanted: int, available: int, what: str, strict: bool) -> int:
    """Clamp a sample size to what is available, with a warning (or an error under --strict)."""
    if wanted <= available:
        return wanted
    message = f"{what}: asked for {wanted} records, only {available} available"
    if strict:
        raise DataError(message + " (--strict)")
    logger.warning("%s; using %d", message, available)
    return available


def _ratio_count(ratio: float, other: int) -> int:
    """Rejection records that make ``ratio`` of a mix with ``other`` instruct records (rounded to nearest)."""
    return math.floor(ratio * other / (1.0 - ratio) + 0.5)


def _check_options(options: MixOptions) -> None:
    if options.n_rejection is not None and options.rejection_ratio is not None:
        raise DataError("give --n-rejection or --rejection-ratio, not both")
    for flag, value in (("--n-rejection", options.n_rejection), ("--n-instruct", options.n_instruct)):
        if value is not None and value < 0:
            raise DataError(f"{flag} must be >= 0, got {value}")
    if options.rejection_ratio is not None:
        if not 0.0 <= options.rejection_ratio < 1.0:
            raise DataError(f"--rejection-ratio must be in [0, 1), got {options.rejection_ratio}")
        if options.similar:
            raise DataError(
                "--rejection-ratio cannot be combined with --similar (the instruct sample depends on the rejection "
                "sample); give --n-rejection"
            )
    if not options.replies:
        raise DataError("--reply needs at least one sentence")
    for reply in options.replies:
        if not reply.strip():
            raise DataError(f"--reply {reply!r}: a rejection sentence must not be empty")
    if options.keep_replies and tuple(options.replies) != (DEFAULT_REJECTION_SENTENCE,):
        raise DataError("give --reply or --keep-replies, not both")
    if options.name is not None:
        check_name(options.name)


# --------------------------------------------------------------------------------------------------- the mix


class Draw(NamedTuple):
    """The records drawn from the two files (indices) and how their numbers came about (the manifest's counts)."""

    rejection: list[int]
    instruct: Sequence[int]
    requested: Requested
    skipped_what_about: int
    excluded: int
    eligible_similar: int | None


class Built(NamedTuple):
    """The mix in its final order: a rejection record's sharegpt line, or the index of an instruct record."""

    mixed: list[bytes | int]
    images: list[str]  # the rejection records' images (the instruct records' come as they are written)
    reply_counts: dict[str, int]


class Written(NamedTuple):
    sha256: str
    bytes: int
    records: int


def mix(options: MixOptions) -> MixResult:
    """Build, write and register one mix; nothing is written unless every step (validation included) succeeds."""
    _check_options(options)
    with gc_paused():
        return _mix(options)


def _mix(options: MixOptions) -> MixResult:
    labels = {"--rejection-source": options.rejection_source, "--instruct": options.instruct}
    if options.replace_images_from is not None:
        labels["--replace-images-from"] = options.replace_images_from
    check_output_dir(options.output)
    if options.name is not None:  # the name is known: refuse a bad output before reading 1 GB
        _target(options, options.name, labels)

    instruct = LlavaFile.read(options.instruct, ids_in_child=True)  # its ids come while the source is checked
    try:
        return _mix_files(options, labels, instruct)
    finally:
        instruct.close()


def _mix_files(options: MixOptions, labels: dict[str, Path], instruct: LlavaFile) -> MixResult:
    """The steps of a mix: draw, build, write (with its manifest), register."""
    source = LlavaFile.read(options.rejection_source)
    logger.info("%s: %d records; %s: %d records", source.label, len(source), instruct.label, len(instruct))
    draw = _draw(options, source, instruct)
    pool = None if options.replace_images_from is None else _image_pool(options.replace_images_from, instruct)
    built = _build(options, source, draw, pool)
    n1, n2 = len(draw.rejection), len(draw.instruct)
    name = options.name or default_name(options, n1, n2)
    target = _target(options, name, labels)
    counts = _counts(draw, built, images_replaced=None if pool is None else len(built.images))
    source.sha256, instruct.sha256  # noqa: B018 (their threads joined: none of ours may run when a child is forked)
    with atomic_open(target.output, "wb") as handle:
        written, images = _write_records(handle, instruct, built, with_images=options.image_dir is not None)
        if options.image_dir is not None:
            check_images(images, options.image_dir, options.allow_missing_images, "write the mix anyway")
        inputs = {"rejection_source": _input_record(source), "instruct": _input_record(instruct)}
        if pool is not None:
            inputs["replace_images_from"] = pool.input
        manifest = _manifest(options, target, inputs, counts, written)
        with atomic_open(target.manifest, "w") as manifest_handle:
            manifest_handle.write(encode_manifest(manifest))
    registration = target.register()  # last, once both files are in place
    return MixResult(target.output, target.manifest, name, n1, n2, registration, msgspec.to_builtins(counts))


# --------------------------------------------------------------------------------------------------- drawing


def _rejection_population(options: MixOptions, source: LlavaFile) -> Sequence[int]:
    """The records of file 1 usable as rejection examples (with --random-turn: not only 'what about' follow-ups)."""
    if not options.random_turn:
        return range(len(source))
    population = list(itertools.compress(range(len(source)), map(operator.not_, source.follow_ups_only())))
    skipped = len(source) - len(population)
    if skipped:
        logger.warning(
            "%s: %d records skipped for --random-turn: every question is a 'what about' follow-up",
            source.label,
            skipped,
        )
    return population


def _planned_sizes(options: MixOptions, available1: int, n_instruct_file: int, label: str) -> tuple[int, int | None]:
    """The wanted sizes of both samples; the instruct size is None until its population is known (no ratio).

    With a ratio, the instruct target decides the rejection count; a source too small for it keeps the ratio
    with fewer instruct records.
    """
    ratio = options.rejection_ratio
    if ratio is None:
        return (available1 if options.n_rejection is None else options.n_rejection), None
    wanted2 = n_instruct_file if options.n_instruct is None else options.n_instruct
    wanted1 = _ratio_count(ratio, wanted2)
    if wanted1 <= available1:
        return wanted1, wanted2
    if options.strict:
        _clamp(wanted1, available1, label, strict=True)
    wanted2 = math.floor(available1 * (1.0 - ratio) / ratio + 0.5)
    logger.warning(
        "%s: --rejection-ratio %s needs %d records, only %d available; using them all and %d instruct records",
        label,
        ratio,
        wanted1,
        available1,
        wanted2,
    )
    return available1, wanted2


def _instruct_population(options: MixOptions, ids2: list[str], drawn: set[str]) -> Sequence[int]:
    """File 2's eligible records: excluding the ids drawn from file 1 (with --similar, only those ids); ids compare
    as strings. List operations in C: ids2 may hold 665k ids."""
    in_drawn = map(drawn.__contains__, ids2)
    if options.similar:
        return list(itertools.compress(range(len(ids2)), in_drawn))
    if drawn:
        return list(itertools.compress(range(len(ids2)), map(operator.not_, in_drawn)))
    return range(len(ids2))


def _draw(options: MixOptions, source: LlavaFile, instruct: LlavaFile) -> Draw:
    """Both samples, each from its own random stream; an empty mix is refused here, before anything is made."""
    ids1 = source.ids()
    population1 = _rejection_population(options, source)
    wanted1, wanted2 = _planned_sizes(options, len(population1), len(instruct), source.label)
    n1 = _clamp(wanted1, len(population1), source.label, options.strict)
    sample1 = _rng(options.seed, "rejection").sample(population1, n1)

    ids2 = instruct.ids()  # (asked for as late as possible: they come from a child process)
    population2 = _instruct_population(options, ids2, {ids1[i] for i in sample1})
    take_all = options.n_instruct is None
    if wanted2 is None:
        wanted2 = len(population2) if take_all else options.n_instruct
    n2 = (
        min(wanted2, len(population2))
        if take_all
        else _clamp(wanted2, len(population2), instruct.label, options.strict)
    )
    if n2 == len(population2):  # all of them: no draw needed, the final shuffle orders them
        sample2: Sequence[int] = list(population2)
    else:
        sample2 = _rng(options.seed, "instruct").sample(population2, n2)
    if options.rejection_ratio is not None and n2 < wanted2:  # fewer instruct records than planned: keep it exact
        sample1 = sample1[: _ratio_count(options.rejection_ratio, n2)]
    if not sample1 and not sample2:
        raise DataError(
            f"the mix would be empty (0 rejection and 0 instruct records from {source.label} and {instruct.label}); "
            "nothing written"
        )
    return Draw(
        sample1,
        sample2,
        Requested(wanted1, wanted2),
        len(source) - len(population1),
        0 if options.similar else len(ids2) - len(population2),
        len(population2) if options.similar else None,
    )


# --------------------------------------------------------------------------------------------------- building


def _build(options: MixOptions, source: LlavaFile, draw: Draw, pool: ImagePool | None) -> Built:
    """The rejection records validated and made now (they are few); the instruct records stay indices, validated
    and encoded as they are written. Then the whole mix is shuffled."""
    source.check(draw.rejection)
    turn_rng = _rng(options.seed, "turn") if options.random_turn else None
    reply_rng = _rng(options.seed, "reply")
    reply_counts = {} if options.keep_replies else dict.fromkeys(options.replies, 0)
    made = []
    for i in draw.rejection:
        reply = None
        if not options.keep_replies:
            reply = reply_rng.choice(options.replies)
            reply_counts[reply] += 1
        made.append(to_sharegpt(make_rejection_record(source.decode(i), reply, turn_rng)))
    if pool is not None:
        _replace_images(made, pool, _rng(options.seed, "images"))
    mixed: list[bytes | int] = [encode_record(rejection) for rejection in made]
    images = [image for rejection in made for image in rejection["image"]]
    mixed += draw.instruct
    _rng(options.seed, "shuffle").shuffle(mixed)
    return Built(mixed, images, reply_counts)


class ImagePool(NamedTuple):
    """--replace-images-from: the distinct images of a LLaVA-format file, in file order, and that file's record."""

    images: list[str]
    input: InputRecord


class _ImageOnly(msgspec.Struct):
    image: str | list[str] | None = None


_IMAGE_ONLY = msgspec.json.Decoder(_ImageOnly)


def _image_pool(path: Path, instruct: LlavaFile) -> ImagePool:
    """Only the ``image`` of each record is decoded (fast on the 1 GB mix665k); a bad one names file and record.

    The instruct file, the usual source of benign images, is not read a second time.
    """
    same = os.path.realpath(path) == instruct.path
    pool_file = instruct if same else LlavaFile.read(path)
    try:
        images: dict[str, None] = {}
        for index, raw in enumerate(pool_file.raws):
            try:
                image = _IMAGE_ONLY.decode(raw).image
            except msgspec.ValidationError as err:
                raise DataError(validation_message(err, raw, pool_file.label, index, _ImageOnly)) from None
            images.update(dict.fromkeys([image] if isinstance(image, str) else image or ()))
        return ImagePool(list(images), _input_record(pool_file))
    finally:
        if not same:
            pool_file.close()


def _replace_images(made: list[dict], pool: ImagePool, rng: random.Random) -> None:
    """Each image of the drawn records replaced by one drawn without replacement from the pool (in record order)."""
    needed = sum(len(rejection["image"]) for rejection in made)
    if needed > len(pool.images):
        raise DataError(
            f"--replace-images-from {pool.input.path}: {len(pool.images)} distinct images, fewer than the {needed} "
            f"images of the {len(made)} drawn --rejection-source records; nothing written"
        )
    drawn = iter(rng.sample(pool.images, needed))
    for rejection in made:
        rejection["image"] = [next(drawn) for _ in rejection["image"]]


def _counts(draw: Draw, built: Built, images_replaced: int | None) -> MixCounts:
    n1, n2 = len(draw.rejection), len(draw.instruct)
    return MixCounts(
        rejection=n1,
        instruct=n2,
        total=n1 + n2,
        rejection_fraction=round(n1 / (n1 + n2), 6) if n1 + n2 else 0.0,
        requested=draw.requested,
        rejection_by_reply=built.reply_counts,
        rejection_source_skipped_what_about=draw.skipped_what_about,
        instruct_excluded_by_id=draw.excluded,
        instruct_eligible_similar=draw.eligible_similar,
        images_replaced=images_replaced,
    )


# --------------------------------------------------------------------------------------------------- writing


def _write_records(
    handle: IO[bytes], instruct: LlavaFile, built: Built, with_images: bool
) -> tuple[Written, list[str]]:
    """Write the mix as a JSON array; large mixes have every other chunk made by a forked child.

    Returns what was written and every image of the mix, in output order (for the image check).
    """
    mixed = built.mixed
    images = list(built.images)
    chunks = [mixed[start : start + _CHUNK] for start in range(0, len(mixed), _CHUNK)]
    child = _lines_in_child(instruct, chunks, with_images) if len(mixed) >= LINES_IN_CHILD_RECORDS else None
    digest = hashlib.sha256()
    try:
        with JsonArrayWriter(handle, digest) as writer, records_bar(len(mixed), "mix") as bar:
            for number, chunk in enumerate(chunks):
                bar.update(len(chunk))
                if child is not None and number % 2:
                    made = _receive_chunk(child, with_images)
                    if made is not None:
                        writer.write_joined(made[0], len(chunk))
                        images += made[1]
                        continue
                    child.close()  # it failed: the rest is made here, which names any bad record
                    child = None
                lines, chunk_images = _chunk_lines(instruct, chunk, with_images)
                writer.write_lines(lines)
                images += chunk_images
            writer.close()
    finally:
        if child is not None:
            child.close()
    return Written(digest.hexdigest(), writer.bytes_written, writer.count), images


def _chunk_lines(instruct: LlavaFile, chunk: list[bytes | int], with_images: bool) -> tuple[list[bytes], list[str]]:
    """The output lines of a chunk of the mix (a ready line, or the index of an instruct record to validate and
    convert), and the images of its instruct records; a :class:`DataError` names the first bad record."""
    made = instruct.sharegpt_lines(chunk, with_images)  # validated on the way, many records at once
    if made is not None:
        return made
    lines: list[bytes] = []
    images: list[str] = []
    for item in chunk:  # one by one: names the first bad record
        if type(item) is int:
            line, record_images_ = instruct.sharegpt(item)
            images += record_images_
            lines.append(line)
        else:
            lines.append(item)
    return lines, images


def _lines_in_child(instruct: LlavaFile, chunks: list[list[bytes | int]], with_images: bool) -> Forked | None:
    """A forked child that makes every other chunk (the odd ones) while this process makes the even ones.

    Checking and converting the 665k records of a full mix is most of its time, and all of it holds the GIL. The
    child sends each chunk's joined lines (then, with images, their msgpack list); it stops at a bad record, and this
    process then makes the rest itself (:func:`_receive_chunk` gives None).
    """

    def work(send: Callable[[bytes], None]) -> None:
        for chunk in chunks[1::2]:
            lines, chunk_images = _chunk_lines(instruct, chunk, with_images)
            send(b",\n".join(lines))
            if with_images:
                send(msgspec.msgpack.encode(chunk_images))

    return Forked.start(work)


def _receive_chunk(child: Forked, with_images: bool) -> tuple[bytes, list[str]] | None:
    joined = child.receive()
    if joined is None or not with_images:
        return None if joined is None else (joined, [])
    images = child.receive()
    return None if images is None else (joined, _IMAGES.decode(images))


# --------------------------------------------------------------------------------------------------- outputs


def _target(options: MixOptions, name: str, inputs: dict[str, Path]) -> OutputTarget:
    """The output paths and the registration entry, checked before anything is written."""
    return OutputTarget(options.output, name, options.registry, inputs, options.force)


def _input_record(source: LlavaFile) -> InputRecord:
    return InputRecord(str(source.path), source.sha256, source.size, len(source))


def _manifest(
    options: MixOptions, target: OutputTarget, inputs: dict[str, InputRecord], counts: MixCounts, written: Written
) -> MixManifest:
    """What reproduces and audits the mix; where it was registered (if it was) is recorded under ``dataset``."""
    return MixManifest(
        tool="rejection-align mix",
        version=__version__,
        seed=options.seed,
        inputs=inputs,
        options=record(options),
        counts=counts,
        output=OutputRecord(target.output.name, written.sha256, written.bytes, written.records),
        dataset=dataset_record(target.name, target.registry, target.entry),
    )


# --------------------------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_option_arguments(parser, MixOptions)
    add_deprecated_cache_arguments(parser)


def options_from_args(args: argparse.Namespace) -> MixOptions:
    return from_args(MixOptions, args)


def run(args: argparse.Namespace) -> int:
    warn_deprecated_cache_arguments(args)
    result = mix(options_from_args(args))
    drawn = "with their own answers" if args.keep_replies else "rejection"
    print(
        f"wrote {result.n_rejection + result.n_instruct} records ({result.n_rejection} {drawn}, "
        f"{result.n_instruct} instruct) to {result.output}"
    )
    print(f"manifest: {result.manifest}")
    if result.registration is not None:
        print(f"dataset {result.name!r} {result.registration} in {args.dataset_info}")
    return 0
