"""Tokenization throughput of the rejection-align processor against LLaMA-Factory's stock processor.

Same examples (a quarter of the answers are the rejection sentence, 1-3 turns), same template and tokenizer. Three
figures, because a shared machine makes whole-run timings noisy:

1. each candidate's CPU time (``time.process_time``: time other processes take does not count), in interleaved
   rounds with a rotated order, median over the rounds;
2. the median over rounds of the per-round ratio method on / stock (the two ran back to back, under the same load);
3. the method's own per-example work (``_apply_method``: finding the rejection turns, the layout, its check, the
   masking, the counters), timed alone on recorded stock outputs: what the method adds, without the noise of the
   tokenizer runs around it.

Goal: the method on at most 2 % slower than stock.

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
    """CPU seconds of this process for tokenizing ``columns`` in batches, as ``datasets.map`` would."""
    n = len(columns["_prompt"])
    start = time.process_time()
    for lo in range(0, n, batch_size):
        processor.preprocess_dataset({key: value[lo : lo + batch_size] for key, value in columns.items()})
    return time.process_time() - start


def time_method_alone(processor, columns: dict[str, list], repeats: int = 3) -> float:
    """CPU seconds of ``_apply_method`` over all examples (best of ``repeats``), on stock outputs recorded first."""
    from llamafactory.data.processor.supervised import SupervisedDatasetProcessor

    recorded = []
    for prompt, response in zip(columns["_prompt"], columns["_response"]):
        encoded = SupervisedDatasetProcessor._encode_data_example(processor, prompt, response, "", "", [], [], [])
        pairs, discarding_history_cot = processor._encoder.take()
        recorded.append((prompt + response, pairs, discarding_history_cot, *encoded, [], [], []))

    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        start = time.process_time()
        for arguments in recorded:
            processor._apply_method(*arguments)
        best = min(best, time.process_time() - start)
    return best


def bootstrap_interval(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of the median by resampling the rounds (seeded: the same rounds give the same interval)."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


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
    print(f"{args.examples} examples, template {args.template}, CPU time, median of {args.repeats} interleaved rounds")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:18s} {median:7.3f} s  {args.examples / median:9.0f} examples/s  "
              f"{100 * (median / stock - 1):+6.2f} % vs stock")  # fmt: skip

    ratios = [on / base for on, base in zip(times["ours, method on"], times["stock"])]
    low, high = bootstrap_interval(ratios)
    print(f"  method on / stock, per round: median {100 * (statistics.median(ratios) - 1):+.2f} % "
          f"(95 % bootstrap interval {100 * (low - 1):+.1f} .. {100 * (high - 1):+.1f} %; "
          f"rounds: {', '.join(f'{100 * (ratio - 1):+.1f}' for ratio in ratios)})")  # fmt: skip
    alone = time_method_alone(candidates["ours, method on"], columns)
    per_example = stock / args.examples
    print(f"  the method's own work alone: {1e6 * alone / args.examples:.1f} us per example "
          f"= {100 * alone / stock:.2f} % of stock's {1e6 * per_example:.0f} us per example (best of 3)")  # fmt: skip


if __name__ == "__main__":
    main()
