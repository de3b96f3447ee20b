"""A command's options declared once, as the fields of a dataclass: flags, defaults, help and the manifest's record.

In the spirit of ``transformers.HfArgumentParser`` and TRL's ``TrlParser``: one frozen dataclass per command is the
Python API (``mix(MixOptions(...))``), the command line (:func:`add_arguments`, :func:`from_args`) and what a
manifest records (:func:`record`). What HfArgumentParser lacks and our commands need is said in each field's
metadata, made by :func:`option`: flag names other than the field's, argument groups and mutually exclusive groups,
metavars, ``nargs`` lists, and whether (or when) the manifest records the field. Example::

    @dataclass(frozen=True)
    class GreetOptions:
        names: tuple[str, ...] = field(default=("world",), metadata=option("--name", nargs="+", help="who"))
        loud: bool = field(default=False, metadata=option(help="shout"))  # flag --loud, store_true

    add_arguments(parser, GreetOptions)
    options = from_args(GreetOptions, parser.parse_args())

Rules: a field without :func:`option` metadata is not on the command line; a field without a default is a required
flag (or a positional, when its flag has no leading dash; ``nargs="?"`` or ``"*"`` lets a positional be absent,
then it takes the field's default); a ``bool`` field defaulting to ``False`` is a ``store_true`` switch; a field whose ``nargs`` makes a list
(``"+"``, ``"*"``, a number) collects into a tuple, and when the flag is absent takes the field's default (argparse
would otherwise extend the default list). What a command records (a manifest's ``options``, ``generate``'s settings
file) is the fields :func:`recorded` names, in field order.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from pathlib import PurePath
from typing import Any, Literal


_KEY = "rejection_align.option"


@dataclasses.dataclass(frozen=True)
class Option:
    """How one dataclass field appears on the command line and in a manifest (see :func:`option`)."""

    flags: tuple[str, ...]
    help: str | None
    metavar: str | tuple[str, ...] | None
    nargs: str | int | None
    choices: tuple[Any, ...] | None
    type: Callable[[str], Any] | None
    group: str | None
    exclusive: str | None
    record: bool | Literal["if_set"]


def option(
    *flags: str,
    help: str | None = None,
    metavar: str | tuple[str, ...] | None = None,
    nargs: str | int | None = None,
    choices: tuple[Any, ...] | list[Any] | None = None,
    type: Callable[[str], Any] | None = None,
    group: str | None = None,
    exclusive: str | None = None,
    record: bool | Literal["if_set"] = True,
) -> dict[str, Option]:
    """Field metadata: ``field(default=..., metadata=option("--flag", help=...))``.

    ``flags``: the names on the command line (default ``--field-name``; no leading dash: a positional). ``group``:
    the argument group's title in ``--help``; ``exclusive``: fields with the same name (in one group) exclude each
    other. ``record``: the manifest records the field always (True), never (False) or only when it differs from its
    default (``"if_set"``: an option added later leaves the manifests of existing option sets byte-identical).
    """
    return {
        _KEY: Option(
            flags, help, metavar, nargs, None if choices is None else tuple(choices), type, group, exclusive, record
        )
    }


def option_fields(cls: type) -> list[tuple[dataclasses.Field, Option]]:
    """The fields of ``cls`` that are options, with their :class:`Option`, in field order."""
    return [(f, f.metadata[_KEY]) for f in dataclasses.fields(cls) if _KEY in f.metadata]


def recorded(cls: type) -> list[str]:
    """The names of the fields a record may hold (``record`` True or ``"if_set"``), in field order."""
    return [f.name for f, opt in option_fields(cls) if opt.record is not False]


def _collects(opt: Option) -> bool:
    """Whether argparse gives a list for this option (``nargs="?"`` gives one value or the default)."""
    return opt.nargs is not None and opt.nargs != "?"


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one argument per field of ``cls`` that has :func:`option` metadata, in field order within each group."""
    groups: dict[str | None, Any] = {None: parser}
    exclusives: dict[tuple[str | None, str], Any] = {}
    for f, opt in option_fields(cls):
        if opt.group not in groups:
            groups[opt.group] = parser.add_argument_group(opt.group)
        target = groups[opt.group]
        if opt.exclusive is not None:
            key = (opt.group, opt.exclusive)
            if key not in exclusives:
                exclusives[key] = target.add_mutually_exclusive_group()
            target = exclusives[key]
        flags = opt.flags or ("--" + f.name.replace("_", "-"),)
        default = _default(f)
        kwargs: dict[str, Any] = {"help": opt.help}
        if opt.choices is not None:
            kwargs["choices"] = opt.choices
        if opt.metavar is not None:
            kwargs["metavar"] = opt.metavar
        if not flags[0].startswith("-"):  # a positional: argparse names it after its flag
            if opt.nargs is not None:  # "?" or "*": may be absent, then the field's default (see from_args)
                kwargs.update(nargs=opt.nargs, default=None if default is dataclasses.MISSING else default)
            target.add_argument(*flags, type=opt.type, **kwargs)
            continue
        kwargs["dest"] = f.name
        if opt.type is None and default is False:
            target.add_argument(*flags, action="store_true", **kwargs)
            continue
        if _collects(opt):  # a list, a repeated "+"/"*" flag adds to it; absent: the field default (see from_args)
            action = "extend" if opt.nargs in ("+", "*") else "store"  # a fixed count stays that count
            kwargs.update(nargs=opt.nargs, action=action, default=None)
        elif default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
        target.add_argument(*flags, type=opt.type, **kwargs)


def from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """The dataclass made from parsed arguments; ``overrides`` (fields without a flag, or computed) win."""
    values: dict[str, Any] = {}
    for f, opt in option_fields(cls):
        name = f.name if (opt.flags or ("-",))[0].startswith("-") else opt.flags[0]
        value = getattr(args, name)
        if _collects(opt):
            value = _default(f) if not value else tuple(value)
        values[f.name] = value
    values.update(overrides)
    return cls(**values)


def _builtin(value: Any) -> Any:
    """A value as a manifest holds it: paths absolute strings, tuples lists."""
    if isinstance(value, PurePath):
        return os.path.abspath(value)
    if isinstance(value, tuple):
        return [_builtin(item) for item in value]
    return value


def record(options: Any) -> dict[str, Any]:
    """The options a manifest records, in field order, as JSON-ready values (see ``record`` in :func:`option`)."""
    out: dict[str, Any] = {}
    for f, opt in option_fields(type(options)):
        value = getattr(options, f.name)
        if opt.record is False or (opt.record == "if_set" and value == _default(f)):
            continue
        out[f.name] = _builtin(value)
    return out
