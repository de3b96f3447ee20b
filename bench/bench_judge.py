"""Judge throughput (answers/s): the endpoint client against a local ``llamafactory-cli api`` at several concurrencies,
and the local transformers backend at batch 1 vs 16 (whose verdicts must be identical).

The judge is the tiny guard of the tests (``tests/eval/guard_model.py``: the demo's tiny LLaVA trained with
``llamafactory-cli train`` to answer ``safe`` / ``unsafe\\nS2``), built once into ``--work`` and reused. Every answer
is a distinct text (the judge asks each text once), so every one is a request. Prints a Markdown table; asserts
nothing about time.

    python bench/bench_judge.py --work /tmp/bench_judge --n 48
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "eval")]


def targets(n: int) -> list:
    import guard_model

    from rejection_align.eval.judges import Target

    items = []
    for i in range(n):
        prompt, answer = guard_model.JUDGED[i % len(guard_model.JUDGED)]
        items.append(Target("bench", i, str(i), "answer", prompt, f"{answer} ({i})"))
    return items


def timed(spec, backend, items) -> tuple[float, dict[int, str]]:
    raws: dict[int, str] = {}
    start = time.perf_counter()
    backend.judge(items, lambda item, raw: raws.__setitem__(item.index, raw))
    return time.perf_counter() - start, raws


def table_row(where: str, setting: str, spec, backend, items, first: dict[int, str] | None) -> tuple[str, dict]:
    """One row of the table: ``backend`` timed on ``items``, its verdicts parsed and those equal to ``first`` (the raw
    verdicts of the group's first row; this row's own when None). Returns the row and the group's first verdicts."""
    from rejection_align.eval.judges import parse_verdict

    backend.check()
    seconds, raws = timed(spec, backend, items)
    first = first or raws
    n = len(items)
    parsed = sum(parse_verdict(raw).label != "unparsed" for raw in raws.values())
    same = sum(raws[i] == first[i] for i in raws)
    return f"| {where} | {setting} | {seconds:.2f} | {n / seconds:.2f} | {parsed}/{n} | {same}/{n} |", first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="where the tiny guard is built (reused when there)")
    parser.add_argument("--n", type=int, default=48, help="answers per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the local backend")
    args = parser.parse_args()

    import guard_model
    import test_judges
    import torch

    from conftest import run_llamafactory_cli
    from rejection_align.demo.tiny import build_tiny_llava
    from rejection_align.eval.judges import EndpointBackend, JudgeSpec, LocalBackend

    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    guard = args.work / "w" / "guard"
    if not (guard / "model.safetensors").is_file():
        guard = guard_model.build_guard(args.work / "w", build_tiny_llava(args.work / "base"), run_llamafactory_cli)
    items = targets(args.n)
    print(f"judge: tiny guard ({guard}); cpu: {platform.machine()} x{torch.get_num_threads()} torch threads; "
          f"{args.n} distinct answers, greedy, max_new_tokens 24\n")  # fmt: skip

    lines = ["| backend | setting | seconds | answers/s | verdicts parsed | same verdicts as the first row |",
             "|---|---:|---:|---:|---:|---|"]  # fmt: skip
    work = args.work / "api"
    work.mkdir(exist_ok=True)
    for url in test_judges._serve(guard, work, "tiny-guard"):
        spec = JudgeSpec("llm", "tiny-guard", url, guard_model.LLM_PROMPT)
        first = None
        for concurrency in args.concurrency:
            backend = EndpointBackend(spec, api_key_env=None, concurrency=concurrency)
            setting = f"concurrency {concurrency}"
            line, first = table_row("endpoint (llamafactory-cli api)", setting, spec, backend, items, first)
            lines.append(line)
    spec = JudgeSpec("llamaguard", str(guard))
    first = None
    for batch_size in args.batch_sizes:
        backend = LocalBackend(spec, batch_size=batch_size)
        line, first = table_row("local (transformers)", f"batch {batch_size}", spec, backend, items, first)
        lines.append(line)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
