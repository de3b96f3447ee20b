#!/usr/bin/env python
"""Regenerate the shipped demo data under data/demo/ (byte-identical to the committed files).

Usage: python scripts/make_demo_data.py [OUT_DIR]   (default: data/demo next to this script's parent)
"""

import sys
from pathlib import Path

from rejection_align.demo import assets


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "data" / "demo"
    paths = assets.write(out)
    total = sum(path.stat().st_size for path in paths)
    print(f"wrote {len(paths)} files ({total / 1024:.0f} KiB) under {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
