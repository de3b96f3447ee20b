"""The ``rejection-align`` command: one sub-command per module, each with ``add_arguments`` and ``run``.

Sub-command modules keep heavy imports (torch, transformers, llamafactory) inside their functions, so
``rejection-align mix`` starts in a fraction of a second.
"""

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import RejectionAlignError


# name -> module holding add_arguments(parser) and run(args) -> int
COMMANDS: dict[str, str] = {
    "mix": "rejection_align.data.mix",
    "convert": "rejection_align.data.convert",
    "register": "rejection_align.data.registry",
    "stats": "rejection_align.data.stats",
    "generate": "rejection_align.eval.generate",
    "report": "rejection_align.eval.tradeoff",
    "judge": "rejection_align.eval.judge",
    "tiny-model": "rejection_align.demo.tiny",
    "demo": "rejection_align.demo.pipeline",
    "hook": "rejection_align.hook.command",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``only``, just that sub-command (the others' modules are then not imported)."""
    parser = argparse.ArgumentParser(
        prog="rejection-align",
        description="Safety alignment of multi-modal LLMs with benign rejection data, for LLaMA-Factory.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            continue
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip().splitlines()
        summary = doc[0] if doc else name
        sub = subparsers.add_parser(name, help=summary, description=(module.__doc__ or summary).strip())
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)

    return parser


def _command_of(argv: list[str]) -> str | None:
    """The sub-command named by ``argv`` when only global flags come before it (then only its module is imported:
    ``mix`` starts without the evaluation modules); None for ``--help`` and anything unusual."""
    for arg in argv:
        if arg in ("-v", "--verbose"):
            continue
        return arg if arg in COMMANDS else None
    return None


class _OursOrWarnings(logging.Filter):
    """Quiet by default: our own INFO lines, and only warnings and errors of the libraries (``-v`` shows all).

    Libraries log INFO lines at import (numexpr's thread count, LLaMA-Factory's set-up) that say nothing about the
    command's result; the demo keeps them in its log file, ``generate`` and ``judge`` drop them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.partition(".")[0] == "rejection_align"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(only=_command_of(argv))
    args = parser.parse_args(argv)
    root = logging.getLogger()
    before = list(root.handlers)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not args.verbose:
        for handler in root.handlers:
            if handler not in before:  # the terminal handler made here, not a caller's (a test's capture)
                handler.addFilter(_OursOrWarnings())
    try:
        return int(args._run(args) or 0)
    except RejectionAlignError as err:
        print(f"rejection-align {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"rejection-align {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # output piped into `head` and the like: stop quietly, as cat does
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as err:  # an unreadable input or an unwritable output: the user's to fix, like bad data
        if args.verbose:
            raise
        # name the file: "[Errno 28] No space left on device" alone does not say where
        where = f"{err.filename}: " if err.filename is not None else ""
        also = f" -> {err.filename2}" if getattr(err, "filename2", None) is not None else ""
        print(f"rejection-align {args.command}: error: {where}{err.strerror or err}{also}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
