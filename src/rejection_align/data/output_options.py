"""The options that ``mix`` and ``convert`` share, as dataclass fields (see :mod:`rejection_align.options`).

Where the dataset is written and registered, and whether its images are checked; each command's options dataclass
declares them with these factories, so the flags, help and defaults are written once for both.
"""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import Any

from ..options import option
from .registry import DEFAULT_DATASET_INFO


OUTPUT_GROUP = "output"


def output_field(what: str, group: str | None = OUTPUT_GROUP) -> Any:
    """``--output DIR`` (required): where the dataset file (and its manifest) go."""
    return field(metadata=option(metavar="DIR", type=Path, group=group, record=False, help=f"directory of the {what}"))


def dataset_info_field(what: str, group: str | None = OUTPUT_GROUP) -> Any:
    """``--dataset-info PATH``; ``None`` (the Python API's way to say --no-register) skips registration."""
    return field(
        default=Path(DEFAULT_DATASET_INFO),
        metadata=option(
            metavar="PATH",
            type=Path,
            group=group,
            record=False,
            help=f"dataset_info.json to register the {what} in (default: {DEFAULT_DATASET_INFO})",
        ),
    )


def no_register_field(group: str | None = OUTPUT_GROUP) -> Any:
    return field(default=False, metadata=option(group=group, record=False, help="do not touch any dataset_info.json"))


def force_field(group: str | None = OUTPUT_GROUP, record: bool = True) -> Any:
    return field(
        default=False,
        metadata=option(group=group, record=record, help="replace a different registration of the same name"),
    )


def image_dir_field(what: str, group: str | None = OUTPUT_GROUP, record: bool = True) -> Any:
    return field(
        default=None,
        metadata=option(
            metavar="DIR",
            type=Path,
            group=group,
            record=record,
            help=f"check that every image of the {what} exists here",
        ),
    )


def allow_missing_images_field(group: str | None = OUTPUT_GROUP, record: bool = True) -> Any:
    return field(
        default=False, metadata=option(group=group, record=record, help="with --image-dir: warn instead of failing")
    )
