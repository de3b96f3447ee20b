"""Convert a LLaVA-format file to LLaMA-Factory sharegpt (id a string, image a list) and register it.

Every record is validated (turns, speakers, empty values, <image> tags against images); the output OUTPUT/NAME.json
(NAME: the input's stem by default) appears only if the whole file is valid, and is registered once it is in place.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..files import atomic_open
from .llava_format import (
    JsonArrayWriter,
    LlavaFile,
    find_missing_images,
    gc_paused,
    missing_images_message,
    sharegpt_bytes,
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


@dataclass
class ConvertResult:
    output: Path
    name: str
    records: int
    sha256: str
    registration: str | None


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
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    name = name or path.stem
    if "/" in name or "\\" in name or name in (".", ".."):
        raise DataError(f"--name {name!r}: must be a plain name (no path separators)")
    check_output_dir(output_dir)
    output = Path(output_dir) / f"{name}.json"
    check_output_path(output, dataset_info, {"file": path})
    entry = sharegpt_entry(output, dataset_info) if dataset_info is not None else None
    if entry is not None:
        check_registration(dataset_info, name, entry, force=force)

    source = LlavaFile.read(path)
    images: list[str] = []
    with gc_paused(), atomic_open(output, "wb") as handle:
        digest = hashlib.sha256()
        with JsonArrayWriter(handle, digest) as writer, records_bar(len(source), "convert") as bar:
            for index, raw in enumerate(source.raws):
                if not index & 4095:
                    bar.update(min(4096, len(source) - index))
                source.record(index)  # validates it
                data, record_images = sharegpt_bytes(raw, copy_plain=False)
                if image_dir is not None:
                    images += record_images
                writer.write_bytes(data)
            writer.close()
        if image_dir is not None:
            _check_images(images, image_dir, allow_missing_images)
    registration = None
    if entry is not None:  # registered last, once the file is in place
        registration = register_dataset(dataset_info, name, entry, force=force)
    return ConvertResult(output, name, writer.count, digest.hexdigest(), registration)


def _check_images(images: list[str], image_dir: str | os.PathLike, allow_missing: bool) -> None:
    if not os.path.isdir(image_dir):
        raise DataError(f"--image-dir {image_dir}: no such directory")
    n_checked, missing = find_missing_images(images, image_dir)
    if missing:
        message = missing_images_message(n_checked, missing, image_dir)
        if not allow_missing:
            raise DataError(message + " (use --allow-missing-images to convert anyway)")
        logger.warning("%s", message)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE", help="LLaVA-format JSON array")
    parser.add_argument("--name", help="dataset name and file stem (default: the input's stem)")
    add_output_arguments(parser, "converted file")
    add_deprecated_cache_arguments(parser)


def run(args: argparse.Namespace) -> int:
    warn_deprecated_cache_arguments(args)
    result = convert(
        args.file,
        args.output,
        name=args.name,
        dataset_info=None if args.no_register else args.dataset_info,
        force=args.force,
        image_dir=args.image_dir,
        allow_missing_images=args.allow_missing_images,
    )
    print(f"wrote {result.records} records to {result.output}")
    if result.registration is not None:
        print(f"dataset {result.name!r} {result.registration} in {args.dataset_info}")
    return 0
