"""The LLaMA-Factory internals the hook relies on, checked by shape rather than by version number.

LLaMA-Factory 0.9.4, 0.9.5 and ``main`` (0.9.6.dev0) differ in many places but not in the few names the hook
touches (docs/architecture.md, "Patch points"). Instead of accepting one release, the hook checks each of those names when it is about
to use them: the attribute exists, is the kind of object we expect, and its leading parameters are the ones we call
it with. A mismatch names the internal and the installed version. Nothing here runs at interpreter start-up; the
checks import only modules that LLaMA-Factory's own loader has already imported.
"""

import dataclasses
import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Literal

from .targets import LOADER_MODULE as LOADER
from .targets import PARSER_MODULE as PARSER
from .targets import SUPERVISED_MODULE as SUPERVISED
from .targets import TEMPLATE_MODULE as TEMPLATE


Group = Literal["parser", "loader"]
TESTED = ("0.9.4", "0.9.5", "0.9.6.dev0")  # LLaMA-Factory releases (and main) the test suite runs against


@dataclass(frozen=True)
class Internal:
    """One name the hook uses: ``module`` + dotted ``path``; ``params``: the leading parameter names it must take."""

    group: Group
    module: str
    path: str
    kind: Literal["function", "class", "field"] = "function"
    params: tuple[str, ...] = ()
    optional: bool = False  # checked only where it exists (``_parse_train_mbridge_args`` is new in main)

    @property
    def name(self) -> str:
        return f"{self.module}.{self.path}"


_PROCESSOR = ("self", "prompt", "response", "system", "tools", "images", "videos", "audios")
INTERNALS: tuple[Internal, ...] = (
    Internal("parser", PARSER, "read_args", params=("args",)),
    Internal("parser", PARSER, "_parse_train_args", params=("args",)),
    Internal("parser", PARSER, "_parse_train_mca_args", params=("args",)),
    Internal("parser", PARSER, "_parse_train_mbridge_args", params=("args",), optional=True),
    Internal("parser", "llamafactory.hparams", "DataArguments", kind="class"),
    Internal("loader", LOADER, "_get_dataset_processor",
             params=("data_args", "stage", "template", "tokenizer", "processor", "do_generate")),  # fmt: skip
    Internal("loader", SUPERVISED, "SupervisedDatasetProcessor", kind="class"),
    Internal("loader", SUPERVISED, "PackedSupervisedDatasetProcessor", kind="class"),
    Internal(
        "loader", LOADER, "_get_preprocessed_dataset",
        params=("dataset", "data_args", "training_args", "stage", "template", "tokenizer", "processor", "is_eval"),
    ),  # fmt: skip
    Internal("loader", SUPERVISED, "SupervisedDatasetProcessor._encode_data_example",
             params=_PROCESSOR),  # fmt: skip
    Internal("loader", SUPERVISED, "SupervisedDatasetProcessor.preprocess_dataset",
             params=("self", "examples")),  # fmt: skip
    Internal("loader", TEMPLATE, "Template.encode_multiturn",
             params=("self", "tokenizer", "messages", "system", "tools")),  # fmt: skip
    Internal("loader", TEMPLATE, "Template._convert_elements_to_ids",
             params=("self", "tokenizer", "elements")),  # fmt: skip
    Internal("loader", TEMPLATE, "Template.format_assistant", kind="field"),
    Internal("loader", TEMPLATE, "Template.efficient_eos", kind="field"),
    Internal("loader", TEMPLATE, "Template.mm_plugin", kind="field"),
    Internal("loader", "llamafactory.data.processor.processor_utils", "infer_seqlen",
             params=("source_len", "target_len", "cutoff_len")),  # fmt: skip
    Internal("loader", "llamafactory.data.mm_plugin", "BasePlugin.process_token_ids",
             params=("self", "input_ids", "labels", "images", "videos", "audios", "tokenizer", "processor")),
)  # fmt: skip


def llamafactory_version() -> str | None:
    """The installed distribution's version (``0.9.6.dev0`` for a clone of main), without importing it."""
    try:
        from importlib.metadata import version

        return version("llamafactory")
    except Exception:
        return None


def _resolve(internal: Internal) -> tuple[Any, str]:
    target: Any = importlib.import_module(internal.module)
    for part in internal.path.split(".")[:-1]:
        target = getattr(target, part)

    return target, internal.path.rsplit(".", 1)[-1]


def check(internal: Internal) -> str | None:
    """None when ``internal`` is what the hook expects; otherwise what is wrong with it."""
    try:
        owner, attribute = _resolve(internal)
    except Exception as err:
        return f"cannot import {internal.module}: {type(err).__name__}: {err}"

    if internal.kind == "field":
        fields = {field.name for field in dataclasses.fields(owner)} if dataclasses.is_dataclass(owner) else set()
        return None if attribute in fields else "is not a field"

    if not hasattr(owner, attribute):
        return "is missing"

    value = getattr(owner, attribute)
    if internal.kind == "class":
        return None if inspect.isclass(value) else f"is a {type(value).__name__}, expected a class"

    if not callable(value):
        return f"is a {type(value).__name__}, expected a function"

    try:
        found = tuple(inspect.signature(value).parameters)
    except (TypeError, ValueError) as err:
        return f"has no readable signature ({err})"

    if found[: len(internal.params)] != internal.params:
        return f"takes ({', '.join(found)}), expected ({', '.join(internal.params)}, ...)"

    return None


def report(*groups: Group) -> dict[str, str]:
    """``{internal name: "ok" | problem}`` for the given groups (all when none is given)."""
    out = {}
    for internal in INTERNALS:
        if groups and internal.group not in groups:
            continue

        problem = check(internal)
        if problem == "is missing" and internal.optional:
            continue

        out[internal.name] = problem or "ok"

    return out


def problem(*groups: Group) -> str | None:
    """One message naming every mismatched internal and the installed version, or None when all match."""
    found = llamafactory_version()
    if found is None:
        return "llamafactory is not installed"

    bad = [f"{name} {problem}" for name, problem in report(*groups).items() if problem != "ok"]
    if not bad:
        return None

    return (
        f"llamafactory {found} is installed, and the LLaMA-Factory internals rejection-align relies on differ: "
        f"{'; '.join(bad)} (known to work: {', '.join(TESTED)}{_outside_tested(found)})"
    )


def _outside_tested(found: str) -> str:
    """Whether ``found`` is older or newer than every release the hook was tested with (a hint, not a check)."""
    from packaging.version import InvalidVersion, Version

    try:
        version = Version(found)
    except InvalidVersion:
        return ""

    if version < Version(TESTED[0]):
        return f"; {found} is older than all of them"
    if version > Version(TESTED[-1]):
        return f"; {found} is newer than all of them"
    return ""
