"""The images a dataset names: which of them are missing under an image folder, and the message that lists them."""

from __future__ import annotations

import os
from collections.abc import Iterable


def find_missing_images(paths: Iterable[str], image_dir: str | os.PathLike) -> tuple[int, list[str]]:
    """Check that every image path exists under ``image_dir``; return (number of distinct paths, missing ones).

    The missing paths come in the order they were first referenced. Existence checks run on a thread pool
    (``os.stat`` releases the GIL), which matters on network file systems with hundreds of thousands of images.
    """
    from concurrent.futures import ThreadPoolExecutor

    unique = list(dict.fromkeys(paths))
    base = os.fspath(image_dir)

    def missing_in(batch: list[str]) -> list[str]:
        return [path for path in batch if not os.path.isfile(os.path.join(base, path))]

    batches = [unique[start : start + 2048] for start in range(0, len(unique), 2048)]
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(batches)))) as pool:
        missing = [path for found in pool.map(missing_in, batches) for path in found]
    return len(unique), missing


def missing_images_message(n_checked: int, missing: list[str], image_dir: str | os.PathLike, show: int = 5) -> str:
    """``3 of 7002 images are missing under DIR: a.jpg, b.jpg, c.jpg``."""
    shown = ", ".join(missing[:show]) + (f", ... ({len(missing) - show} more)" if len(missing) > show else "")
    return f"{len(missing)} of {n_checked} images are missing under {os.fspath(image_dir)}: {shown}"
