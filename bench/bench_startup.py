"""Interpreter start-up overhead of the ``rejection_align.pth`` line (goal: under 3 ms median).

Two minimal virtual environments are made in a temporary folder, identical except that one holds the start-up
line (and a path entry to this checkout's ``src``, as an editable install has); ``python -c pass`` is run in each,
alternately, and the medians are compared. The four modules the line loads are byte-compiled first, as ``pip
install`` does: with ``PYTHONDONTWRITEBYTECODE=1`` and no ``.pyc`` an editable install compiles them at every start
(about 2 ms more).

    python bench/bench_startup.py [--runs 200]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


SRC = Path(__file__).resolve().parents[1] / "src"


def make_venv(root: Path, with_hook: bool) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    [site_packages] = root.glob("lib/python3*/site-packages")
    # both get the path entry, so the difference is the start-up line alone
    (site_packages / "_src_path.pth").write_text(f"{SRC}\n")
    if with_hook:
        (site_packages / "rejection_align.pth").write_text("import rejection_align._startup\n")
    return root / "bin" / "python"


def time_run(python: Path) -> float:
    start = time.perf_counter()
    subprocess.run([str(python), "-c", "pass"], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()

    import py_compile

    for name in ("__init__.py", "_startup.py", "hook/__init__.py", "hook/targets.py"):  # what the line loads
        py_compile.compile(str(SRC / "rejection_align" / name), doraise=True)

    with tempfile.TemporaryDirectory() as tmp:
        bare = make_venv(Path(tmp) / "bare", with_hook=False)
        hooked = make_venv(Path(tmp) / "hooked", with_hook=True)
        check = subprocess.run([str(hooked), "-c", "import sys; print(type(sys.meta_path[0]).__name__)"],
                               capture_output=True, text=True, check=True)  # fmt: skip
        assert check.stdout.strip() == "_PatchOnImport", check.stdout
        for _ in range(10):  # warm the page cache and the .pyc files
            time_run(bare), time_run(hooked)

        times: dict[str, list[float]] = {"without": [], "with": []}
        for _ in range(args.runs):
            times["without"].append(time_run(bare))
            times["with"].append(time_run(hooked))

    without, with_hook = statistics.median(times["without"]), statistics.median(times["with"])
    deltas = sorted(b - a for a, b in zip(times["without"], times["with"]))
    print(f"python -c pass, {args.runs} alternating runs each")
    print(f"  without the start-up line: median {1000 * without:6.2f} ms")
    print(f"  with the start-up line:    median {1000 * with_hook:6.2f} ms")
    print(f"  overhead: {1000 * (with_hook - without):+.2f} ms (median of paired differences "
          f"{1000 * statistics.median(deltas):+.2f} ms)")  # fmt: skip


if __name__ == "__main__":
    main()
