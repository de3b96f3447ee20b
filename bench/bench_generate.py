"""Generation throughput (examples/s) of ``rejection-align generate`` (transformers backend) at several batch sizes.

The generator is the one ``generate`` uses: model loaded through LLaMA-Factory's loader, prompts through the
LLaMA-Factory template (``--template``), batched with left padding. Default: the tiny random LLaVA on CPU
(``--family qwen2_vl``: the tiny Qwen2-VL), greedy, a mix of image and text-only prompts of different lengths (so
batches need left padding). ``--device cuda`` runs the same on a GPU; ``--model`` takes a real checkpoint.
Prints figures and whether every batch size gave the batch-size-1 answers; asserts nothing about time.

    python bench/bench_generate.py                      # tiny LLaVA, CPU, batch sizes 1 4 16
    python bench/bench_generate.py --family qwen2_vl    # tiny Qwen2-VL, template qwen2_vl
    python bench/bench_generate.py --device cuda --n 256 --model llava-hf/llava-1.5-7b-hf --template llava \\
        --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from pathlib import Path


def make_items(n: int, image_dir: Path) -> list:
    """``n`` prompts: two of three with an image (sizes vary), prompt lengths vary."""
    from PIL import Image

    from rejection_align.eval.benchmarks import Item

    items = []
    for i in range(n):
        image = None
        if i % 3:
            image = str(image_dir / f"{i}.jpg")
            Image.new("RGB", (200 + 13 * (i % 7), 160 + 9 * (i % 5)), (37 * i % 256, 90, 160)).save(image)
        prompt = "The bottom of the image shows a phrase of an activity. List steps in detail. " + "Please. " * (i % 5)
        items.append(Item(str(i), "bench", "image" if image else "text", prompt, image, "bench"))
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder or hub id (default: build the tiny LLaVA in a temp dir)")
    parser.add_argument("--adapter", help="optional LoRA adapter")
    parser.add_argument("--template", help="LLaMA-Factory template (default: llava, or qwen2_vl with --family)")
    parser.add_argument("--family", choices=["llava", "qwen2_vl"], default="llava", help="tiny model to build")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument(
        "--dtype", default="auto", help="LLaMA-Factory infer_dtype: auto | float32 | bfloat16 | float16"
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--n", type=int, default=48, help="examples per batch size (default: 48)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per batch size; the best counts")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from rejection_align.eval.generate import HFGenerator, infer_arguments

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model = args.model
        template = args.template or ("qwen2_vl" if args.family == "qwen2_vl" else "llava")
        if model is None:
            from rejection_align.demo.tiny import build_tiny_llava, build_tiny_qwen2_vl

            build = build_tiny_qwen2_vl if args.family == "qwen2_vl" else build_tiny_llava
            model = str(build(tmp_path / "tiny"))
        (tmp_path / "images").mkdir()
        items = make_items(args.n, tmp_path / "images")
        infer_args = infer_arguments(model=model, adapter=args.adapter, template=template, dtype=args.dtype)
        generator = HFGenerator(infer_args, device=args.device)
        generator.generate(items[:2], max_new_tokens=args.max_new_tokens)  # warm-up (kernels, caches)

        name = args.model or f"tiny {'Qwen2-VL' if args.family == 'qwen2_vl' else 'LLaVA'} (random weights)"
        print(
            f"model: {name}; template: {template}; device: {generator.device}; "
            f"dtype: {generator.model.dtype}; torch threads: {torch.get_num_threads()}; "
            f"cpu: {platform.processor() or platform.machine()} x{os.cpu_count()}"
        )
        print(f"{args.n} examples (2/3 with an image), greedy, max_new_tokens={args.max_new_tokens}\n")
        print("| batch size | seconds (best) | examples/s | speed-up | same answers as batch 1 |")
        print("|---:|---:|---:|---:|---|")
        baseline_rate, baseline_answers = None, None
        for batch_size in args.batch_sizes:
            best = float("inf")
            for _ in range(args.repeats):  # best of several: the machine may be shared
                if generator.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                answers: list[str] = []
                for k in range(0, len(items), batch_size):
                    batch = items[k : k + batch_size]
                    answers += [a.text for a in generator.generate(batch, max_new_tokens=args.max_new_tokens)]
                if generator.device.startswith("cuda"):
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - start)
            rate = len(items) / best
            if baseline_rate is None:
                baseline_rate, baseline_answers = rate, answers
            same = sum(a == b for a, b in zip(answers, baseline_answers, strict=True))
            print(f"| {batch_size} | {best:.2f} | {rate:.2f} | {rate / baseline_rate:.1f}x | {same}/{len(items)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
