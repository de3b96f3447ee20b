"""Convert a LLaVA-format file to LLaMA-Factory sharegpt (id a string, image a list) and register it.

Every record is validated (turns, speakers, empty values, <image> tags against images); the output OUTPUT/NAME.json
(NAME: the input's stem by default) appears only if the whole file is valid, and is registered once it is in place.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..files import atomic_open
from ..options import add_arguments as add_option_arguments
from ..options import from_args, option
from .checks import check_images, check_name
from .llava_format import JsonArrayWriter, LlavaFile, gc_paused, sharegpt_bytes
from .output_options import (
    allow_missing_images_field,
    dataset_info_field,
    force_field,
    image_dir_field,
    no_register_field,
    output_field,
)
from .progress import records_bar
from .registry import (
    DEFAULT_DATASET_INFO,
    add_deprecated_cache_arguments,
    check_output_dir,
    check_output_path,
    check_registration,
    register_dataset,
    sharegpt_entry,
    warn_deprecated_cache_arguments,
)


logger = logging.getLogger(__name__)

_WHAT = "converted file"


@dataclass(frozen=True, kw_only=True)
class ConvertOptions:
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

    @property
    def registry(self) -> Path | None:
        """The dataset_info.json to register the output in; None: not registered."""
        return None if self.no_register else self.dataset_info


@dataclass
class ConvertResult:
    output: Path
    name: str
    records: int
    sha256: str
    registration: str | None


class _Target:
    """Where a conversion writes and registers, checked before anything is read or written."""

    def __init__(self, options: ConvertOptions, name: str) -> None:
        check_name(name)
        check_output_dir(options.output)
        self.name = name
        self.output = Path(options.output) / f"{name}.json"
        self.manifest = Path(options.output) / f"{name}.manifest.json"
        self.registry = options.registry
        check_output_path(self.output, self.registry, {"file": options.file})
        self.entry: dict[str, Any] | None = None
        if self.registry is not None:
            self.entry = sharegpt_entry(self.output, self.registry)
            check_registration(self.registry, name, self.entry, force=options.force)

    def register(self, force: bool) -> str | None:
        """Registered last, once the file is in place: a failure before leaves no entry without its file."""
        if self.entry is None:
            return None
        return register_dataset(self.registry, self.name, self.entry, force=force)


def convert(
    path: str | os.PathLike,
    output_dir: str | os.PathLike,
    name: str | None = None,
    dataset_info: str | os.PathLike | None = DEFAULT_DATASET_INFO,
    force: bool = False,
    image_dir: str | os.PathLike | None = None,
    allow_missing_images: bool = False,
) -> ConvertResult:
    """Convert one file; ``dataset_info=None`` skips registration. Nothing is written if any record is bad."""
    return convert_file(
        ConvertOptions(
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
        raise DataError(f"{path}: no such file")
    target = _Target(options, options.name or path.stem)
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
    registration = target.register(options.force)
    return ConvertResult(target.output, target.name, writer.count, digest.hexdigest(), registration)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_option_arguments(parser, ConvertOptions)
    add_deprecated_cache_arguments(parser)


def run(args: argparse.Namespace) -> int:
    warn_deprecated_cache_arguments(args)
    result = convert_file(from_args(ConvertOptions, args))
    print(f"wrote {result.records} records to {result.output}")
    if result.registration is not None:
        print(f"dataset {result.name!r} {result.registration} in {args.dataset_info}")
    return 0
