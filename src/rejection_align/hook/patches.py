"""Patches LLaMA-Factory 0.9.5 so that ``llamafactory-cli train`` reads the ``rejection_*`` keys and uses our processors.

Two module attributes are replaced (DESIGN.md §6), each reversibly and at most once:

- ``llamafactory.hparams.parser._parse_train_args`` (and the MCA variant): take the ``rejection_*`` keys out
  of the YAML dict or argv list, let LLaMA-Factory parse the rest, and attach the settings to ``data_args`` —
  so they travel, pickled with the processor, to preprocessing workers and into the ``datasets`` cache key;
- ``llamafactory.data.loader.SupervisedDatasetProcessor`` / ``PackedSupervisedDatasetProcessor`` (looked up by
  name when a dataset is prepared) and ``_get_preprocessed_dataset`` (to log and drop our counters column).

The parsers of the commands that tokenize no training data (``_parse_infer_args`` for export/chat/webchat/api,
``_parse_eval_args``) take the keys out and ignore them with one log line; the v1 parser (``USE_V1=1``) refuses them.

The start-up hook (``_startup.py``) calls :func:`on_module_loaded` when those modules are imported, in every
interpreter including torchrun workers; Python users may call :func:`install` themselves.
"""

import argparse
import functools
import importlib
import logging
import os
import sys
from typing import Any

from ..errors import ConfigError
from . import compat


logger = logging.getLogger(__name__)

PARSER_MODULE = "llamafactory.hparams.parser"
LOADER_MODULE = "llamafactory.data.loader"
_PARSER_ATTRS = ("_parse_train_args", "_parse_train_mca_args", "_parse_train_mbridge_args")
# parsers of commands that never tokenize training data -> the public function that calls them
_IGNORING_PARSER_ATTRS = {"_parse_infer_args": "get_infer_args", "_parse_eval_args": "get_eval_args"}
V1_PARSER_MODULE = "llamafactory.v1.config.arg_parser"
V1_UNSUPPORTED = (
    "rejection-align: the rejection_* keys are not supported on LLaMA-Factory's v1 path (USE_V1=1) yet; "
    "unset USE_V1 or remove the keys"
)
_LAUNCHER_NAMES = ("llamafactory-cli", "lmf", "llamafactory.cli")
_MARK = "__rejection_align__"

# (module name, attribute) -> original object, for uninstall()
_ORIGINALS: dict[tuple[str, str], Any] = {}
_FAILURES: dict[str, str] = {}
_PENDING: set[str] = set()  # modules to patch once rejection_align.processor has finished loading
_LOGGED: set[str] = set()  # one-per-process log lines already written


def _llamafactory_version() -> str | None:
    return compat.llamafactory_version()


def _unsupported_reason(*groups: compat.Group) -> str | None:
    """What keeps the hook from working with the installed LLaMA-Factory (its internals, not its version number)."""
    return compat.problem(*groups)


def _replace(module: Any, attribute: str, new: Any) -> None:
    key = (module.__name__, attribute)
    current = getattr(module, attribute)
    if getattr(current, _MARK, False) or current is new:
        return

    _ORIGINALS.setdefault(key, current)
    setattr(module, attribute, new)


# ----------------------------------------------------------------------------------------------- argument parsing


def _attach_settings(parsed: tuple, settings: Any) -> tuple:
    from .processor import SETTINGS_ATTR

    for item in parsed:
        if type(item).__name__ == "DataArguments":
            setattr(item, SETTINGS_ATTR, settings)
            return parsed

    raise RuntimeError("rejection-align: LLaMA-Factory's parsed arguments hold no DataArguments")


def _wrap_parse_train_args(original: Any) -> Any:
    @functools.wraps(original)
    def parse_train_args(args: dict[str, Any] | list[str] | None = None) -> tuple:
        from .settings import split_settings

        args = sys.modules[PARSER_MODULE].read_args(args)
        settings, rest = split_settings(args)  # a copy: the caller may parse the same dict again
        if settings is not None and settings.mask_eos:
            problem = _unsupported_reason() or _FAILURES.get(LOADER_MODULE)
            if problem is None and not _is_patched(LOADER_MODULE):
                importlib.import_module(LOADER_MODULE)  # patched on import
                problem = _FAILURES.get(LOADER_MODULE)
            if problem is not None:
                raise ConfigError(f"rejection_mask_eos is set but the rejection-align hook cannot work: {problem}")

        parsed = original(rest)
        if settings is None:
            return parsed

        _show_logs_like_llamafactory()
        rank = os.environ.get("RANK", "0")
        logger.info(
            f"rejection-align: rejection_mask_eos={settings.mask_eos} mode={settings.mask_mode} match={settings.match} "
            f"sentences={len(settings.sentences)} (process rank {rank}, pid {os.getpid()})"
        )
        return _attach_settings(parsed, settings)

    setattr(parse_train_args, _MARK, True)
    return parse_train_args


def _command_name(entry: str) -> str:
    """``llamafactory-cli export`` etc. from the interpreter's own argv (the launcher pops the command from sys.argv)."""
    argv = list(getattr(sys, "orig_argv", None) or sys.argv)
    for index, token in enumerate(argv[:-1]):
        if os.path.basename(token) in _LAUNCHER_NAMES:
            return f"llamafactory-cli {argv[index + 1]}"

    return f"LLaMA-Factory's {entry}"


# the dataclasses each non-training parser reads (LLaMA-Factory's own lists, looked up when parsing)
_ARGS_OF_ENTRY = {"get_infer_args": "_INFER_ARGS", "get_eval_args": "_EVAL_ARGS"}


def _training_only_keys(module: Any, entry: str) -> frozenset[str]:
    """Keys the training parser knows and ``entry``'s parser does not (``output_dir``, ``learning_rate`` ...).

    A training YAML given to ``export``/``chat``/... carries them; they are taken out like ours, while a key that
    neither parser knows (a typo) still reaches LLaMA-Factory's own check.
    """
    import dataclasses

    def names(classes: Any) -> set[str]:
        return {f.name for cls in classes or () if dataclasses.is_dataclass(cls) for f in dataclasses.fields(cls)}

    train, own = getattr(module, "_TRAIN_ARGS", None), getattr(module, _ARGS_OF_ENTRY.get(entry, ""), None)
    if not train or not own:
        return frozenset()

    return frozenset(names(train) - names(own))


def _wrap_parse_ignoring(original: Any, entry: str) -> Any:
    """For inference and evaluation: the keys mean nothing there, so they are validated, taken out and ignored.

    One training YAML then serves ``export``, ``chat``, ``webchat``, ``api`` and the evaluator as well.
    """

    @functools.wraps(original)
    def parse_ignoring(args: dict[str, Any] | list[str] | None = None) -> tuple:
        from .settings import rejection_keys, split_settings

        module = sys.modules[PARSER_MODULE]
        args = module.read_args(args)
        settings, rest = split_settings(args)  # a copy; bad values and misspelt keys are still errors
        ignored = rejection_keys(args) if settings is not None else []
        if isinstance(rest, dict):
            training_only = _training_only_keys(module, entry)
            trainer_keys = [key for key in rest if key in training_only]
            rest = {key: value for key, value in rest.items() if key not in training_only}
            ignored += trainer_keys

        if ignored and "ignored" not in _LOGGED:
            _LOGGED.add("ignored")
            _show_logs_like_llamafactory()
            logger.info(
                f"rejection-align: {_command_name(entry)} does not use {', '.join(ignored)} "
                "(they only concern training); taken out and ignored"
            )

        return original(rest)

    setattr(parse_ignoring, _MARK, True)
    return parse_ignoring


def patch_parser(module: Any) -> None:
    for attribute in _PARSER_ATTRS:
        if hasattr(module, attribute):
            _replace(module, attribute, _wrap_parse_train_args(getattr(module, attribute)))

    for attribute, entry in _IGNORING_PARSER_ATTRS.items():
        if hasattr(module, attribute):
            _replace(module, attribute, _wrap_parse_ignoring(getattr(module, attribute), entry))


def _v1_args_from_argv() -> Any:
    """What LLaMA-Factory's v1 ``get_args`` reads when given nothing: a YAML/JSON file plus overrides, or argv."""
    argv = sys.argv
    if len(argv) > 1 and argv[1].endswith((".yaml", ".yml", ".json")):
        import json
        from pathlib import Path

        from omegaconf import OmegaConf

        path = Path(argv[1]).absolute()
        if argv[1].endswith(".json"):
            config = OmegaConf.create(json.loads(path.read_text(encoding="utf-8")))
        else:
            config = OmegaConf.load(path)
        return OmegaConf.to_container(OmegaConf.merge(config, OmegaConf.from_cli(argv[2:])))

    return argv[1:]


def _wrap_v1_get_args(original: Any) -> Any:
    """The v1 trainers have no hook for our processor yet: refuse the keys instead of training without the method."""

    @functools.wraps(original)
    def get_args(args: Any = None, *more: Any, **kwargs: Any) -> Any:
        from .settings import rejection_keys

        try:
            found = rejection_keys(_v1_args_from_argv() if args is None else args)
        except Exception:  # an unreadable config: LLaMA-Factory's own parser reports it
            found = []
        if found:
            raise ConfigError(f"{V1_UNSUPPORTED} (found: {', '.join(found)})")

        return original(args, *more, **kwargs)

    setattr(get_args, _MARK, True)
    return get_args


def patch_v1_parser(module: Any) -> None:
    if hasattr(module, "get_args"):
        _replace(module, "get_args", _wrap_v1_get_args(module.get_args))


# ------------------------------------------------------------------------------------------------- dataset loader


def _log_counts(dataset: Any, data_args: Any, is_eval: bool, should_log: bool) -> Any:
    """Sum the per-row counters into one log line and drop our columns before anything else sees them.

    A streamed dataset (``IterableDataset``) does not know its columns after ``map`` (``column_names`` is None):
    our columns are removed from it whenever the method is on; the removal is lazy and skips absent columns.
    """
    from .processor import OUR_COLUMNS, STATS_COLUMN, STATS_FIELDS, settings_of

    settings = settings_of(data_args)
    columns = getattr(dataset, "column_names", None)
    if columns is None or not hasattr(dataset, "__len__"):  # streamed
        if settings is None and not (columns and STATS_COLUMN in columns):
            return dataset

        if should_log:
            split = "eval" if is_eval else "train"
            logger.info(f"rejection-align [{split}]: streaming dataset, counts are not available")
        return dataset.remove_columns(list(OUR_COLUMNS))

    ours = [column for column in OUR_COLUMNS if column in columns]
    if STATS_COLUMN not in ours or not should_log:
        return dataset.remove_columns(ours) if ours else dataset

    names = ", ".join(data_args.eval_dataset if is_eval and data_args.eval_dataset else data_args.dataset or [])
    split = "eval" if is_eval else "train"
    import pyarrow.compute as pc

    flat = pc.list_flatten(dataset.with_format("arrow")[STATS_COLUMN]).to_numpy()
    totals = dict(zip(STATS_FIELDS, flat.reshape(-1, len(STATS_FIELDS)).sum(axis=0).tolist()))
    action = "dropped" if settings and settings.mask_mode == "drop" else "masked"
    logger.info(
        f"rejection-align [{split}: {names}]: {totals['rejection_examples']} of {totals['examples']} examples "
        f"have a rejection answer ({totals['rejection_turns']} of {totals['turns']} turns); closing token(s) "
        f"{action} in {totals['closed_turns']} turns ({totals['tokens_changed']} tokens), "
        f"{totals['truncated_turns']} truncated by cutoff_len left untouched, {totals['merged_turns']} whose "
        "answer merged with the template's closing text (only purely closing tokens untrained)"
    )
    return dataset.remove_columns(ours)


def _wrap_get_preprocessed_dataset(original: Any) -> Any:
    @functools.wraps(original)
    def get_preprocessed_dataset(dataset, data_args, training_args, stage, *args, **kwargs):
        from .processor import settings_of

        if settings_of(data_args) is not None and stage != "sft":
            logger.warning(f"rejection-align: rejection_mask_eos has no effect for stage '{stage}' (sft only)")

        result = original(dataset, data_args, training_args, stage, *args, **kwargs)
        if result is None:
            return result

        # the rest of the signature is (template, tokenizer, processor, is_eval)
        is_eval = kwargs.get("is_eval", args[3] if len(args) > 3 else False)
        return _log_counts(result, data_args, is_eval, getattr(training_args, "should_log", True))

    setattr(get_preprocessed_dataset, _MARK, True)
    return get_preprocessed_dataset


def _patch_get_dataset(loader: Any) -> None:
    """Check and record the settings of a ``tokenized_path`` dataset (``saved.py``).

    ``get_dataset`` is imported by name into ``llamafactory.data`` and the training workflows, so every copy
    already made is replaced too; modules imported later copy the patched one from ``llamafactory.data``.
    """
    from .saved import wrap_get_dataset

    current = loader.get_dataset
    if getattr(current, _MARK, False):
        return

    wrapped = wrap_get_dataset(current)
    for name, module in list(sys.modules.items()):
        ours = name == "llamafactory" or name.startswith("llamafactory.")
        if ours and getattr(module, "get_dataset", None) is current:
            _replace(module, "get_dataset", wrapped)


def _show_logs_like_llamafactory() -> None:
    """Our INFO lines go where LLaMA-Factory's go, unless the application configured logging itself."""
    if logger.handlers or logging.getLogger().handlers:
        return

    try:
        from llamafactory.extras import logging as lf_logging

        lf_logging._configure_library_root_logger()
        if lf_logging._default_handler is not None:
            logger.addHandler(lf_logging._default_handler)
            logger.setLevel(logging.INFO)
    except Exception:
        pass


def patch_loader(module: Any) -> None:
    reason = _unsupported_reason("loader")
    if reason is not None:
        _FAILURES[LOADER_MODULE] = reason
        return

    processor_module = sys.modules.get(f"{__package__}.processor")
    if processor_module is not None and not hasattr(processor_module, "RejectionPackedSupervisedDatasetProcessor"):
        # rejection_align.processor is being imported and is what imported LLaMA-Factory's loader (through
        # llamafactory.data); its classes do not exist yet, so it finishes this patch when it is done
        _PENDING.add(LOADER_MODULE)
        return

    from .processor import RejectionPackedSupervisedDatasetProcessor, RejectionSupervisedDatasetProcessor

    _replace(module, "SupervisedDatasetProcessor", RejectionSupervisedDatasetProcessor)
    _replace(module, "PackedSupervisedDatasetProcessor", RejectionPackedSupervisedDatasetProcessor)
    _replace(module, "_get_preprocessed_dataset", _wrap_get_preprocessed_dataset(module._get_preprocessed_dataset))
    _patch_get_dataset(module)
    _FAILURES.pop(LOADER_MODULE, None)
    _show_logs_like_llamafactory()


def patch_pending() -> None:
    """Finish a loader patch deferred while ``rejection_align.processor`` was loading."""
    if LOADER_MODULE in _PENDING and LOADER_MODULE in sys.modules:
        _PENDING.discard(LOADER_MODULE)
        on_module_loaded(sys.modules[LOADER_MODULE])


# ------------------------------------------------------------------------------------------------------ public API


def on_module_loaded(module: Any) -> None:
    """Called by the start-up hook right after a target module has executed."""
    try:
        if module.__name__ == PARSER_MODULE:
            patch_parser(module)
        elif module.__name__ == LOADER_MODULE:
            patch_loader(module)
        elif module.__name__ == V1_PARSER_MODULE:
            patch_v1_parser(module)
    except Exception as err:
        record_failure(module.__name__, err)


def record_failure(module_name: str, err: BaseException) -> None:
    _FAILURES[module_name] = f"patching {module_name} failed: {type(err).__name__}: {err}"
    logger.debug("rejection-align: %s", _FAILURES[module_name], exc_info=err)


def install() -> None:
    """Patch LLaMA-Factory now (idempotent). Raises ``ConfigError`` when LLaMA-Factory is missing or its internals
    are not what the hook relies on."""
    if compat.llamafactory_version() is None:
        raise ConfigError("cannot install the rejection-align hook: llamafactory is not installed")

    patch_parser(importlib.import_module(PARSER_MODULE))
    patch_loader(importlib.import_module(LOADER_MODULE))
    reason = _unsupported_reason()
    if reason is not None:
        raise ConfigError(f"cannot install the rejection-align hook: {reason}")
    if LOADER_MODULE in _FAILURES:
        raise ConfigError(_FAILURES[LOADER_MODULE])


def uninstall() -> None:
    """Put back every attribute this module replaced (idempotent)."""
    for (module_name, attribute), original in list(_ORIGINALS.items()):
        module = sys.modules.get(module_name)
        if module is not None:
            setattr(module, attribute, original)
        del _ORIGINALS[(module_name, attribute)]


def _is_patched(module_name: str) -> bool:
    module = sys.modules.get(module_name)
    if module is None:
        return False

    attribute = "_parse_train_args" if module_name == PARSER_MODULE else "_get_preprocessed_dataset"
    return bool(getattr(getattr(module, attribute, None), _MARK, False))


def is_installed() -> bool:
    """True when both the argument parser and the dataset loader of LLaMA-Factory are patched in this process."""
    return _is_patched(PARSER_MODULE) and _is_patched(LOADER_MODULE)


def status() -> dict[str, Any]:
    """What is in place in this process, for bug reports and ``rejection-align hook``."""
    from .. import _startup

    # internals of modules not imported yet are not checked here (that would import LLaMA-Factory); --check imports them
    loaded = tuple(
        group for group, name in (("parser", PARSER_MODULE), ("loader", LOADER_MODULE)) if name in sys.modules
    )
    internals = compat.report(*loaded) if loaded else {}
    return {
        "llamafactory": _llamafactory_version(),
        "supported": all(value == "ok" for value in internals.values()) if internals else None,  # None: not checked
        "internals": internals,
        "startup_hook_active": any(type(f).__name__ == "_PatchOnImport" for f in sys.meta_path),
        "disabled_by_env": _startup.is_disabled(),
        "parser_patched": _is_patched(PARSER_MODULE),
        "loader_patched": _is_patched(LOADER_MODULE),
        "failures": dict(_FAILURES),
    }


# ------------------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--check",
        action="store_true",
        help="import LLaMA-Factory's loader and parser and report whether they are patched",
    )


def run(args: argparse.Namespace) -> int:
    """Show whether the start-up hook is active (and, with --check, whether LLaMA-Factory gets patched)."""
    if args.check:
        for name in (PARSER_MODULE, LOADER_MODULE):
            try:
                importlib.import_module(name)
            except Exception as err:
                _FAILURES.setdefault(name, f"import failed: {type(err).__name__}: {err}")

    info = status()
    for key, value in info.items():
        if key == "internals":
            print(f"{key}:" + ("" if value else " not checked (LLaMA-Factory not imported; use --check)"))
            for name, state in value.items():
                print(f"  {name}: {state}")
        else:
            print(f"{key}: {value}")

    working = info["parser_patched"] and info["loader_patched"] and info["supported"]
    return 0 if not args.check or working else 1
