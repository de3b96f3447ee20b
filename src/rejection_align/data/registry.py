"""Add or update one dataset entry in LLaMA-Factory's dataset_info.json (locked, atomic, other entries kept in order).

Refuses to replace a different existing definition of the same name unless --force. A dataset_info.json that is not
a valid JSON object is an error and is left untouched.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import json_problems
from ..errors import DataError
from ..files import atomic_write_json, file_lock
from ..options import add_arguments as add_option_arguments
from ..options import from_args, option
from .sharegpt import SHAREGPT_COLUMNS


logger = logging.getLogger(__name__)

DATASET_INFO_NAME = "dataset_info.json"
DEFAULT_DATASET_INFO = f"data/{DATASET_INFO_NAME}"


def file_name_for(data_file: str | os.PathLike, dataset_info: str | os.PathLike) -> str:
    """``file_name`` as LLaMA-Factory resolves it (against ``dataset_dir``, the folder of dataset_info.json).

    Relative (POSIX separators) when the data file lies under that folder, so the data folder can move as a whole;
    absolute otherwise.
    """
    data_path = Path(os.path.abspath(data_file))
    base = Path(os.path.abspath(dataset_info)).parent
    try:
        return data_path.relative_to(base).as_posix()
    except ValueError:
        return str(data_path)


def sharegpt_entry(data_file: str | os.PathLike, dataset_info: str | os.PathLike) -> dict[str, Any]:
    """The registration of a file written by ``mix``/``convert``: sharegpt, images in the ``image`` column."""
    return {
        "file_name": file_name_for(data_file, dataset_info),
        "formatting": "sharegpt",
        "columns": dict(SHAREGPT_COLUMNS),
    }


def check_output_path(
    output: str | os.PathLike, dataset_info: str | os.PathLike | None, inputs: dict[str, Any]
) -> None:
    """Refuse an output that would replace one of ``inputs`` (label -> path) or a registry file.

    A file named ``dataset_info.json`` is LLaMA-Factory's registry: writing a dataset over it would lose every entry.
    Paths are compared as real paths (symlinks resolved), so a linked --output folder cannot hide an input.
    An output name that is a directory is refused too (the rename would fail after the work is done).
    """
    target = os.path.realpath(output)
    if Path(output).name == DATASET_INFO_NAME or (
        dataset_info is not None and target == os.path.realpath(dataset_info)
    ):
        raise DataError(f"{output}: the output would overwrite a {DATASET_INFO_NAME}; choose another --name")

    for label, path in inputs.items():
        if target == os.path.realpath(path):
            raise DataError(
                f"{output}: the output would overwrite the input {label} ({path}); choose another --output or --name"
            )
    if os.path.isdir(output):
        raise DataError(f"{output}: is a directory; choose another --name")


def check_output_dir(directory: str | os.PathLike) -> None:
    """``--output`` must be a directory or not exist yet (it is then created)."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise DataError(f"--output {directory}: exists and is not a directory")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def _refuse_dangling_link(path: Path) -> None:
    """A dataset_info.json that is a link to nothing: writing through it would create a file wherever it points
    (outside the project, folders included), so it is refused."""
    if path.is_symlink() and not path.exists():
        raise DataError(
            f"{path}: a symlink to {os.readlink(path)}, which does not exist; refusing to write through it "
            "(remove the link or point it at an existing file)"
        )


def read_dataset_info(path: str | os.PathLike) -> dict[str, Any]:
    """The entries of a dataset_info.json (``{}`` when the file does not exist); a malformed file is a DataError.

    Duplicate names are an error too: rewriting the file would silently drop all but the last of them.
    """
    path = Path(path)
    _refuse_dangling_link(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read it: {err}") from None
    try:
        info = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); fix it first, it was left as it is"
        ) from None
    except ValueError as err:
        raise DataError(f"{path}: {err}; fix it first, it was left as it is") from None
    if not isinstance(info, dict):
        raise DataError(
            f"{path}: expected a JSON object of dataset entries, found a {type(info).__name__}; it was left as it is"
        )
    return info


def _validate(name: str, entry: Any) -> None:
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"dataset name must be a non-empty string, got {name!r}")
    if not isinstance(entry, dict):
        raise DataError(f"dataset entry for {name!r} must be a JSON object, got {type(entry).__name__}")


def check_registration(dataset_info: str | os.PathLike, name: str, entry: dict[str, Any], force: bool = False) -> str:
    """What :func:`register_dataset` would do, without writing: ``added``, ``unchanged`` or ``updated``.

    Raises the same errors (malformed file, different definition without ``force``), so that a command can fail
    before it writes its data file.
    """
    _validate(name, entry)
    info = read_dataset_info(dataset_info)
    return _decide(dataset_info, info, name, entry, force)


def _decide(
    dataset_info: str | os.PathLike, info: dict[str, Any], name: str, entry: dict[str, Any], force: bool
) -> str:
    if name not in info:
        return "added"
    if info[name] == entry:
        return "unchanged"
    if not force:
        raise DataError(
            f"{dataset_info}: dataset {name!r} is already registered with a different definition "
            f"({json.dumps(info[name], ensure_ascii=False)}); use --force to replace it"
        )
    return "updated"


def register_dataset(
    dataset_info_path: str | os.PathLike, name: str, entry: dict[str, Any], force: bool = False
) -> str:
    """Add or update entry ``name`` of a dataset_info.json; return ``added``, ``updated`` or ``unchanged``.

    Read-modify-write under an exclusive lock on ``<dataset_info_path>.lock`` and written through a temporary file,
    so concurrent registrations all land and a reader never sees half a file. Other entries keep their order; an
    updated entry keeps its place. Raises DataError for a malformed file or, without ``force``, for a name already
    registered with a different definition.
    """
    _validate(name, entry)
    path = Path(dataset_info_path)
    _refuse_dangling_link(path)  # (before the lock, which would create its folder)
    with file_lock(os.path.realpath(path)):  # one lock per real file, whatever link it is reached by
        info = read_dataset_info(path)
        action = _decide(path, info, name, entry, force)
        if action != "unchanged":
            info[name] = entry
            atomic_write_json(path, info, indent=2)
    logger.debug("%s: dataset %r %s", path, name, action)  # (the commands print the result)
    return action


# --------------------------------------------------------------------------------------------------- command line


def add_deprecated_cache_arguments(parser: argparse.ArgumentParser) -> None:
    """``--cache-dir``/``--no-cache``: accepted and ignored for one release (there is no index cache any more)."""
    parser.add_argument("--cache-dir", type=Path, metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--no-cache", action="store_true", help=argparse.SUPPRESS)


def warn_deprecated_cache_arguments(args: argparse.Namespace) -> None:
    if args.cache_dir is not None or args.no_cache:
        logger.warning(
            "--cache-dir and --no-cache are deprecated and ignored: files are read without an index cache now; "
            "they will be removed in the next release"
        )


def check_dataset_file(path: str | os.PathLike) -> None:
    """What ``register --file`` accepts: a JSON array of objects, or JSON Lines objects for a ``.jsonl`` file."""
    import msgspec

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a JSON file") from None
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        if Path(path).suffix == ".jsonl":
            for number, line in enumerate(data.splitlines(), 1):
                if line.strip():
                    try:
                        msgspec.json.decode(line, type=dict)
                    except (msgspec.DecodeError, UnicodeDecodeError) as err:
                        why = json_problems.why_refused(err, line)
                        raise DataError(f"{path}: line {number} is not a JSON object ({why})") from None
            return
        for number, raw in enumerate(msgspec.json.decode(data, type=list[msgspec.Raw])):
            if bytes(memoryview(raw)[:1]) != b"{":
                raise DataError(f"{path}: record {number} is not a JSON object; nothing registered")
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        why = json_problems.why_refused(err, data)
        raise DataError(f"{path}: not a JSON array of records ({why}); nothing registered") from None
    except RecursionError:
        raise DataError(f"{path}: nested too deeply; nothing registered") from None


@dataclass(frozen=True, kw_only=True)
class RegisterOptions:
    """The options of ``rejection-align register``, declared once (:mod:`rejection_align.options`)."""

    name: str = field(
        metadata=option("name", metavar="NAME", help="dataset name, as used in the training YAML (dataset: NAME)")
    )
    file: Path = field(metadata=option(type=Path, help="the sharegpt JSON file to register"))
    dataset_info: Path = field(
        default=Path(DEFAULT_DATASET_INFO),
        metadata=option(
            type=Path, help=f"dataset_info.json to update (default: {DEFAULT_DATASET_INFO}; created if missing)"
        ),
    )
    force: bool = field(default=False, metadata=option(help="replace an existing entry with a different definition"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_option_arguments(parser, RegisterOptions)


def run(args: argparse.Namespace) -> int:
    options = from_args(RegisterOptions, args)
    check_dataset_file(options.file)
    entry = sharegpt_entry(options.file, options.dataset_info)
    action = register_dataset(options.dataset_info, options.name, entry, force=options.force)
    print(f"{options.dataset_info}: {options.name!r} {action} (file_name: {entry['file_name']})")
    return 0
