"""Benchmark ``rejection-align mix`` against the floor: ``json.load`` of the same inputs, in the same run.

Each step runs in its own subprocess; its wall time (interpreter start included, the same for every step) and its
peak RSS (``os.wait4`` rusage of that child alone) are printed next to the parse floor:

    parse floor     json.load of both inputs (both trees kept, as the reference mixing script does)
    readme mix      2,000 rejection (60k-record source) + 5,000 instruct (665k-record file), --random-turn, cold
    readme repeat   the same mix again (there is no cache: it must cost the same and give the same bytes)
    full mix        all of both files

Goals (issue 10): readme mix <= 0.2x the parse time and <= 2.5 s on a 2-core machine; full mix <= 0.7x the parse
time; peak RSS <= 1.5x the input size. Nothing is asserted: this prints figures. On a machine shared with other jobs
use ``--repeat 2`` or 3: every step then runs once per round, rounds in turn, and each step's fastest time is kept.
Inputs are generated under --dir (default /tmp/ra-bench) by make_synthetic_llava.py when missing; keep them out of the
repository.

    python bench/bench_mix.py                       # full size: 665k + 60k records (~1 GB)
    python bench/bench_mix.py --records 66500 --source-records 6000 --readme 200 500   # a quick look
"""

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import make_synthetic_llava  # noqa: E402


PARSE_FLOOR = """
import json, sys
trees = []
for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as handle:
        trees.append(json.load(handle))
print(sum(map(len, trees)))
"""


# the steps run as installed commands do: with their modules' bytecode cached (some sandboxes turn caching off)
STEP_ENV = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}


def run_step(command: list[str]) -> tuple[float, float, float]:
    """Run one step in a fresh process; return (wall seconds, peak RSS in MiB, CPU seconds) of that process alone.

    CPU and peak RSS include the step's own children (a mix forks one or two helpers; it waits for them).
    """
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=STEP_ENV)
    output = process.stdout.read()
    _pid, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    process.stdout.close()
    if process.returncode != 0:
        sys.stderr.write(output.decode(errors="replace"))
        raise SystemExit(f"step failed ({process.returncode}): {' '.join(command)}")
    return elapsed, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime  # ru_maxrss is in KiB on Linux


def ensure_input(path: Path, records: int, kind: str, seed: int) -> None:
    if path.exists():
        return
    print(f"generating {path} ({records} records) ...", flush=True)
    make_synthetic_llava.write_file(path, records, seed, kind)


def warm_page_cache(*paths: Path) -> None:
    """Read the inputs once so that no step pays for a cold disk and the comparison is about CPU and memory."""
    for path in paths:
        with open(path, "rb") as handle:
            while handle.read(64 << 20):
                pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ra-bench"), help="where inputs and outputs go")
    parser.add_argument("--records", type=int, default=665_000, help="records of the instruct file")
    parser.add_argument("--source-records", type=int, default=60_000, help="records of the rejection source")
    parser.add_argument("--readme", type=int, nargs=2, default=(2000, 5000), metavar=("N1", "N2"))
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of all steps, interleaved; each step's fastest is reported"
    )
    parser.add_argument("--skip-full", action="store_true", help="leave out the full mix")
    args = parser.parse_args(argv)

    args.dir.mkdir(parents=True, exist_ok=True)
    instruct = args.dir / f"llava_v1_5_mix{args.records // 1000}k.json"
    source = args.dir / f"llava_med_{args.source_records // 1000}k.json"
    ensure_input(instruct, args.records, "instruct", seed=0)
    ensure_input(source, args.source_records, "med", seed=1)
    warm_page_cache(source, instruct)
    size = (instruct.stat().st_size + source.stat().st_size) / 2**20
    print(
        f"inputs: {source.name} ({args.source_records} records) + {instruct.name} ({args.records} records), "
        f"{size:.0f} MiB; python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n",
        flush=True,
    )

    work = Path(tempfile.mkdtemp(prefix="bench-", dir=args.dir))
    python = sys.executable
    run_step([python, "-c", "import rejection_align.cli, rejection_align.data.mix"])  # bytecode cached, as installed
    mix = [
        python,
        "-m",
        "rejection_align.cli",
        "mix",
        "--rejection-source",
        str(source),
        "--instruct",
        str(instruct),
        "--no-register",
    ]
    readme = [*mix, "--n-rejection", str(args.readme[0]), "--n-instruct", str(args.readme[1])]

    readme = [*readme, "--random-turn"]
    input_mib = size

    steps = [
        ("parse floor", [python, "-c", PARSE_FLOOR, str(source), str(instruct)]),
        ("readme mix", [*readme, "--output", str(work / "readme-1")]),
        ("readme repeat", [*readme, "--output", str(work / "readme-2")]),
    ]
    if not args.skip_full:
        steps.append(("full mix", [*mix, "--output", str(work / "full-1")]))
    # rounds of every step in turn (not each step repeated in a row): load from other jobs then weighs on the floor
    # and the mixes alike; each step's fastest time and largest peak RSS are kept
    best = {label: (float("inf"), 0.0) for label, _command in steps}
    best_cpu = {label: float("inf") for label, _command in steps}
    for round_ in range(1, args.repeat + 1):
        for label, command in steps:
            if round_ > 1 and label != "parse floor":
                shutil.rmtree(command[-1], ignore_errors=True)
            elapsed, rss, cpu = run_step(command)
            best[label] = (min(best[label][0], elapsed), max(best[label][1], rss))
            best_cpu[label] = min(best_cpu[label], cpu)
            if args.repeat > 1:
                print(
                    f"  round {round_}: {label:<15} {elapsed:8.2f} s  CPU {cpu:7.2f} s  peak RSS {rss:8.0f} MiB",
                    flush=True,
                )
    if args.repeat > 1:
        print(f"\nfastest of {args.repeat} interleaved rounds (peak RSS: the largest):")
    results = [(label, *best[label]) for label, _command in steps]
    floor_time, floor_rss = results[0][1], results[0][2]
    floor_cpu = best_cpu["parse floor"]
    for label, best_time, peak in results:
        print(
            f"{label:<15} {best_time:8.2f} s  ({best_time / floor_time:4.2f}x parse)   "
            f"CPU {best_cpu[label]:7.2f} s  ({best_cpu[label] / floor_cpu:4.2f}x)   "
            f"peak RSS {peak:8.0f} MiB  ({peak / floor_rss:4.2f}x parse, {peak / input_mib:4.2f}x input)",
            flush=True,
        )
    print(
        "(CPU: user + system time of the step's process, all its threads and the helper processes it forks; steadier "
        "than wall time under load, and more than wall time for a mix, which works on both cores)"
    )

    same = all(
        filecmp.cmp(a, work / "readme-2" / a.name, shallow=False) for a in sorted((work / "readme-1").iterdir())
    )
    print(f"\nreadme mix and its repeat byte-identical (data + manifest): {same}")
    floor_time = results[0][1]
    by_label = {label: (elapsed, rss) for label, elapsed, rss in results}
    print("goals:")
    elapsed, rss = by_label["readme mix"]
    print(
        f"  readme mix    time <= 0.2x parse: {elapsed <= 0.2 * floor_time} ({elapsed / floor_time:.2f}x), "
        f"<= 2.5 s: {elapsed <= 2.5} ({elapsed:.2f} s), RSS <= 1.5x input: {rss <= 1.5 * input_mib} "
        f"({rss / input_mib:.2f}x)"
    )
    if "full mix" in by_label:
        elapsed, rss = by_label["full mix"]
        print(
            f"  full mix      time <= 0.7x parse: {elapsed <= 0.7 * floor_time} ({elapsed / floor_time:.2f}x), "
            f"RSS <= 1.5x input: {rss <= 1.5 * input_mib} ({rss / input_mib:.2f}x)"
        )
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
