"""Throughput of the lmms-eval model ``llamafactory`` against ``generate`` on the same prompts and batch size.

Both paths share one engine (``HFGenerator.generate_encoded``); what this measures is the lmms-eval side's own cost:
its requests, ``doc_to_visual`` on in-memory images, grouping by generation settings and the stop-string cut, against
``generate``'s items read from image files. The target is at least 0.9x of ``generate`` (the plugin must never fall
back to one prompt at a time). Same tiny model, same prompts (2 of 3 with an image), greedy, same batch size;
passes alternate and the best of each counts, in wall time and in the process's CPU time (on a shared machine the
CPU time is the steadier figure). Prints figures and whether the answers are equal; asserts nothing.
Needs the [lmms] extra.

    python bench/bench_utility.py                          # tiny LLaVA, CPU, batch size 8
    python bench/bench_utility.py --family qwen2_vl --n 16
"""

from __future__ import annotations

import argparse
import logging
import platform
import tempfile
import time
from pathlib import Path


def make_docs(n: int, image_dir: Path) -> tuple[list, list[dict]]:
    """``n`` prompts as ``generate`` items (image files) and as lmms-eval docs (the same images, in memory)."""
    from PIL import Image

    from rejection_align.eval.benchmarks import Item

    items, docs = [], []
    for i in range(n):
        image = None
        if i % 3:
            image = Image.new("RGB", (200 + 13 * (i % 7), 160 + 9 * (i % 5)), (37 * i % 256, 90, 160))
            image.save(image_dir / f"{i}.png")
        text = f"Question {i}: what is shown? " + "Answer with the option's letter. " * (i % 4)
        items.append(Item(str(i), "bench", "utility", text, str(image_dir / f"{i}.png") if image else None, "bench"))
        docs.append({"image": image, "text": text})
    return items, docs


def lmms_requests(docs: list[dict], max_new_tokens: int) -> list:
    from lmms_eval.api.instance import Instance

    def doc_to_visual(doc: dict) -> list:
        return [] if doc["image"] is None else [doc["image"]]

    return [
        Instance(
            request_type="generate_until",
            arguments=(
                doc["text"],
                {"max_new_tokens": max_new_tokens, "until": []},
                doc_to_visual,
                i,
                "bench",
                "test",
            ),
            idx=0,
            metadata={"task": "bench", "doc_id": i, "repeats": 1},
        )
        for i, doc in enumerate(docs)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["llava", "qwen2_vl"], default="llava", help="tiny model to build")
    parser.add_argument("--n", type=int, default=24, help="prompts (default: 24)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each path; the best counts")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from rejection_align.demo.tiny import build_tiny_llava, build_tiny_qwen2_vl
    from rejection_align.eval.generate import HFGenerator, infer_arguments
    from rejection_align.eval.lmms.model import LlamaFactoryLMM

    if args.threads:
        torch.set_num_threads(args.threads)
    template = "qwen2_vl" if args.family == "qwen2_vl" else "llava"
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        build = build_tiny_qwen2_vl if args.family == "qwen2_vl" else build_tiny_llava
        model = str(build(tmp_path / "tiny"))
        (tmp_path / "images").mkdir()
        items, docs = make_docs(args.n, tmp_path / "images")

        generator = HFGenerator(infer_arguments(model=model, template=template), device="cpu")
        plugin = LlamaFactoryLMM(model_name_or_path=model, template=template, batch_size=args.batch_size, device="cpu")
        plugin.task_dict = {"bench": {"test": docs}}

        def run_generate() -> list[str]:
            out = []
            for start in range(0, len(items), args.batch_size):
                batch = items[start : start + args.batch_size]
                out += [a.text for a in generator.generate(batch, max_new_tokens=args.max_new_tokens)]
            return out

        def run_lmms() -> list[str]:
            return plugin.generate_until(lmms_requests(docs, args.max_new_tokens))

        run_generate(), run_lmms()  # warm-up
        paths = (("generate", run_generate), ("lmms-eval model", run_lmms))
        wall = {name: float("inf") for name, _ in paths}
        cpu = dict(wall)
        answers = {}
        for i in range(args.repeats):
            for name, fn in paths if i % 2 == 0 else paths[::-1]:  # alternate who goes first
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                answers[name] = fn()
                wall[name] = min(wall[name], time.perf_counter() - start_wall)
                cpu[name] = min(cpu[name], time.process_time() - start_cpu)

    same = sum(a == b for a, b in zip(answers["generate"], answers["lmms-eval model"], strict=True))
    print(
        f"model: tiny {args.family} (random weights); template: {template}; device: cpu; torch threads: "
        f"{torch.get_num_threads()}; cpu: {platform.machine()} x{torch.get_num_threads()}"
    )
    print(f"{args.n} prompts (2/3 with an image), greedy, max_new_tokens={args.max_new_tokens}, batch size "
          f"{args.batch_size}, best of {args.repeats}\n")  # fmt: skip
    print("| path | wall s (best) | examples/s (wall) | vs generate | CPU s (best) | examples/CPU-s | vs generate |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in wall:
        rate, cpu_rate = args.n / wall[name], args.n / cpu[name]
        ratio, cpu_ratio = wall["generate"] / wall[name], cpu["generate"] / cpu[name]
        print(
            f"| {name} | {wall[name]:.2f} | {rate:.2f} | {ratio:.2f}x | {cpu[name]:.2f} | {cpu_rate:.2f} | {cpu_ratio:.2f}x |"
        )
    print(f"\nsame answers: {same}/{args.n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
