"""Convert a LLaVA-format file to LLaMA-Factory sharegpt (id a string, image a list) and register it.

Every record is validated (turns, speakers, empty values, <image> tags against images) in one streaming pass; the
output OUTPUT/NAME.json (NAME: the input's stem by default) appears only if the whole file is valid.
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
from .llava_format import JsonArrayWriter, find_missing_images, missing_images_message, record_images, to_sharegpt
from .record_index import IndexCache, build_index
from .registry import (
    DEFAULT_DATASET_INFO,
    add_output_arguments,
    check_output_path,
    check_registration,
    register_dataset,
    sharegpt_entry,
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
    cache: IndexCache | None = None,
    progress: bool | None = None,
) -> ConvertResult:
    """Convert one file; ``dataset_info=None`` skips registration. Nothing is written if any record is bad."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    name = name or path.stem
    if "/" in name or "\\" in name or name in (".", ".."):
        raise DataError(f"--name {name!r}: must be a plain name (no path separators)")
    output = Path(output_dir) / f"{name}.json"
    check_output_path(output, dataset_info, {"file": path})
    entry = sharegpt_entry(output, dataset_info) if dataset_info is not None else None
    if entry is not None:
        check_registration(dataset_info, name, entry, force=force)

    images: list[str] = []
    registration = None
    with atomic_open(output, "wb") as handle:
        digest = hashlib.sha256()
        writer = JsonArrayWriter(handle, digest)

        def write(_index: int, record: dict) -> None:
            if image_dir is not None:
                images.extend(record_images(record))
            writer.write(to_sharegpt(record))

        index = build_index(path, visit=write, progress=progress)
        writer.close()
        if image_dir is not None:
            _check_images(images, image_dir, allow_missing_images)
        if entry is not None:
            registration = register_dataset(dataset_info, name, entry, force=force)
    if cache is not None:
        cache.save(index)  # the pass also indexed the file: a later mix from it starts warm
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
    parser.add_argument("--cache-dir", type=Path, metavar="DIR", help="index cache directory (see `mix --help`)")
    parser.add_argument("--no-cache", action="store_true", help="do not store the file's index in the cache")


def run(args: argparse.Namespace) -> int:
    result = convert(
        args.file,
        args.output,
        name=args.name,
        dataset_info=None if args.no_register else args.dataset_info,
        force=args.force,
        image_dir=args.image_dir,
        allow_missing_images=args.allow_missing_images,
        cache=None if args.no_cache else IndexCache(args.cache_dir),
    )
    print(f"wrote {result.records} records to {result.output}")
    if result.registration is not None:
        print(f"dataset {result.name!r} {result.registration} in {args.dataset_info}")
    return 0
