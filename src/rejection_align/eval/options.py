"""A command's options declared once, as a dataclass: argparse flags, defaults and help all derive from it.

In the spirit of ``transformers.HfArgumentParser`` / TRL's ``TrlParser``, but small: each field is made with
``option(help=..., ...)``, ``add_arguments(parser, cls)`` declares the flags (``--batch-size`` for ``batch_size``;
the type, ``nargs`` and ``store_true`` from the annotation), and ``from_args(cls, namespace)`` builds the instance.
``metadata(cls, name)`` reads a field's extra keys (``generate`` marks the settings it records with
``recorded=True``). Kept to this interface so that it can merge with a project-wide helper.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar


T = TypeVar("T")
_ARGPARSE_KEYS = ("choices", "metavar", "required")


def option(
    help: str,
    *,
    default: Any = None,
    default_factory: Any = dataclasses.MISSING,
    positional: bool = False,
    flags: tuple[str, ...] = (),
    choices: Any = None,
    metavar: str | None = None,
    required: bool = False,
    **extra: Any,
) -> Any:
    """A dataclass field that is also a command-line option; ``extra`` keys are kept for ``metadata``."""
    meta = {
        "help": help,
        "positional": positional,
        "flags": flags,
        "choices": choices,
        "metavar": metavar,
        "required": required,
        **extra,
    }
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(element type, is a list) of ``int | None``, ``list[str] | None``, ``bool``, ..."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        annotation = args[0]
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One argparse option per field of the dataclass ``cls``, in declaration order."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if "help" not in meta:
            continue
        kind, many = _base_type(hints[field.name])
        kwargs: dict[str, Any] = {"help": meta["help"]}
        kwargs.update({key: meta[key] for key in _ARGPARSE_KEYS if meta.get(key)})
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if kind is bool and not many:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = kind
            if many:
                kwargs["nargs"] = "+"
        if meta["positional"]:
            kwargs.pop("required", None)
            kwargs["nargs"] = "?"
            parser.add_argument(field.name, default=default, **kwargs)
        else:
            names = meta["flags"] or ("--" + field.name.replace("_", "-"),)
            parser.add_argument(*names, dest=field.name, default=default, **kwargs)


def from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The dataclass ``cls`` from a parsed namespace (fields absent from it keep their defaults)."""
    names = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{name: value for name, value in vars(args).items() if name in names})


def metadata(cls: type, name: str) -> typing.Mapping[str, Any]:
    """The metadata of field ``name`` of ``cls`` (the keys given to ``option``)."""
    return next(field.metadata for field in dataclasses.fields(cls) if field.name == name)
