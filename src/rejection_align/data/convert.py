"""Convert a LLaVA-format (or, with --from vlguard, a VLGuard) file to LLaMA-Factory sharegpt and register it.

Every record is validated (turns, speakers, empty values, <image> tags against images); the output OUTPUT/NAME.json
(NAME: the input's stem by default) appears only if the whole file is valid, and is registered once it is in place.
--from vlguard reads VLGuard's train.json/test.json: --turns one (one record per instruction/response pair, id
<id>-<k>) or multi (one record per image, its pairs as turns), --pairs all|no-safe-safe|safe-safe|unsafe (by image
safety x instruction safety), --image-prefix P; it writes NAME.manifest.json beside the output (the pairs of each
kind read and kept, categories, records, turns, images).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from .. import __version__
from ..errors import DataError
from ..files import atomic_open
from ..options import add_arguments as add_option_arguments
from ..options import from_args, option, record
from . import vlguard
from .checks import check_images, check_name
from .manifest import DatasetRecord, InputRecord, OutputRecord, dataset_record, encode_manifest, input_record
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
from .registry import (
    DEFAULT_DATASET_INFO,
    add_deprecated_cache_arguments,
    check_output_dir,
    warn_deprecated_cache_arguments,
)
from .sharegpt import encode_record, sharegpt_bytes
from .writer import JsonArrayWriter


logger = logging.getLogger(__name__)

_WHAT = "converted file"


@dataclass(frozen=True, kw_only=True)
class ConvertOptions(Registers):
    """The options of ``convert``, declared once (:mod:`rejection_align.options`): API, command line, manifest."""

    file: Path = field(
        metadata=option("file", type=Path, metavar="FILE", record=False, help="LLaVA-format JSON array")
    )
    name: str | None = field(
        default=None, metadata=option(help="dataset name and file stem (default: the input's stem)")
    )
    output: Path = output_field(_WHAT, group=None)
    dataset_info: Path | None = dataset_info_field(_WHAT, group=None)  # None: do not register
    no_register: bool = no_register_field(group=None)
    force: bool = force_field(group=None)
    image_dir: Path | None = image_dir_field(_WHAT, group=None)
    allow_missing_images: bool = allow_missing_images_field(group=None)
    source_format: str = field(
        default="llava",
        metadata=option(
            "--from", choices=("llava", "vlguard"), help="the input's format (default: llava; vlguard: see below)"
        ),
    )
    turns: str | None = field(
        default=None,
        metadata=option(
            choices=vlguard.TURNS,
            group="vlguard",
            help="one: a record per instruction/response pair (id <id>-<k>); multi: a record per image, pairs as turns",
        ),
    )
    pairs: str | None = field(
        default=None,
        metadata=option(
            choices=tuple(vlguard.PAIRS),
            group="vlguard",
            help="pairs kept, by image x instruction safety: all; no-safe-safe (drop safe image + safe instruction); "
            "safe-safe (only those); unsafe (only unsafe images)",
        ),
    )
    image_prefix: str | None = field(
        default=None,
        metadata=option(
            metavar="P", group="vlguard", help="joined before every image path (e.g. vlguard: vlguard/bad_ads/1.png)"
        ),
    )


@dataclass
class ConvertResult:
    output: Path
    name: str
    records: int
    sha256: str
    registration: str | None
    manifest: Path | None = None  # --from vlguard only


class ConvertManifest(msgspec.Struct):
    """``NAME.manifest.json`` of ``convert --from vlguard`` (a plain conversion writes none)."""

    tool: str
    version: str
    inputs: dict[str, InputRecord]
    options: dict[str, Any]
    counts: vlguard.VlguardCounts
    output: OutputRecord
    dataset: DatasetRecord | None


def _target(options: ConvertOptions, name: str, with_manifest: bool = True) -> OutputTarget:
    """Where the conversion writes and registers, checked before the input is read."""
    check_name(name)
    check_output_dir(options.output)
    return OutputTarget(options.output, name, options.registry, {"file": options.file}, options.force, with_manifest)


def convert(
    path: str | os.PathLike,
    output_dir: str | os.PathLike,
    name: str | None = None,
    dataset_info: str | os.PathLike | None = DEFAULT_DATASET_INFO,
    force: bool = False,
    image_dir: str | os.PathLike | None = None,
    allow_missing_images: bool = False,
    **more: Any,
) -> ConvertResult:
    """Convert one file; ``dataset_info=None`` skips registration. Nothing is written if any record is bad.

    ``more``: the other fields of :class:`ConvertOptions` (``source_format="vlguard", turns=..., pairs=...``).
    """
    return convert_file(
        ConvertOptions(
            **more,
            file=Path(path),
            output=Path(output_dir),
            name=name,
            dataset_info=None if dataset_info is None else Path(dataset_info),
            force=force,
            image_dir=None if image_dir is None else Path(image_dir),
            allow_missing_images=allow_missing_images,
        )
    )


def convert_file(options: ConvertOptions) -> ConvertResult:
    """Convert ``options.file`` as the options say; nothing is written if any record is bad or none is left."""
    path = options.file
    if not path.is_file():
        raise DataError(f"{path}: {'a folder, expected a file' if path.is_dir() else 'no such file'}")
    if options.source_format == "vlguard":
        return _convert_vlguard(options)
    if options.turns is not None or options.pairs is not None or options.image_prefix is not None:
        raise DataError("--turns, --pairs and --image-prefix are options of --from vlguard")
    target = _target(options, options.name or path.stem, with_manifest=False)
    source = LlavaFile.read(path)
    if not len(source):
        raise DataError(f"{source.label}: no records (an empty array); nothing written or registered")
    images: list[str] = []
    with gc_paused(), atomic_open(target.output, "wb") as handle:
        digest = hashlib.sha256()
        with JsonArrayWriter(handle, digest) as writer, records_bar(len(source), "convert") as bar:
            for index, raw in enumerate(source.raws):
                if not index & 4095:
                    bar.update(min(4096, len(source) - index))
                source.record(index)  # validates it
                data, record_images = sharegpt_bytes(raw, copy_plain=False)
                if options.image_dir is not None:
                    images += record_images
                writer.write_bytes(data)
            writer.close()
        if options.image_dir is not None:
            check_images(images, options.image_dir, options.allow_missing_images, "convert anyway")
    registration = target.register()
    return ConvertResult(target.output, target.name, writer.count, digest.hexdigest(), registration)


def _convert_vlguard(options: ConvertOptions) -> ConvertResult:
    """VLGuard pairs of the kept kinds as sharegpt records, with a manifest; all checked before anything is written."""
    if options.turns is None or options.pairs is None:
        raise DataError(
            f"--from vlguard needs --turns {'|'.join(vlguard.TURNS)} and --pairs {'|'.join(vlguard.PAIRS)}"
        )
    path = options.file
    target = _target(options, options.name or vlguard.default_name(path, options.turns, options.pairs))
    data = path.read_bytes()
    records = vlguard.read_vlguard(data, os.fspath(path))
    tally = vlguard.Tally(records)
    lines = []
    for out, source, pairs in vlguard.sharegpt_records(
        records, options.turns, vlguard.PAIRS[options.pairs], options.image_prefix
    ):
        tally.add(out, source, pairs)
        lines.append(encode_record(out))
    if not lines:
        raise DataError(
            f"{path}: no pair kept by --pairs {options.pairs} ({len(records)} records read); "
            "nothing written or registered"
        )
    with atomic_open(target.output, "wb") as handle:
        digest = hashlib.sha256()
        with JsonArrayWriter(handle, digest) as writer:
            writer.write_lines(lines)
            writer.close()
        if options.image_dir is not None:
            check_images(tally.images, options.image_dir, options.allow_missing_images, "convert anyway")
        manifest = ConvertManifest(
            tool="rejection-align convert",
            version=__version__,
            inputs={"file": input_record(path, data, len(records))},
            options=record(options),
            counts=tally.counts(),
            output=OutputRecord(target.output.name, digest.hexdigest(), writer.bytes_written, writer.count),
            dataset=dataset_record(target.name, target.registry, target.entry),
        )
        with atomic_open(target.manifest, "w") as manifest_handle:
            manifest_handle.write(encode_manifest(manifest))
    registration = target.register()
    return ConvertResult(target.output, target.name, writer.count, digest.hexdigest(), registration, target.manifest)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_option_arguments(parser, ConvertOptions)
    add_deprecated_cache_arguments(parser)


def run(args: argparse.Namespace) -> int:
    warn_deprecated_cache_arguments(args)
    result = convert_file(from_args(ConvertOptions, args))
    print(f"wrote {result.records} records to {result.output}")
    if result.manifest is not None:
        print(f"manifest: {result.manifest}")
    if result.registration is not None:
        print(f"dataset {result.name!r} {result.registration} in {args.dataset_info}")
    return 0
