"""Mix benign rejection examples into instruction data, as a registered LLaMA-Factory sharegpt dataset.

Samples records of --rejection-source (their first answer, or with --random-turn their one kept answer, becomes a
rejection sentence) and records of --instruct (unchanged), shuffles them, writes OUTPUT/NAME.json in sharegpt format
with a manifest beside it (NAME.manifest.json: inputs with sha256, options, counts), and registers NAME in
--dataset-info. Sizes: --n-rejection N or --rejection-ratio R (the fraction of the mix), --n-instruct M (default:
all). Same inputs and seed give byte-identical files. The default NAME is {n1}_{stem1}_{n2}_{stem2}{suffix}, where
the suffix adds _random_turn, _similar, _seed{S} (seed other than 42) and _reply{hash} (replies other than the
default sentence).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import math
import operator
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from .. import __version__
from ..errors import DataError
from ..files import atomic_open
from .forked import Forked
from .llava_format import (
    DEFAULT_REJECTION_SENTENCE,
    GPT,
    HUMAN,
    IMAGE_TAG,
    JsonArrayWriter,
    LlavaFile,
    encode_record,
    find_missing_images,
    gc_paused,
    is_follow_up,
    missing_images_message,
    record_images,
    to_sharegpt,
)
from .progress import records_bar
from .registry import (
    DEFAULT_DATASET_INFO,
    add_deprecated_cache_arguments,
    add_output_arguments,
    check_output_dir,
    check_output_path,
    check_registration,
    register_dataset,
    sharegpt_entry,
    warn_deprecated_cache_arguments,
)


logger = logging.getLogger(__name__)

DEFAULT_SEED = 42
_CHUNK = 128  # records checked and made together (LlavaFile.sharegpt_lines); more overflow the CPU caches: slower
#: mixes at least this large have every other chunk made by a forked child (_lines_in_child)
LINES_IN_CHILD_RECORDS = 32_768
_IMAGES = msgspec.msgpack.Decoder(list[str])
_NAME_RE = re.compile(r"^[^/\\\x00]+$")


@dataclass(frozen=True)
class MixOptions:
    """Everything that decides the content of a mix (all of it goes into the manifest)."""

    rejection_source: Path
    instruct: Path
    output: Path
    n_rejection: int | None = None
    rejection_ratio: float | None = None
    n_instruct: int | None = None
    replies: tuple[str, ...] = (DEFAULT_REJECTION_SENTENCE,)
    random_turn: bool = False
    similar: bool = False
    seed: int = DEFAULT_SEED
    name: str | None = None
    dataset_info: Path | None = Path(DEFAULT_DATASET_INFO)  # None: do not register
    image_dir: Path | None = None
    allow_missing_images: bool = False
    strict: bool = False
    force: bool = False


@dataclass
class MixResult:
    output: Path
    manifest: Path
    name: str
    n_rejection: int
    n_instruct: int
    registration: str | None
    counts: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------- transforms


def strip_image_tags(question: str) -> str:
    """The question without its ``<image>`` placeholders (and the line breaks LLaVA puts around them)."""
    return question.replace(IMAGE_TAG + "\n", "").replace("\n" + IMAGE_TAG, "").replace(IMAGE_TAG, "").strip()


def is_what_about(question: str) -> bool:
    """A "what about ..." follow-up only makes sense after the previous turn: never kept alone by --random-turn."""
    return is_follow_up(question)


def make_rejection_record(record: dict, reply: str, rng: random.Random | None) -> dict:
    """A new record whose answer is ``reply``: the first answer, or with ``rng`` (--random-turn) one random pair.

    With --random-turn the record is reduced to one human/gpt pair whose question is not a "what about" follow-up,
    and the image tags (one per image) are put at the front of that question as ``<image>\\n``, so the tag count still
    equals the image count. Records whose every question is such a follow-up never get here (they are excluded from
    the sample by :meth:`LlavaFile.follow_ups_only`).
    """
    conversations = record["conversations"]
    if rng is None:
        new_conversations = list(conversations)
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
        new_conversations = [{"from": HUMAN, "value": question}, {"from": GPT, "value": reply}]
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
    if options.name is not None and (not _NAME_RE.match(options.name) or options.name in (".", "..")):
        raise DataError(f"--name {options.name!r}: must be a plain name (no path separators)")


# --------------------------------------------------------------------------------------------------- the mix


def mix(options: MixOptions) -> MixResult:
    """Build, write and register one mix; nothing is written unless every step (validation included) succeeds."""
    _check_options(options)
    with gc_paused():
        return _mix(options)


def _mix(options: MixOptions) -> MixResult:
    labels = {"--rejection-source": options.rejection_source, "--instruct": options.instruct}
    check_output_dir(options.output)
    if options.name is not None:  # the name is known: refuse a bad output before reading 1 GB
        _check_outputs(options, options.name, labels)

    instruct = LlavaFile.read(options.instruct, ids_in_child=True)  # its ids come while the source is checked
    try:
        return _mix_files(options, labels, instruct)
    finally:
        instruct.close()


def _mix_files(options: MixOptions, labels: dict[str, Path], instruct: LlavaFile) -> MixResult:
    ratio = options.rejection_ratio
    take_all_instruct = options.n_instruct is None
    source = LlavaFile.read(options.rejection_source)
    ids1 = source.ids()
    logger.info("%s: %d records; %s: %d records", source.label, len(source), instruct.label, len(instruct))

    # file 1: the records usable as rejection examples
    if options.random_turn:
        population1: Sequence[int] = list(
            itertools.compress(range(len(source)), map(operator.not_, source.follow_ups_only()))
        )
    else:
        population1 = range(len(source))
    skipped_what_about = len(source) - len(population1)
    if skipped_what_about:
        logger.warning(
            "%s: %d records skipped for --random-turn: every question is a 'what about' follow-up",
            source.label,
            skipped_what_about,
        )

    # sizes (with a ratio, the instruct target decides the rejection count)
    if ratio is None:
        wanted1 = len(population1) if options.n_rejection is None else options.n_rejection
        wanted2 = None
    else:
        wanted2 = len(instruct) if take_all_instruct else options.n_instruct
        wanted1 = _ratio_count(ratio, wanted2)
        if wanted1 > len(population1):
            if options.strict:
                _clamp(wanted1, len(population1), source.label, strict=True)
            wanted2 = math.floor(len(population1) * (1.0 - ratio) / ratio + 0.5)
            logger.warning(
                "%s: --rejection-ratio %s needs %d records, only %d available; using them all and %d instruct records",
                source.label,
                ratio,
                wanted1,
                len(population1),
                wanted2,
            )
            wanted1 = len(population1)
    n1 = _clamp(wanted1, len(population1), source.label, options.strict)
    sample1 = _rng(options.seed, "rejection").sample(population1, n1)

    # file 2: excluding the ids drawn from file 1 (or, with --similar, only those ids); ids compare as strings
    ids2 = instruct.ids()  # (asked for as late as possible: they come from a child process)
    drawn = {ids1[i] for i in sample1}
    in_drawn = map(drawn.__contains__, ids2)  # (list operations in C: ids2 may hold 665k ids)
    if options.similar:
        population2: Sequence[int] = list(itertools.compress(range(len(ids2)), in_drawn))
    elif drawn:
        population2 = list(itertools.compress(range(len(ids2)), map(operator.not_, in_drawn)))
    else:
        population2 = range(len(ids2))
    excluded = 0 if options.similar else len(ids2) - len(population2)
    if wanted2 is None:
        wanted2 = len(population2) if take_all_instruct else options.n_instruct
    if take_all_instruct:
        n2 = min(wanted2, len(population2))
    else:
        n2 = _clamp(wanted2, len(population2), instruct.label, options.strict)
    if n2 == len(population2):  # all of them: no draw needed, the final shuffle orders them
        sample2 = list(population2)
    else:
        sample2 = _rng(options.seed, "instruct").sample(population2, n2)
    if ratio is not None and n2 < wanted2:  # fewer instruct records than planned: keep the fraction exact
        sample1 = sample1[: _ratio_count(ratio, n2)]
        n1 = len(sample1)
    if n1 + n2 == 0:
        raise DataError(
            f"the mix would be empty (0 rejection and 0 instruct records from {source.label} and {instruct.label}); "
            "nothing written"
        )

    # the rejection records, validated and made now (few); the instruct records are validated and encoded as they
    # are written
    source.check(sample1)
    turn_rng = _rng(options.seed, "turn") if options.random_turn else None
    reply_rng = _rng(options.seed, "reply")
    mixed: list[bytes | int] = []  # a rejection record's sharegpt JSON line, or the index of an instruct record
    images: list[str] = []
    reply_counts = dict.fromkeys(options.replies, 0)
    for i in sample1:
        reply = reply_rng.choice(options.replies)
        reply_counts[reply] += 1
        rejection = to_sharegpt(make_rejection_record(source.decode(i), reply, turn_rng))
        mixed.append(encode_record(rejection))
        images += rejection["image"]
    mixed += sample2
    _rng(options.seed, "shuffle").shuffle(mixed)

    name = options.name or default_name(options, n1, n2)
    output, manifest_path, entry = _check_outputs(options, name, labels)

    counts = {
        "rejection": n1,
        "instruct": n2,
        "total": n1 + n2,
        "rejection_fraction": round(n1 / (n1 + n2), 6) if n1 + n2 else 0.0,
        "requested": {"rejection": wanted1, "instruct": wanted2},
        "rejection_by_reply": reply_counts,
        "rejection_source_skipped_what_about": skipped_what_about,
        "instruct_excluded_by_id": excluded,
        "instruct_eligible_similar": len(population2) if options.similar else None,
    }
    with_images = options.image_dir is not None
    chunks = [mixed[start : start + _CHUNK] for start in range(0, len(mixed), _CHUNK)]
    source.sha256, instruct.sha256  # noqa: B018 (their threads joined: none of ours may run when a child is forked)
    child = _lines_in_child(instruct, chunks, with_images) if len(mixed) >= LINES_IN_CHILD_RECORDS else None
    try:
        with atomic_open(output, "wb") as handle:
            digest = hashlib.sha256()
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
            if options.image_dir is not None:
                _check_images(images, options)
            manifest = _manifest(options, name, source, instruct, counts, output, digest.hexdigest(), writer, entry)
            with atomic_open(manifest_path, "w") as manifest_handle:
                manifest_handle.write(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
    finally:
        if child is not None:
            child.close()
    # registered last, once both files are in place: a failure before leaves no entry without its file
    registration = None
    if entry is not None:
        registration = register_dataset(options.dataset_info, name, entry, force=options.force)
    return MixResult(output, manifest_path, name, n1, n2, registration, counts)


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


def _check_outputs(
    options: MixOptions, name: str, inputs: dict[str, Path]
) -> tuple[Path, Path, dict[str, Any] | None]:
    """The output paths and the registration entry, checked before anything is written."""
    output = options.output / f"{name}.json"
    manifest_path = options.output / f"{name}.manifest.json"
    for path in (output, manifest_path):
        check_output_path(path, options.dataset_info, inputs)
    entry = sharegpt_entry(output, options.dataset_info) if options.dataset_info is not None else None
    if entry is not None:
        check_registration(options.dataset_info, name, entry, force=options.force)
    return output, manifest_path, entry


def _check_images(paths: list[str], options: MixOptions) -> None:
    """Every image of the mix must exist under --image-dir, unless --allow-missing-images (then a warning)."""
    assert options.image_dir is not None
    if not options.image_dir.is_dir():
        raise DataError(f"--image-dir {options.image_dir}: no such directory")
    n_checked, missing = find_missing_images(paths, options.image_dir)
    if not missing:
        logger.info("all %d images found under %s", n_checked, options.image_dir)
        return
    message = missing_images_message(n_checked, missing, options.image_dir)
    if not options.allow_missing_images:
        raise DataError(message + " (use --allow-missing-images to write the mix anyway)")
    logger.warning("%s", message)


def _input_manifest(source: LlavaFile) -> dict[str, Any]:
    return {"path": source.path, "sha256": source.sha256, "bytes": source.size, "records": len(source)}


def _manifest(
    options: MixOptions,
    name: str,
    source: LlavaFile,
    instruct: LlavaFile,
    counts: dict[str, Any],
    output: Path,
    output_sha256: str,
    writer: JsonArrayWriter,
    entry: dict[str, Any] | None,
) -> dict[str, Any]:
    """What reproduces and audits the mix; no timestamp and no output folder, so the same mix gives the same bytes.

    Where the mix was registered (if it was) is recorded under ``dataset``.
    """

    def path_or_none(path: Path | None) -> str | None:
        return None if path is None else os.path.abspath(path)

    return {
        "tool": "rejection-align mix",
        "version": __version__,
        "seed": options.seed,
        "inputs": {"rejection_source": _input_manifest(source), "instruct": _input_manifest(instruct)},
        "options": {
            "n_rejection": options.n_rejection,
            "rejection_ratio": options.rejection_ratio,
            "n_instruct": options.n_instruct,
            "replies": list(options.replies),
            "random_turn": options.random_turn,
            "similar": options.similar,
            "seed": options.seed,
            "name": options.name,
            "image_dir": path_or_none(options.image_dir),
            "allow_missing_images": options.allow_missing_images,
            "strict": options.strict,
            "force": options.force,
        },
        "counts": counts,
        "output": {
            "file": output.name,
            "sha256": output_sha256,
            "bytes": writer.bytes_written,
            "records": writer.count,
            "format": "sharegpt",
        },
        "dataset": None
        if entry is None
        else {"name": name, "dataset_info": path_or_none(options.dataset_info), "entry": entry},
    }


# --------------------------------------------------------------------------------------------------- command line


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument(
        "--rejection-source",
        required=True,
        type=Path,
        metavar="FILE",
        help="LLaVA-format benign data whose answers become the rejection sentence (e.g. LLaVA-Med)",
    )
    inputs.add_argument(
        "--instruct",
        required=True,
        type=Path,
        metavar="FILE",
        help="LLaVA-format instruction data kept as is (e.g. llava_v1_5_mix665k.json)",
    )

    sizes = parser.add_argument_group("sizes")
    size = sizes.add_mutually_exclusive_group()
    size.add_argument("--n-rejection", type=_count, metavar="N", help="rejection examples (default: all)")
    size.add_argument(
        "--rejection-ratio",
        type=_ratio,
        metavar="R",
        help="fraction of the final mix that are rejection examples, in [0, 1)",
    )
    sizes.add_argument(
        "--n-instruct",
        type=_count,
        metavar="M",
        help="instruct examples (default: all, minus the ids drawn as rejection examples)",
    )
    sizes.add_argument("--strict", action="store_true", help="a size larger than available is an error, not a warning")

    how = parser.add_argument_group("rejection examples")
    how.add_argument(
        "--reply",
        nargs="+",
        action="extend",
        metavar="TEXT",
        help=f"rejection sentence(s); each example takes one at random (default: {DEFAULT_REJECTION_SENTENCE!r})",
    )
    how.add_argument(
        "--random-turn",
        action="store_true",
        help="reduce each rejection example to one random human/gpt pair (not a 'what about' follow-up)",
    )
    how.add_argument(
        "--similar", action="store_true", help="draw instruct examples only among the ids drawn as rejection examples"
    )
    how.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default: {DEFAULT_SEED})")

    out = parser.add_argument_group("output")
    out.add_argument("--name", help="dataset name and file stem (default: {n1}_{stem1}_{n2}_{stem2}{suffix})")
    add_output_arguments(out, "mix")
    add_deprecated_cache_arguments(parser)


def options_from_args(args: argparse.Namespace) -> MixOptions:
    return MixOptions(
        rejection_source=args.rejection_source,
        instruct=args.instruct,
        output=args.output,
        n_rejection=args.n_rejection,
        rejection_ratio=args.rejection_ratio,
        n_instruct=args.n_instruct,
        replies=tuple(args.reply) if args.reply else (DEFAULT_REJECTION_SENTENCE,),
        random_turn=args.random_turn,
        similar=args.similar,
        seed=args.seed,
        name=args.name,
        dataset_info=None if args.no_register else args.dataset_info,
        image_dir=args.image_dir,
        allow_missing_images=args.allow_missing_images,
        strict=args.strict,
        force=args.force,
    )


def run(args: argparse.Namespace) -> int:
    warn_deprecated_cache_arguments(args)
    result = mix(options_from_args(args))
    print(
        f"wrote {result.n_rejection + result.n_instruct} records ({result.n_rejection} rejection, "
        f"{result.n_instruct} instruct) to {result.output}"
    )
    print(f"manifest: {result.manifest}")
    if result.registration is not None:
        print(f"dataset {result.name!r} {result.registration} in {args.dataset_info}")
    return 0
