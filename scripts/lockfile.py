"""The committed locks of the test environments (scripts/locks/*.txt): write one, adapt it, compare it.

Standard library only, run by the set-up scripts with whatever Python is at hand. A lock is a pip constraints file in
`pip freeze` form (`name==version` lines) with `#` header lines that say where and how it was resolved.

    lockfile.py write REPORT LOCK --leg NAME --spec TEXT [--extras E] [--exclude NAME ...]
                                                   pip's --report JSON (a dry-run resolution) -> a lock file
    lockfile.py constraints LOCK [--without-torch] the lock as constraints for this machine, on stdout: on another
                                                   platform (or when asked) the torch family is left out
    lockfile.py extras LOCK                        what this interpreter has installed beyond the lock and nothing
                                                   else needs (run it with the environment's own python)
    lockfile.py check LOCK                         installed versions that differ from the lock (exit 1 if any)
    lockfile.py diff OLD NEW                       what changed between two locks, one package a line
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import sys
from pathlib import Path


# Versions chosen by the torch build itself (its CUDA libraries, its compiler): pinned for the platform that made the
# lock only. Elsewhere the set-up scripts install the torch pair of that platform and let these follow.
TORCH_FAMILY = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*|pytorch-triton.*)$")
# Never pinned: the installer's own tools, and what a leg installs from a folder (the project, LLaMA-Factory main).
TOOLS = {"pip", "setuptools", "wheel", "distribute"}


def canonical(name: str) -> str:
    """PEP 503 normalised name: pip freeze, reports and constraints spell names differently."""
    return re.sub(r"[-_.]+", "-", name).lower()


def this_platform() -> str:
    major, minor, _ = platform.python_version_tuple()
    return f"{platform.system()} {platform.machine()}, python {major}.{minor}"


def read_pins(text: str) -> dict[str, str]:
    """``name==version`` lines (comments, blanks and anything else skipped) -> {canonical name: version}."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and " @ " not in line:
            name, version = line.split("==", 1)
            pins[canonical(name.split("[", 1)[0].strip())] = version.strip()
    return pins


def lock_platform(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith("# platform: "):
            return line.removeprefix("# platform: ").strip()
    return None


def cmd_write(args: argparse.Namespace) -> int:
    report = json.loads(Path(args.report).read_text())
    exclude = {canonical(n) for n in args.exclude} | TOOLS
    pins = {}
    for item in report["install"]:
        meta = item["metadata"]
        name = canonical(meta["name"])
        if name in exclude or item.get("is_direct") and item.get("download_info", {}).get("dir_info") is not None:
            continue  # rejection-align itself and LLaMA-Factory main: installed from a folder, never pinned
        pins[name] = meta["version"]
    header = [
        f"# Test environment lock, leg {args.leg}: the full resolved set (pip freeze form), a pip constraints file.",
        "# Written by scripts/lock.sh; do not edit by hand. Installed with `pip install -c <this file> ...`.",
        f"# resolved: {args.spec}",
        f"# extras: {args.extras}",
        f"# platform: {this_platform()}",
        f"# date: {datetime.date.today().isoformat()}",
    ]
    lines = [f"{name}=={pins[name]}" for name in sorted(pins)]
    Path(args.lock).write_text("\n".join(header + lines) + "\n")
    return 0


def cmd_constraints(args: argparse.Namespace) -> int:
    text = Path(args.lock).read_text()
    made_on = lock_platform(text)
    same = made_on is None or made_on == this_platform()
    for line in text.splitlines():
        pin = read_pins(line)
        if pin and (args.without_torch or not same) and TORCH_FAMILY.match(next(iter(pin))):
            continue
        print(line)
    if args.without_torch:
        print("# (torch family left out: the torch build is another package's choice)")
    elif not same:
        print(f"# ({made_on} lock used on {this_platform()}: torch family left to this platform's torch pair)")
    return 0


EXTRA_MARKER = re.compile(r"""\bextra\s*==""")


def installed() -> dict[str, tuple[str, list[str], bool]]:
    """This interpreter's distributions: {name: (version, names it requires, installed from a folder)}."""
    from importlib import metadata

    dists = {}
    for dist in metadata.distributions():
        name = canonical(dist.metadata["Name"])
        # requirement names only; other markers ignored on purpose (something that may be needed is kept), but not
        # what only an extra asks for: the extras a leg wants are in its lock, and another leg's (lmms-eval and its
        # wandb in a copy of .venv) must go, or they break what imports them when present (trl imports wandb)
        requires = [
            canonical(m.group(0))
            for r in dist.requires or []
            if not EXTRA_MARKER.search(r) and (m := re.match(r"[A-Za-z0-9][\w.-]*", r))
        ]
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
        dists[name] = (dist.version, requires, "dir_info" in direct)
    return dists


def cmd_extras(args: argparse.Namespace) -> int:
    """Packages to uninstall: not in the lock, not installed from a folder, and required by nothing that stays."""
    pins = read_pins(Path(args.lock).read_text())
    dists = installed()
    extra = {n for n, (_, _, local) in dists.items() if n not in pins and n not in TOOLS and not local}
    while True:  # what only a leaving package requires leaves too
        needed = {r for n, (_, requires, _) in dists.items() if n not in extra for r in requires}
        if not extra & needed:
            break
        extra -= needed
    print("\n".join(sorted(extra)))
    return 0


def same_version(a: str, b: str) -> bool:
    """``0.18`` is ``0.18.0`` (PEP 440 pads releases with zeros); anything else compares as written."""

    def release(v: str) -> tuple[int, ...] | str:
        if not re.fullmatch(r"\d+(\.\d+)*", v):
            return v.lower()
        parts = [int(p) for p in v.split(".")]
        while len(parts) > 1 and parts[-1] == 0:
            parts.pop()
        return tuple(parts)

    return release(a) == release(b)


def cmd_check(args: argparse.Namespace) -> int:
    text = Path(args.lock).read_text()
    pins = read_pins(text)
    same = lock_platform(text) in (None, this_platform())
    bad = [
        f"{name} {version} (lock: {pins[name]})"
        for name, (version, _, local) in sorted(installed().items())
        if name in pins
        and not local
        and not same_version(version, pins[name])
        and (same or not TORCH_FAMILY.match(name))
    ]
    if bad:
        print(f"installed versions differ from {args.lock}: " + ", ".join(bad), file=sys.stderr)
        return 1
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    old, new = read_pins(Path(args.old).read_text()), read_pins(Path(args.new).read_text())
    changed = [f"  {n}: {old[n]} -> {new[n]}" for n in sorted(old.keys() & new.keys()) if old[n] != new[n]]
    added = [f"  {n}: (not in {Path(args.old).name}) -> {new[n]}" for n in sorted(new.keys() - old.keys())]
    removed = [f"  {n}: {old[n]} -> (gone)" for n in sorted(old.keys() - new.keys())]
    lines = changed + added + removed
    print(f"{len(lines)} package(s) differ from {args.old}" + (":" if lines else ""))
    for line in lines:
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    write = sub.add_parser("write")
    write.add_argument("report")
    write.add_argument("lock")
    write.add_argument("--leg", required=True)
    write.add_argument("--spec", required=True)
    write.add_argument("--extras", default="test", help="rejection-align's extras in the resolution")
    write.add_argument("--exclude", nargs="*", default=[])
    write.set_defaults(run=cmd_write)
    for name, run in (("constraints", cmd_constraints), ("extras", cmd_extras), ("check", cmd_check)):
        one = sub.add_parser(name)
        one.add_argument("lock")
        one.set_defaults(run=run)
        if name == "constraints":
            one.add_argument("--without-torch", action="store_true", help="leave the torch family out (vLLM's)")
    diff = sub.add_parser("diff")
    diff.add_argument("old")
    diff.add_argument("new")
    diff.set_defaults(run=cmd_diff)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
