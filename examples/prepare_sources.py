#!/usr/bin/env python
"""Bring a rejection source into LLaVA format with image paths relative to the shared image folder.

LLaMA-Factory resolves every image of a dataset against one ``media_dir`` (``data/images`` in the configs),
while LLaVA-Med and VLGuard name their images relative to their own folders. This script rewrites the image
paths with a prefix (``llava_med/``, ``vlguard/``) and, for VLGuard, converts its ``instr-resp`` format:

    python examples/prepare_sources.py llava-med IN.json OUT.json [--prefix llava_med/]
    python examples/prepare_sources.py vlguard train.json OUT.json [--prefix vlguard/] [--keep safe|all]

VLGuard (``[{"id", "image", "safe", "instr-resp": [{"safe_instruction"|"unsafe_instruction"|"instruction",
"response"}]}]``): ``--keep safe`` (default) keeps only the safe instructions on safe images, i.e. benign
questions, which is what a rejection source should be; ``--keep all`` keeps every pair.
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


def vlguard(records: list, prefix: str, keep: str) -> list:
    out = []
    for record in records:
        for index, pair in enumerate(record.get("instr-resp", [])):
            if "safe_instruction" in pair:
                question, benign = pair["safe_instruction"], True
            else:
                question = pair.get("unsafe_instruction", pair.get("instruction"))
                benign = False
            if question is None or (keep == "safe" and not (benign and record.get("safe", False))):
                continue
            out.append(
                {
                    "id": f"{record['id']}_{index}",
                    "image": _prefixed(record["image"], prefix),
                    "conversations": [
                        {"from": "human", "value": "<image>\n" + question.strip()},
                        {"from": "gpt", "value": pair["response"].strip()},
                    ],
                }
            )
    return out


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
    try:
        records = json.loads(args.input.read_text(encoding="utf-8"))
    except OSError as err:  # a missing or unreadable input: one line, not a traceback
        print(f"error: {args.input}: {err.strerror or err}", file=sys.stderr)
        return 2
    except ValueError as err:  # not JSON, or not UTF-8
        print(f"error: {args.input}: not a JSON file ({err})", file=sys.stderr)
        return 2
    out = llava_med(records, prefix) if args.source == "llava-med" else vlguard(records, prefix, args.keep)
    if not out:
        print(f"error: no records kept from {args.input}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {len(out)} LLaVA-format records to {args.output} (image prefix {prefix!r})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
