"""A dataset saved with ``tokenized_path`` remembers the rejection-align settings it was tokenized with.

LLaMA-Factory loads a non-empty ``tokenized_path`` as it is and runs no processor, whatever the data arguments
say now, so a dataset tokenized with the method off (or in the other mode, or with other sentences) would train
silently while the log says the method is on. We write ``rejection_align.json`` next to the saved dataset when
the method is on, and compare it with the current settings before LLaMA-Factory loads the directory:

- no record, method off now: loaded (stock LLaMA-Factory and method-off runs save no record);
- no record, method on now: stopped, the dataset was tokenized without the method;
- a record, method off now, or other settings: stopped, naming both settings.
"""

import functools
import sys
from pathlib import Path
from typing import Any, Literal

import msgspec

from ..errors import ConfigError
from ..files import atomic_write_json
from .settings import RejectionSettings, settings_of
from .targets import LOADER_MODULE


RECORD_NAME = "rejection_align.json"
RECORD_FORMAT = 1


class SavedSettings(msgspec.Struct):
    """The settings a dataset was tokenized with, under their YAML key names (``RejectionSettings.to_dict()``)."""

    rejection_mask_eos: bool
    rejection_mask_mode: Literal["mask", "drop"]
    rejection_sentences: list[str]
    rejection_match: Literal["exact", "contains"]


class Record(msgspec.Struct):
    """``rejection_align.json``: ``{"format": 1, "settings": {...}}``."""

    format: int
    settings: SavedSettings


_DECODER = msgspec.json.Decoder(Record)


def effective_settings(data_args: Any, stage: str) -> RejectionSettings | None:
    """The settings that shape the tokenized data: the method only acts on ``sft``."""
    settings = settings_of(data_args)
    return settings if settings is not None and stage == "sft" else None


def read_record(path: str | Path) -> dict[str, Any] | None:
    record = Path(path) / RECORD_NAME
    if not record.is_file():
        return None

    try:
        saved = _DECODER.decode(record.read_bytes())
    except OSError as err:
        problem = f"cannot be read ({err.strerror or err})"
    except msgspec.ValidationError as err:  # only its JSON path is used: msgspec's wording changes between releases
        from ..json_problems import path_of  # (the error path only: msgspec.inspect stays out of the hook)

        where = path_of(err)
        at = "$" + "".join(f".{key}" if isinstance(key, str) else f"[{key}]" for key in where or ())
        problem = "does not hold the settings rejection-align writes" + (f" (at {at})" if where else "")
    except msgspec.DecodeError:
        problem = "is not valid JSON"
    else:
        if saved.format == RECORD_FORMAT:
            return msgspec.structs.asdict(saved.settings)
        problem = f"has format {saved.format}, this rejection-align reads format {RECORD_FORMAT}"

    raise ConfigError(f"{record} {problem}; delete {path} to tokenize again.")


def write_record(path: str | Path, settings: RejectionSettings | None) -> None:
    """Record ``settings`` beside a freshly saved dataset; method off leaves the directory exactly as stock."""
    record = Path(path) / RECORD_NAME
    if settings is None:
        record.unlink(missing_ok=True)
        return

    atomic_write_json(record, msgspec.to_builtins(Record(RECORD_FORMAT, SavedSettings(**settings.to_dict()))))


def _describe(settings: dict[str, Any] | None) -> str:
    if settings is None:
        return "method off (rejection_mask_eos false or absent)"

    return ", ".join(f"{key}={value!r}" for key, value in settings.items())


def check_saved(path: str | Path, current: RejectionSettings | None) -> None:
    """Stop when the dataset at ``path`` was tokenized with other rejection-align settings than ``current``."""
    saved = read_record(path)
    wanted = current.to_dict() if current is not None else None
    if saved == wanted:
        return

    source = "saved without rejection-align's record, so it was tokenized with the method off" if saved is None else (
        f"tokenized with {_describe(saved)}"
    )  # fmt: skip
    raise ConfigError(
        f"tokenized_path {path} holds a dataset {source}; this run asks for {_describe(wanted)}. LLaMA-Factory "
        f"loads a non-empty tokenized_path as it is (overwrite_cache does not apply), so the data would not match "
        f"the settings. Delete {path} (or set tokenized_path to another directory) to tokenize again, or use the "
        "settings it was made with."
    )


def wrap_get_dataset(original: Any) -> Any:
    """``get_dataset`` that checks a saved dataset's record before loading it and writes one after saving."""

    @functools.wraps(original)
    def get_dataset(template, model_args, data_args, training_args, stage, *args, **kwargs):
        path = getattr(data_args, "tokenized_path", None)
        if path is None:
            return original(template, model_args, data_args, training_args, stage, *args, **kwargs)

        has_tokenized_data = sys.modules[LOADER_MODULE].has_tokenized_data
        current = effective_settings(data_args, stage)
        if has_tokenized_data(path):
            check_saved(path, current)
            return original(template, model_args, data_args, training_args, stage, *args, **kwargs)

        result = original(template, model_args, data_args, training_args, stage, *args, **kwargs)
        if getattr(training_args, "should_save", True) and has_tokenized_data(path):
            write_record(path, current)
        return result

    return get_dataset
