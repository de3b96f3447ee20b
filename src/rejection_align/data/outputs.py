"""Where ``mix`` and ``convert`` write and register a dataset: their shared options and the checked target.

The options (--output, --dataset-info, --no-register, --force, --image-dir, --allow-missing-images) are dataclass
field factories (see :mod:`rejection_align.options`): each command's options dataclass declares them with these, so
the flags, help and defaults are written once for both. :class:`OutputTarget` checks the output paths and the
registration before anything is written, and registers last.
"""

from __future__ import annotations

import os
from dataclasses import field
from pathlib import Path
from typing import Any

from ..options import option
from .registry import (
    DEFAULT_DATASET_INFO,
    check_output_path,
    check_registration,
    register_dataset,
    sharegpt_entry,
)


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


class Registers:
    """Base of an options dataclass declaring ``dataset_info`` and ``no_register`` (the fields above): where its
    output is registered, said once for ``mix`` and ``convert``. Not a dataclass: it adds no field."""

    dataset_info: Path | None
    no_register: bool

    @property
    def registry(self) -> Path | None:
        """The dataset_info.json to register the output in; None: not registered."""
        return None if self.no_register else self.dataset_info


class OutputTarget:
    """``DIR/NAME.json`` (and, ``with_manifest``, ``DIR/NAME.manifest.json``) and the registration of ``NAME`` in
    ``registry`` (None: not registered), all checked when made: no output may replace one of ``inputs`` (label ->
    path) or a dataset_info.json, and a different registration of NAME needs ``force``."""

    def __init__(
        self,
        directory: str | os.PathLike,
        name: str,
        registry: str | os.PathLike | None,
        inputs: dict[str, Any],
        force: bool,
        with_manifest: bool = True,
    ) -> None:
        self.name = name
        self.output = Path(directory) / f"{name}.json"
        self.manifest = Path(directory) / f"{name}.manifest.json"
        self.registry = registry
        self.force = force
        for path in (self.output, self.manifest) if with_manifest else (self.output,):
            check_output_path(path, registry, inputs)
        self.entry: dict[str, Any] | None = None
        if registry is not None:
            self.entry = sharegpt_entry(self.output, registry)
            check_registration(registry, name, self.entry, force=force)

    def register(self) -> str | None:
        """Called last, once the files are in place: a failure before leaves no entry without its file."""
        if self.entry is None:
            return None
        return register_dataset(self.registry, self.name, self.entry, force=self.force)
