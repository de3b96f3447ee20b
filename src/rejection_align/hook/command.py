"""Shows whether the rejection-align hook is in place and fits the installed LLaMA-Factory (0.9.4, 0.9.5 or main).

The hook patches LLaMA-Factory's argument parser and dataset loader as they are imported (docs/architecture.md).
Without --check this reports what the current process has seen; with --check it imports both modules, so the
start-up hook patches them, and checks every LLaMA-Factory internal the hook relies on by its shape (names,
parameters, fields), whatever the version number says. Exit status 1 when --check finds the hook not working.
"""

import argparse
import importlib
import sys
from typing import Any

from .. import _startup
from . import compat, patches
from .targets import DISABLE_ENV, LOADER_MODULE, PARSER_MODULE


_GROUPS: dict[compat.Group, str] = {"parser": PARSER_MODULE, "loader": LOADER_MODULE}


def status(check: bool = False) -> dict[str, Any]:
    """What is in place in this process, for bug reports and ``rejection-align hook``.

    Internals of LLaMA-Factory modules not imported yet are checked only with ``check`` (which imports them: an
    import error is then reported, not raised).
    """
    import_errors = {}
    if check:
        for name in _GROUPS.values():
            try:
                importlib.import_module(name)
            except Exception as err:
                import_errors[name] = f"import failed: {type(err).__name__}: {err}"

    loaded = tuple(group for group, name in _GROUPS.items() if check or name in sys.modules)
    internals = compat.report(*loaded) if loaded else {}
    return {
        "llamafactory": compat.llamafactory_version(),
        "supported": all(value == "ok" for value in internals.values()) if internals else None,  # None: not checked
        "internals": internals,
        "startup_hook_active": _startup.is_active(),
        "disabled_by_env": _startup.is_disabled(),
        "parser_patched": patches.is_patched(PARSER_MODULE),
        "loader_patched": patches.is_patched(LOADER_MODULE),
        "failures": {**patches.failures(), **import_errors},
    }


def verdict(info: dict[str, Any]) -> str | None:
    """None when the hook works in this process; otherwise the first reason it does not."""
    if info["llamafactory"] is None:
        return "llamafactory is not installed"
    if info["failures"]:
        name, reason = next(iter(info["failures"].items()))
        return reason if name in reason else f"{name}: {reason}"
    bad = [f"{name} {state}" for name, state in info["internals"].items() if state != "ok"]
    if bad:
        return "; ".join(bad)
    if info["disabled_by_env"]:
        return f"{DISABLE_ENV} is set"
    if not info["startup_hook_active"]:
        return "the start-up hook is not active (rejection_align.pth is not in this environment's site-packages)"
    if not (info["parser_patched"] and info["loader_patched"]):
        return "LLaMA-Factory's parser or loader is not patched"
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--check",
        action="store_true",
        help="import LLaMA-Factory's parser and loader, check the internals the hook relies on, exit 1 if it fails",
    )


def run(args: argparse.Namespace) -> int:
    info = status(check=args.check)
    for key, value in info.items():
        if key == "internals":
            print(
                f"{key}:" + ("" if value else " not checked (LLaMA-Factory is not imported yet; --check imports it)")
            )
            for name, state in value.items():
                print(f"  {name}: {state}")
        else:
            print(f"{key}: {value}")

    if not args.check:
        return 0

    problem = verdict(info)
    print("result: the hook works" if problem is None else f"result: the hook cannot work: {problem}")
    return 0 if problem is None else 1
