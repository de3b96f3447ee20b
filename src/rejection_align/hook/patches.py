"""Patches LLaMA-Factory (0.9.4, 0.9.5 and main) so that ``llamafactory-cli train`` reads the ``rejection_*`` keys
and tokenizes with our processors. All patching is here: :func:`install` (idempotent), :func:`is_installed`,
:func:`uninstall`, and :func:`patch_module`, which the start-up hook calls as each target module is imported.

Module attributes replaced, each at most once and reversibly (why each is needed: docs/architecture.md):

- ``llamafactory.hparams.parser``: ``_parse_train_args`` and its MCA / Megatron-Bridge variants (where they
  exist) take the ``rejection_*`` keys out of the YAML dict or argv list, let LLaMA-Factory parse the rest, and
  :func:`~.settings.attach` the settings to ``data_args``; ``_parse_infer_args`` / ``_parse_eval_args`` (export,
  chat, webchat, api, the evaluator) take them out and ignore them with one log line;
- ``llamafactory.data.loader``: ``_get_dataset_processor`` swaps the supervised processor it chose for our
  subclass when the method is on (our processor module is imported then, on its first call);
  ``_get_preprocessed_dataset`` logs and drops our counter columns; ``get_dataset`` (and the copies imported by
  name into ``llamafactory.data`` and the workflows) checks and writes the ``tokenized_path`` record (``saved.py``);
- ``llamafactory.v1.config.arg_parser.get_args`` (``USE_V1=1``) refuses the keys: the v1 trainers have no hook yet.
"""

import functools
import importlib
import logging
import os
import sys
from typing import Any

from ..errors import ConfigError
from . import compat
from .counters import NO_COUNTS, OUR_COLUMNS, STATS_COLUMN, STATS_FIELDS, Counters, summary
from .saved import wrap_get_dataset
from .settings import attach, rejection_keys, settings_of, split_settings
from .targets import LOADER_MODULE, PARSER_MODULE, V1_PARSER_MODULE


logger = logging.getLogger(__name__)

_PARSER_ATTRS = ("_parse_train_args", "_parse_train_mca_args", "_parse_train_mbridge_args")
# parsers of commands that never tokenize training data -> the public function that calls them
_IGNORING_PARSER_ATTRS = {"_parse_infer_args": "get_infer_args", "_parse_eval_args": "get_eval_args"}
V1_UNSUPPORTED = (
    "rejection-align: the rejection_* keys are not supported on LLaMA-Factory's v1 path (USE_V1=1) yet; "
    "unset USE_V1 or remove the keys"
)
_LAUNCHER_NAMES = ("llamafactory-cli", "lmf", "llamafactory.cli")
_MARK = "__rejection_align__"  # set on every function we put in place: how is_installed() and _replace() know ours
# the attribute whose mark says that a module is patched
_MARKED_ATTRIBUTE = {PARSER_MODULE: "_parse_train_args", LOADER_MODULE: "_get_dataset_processor"}

# (module name, attribute) -> original object, for uninstall()
_ORIGINALS: dict[tuple[str, str], Any] = {}
_FAILURES: dict[str, str] = {}  # module name -> why it could not be patched (status, and the parser's refusal)
_LOGGED: set[str] = set()  # one-per-process log lines already written


def _replace(module: Any, attribute: str, wrap: Any) -> None:
    """``module.attribute = wrap(module.attribute)``, unless it is ours already; the original is kept for uninstall."""
    current = getattr(module, attribute)
    if getattr(current, _MARK, False):
        return

    new = wrap(current)
    setattr(new, _MARK, True)
    _ORIGINALS.setdefault((module.__name__, attribute), current)
    setattr(module, attribute, new)


# ----------------------------------------------------------------------------------------------- argument parsing


def _data_args(parsed: tuple) -> Any:
    """The ``DataArguments`` of a training parser's result: second in every one of LLaMA-Factory's train tuples."""
    from llamafactory.hparams import DataArguments

    if len(parsed) > 1 and isinstance(parsed[1], DataArguments):
        return parsed[1]

    found = ", ".join(type(item).__name__ for item in parsed)
    raise ConfigError(
        f"rejection-align: LLaMA-Factory's training parser returned ({found}), expected DataArguments 2nd"
    )


def _cannot_work() -> str | None:
    """Why the method cannot be applied in this process, if it cannot (checked only when a run asks for it)."""
    problem = compat.problem() or _FAILURES.get(LOADER_MODULE)
    if problem is None and not is_patched(LOADER_MODULE):
        patch_loader(importlib.import_module(LOADER_MODULE))  # idempotent: the start-up hook may patch it on import
        problem = _FAILURES.get(LOADER_MODULE)

    return problem


def _wrap_parse_train_args(original: Any) -> Any:
    @functools.wraps(original)
    def parse_train_args(args: dict[str, Any] | list[str] | None = None) -> tuple:
        args = sys.modules[PARSER_MODULE].read_args(args)
        settings, rest = split_settings(args)  # a copy: the caller may parse the same dict again
        if settings is not None and settings.mask_eos:
            problem = _cannot_work()
            if problem is not None:
                raise ConfigError(f"rejection_mask_eos is set but the rejection-align hook cannot work: {problem}")

        parsed = original(rest)
        if settings is None:
            return parsed

        attach(_data_args(parsed), settings)
        _show_logs_like_llamafactory()
        rank = os.environ.get("RANK", "0")
        logger.info(
            f"rejection-align: rejection_mask_eos={settings.mask_eos} mode={settings.mask_mode} match={settings.match} "
            f"sentences={len(settings.sentences)} (process rank {rank}, pid {os.getpid()})"
        )
        return parsed

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

    return parse_ignoring


def patch_parser(module: Any) -> None:
    for attribute in _PARSER_ATTRS:
        if hasattr(module, attribute):
            _replace(module, attribute, _wrap_parse_train_args)

    for attribute, entry in _IGNORING_PARSER_ATTRS.items():
        if hasattr(module, attribute):
            _replace(module, attribute, functools.partial(_wrap_parse_ignoring, entry=entry))


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
        try:
            found = rejection_keys(_v1_args_from_argv() if args is None else args)
        except Exception:  # an unreadable config: LLaMA-Factory's own parser reports it
            found = []
        if found:
            raise ConfigError(f"{V1_UNSUPPORTED} (found: {', '.join(found)})")

        return original(args, *more, **kwargs)

    return get_args


def patch_v1_parser(module: Any) -> None:
    if hasattr(module, "get_args"):
        _replace(module, "get_args", _wrap_v1_get_args)


# ------------------------------------------------------------------------------------------------- dataset loader


def _wrap_get_dataset_processor(original: Any) -> Any:
    """LLaMA-Factory picks the processor class (and applies its packing switches); with the method on and a
    supervised stage we hand back our subclass of what it picked, built from the same fields.

    Our processor module is imported on the first such call, not before: it imports LLaMA-Factory's data modules,
    which are certainly loaded by then, and a run with the method off never loads it.
    """

    @functools.wraps(original)
    def get_dataset_processor(data_args: Any, stage: str, *args: Any, **kwargs: Any) -> Any:
        chosen = original(data_args, stage, *args, **kwargs)
        if settings_of(data_args) is None:
            return chosen

        # the rest of the signature is (template, tokenizer, processor, do_generate)
        if stage != "sft":
            logger.warning(f"rejection-align: rejection_mask_eos has no effect for stage '{stage}' (sft only)")
            return chosen
        if kwargs.get("do_generate", args[3] if len(args) > 3 else False):
            return chosen  # evaluation with predict_with_generate: the unsupervised processor, as it should be

        from .processor import rejection_processor

        return rejection_processor(chosen)

    return get_dataset_processor


def _log_counts(dataset: Any, data_args: Any, is_eval: bool, should_log: bool) -> Any:
    """Sum the per-row counters into one log line and drop our columns before anything else sees them.

    A streamed dataset (``IterableDataset``) does not know its columns after ``map`` (``column_names`` is None):
    our columns are removed from it whenever the method is on; the removal is lazy and skips absent columns.
    """
    settings = settings_of(data_args)
    columns = getattr(dataset, "column_names", None)
    split = "eval" if is_eval else "train"
    if columns is None or not hasattr(dataset, "__len__"):  # streamed
        if settings is None and not (columns and STATS_COLUMN in columns):
            return dataset

        if should_log:
            logger.info(f"rejection-align [{split}]: streaming dataset, counts are not available")
        return dataset.remove_columns(list(OUR_COLUMNS))

    ours = [column for column in OUR_COLUMNS if column in columns]
    if STATS_COLUMN not in ours or not should_log:
        return dataset.remove_columns(ours) if ours else dataset

    import pyarrow.compute as pc

    flat = pc.list_flatten(dataset.with_format("arrow")[STATS_COLUMN]).to_numpy()
    totals = Counters(*flat.reshape(-1, len(STATS_FIELDS)).sum(axis=0).tolist()) if len(flat) else NO_COUNTS
    names = ", ".join(data_args.eval_dataset if is_eval and data_args.eval_dataset else data_args.dataset or [])
    logger.info(f"rejection-align [{split}: {names}]: {summary(totals, settings.mask_mode if settings else 'mask')}")
    return dataset.remove_columns(ours)


def _wrap_get_preprocessed_dataset(original: Any) -> Any:
    @functools.wraps(original)
    def get_preprocessed_dataset(dataset, data_args, training_args, stage, *args, **kwargs):
        result = original(dataset, data_args, training_args, stage, *args, **kwargs)
        if result is None:
            return result

        # the rest of the signature is (template, tokenizer, processor, is_eval)
        is_eval = kwargs.get("is_eval", args[3] if len(args) > 3 else False)
        return _log_counts(result, data_args, is_eval, getattr(training_args, "should_log", True))

    return get_preprocessed_dataset


def _patch_get_dataset(loader: Any) -> None:
    """Check and record the settings of a ``tokenized_path`` dataset (``saved.py``).

    ``get_dataset`` is imported by name into ``llamafactory.data`` and the training workflows, so every copy
    already made is replaced too; modules imported later copy the patched one from ``llamafactory.data``.
    """
    current = loader.get_dataset
    if getattr(current, _MARK, False):
        return

    _replace(loader, "get_dataset", wrap_get_dataset)
    wrapped = loader.get_dataset
    for name, module in list(sys.modules.items()):
        ours = name.startswith("llamafactory.") and module is not loader
        if ours and getattr(module, "get_dataset", None) is current:
            _replace(module, "get_dataset", lambda _original: wrapped)


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
    reason = compat.problem("loader")
    if reason is not None:
        _FAILURES[LOADER_MODULE] = reason
        return

    _replace(module, "_get_dataset_processor", _wrap_get_dataset_processor)
    _replace(module, "_get_preprocessed_dataset", _wrap_get_preprocessed_dataset)
    _patch_get_dataset(module)
    _FAILURES.pop(LOADER_MODULE, None)
    _show_logs_like_llamafactory()


# ------------------------------------------------------------------------------------------------------ public API

_PATCHERS = {PARSER_MODULE: patch_parser, LOADER_MODULE: patch_loader, V1_PARSER_MODULE: patch_v1_parser}


def patch_module(module: Any) -> None:
    """Patch one target module right after it executed (the start-up hook's call); failures are recorded."""
    try:
        patcher = _PATCHERS.get(module.__name__)
        if patcher is not None:
            patcher(module)
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
    reason = compat.problem()
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


def is_patched(module_name: str) -> bool:
    """Whether ``module_name`` (``PARSER_MODULE`` or ``LOADER_MODULE``) is imported and patched in this process."""
    module = sys.modules.get(module_name)
    return module is not None and bool(getattr(getattr(module, _MARKED_ATTRIBUTE[module_name], None), _MARK, False))


def is_installed() -> bool:
    """True when both the argument parser and the dataset loader of LLaMA-Factory are patched in this process."""
    return is_patched(PARSER_MODULE) and is_patched(LOADER_MODULE)


def failures() -> dict[str, str]:
    """Module name -> why it could not be patched (or imported), in this process."""
    return dict(_FAILURES)
