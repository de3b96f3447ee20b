"""The parts of a data command's manifest (``NAME.manifest.json``) that ``mix`` and ``convert`` share, as Structs.

A manifest says what reproduces and audits a dataset: the inputs with their sha256, the options, the counts, the
output's sha256 and where it was registered. No timestamp and no output folder: the same run gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import msgspec


class InputRecord(msgspec.Struct):
    path: str
    sha256: str
    bytes: int
    records: int


class OutputRecord(msgspec.Struct):
    file: str
    sha256: str
    bytes: int
    records: int
    format: str = "sharegpt"


class DatasetRecord(msgspec.Struct):
    name: str
    dataset_info: str | None
    entry: dict[str, Any]


def dataset_record(
    name: str, dataset_info: str | os.PathLike | None, entry: dict[str, Any] | None
) -> DatasetRecord | None:
    """Where the dataset was registered; None when it was not."""
    if entry is None or dataset_info is None:
        return None
    return DatasetRecord(name, os.path.abspath(dataset_info), entry)


def input_record(path: str | os.PathLike, data: bytes, records: int) -> InputRecord:
    """An input read whole (small files: the sha256 of its bytes here)."""
    return InputRecord(os.path.realpath(path), hashlib.sha256(data).hexdigest(), len(data), records)


def encode_manifest(manifest: msgspec.Struct) -> str:
    """A manifest's text: 2-space indented JSON, non-ASCII kept, one final line break (the layout of release 0.1)."""
    return json.dumps(msgspec.to_builtins(manifest), ensure_ascii=False, indent=2) + "\n"


def decode_manifest(path: str | os.PathLike, kind: type) -> Any:
    """A manifest read back and validated as ``kind``; a bad one is a DataError naming the file and the field."""
    from .. import json_problems
    from ..errors import DataError

    data = Path(path).read_bytes()
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as err:
        try:
            value = msgspec.json.decode(data)
        except msgspec.ValidationError:  # a number too large to read: say where, and what was expected there
            value = None
        except (msgspec.DecodeError, UnicodeDecodeError):  # (msgspec checks types before the broken part)
            raise DataError(f"{path}: not a {kind.__name__} ({json_problems.describe(data)})") from None
        except (msgspec.MsgspecError, RecursionError):
            value = None
        problem = json_problems.validation_problem(err, value, kind) if value is not None else None
        where = json_problems.dotted(problem.path if problem else json_problems.path_of(err) or ())
        words = json_problems.problem_words(problem) if problem else "not the expected layout"
        raise DataError(f"{path}: not a {kind.__name__} ({where + ': ' if where else ''}{words})") from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as err:
        why = "nested too deeply" if isinstance(err, RecursionError) else json_problems.describe(data)
        raise DataError(f"{path}: not a {kind.__name__} ({why})") from None
