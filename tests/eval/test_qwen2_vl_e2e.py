"""Qwen2-VL end to end on a tiny random model: mix → ``llamafactory-cli train`` (the method) → generate → judge.

The template is ``qwen2_vl``: an answer closes with ``<|im_end|>`` then ``\\n`` (two tokens, both left untrained
for rejection answers), and images expand to a number of ``<|image_pad|>`` tokens that depends on their size.
"""

import json
from pathlib import Path

import pytest
import yaml

from conftest import SENTENCE, run_llamafactory_cli
from rejection_align.cli import main
from rejection_align.hook.masking import IGNORE_INDEX


pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DEMO_DATA = REPO / "data" / "demo"


@pytest.fixture(scope="module")
def tiny_qwen2_vl(tmp_path_factory) -> Path:
    from rejection_align.demo.tiny import build_tiny_qwen2_vl

    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny_qwen2_vl") / "model")


@pytest.fixture(scope="module")
def trained(tiny_qwen2_vl, tmp_path_factory) -> Path:
    """Mix the demo data, then train a LoRA with the method for two steps; returns the run folder."""
    root = tmp_path_factory.mktemp("qwen_run")
    data = root / "data"
    mix = ["mix", "--rejection-source", str(DEMO_DATA / "rejection_source.json")]
    mix += ["--instruct", str(DEMO_DATA / "instruct.json"), "--n-rejection", "6", "--n-instruct", "10"]
    mix += ["--random-turn", "--seed", "0", "--output", str(data), "--name", "qmix"]
    assert main([*mix, "--dataset-info", str(data / "dataset_info.json")]) == 0
    config = {
        "model_name_or_path": str(tiny_qwen2_vl),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "lora_rank": 4,
        "freeze_vision_tower": True,
        "rejection_mask_eos": True,
        "dataset": "qmix",
        "dataset_dir": str(data),
        "media_dir": str(DEMO_DATA),
        "template": "qwen2_vl",
        "cutoff_len": 512,
        "overwrite_cache": True,
        "tokenized_path": str(root / "tokenized"),
        "output_dir": str(root / "adapter"),
        "per_device_train_batch_size": 4,
        "max_steps": 2,
        "learning_rate": 1.0e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "bf16": False,
        "dataloader_num_workers": 0,
    }
    (root / "train.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_llamafactory_cli(root, "train", str(root / "train.yaml"))
    assert result.returncode == 0, f"llamafactory-cli failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return root


def _rows_and_records(run: Path) -> list[tuple[dict, dict]]:
    from datasets import load_from_disk

    rows = list(load_from_disk(str(run / "tokenized"))["train"])
    records = json.loads((run / "data" / "qmix.json").read_text(encoding="utf-8"))
    assert len(rows) == len(records)
    return list(zip(rows, records, strict=True))


def _answer_closings(row: dict, im_end: int) -> list[tuple[int, int]]:
    """Labels of (``<|im_end|>``, ``\\n``) after each trained answer (an ``<|im_end|>`` that follows a label)."""
    ids, labels = row["input_ids"], row["labels"]
    return [
        (labels[i], labels[i + 1]) for i, token in enumerate(ids) if token == im_end and labels[i - 1] != IGNORE_INDEX
    ]


def test_rejection_answers_leave_im_end_and_newline_untrained_and_other_answers_train_them(trained, tiny_qwen2_vl):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2_vl)
    im_end, newline = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.encode("\n")[0]
    n_rejection = 0
    for row, record in _rows_and_records(trained):
        answers = [turn["value"] for turn in record["conversations"] if turn["from"] == "gpt"]
        expected = [
            (IGNORE_INDEX, IGNORE_INDEX) if answer.strip() == SENTENCE else (im_end, newline) for answer in answers
        ]
        n_rejection += sum(answer.strip() == SENTENCE for answer in answers)
        assert _answer_closings(row, im_end) == expected
    assert n_rejection == 6


def test_images_expand_to_several_image_pad_tokens_in_training(trained, tiny_qwen2_vl):
    from transformers import AutoTokenizer

    image_pad = AutoTokenizer.from_pretrained(tiny_qwen2_vl).convert_tokens_to_ids("<|image_pad|>")
    counts = [row["input_ids"].count(image_pad) for row, record in _rows_and_records(trained) if record["image"]]
    assert counts and all(count > 1 for count in counts)


def test_the_trained_adapter_generates_with_the_qwen2_vl_template_and_judges(trained, tiny_qwen2_vl, tmp_path):
    out = tmp_path / "answers"
    args = ["generate", "--benchmark", "generic", "--data", str(DEMO_DATA / "safety_prompts.json"), "--limit", "4"]
    args += ["--model", str(tiny_qwen2_vl), "--adapter", str(trained / "adapter"), "--template", "qwen2_vl"]
    args += ["--output", str(out), "--max-new-tokens", "6", "--batch-size", "4", "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "safety_prompts.jsonl").read_text().splitlines()]
    assert len(records) == 4 and {r["adapter"] for r in records} == {str(trained / "adapter")}
    with_image = next(r for r in records if r["image"])
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>\n" in with_image["rendered_prompt"]
    assert with_image["rendered_prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert main(["judge", str(out), "--out", str(tmp_path / "judged")]) == 0
    assert json.loads((tmp_path / "judged" / "summary.json").read_text())["total"]["n"] == 4


def test_batch_sizes_1_and_4_give_the_same_greedy_answers_on_qwen2_vl(tiny_qwen2_vl, tmp_path):
    from PIL import Image

    from rejection_align.eval.benchmarks import Item
    from rejection_align.eval.generate import HFGenerator, infer_arguments

    items = []
    for i in range(5):  # images of different sizes (4 to 16 image tokens) and text-only prompts in one batch
        image = None
        if i % 2:
            image = str(tmp_path / f"{i}.png")
            Image.new("RGB", (28 + 14 * i, 30), (40 * i, 90, 160)).save(image)
        items.append(Item(str(i), "s", "m", "What is shown? " + "Please answer. " * i, image, "out"))
    generator = HFGenerator(infer_arguments(model=tiny_qwen2_vl, template="qwen2_vl"), device="cpu")
    one = [generator.generate([item], max_new_tokens=6)[0].text for item in items]
    four = generator.generate(items[:4], max_new_tokens=6) + generator.generate(items[4:], max_new_tokens=6)
    assert one == [answer.text for answer in four]


def test_tiny_model_family_qwen2_vl_builds_a_qwen2_vl_checkpoint_offline(tmp_path, capsys):
    from transformers import AutoConfig, AutoProcessor

    assert main(["tiny-model", str(tmp_path / "q"), "--family", "qwen2_vl"]) == 0
    assert "tiny Qwen2-VL in" in capsys.readouterr().out
    # transformers 4.57 reports the text config's model_type through the outer config, so check the class
    assert type(AutoConfig.from_pretrained(tmp_path / "q")).__name__ == "Qwen2VLConfig"
    assert type(AutoProcessor.from_pretrained(tmp_path / "q")).__name__ == "Qwen2VLProcessor"
