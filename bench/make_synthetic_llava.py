"""Write a synthetic LLaVA-format file shaped like ``llava_v1_5_mix665k.json`` (or a LLaVA-Med-like rejection source).

Deterministic for a given ``--seed``: records are assembled from a few thousand pre-serialised conversation templates
(drawn once with ``random.Random(seed)``), so 665k records (~1 GB) take seconds, not minutes. Shape of the instruct
kind: 1 to 6 human/gpt pairs, ~6 % of records without image (and without ``<image>`` tag), ids mixing zero-padded
strings, alphanumeric strings and integers, a few duplicated ids, some "What about ...?" follow-ups and a little
non-ASCII text.

    python bench/make_synthetic_llava.py /tmp/ra-bench/llava_v1_5_mix665k.json --records 665000
    python bench/make_synthetic_llava.py /tmp/ra-bench/llava_med_60k.json --records 60000 --kind med
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path


WORDS = (
    "the a man woman dog cat table chair red blue green large small two three image picture shows standing sitting "
    "near under behind front left right street building car bus train sky tree water people group holding wearing "
    "white black yellow wooden metal glass window door road field grass snow beach kitchen room bed plate food pizza "
    "sandwich bowl cup laptop phone sign text number clock tower bridge boat plane bird horse sheep cow elephant "
    "giraffe zebra bear umbrella bag kite ball player game tennis baseball skateboard surfboard"
).split()
ACCENTED = ("café", "naïve", "25 °C", "façade", "résumé", "São Paulo", "Zürich", "—", "日本")
QUESTION_STARTS = (
    "What is",
    "How many",
    "Where is",
    "Describe",
    "Why is",
    "What color is",
    "Is there",
    "What does",
    "Can you see",
)
MED_WORDS = (
    "lesion opacity nodule mass contrast axial coronal sagittal ct mri x-ray chest abdomen liver lung kidney brain "
    "enhancement margin density fluid effusion fracture vessel artery tumor biopsy histology stain cell tissue"
).split()


def _sentence(rng: random.Random, words: tuple[str, ...] | list[str], n_min: int, n_max: int) -> str:
    text = " ".join(rng.choice(words) for _ in range(rng.randint(n_min, n_max)))
    if rng.random() < 0.02:
        text += " " + rng.choice(ACCENTED)
    return text[0].upper() + text[1:]


def _templates(rng: random.Random, kind: str, count: int) -> list[list[tuple[str, str]]]:
    """Conversations as (question, answer) pairs; the image tag is added when a record is written."""
    words = MED_WORDS + WORDS[:40] if kind == "med" else WORDS
    max_pairs = 3 if kind == "med" else 6
    templates = []
    for _ in range(count):
        n_pairs = rng.choices(range(1, max_pairs + 1), weights=[30, 20, 15, 12, 12, 11][:max_pairs])[0]
        pairs = []
        for pair_index in range(n_pairs):
            if pair_index and rng.random() < 0.15:
                question = f"What about the {rng.choice(words)}?"
            else:
                question = f"{rng.choice(QUESTION_STARTS)} {_sentence(rng, words, 4, 14).lower()}?"
            long_answer = rng.random() < 0.3
            answer = ". ".join(_sentence(rng, words, 8, 30) for _ in range(rng.randint(3, 9) if long_answer else 1))
            pairs.append((question, answer + "."))
        templates.append(pairs)
    # a few records every pair of which is a "what about" follow-up (unusable for --random-turn)
    for template in templates[:: max(1, count // 20)]:
        template[:] = [(f"What about the {rng.choice(words)}?", answer) for _question, answer in template]
    return templates


def _render(pairs: list[tuple[str, str]], with_image: bool, tag_first: bool) -> str:
    turns = []
    for pair_index, (question, answer) in enumerate(pairs):
        if pair_index == 0 and with_image:
            question = f"<image>\n{question}" if tag_first else f"{question}\n<image>"
        turns.append({"from": "human", "value": question})
        turns.append({"from": "gpt", "value": answer})
    body = json.dumps(turns, ensure_ascii=False, indent=2)
    return body.replace("\n", "\n    ")


def write_file(path: Path, n_records: int, seed: int, kind: str) -> int:
    """Write the file (through a temp name); return its size in bytes."""
    rng = random.Random(seed)
    templates = _templates(rng, kind, 3000)
    rendered = {}  # (template, with_image, tag_first) -> text, rendered lazily
    choices = rng.choices(range(len(templates)), k=n_records)
    no_image = 0.0 if kind == "med" else 0.06
    draws = [rng.random() for _ in range(n_records)]
    folders = ("coco/train2017", "gqa/images", "ocr_vqa/images", "textvqa/train_images", "vg/VG_100K")

    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as out:
        out.write("[\n")
        batch = []
        for index in range(n_records):
            draw = draws[index]
            with_image = draw >= no_image
            key = (choices[index], with_image, index % 2 == 0)
            conversation = rendered.get(key)
            if conversation is None:
                conversation = rendered[key] = _render(templates[key[0]], with_image, key[2])
            if kind == "med":
                rid = json.dumps(f"PMC{1000000 + index * 7}_fig{index % 5 + 1}")
            elif index and draw < 0.001:  # duplicated id, as in the real file
                rid = json.dumps(f"{(index - 1) * 13 % 999983:012d}")
            elif draw < 0.15:
                rid = str(index)  # integer id
            elif draw < 0.6:
                rid = json.dumps(f"{index * 13 % 999983:012d}")
            else:
                rid = json.dumps(f"{index:x}{'ABCDEF'[index % 6]}{index % 997}")
            if with_image:
                folder = folders[index % len(folders)]
                image = f'\n    "image": "{folder}/{index:09d}.jpg",'
            else:
                image = ""
            batch.append(f'  {{\n    "id": {rid},{image}\n    "conversations": {conversation}\n  }}')
            if len(batch) >= 10000:
                out.write(",\n".join(batch))
                out.write(",\n" if index + 1 < n_records else "")
                batch = []
        out.write(",\n".join(batch))
        out.write("\n]\n")
    tmp.replace(path)
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--records", type=int, default=665_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kind", choices=("instruct", "med"), default="instruct")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    size = write_file(args.output, args.records, args.seed, args.kind)
    print(
        f"wrote {args.output}: {args.records} records, {size / 2**20:.0f} MiB in {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
