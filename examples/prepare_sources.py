#!/usr/bin/env python
"""Bring a rejection source into LLaVA format with image paths relative to the shared image folder.

LLaMA-Factory resolves every image of a dataset against one ``media_dir`` (``data/images`` in the configs),
while LLaVA-Med and VLGuard name their images relative to their own folders. This script rewrites the image
paths with a prefix (``llava_med/``, ``vlguard/``); VLGuard is handed to ``rejection-align convert --from vlguard``,
which supersedes this script for it (docs/data.md):

    python examples/prepare_sources.py llava-med IN.json OUT.json [--prefix llava_med/]
    python examples/prepare_sources.py vlguard train.json OUT.json [--prefix vlguard/] [--keep safe|all]

VLGuard (``[{"id", "image", "safe", "instr-resp": [{"safe_instruction"|"unsafe_instruction"|"instruction",
"response"}]}]``): ``--keep safe`` (default) keeps only the safe instructions on safe images, i.e. benign
questions, which is what a rejection source should be (``--pairs safe-safe``); ``--keep all`` keeps every pair.
The output is sharegpt (ids ``<id>-<k>``, ``image`` a list), which ``rejection-align mix`` reads as it reads LLaVA.
"""

import argparse
import json
import sys
from pathlib import Path


def _prefixed(image: str, prefix: str) -> str:
    return image if not prefix or image.startswith(prefix) else prefix + image.lstrip("/")


def llava_med(records: list, prefix: str) -> list:
    out = []
    for record in records:
        record = dict(record)
        if "conversatons" in record and "conversations" not in record:  # a misspelling in some LLaVA-Med files
            record["conversations"] = record.pop("conversatons")
        if record.get("image"):
            record["image"] = _prefixed(record["image"], prefix)
        out.append(record)
    return out


def vlguard(source: Path, output: Path, prefix: str, keep: str) -> int:
    """Superseded by ``rejection-align convert --from vlguard`` (it validates every record and writes a manifest):
    this calls it with ``--turns one`` and ``--pairs safe-safe`` (``--keep safe``) or ``all`` (``--keep all``)."""
    from rejection_align.cli import main as rejection_align

    pairs = "safe-safe" if keep == "safe" else "all"
    print(
        f"note: prepare_sources.py vlguard is superseded by: rejection-align convert {source} --from vlguard "
        f"--turns one --pairs {pairs} --image-prefix {prefix} --output {output.parent} --name {output.stem}",
        file=sys.stderr,
    )
    return rejection_align(
        ["convert", str(source), "--from", "vlguard", "--turns", "one", "--pairs", pairs, "--image-prefix", prefix,
         "--output", str(output.parent), "--name", output.stem, "--no-register"]
    )  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", choices=["llava-med", "vlguard"])
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--prefix", help="image path prefix (default: llava_med/ or vlguard/)")
    parser.add_argument("--keep", choices=["safe", "all"], default="safe", help="VLGuard: which pairs to keep")
    args = parser.parse_args(argv)
    prefix = (
        args.prefix if args.prefix is not None else {"llava-med": "llava_med/", "vlguard": "vlguard/"}[args.source]
    )
    if args.source == "vlguard":
        return vlguard(args.input, args.output, prefix, args.keep)
    try:
        records = json.loads(args.input.read_text(encoding="utf-8"))
    except OSError as err:  # a missing or unreadable input: one line, not a traceback
        print(f"error: {args.input}: {err.strerror or err}", file=sys.stderr)
        return 2
    except ValueError as err:  # not JSON, or not UTF-8
        print(f"error: {args.input}: not a JSON file ({err})", file=sys.stderr)
        return 2
    out = llava_med(records, prefix)
    if not out:
        print(f"error: no records kept from {args.input}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {len(out)} LLaVA-format records to {args.output} (image prefix {prefix!r})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
