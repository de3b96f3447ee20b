"""Tokenization throughput of the rejection-align processor against LLaMA-Factory's stock processor.

Same 20k examples (a quarter with a rejection answer, 1-3 turns), same template and tokenizer; the two are run
alternately several times and the median is reported. Goal: ours at most 2 % slower with the method on.

    python bench/bench_tokenize.py [--examples 20000] [--repeats 5] [--template llava]
"""

import argparse
import copy
import gc
import random
import statistics
import time


SENTENCE = "I'm sorry, but I cannot assist with your request"
WORDS = ("the picture shows a small red house next to a tall tree with people walking on the road "
         "what is in this image describe it in detail please answer the question about colour and shape").split()  # fmt: skip


def make_examples(n: int, seed: int = 0) -> dict[str, list]:
    rng = random.Random(seed)
    columns = {key: [] for key in ("_prompt", "_response", "_system", "_tools", "_images", "_videos", "_audios")}
    for _ in range(n):
        messages = []
        for _turn in range(rng.randint(1, 3)):
            messages.append({"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(8, 30)))})
            answer = SENTENCE if rng.random() < 0.25 else " ".join(rng.choices(WORDS, k=rng.randint(20, 120)))
            messages.append({"role": "assistant", "content": answer})
        columns["_prompt"].append(messages[:-1])
        columns["_response"].append(messages[-1:])
        for key in ("_system", "_tools"):
            columns[key].append("")
        for key in ("_images", "_videos", "_audios"):
            columns[key].append(None)
    return columns


def make_processor(template_name: str, ours: bool, settings):
    from llamafactory.data.processor.supervised import SupervisedDatasetProcessor
    from llamafactory.data.template import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from transformers import CLIPImageProcessor, LlavaProcessor

    from rejection_align.demo.tiny import build_tiny_tokenizer
    from rejection_align.hook.processor import RejectionSupervisedDatasetProcessor
    from rejection_align.hook.settings import attach

    tokenizer = copy.deepcopy(build_tiny_tokenizer(("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>")))
    data_args = DataArguments(template=template_name, cutoff_len=1024)
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    if ours:
        attach(data_args, settings)
    mm = LlavaProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer, patch_size=14,
                        vision_feature_select_strategy="default")  # fmt: skip
    cls = RejectionSupervisedDatasetProcessor if ours else SupervisedDatasetProcessor
    return cls(template=template, tokenizer=tokenizer, processor=mm, data_args=data_args)


def time_processor(processor, columns: dict[str, list], batch_size: int = 1000) -> float:
    n = len(columns["_prompt"])
    start = time.perf_counter()
    for lo in range(0, n, batch_size):
        processor.preprocess_dataset({key: value[lo : lo + batch_size] for key, value in columns.items()})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--template", default="llava")
    args = parser.parse_args()

    from rejection_align.hook.settings import RejectionSettings

    columns = make_examples(args.examples)
    candidates = {
        "stock": make_processor(args.template, False, None),
        "ours, method off": make_processor(args.template, True, RejectionSettings(mask_eos=False)),
        "ours, method on": make_processor(args.template, True, RejectionSettings(mask_eos=True)),
    }
    time_processor(candidates["stock"], columns)  # warm-up: tokenizer caches, imports
    times = {name: [] for name in candidates}
    names = list(candidates)
    for repeat in range(args.repeats):
        for name in names[repeat % 3 :] + names[: repeat % 3]:  # rotate the order: no candidate always runs last
            gc.collect()
            times[name].append(time_processor(candidates[name], columns))

    stock = statistics.median(times["stock"])
    print(f"{args.examples} examples, template {args.template}, median of {args.repeats} runs")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:18s} {median:7.3f} s  {args.examples / median:9.0f} examples/s  "
              f"{100 * (median / stock - 1):+6.2f} % vs stock")  # fmt: skip


if __name__ == "__main__":
    main()
