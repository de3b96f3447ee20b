"""Checks that ``mix`` and ``convert`` both make before they write: a plain dataset name, images that exist."""

from __future__ import annotations

import logging
import os
import re

from ..errors import DataError
from .images import find_missing_images, missing_images_message


logger = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[^/\\\x00]+$")


def check_name(name: str) -> None:
    """A dataset name is also the output's file stem: no path separators (it must not write elsewhere)."""
    if not _NAME_RE.match(name) or name in (".", ".."):
        raise DataError(f"--name {name!r}: must be a plain name (no path separators)")


def check_images(paths: list[str], image_dir: str | os.PathLike, allow_missing: bool, anyway: str) -> None:
    """Every image must exist under ``image_dir``; with ``allow_missing`` a warning instead of an error.

    ``anyway`` completes the hint of the error: ``use --allow-missing-images to {anyway}``.
    """
    if not os.path.isdir(image_dir):
        raise DataError(f"--image-dir {image_dir}: no such directory")
    n_checked, missing = find_missing_images(paths, image_dir)
    if not missing:
        logger.info("all %d images found under %s", n_checked, image_dir)
        return
    message = missing_images_message(n_checked, missing, image_dir)
    if not allow_missing:
        raise DataError(message + f" (use --allow-missing-images to {anyway})")
    logger.warning("%s", message)
