"""LoRA adapters for evaluation: fail early when an adapter does not belong to the base model given.

``check_adapter_base`` compares names before any weights load; ``load_adapter`` (the ``hf-chat`` path) applies an
adapter with PEFT and turns every "does not fit" into a ``ConfigError``. The LLaMA-Factory path loads adapters
with LLaMA-Factory's own loader, as ``llamafactory-cli chat`` does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError


logger = logging.getLogger(__name__)


def same_ref(a: str | None, b: str | None) -> bool:
    """Equal references: equal strings, or two existing paths to the same file or folder."""
    if a == b:
        return True
    if a is None or b is None:
        return False
    return os.path.exists(a) and os.path.exists(b) and os.path.realpath(a) == os.path.realpath(b)


def read_adapter_config(adapter: str | os.PathLike) -> dict[str, Any]:
    """The adapter's ``adapter_config.json`` as a dict (a clear ``ConfigError`` when it is missing or malformed)."""
    path = Path(adapter) / "adapter_config.json"
    if not path.is_file():
        raise ConfigError(f"{adapter}: not a PEFT adapter (no adapter_config.json)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a JSON object (PEFT's adapter config), got a {type(config).__name__}")
    return config


def _same_model_name(a: str, b: str) -> bool:
    """Same model under two spellings: equal paths, or equal last components (hub id vs. a local copy of it)."""
    return same_ref(a, b) or Path(a.rstrip("/")).name.lower() == Path(b.rstrip("/")).name.lower()


def check_adapter_base(adapter: str | os.PathLike, model: str | os.PathLike, *, force: bool = False) -> None:
    """Fail early when the adapter says it was trained on another model (checked before any weights load).

    Only the names are compared here (``base_model_name_or_path`` against ``model``, by last path component, so
    ``llava-hf/llava-1.5-7b-hf`` matches ``/models/llava-1.5-7b-hf``); ``force`` accepts a renamed copy. Shapes
    and module names are checked when the adapter is loaded (``load_adapter``), and that check cannot be forced.
    """
    base = read_adapter_config(adapter).get("base_model_name_or_path")
    if not base or _same_model_name(str(base), str(model)):
        return
    message = (
        f"adapter {adapter} was trained on {base!r}, but the base model given is {str(model)!r}; "
        "pass the matching base model (or --force-adapter if this is a renamed copy of it)"
    )
    if not force:
        raise ConfigError(message)
    logger.warning("%s (going on: --force-adapter)", message)


WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def check_adapter_files(adapter: str | os.PathLike) -> None:
    """Fail before the model loads when the adapter folder lacks its config or its weights (named, not the model)."""
    read_adapter_config(adapter)
    if not any((Path(adapter) / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError(
            f"adapter {adapter}: no adapter weights ({' or '.join(WEIGHT_FILES)}); a training run writes them when "
            "it saves a checkpoint: is the run finished, and is this its output_dir?"
        )


def unmatched_weights(adapter: str | os.PathLike, loaded: set[str] | list[str]) -> None:
    """Refuse an adapter some of whose weights found no module in the model (PEFT skips them without a word)."""
    if loaded:
        keys = sorted(loaded)
        raise ConfigError(
            f"adapter {adapter} does not fit the base model: {len(keys)} of its weights have no module in the "
            f"model, e.g. {keys[0]}"
        )


def _adapter_tensor_shapes(adapter: Path) -> dict[str, tuple[int, ...]]:
    file = adapter / "adapter_model.safetensors"
    if file.is_file():
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    file = adapter / "adapter_model.bin"
    if file.is_file():
        import torch

        state = torch.load(file, map_location="cpu", weights_only=True)
        return {key: tuple(value.shape) for key, value in state.items()}
    check_adapter_files(adapter)  # raises: no weights
    return {}


def load_adapter(model: Any, adapter: str | os.PathLike, *, merge: bool = True) -> Any:
    """Apply a LoRA adapter with PEFT, turning "does not fit this model" into a ``ConfigError`` that says why.

    PEFT raises on shape mismatches but only warns about adapter weights it found no module for; both mean the
    adapter belongs to another model, so both are errors here. The adapter is merged into the weights by default
    (plain matmuls at generation time: faster, same answers up to rounding).
    """
    from peft import PeftModel, get_peft_model_state_dict

    adapter = Path(adapter)
    shapes = _adapter_tensor_shapes(adapter)
    try:
        with _quiet_loggers("peft"):
            peft_model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as err:
        first = "; ".join(line.strip() for line in str(err).splitlines()[:3] if line.strip())
        raise ConfigError(f"adapter {adapter} does not fit the base model: {first}") from None
    loaded = get_peft_model_state_dict(peft_model)
    unmatched_weights(adapter, set(shapes) - set(loaded))
    return peft_model.merge_and_unload() if merge else peft_model


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
