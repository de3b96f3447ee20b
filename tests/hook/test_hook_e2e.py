"""``llamafactory-cli train`` as a subprocess, with the plugin reached only through the installed start-up hook.

Each run trains a LoRA on the tiny LLaVA for two steps on CPU and saves the tokenized dataset
(``tokenized_path``), whose labels show what the processor did.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import SENTENCE, VENV_BIN, run_llamafactory_cli
from rejection_align.hook.masking import IGNORE_INDEX


pytestmark = pytest.mark.slow

NORMAL = "The picture shows a small red house next to a tall tree."
# (turns, has image); the rejection turns are the ones whose answer is exactly SENTENCE
EXAMPLES = [
    (["<image>What is in the picture?", SENTENCE], True),
    (["<image>Describe the image.", NORMAL], True),
    (["<image>What colour is it?", "It is red.", "Why is it red?", SENTENCE], True),
    (["What is two plus two?", "Four."], False),
    (["<image>Who is there?", SENTENCE], True),
    (["Tell me a story.", NORMAL], False),
    (["<image>What is this?", SENTENCE + " Sorry."], True),
    (["Hello!", SENTENCE], False),
]


def rejection_flags(turns: list[str]) -> list[bool]:
    return [answer == SENTENCE for answer in turns[1::2]]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("e2e_data")
    records = []
    for index, (turns, has_image) in enumerate(EXAMPLES):
        image = []
        if has_image:
            name = f"img_{index}.png"
            Image.new("RGB", (28, 28), (30 * index, 120, 255 - 30 * index)).save(root / name)
            image = [name]
        conversations = [{"from": "human" if i % 2 == 0 else "gpt", "value": text} for i, text in enumerate(turns)]
        records.append({"id": str(index), "image": image, "conversations": conversations})

    (root / "tiny_mix.json").write_text(json.dumps(records), encoding="utf-8")
    entry = {
        "file_name": "tiny_mix.json",
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "images": "image"},
    }
    (root / "dataset_info.json").write_text(json.dumps({"tiny_mix": entry}, indent=2), encoding="utf-8")
    return root


def train_config(model_dir: Path, data_dir: Path, out: Path, **extra) -> dict:
    return {
        "model_name_or_path": str(model_dir),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "lora_rank": 4,
        "dataset": "tiny_mix",
        "dataset_dir": str(data_dir),
        "template": "llava",
        "cutoff_len": 256,
        "overwrite_cache": True,
        "tokenized_path": str(out / "tokenized"),
        "output_dir": str(out / "adapter"),
        "per_device_train_batch_size": 2,
        "max_steps": 2,
        "learning_rate": 1.0e-4,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "bf16": False,
        "dataloader_num_workers": 0,
        **extra,
    }


def run_train(tmp_path: Path, config: dict, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return run_llamafactory_cli(tmp_path, "train", str(config_path), *overrides, env=env)


def tokenized_rows(out: Path) -> list[dict]:
    from datasets import load_from_disk

    return list(load_from_disk(str(out / "tokenized"))["train"])


def closing_labels(row: dict, eos_id: int) -> list[int]:
    """Label at each ``</s>`` of the inputs: one per answer, in turn order (template ``llava``)."""
    return [label for token, label in zip(row["input_ids"], row["labels"]) if token == eos_id]


def assert_succeeded(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"llamafactory-cli failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


@pytest.fixture(scope="module")
def eos_id(tiny_llava_dir) -> int:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llava_dir).eos_token_id


def test_yaml_keys_mask_the_eos_label_of_every_rejection_turn_in_a_real_training_run(
    tmp_path, tiny_llava_dir, dataset_dir, eos_id
):
    config = train_config(tiny_llava_dir, dataset_dir, tmp_path, rejection_mask_eos=True)
    result = run_train(tmp_path, config)

    assert_succeeded(result)
    rows = tokenized_rows(tmp_path)
    assert len(rows) == len(EXAMPLES)
    for row, (turns, _) in zip(rows, EXAMPLES):
        expected = [IGNORE_INDEX if rejected else eos_id for rejected in rejection_flags(turns)]
        assert closing_labels(row, eos_id) == expected
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (
        "rejection-align [train: tiny_mix]: 4 of 8 examples have a rejection answer" in result.stdout + result.stderr
    )


def test_a_command_line_override_turns_the_method_on_in_drop_mode(tmp_path, tiny_llava_dir, dataset_dir, eos_id):
    config = train_config(tiny_llava_dir, dataset_dir, tmp_path)
    result = run_train(tmp_path, config, "rejection_mask_eos=true", "rejection_mask_mode=drop")

    assert_succeeded(result)
    for row, (turns, _) in zip(tokenized_rows(tmp_path), EXAMPLES):
        kept = [eos_id for rejected in rejection_flags(turns) if not rejected]
        assert closing_labels(row, eos_id) == kept  # the rejection </s> is gone from the inputs


def test_without_the_keys_the_run_tokenizes_exactly_like_stock_llamafactory(
    tmp_path, tiny_llava_dir, dataset_dir, eos_id
):
    ours = run_train(tmp_path / "ours", train_config(tiny_llava_dir, dataset_dir, tmp_path / "ours"))
    stock = run_train(
        tmp_path / "stock",
        train_config(tiny_llava_dir, dataset_dir, tmp_path / "stock"),
        env={"REJECTION_ALIGN_DISABLE": "1"},
    )

    assert_succeeded(ours)
    assert_succeeded(stock)
    assert tokenized_rows(tmp_path / "ours") == tokenized_rows(tmp_path / "stock")
    assert all(closing_labels(row, eos_id)[-1] == eos_id for row in tokenized_rows(tmp_path / "ours"))


def test_preprocessing_workers_receive_the_settings(tmp_path, tiny_llava_dir, dataset_dir, eos_id):
    config = train_config(
        tiny_llava_dir, dataset_dir, tmp_path, rejection_mask_eos=True, preprocessing_num_workers=2,
        preprocessing_batch_size=2,
    )  # fmt: skip
    result = run_train(tmp_path, config)

    assert_succeeded(result)
    for row, (turns, _) in zip(tokenized_rows(tmp_path), EXAMPLES):
        expected = [IGNORE_INDEX if rejected else eos_id for rejected in rejection_flags(turns)]
        assert closing_labels(row, eos_id) == expected


@pytest.mark.skipif(shutil.which("torchrun", path=str(VENV_BIN)) is None, reason="torchrun is part of torch")
def test_two_torchrun_workers_both_load_the_hook_and_the_saved_data_is_masked(
    tmp_path, tiny_llava_dir, dataset_dir, eos_id
):
    config = train_config(tiny_llava_dir, dataset_dir, tmp_path, rejection_mask_eos=True, ddp_backend="gloo")
    result = run_train(tmp_path, config, env={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "MASTER_PORT": "29517"})

    assert_succeeded(result)
    output = result.stdout + result.stderr
    assert "(process rank 0," in output
    assert "(process rank 1," in output
    for row, (turns, _) in zip(tokenized_rows(tmp_path), EXAMPLES):
        expected = [IGNORE_INDEX if rejected else eos_id for rejected in rejection_flags(turns)]
        assert closing_labels(row, eos_id) == expected


def test_a_misspelt_rejection_key_stops_the_run_with_the_valid_keys(tmp_path, tiny_llava_dir, dataset_dir):
    config = train_config(tiny_llava_dir, dataset_dir, tmp_path, rejection_mask_eso=True)
    result = run_train(tmp_path, config)

    assert result.returncode != 0
    assert "unknown rejection-align key 'rejection_mask_eso'" in result.stderr
    assert "rejection_mask_eos, rejection_mask_mode, rejection_sentences, rejection_match" in result.stderr
    assert not (tmp_path / "tokenized").exists()


def test_a_streamed_run_trains_with_the_method_on(tmp_path, tiny_llava_dir, dataset_dir):
    config = train_config(
        tiny_llava_dir, dataset_dir, tmp_path, rejection_mask_eos=True, streaming=True, dataloader_num_workers=1
    )  # one shard: LLaMA-Factory streams a local file in dataloader_num_workers shards
    del config["tokenized_path"]  # LLaMA-Factory cannot save a streamed dataset
    result = run_train(tmp_path, config)

    assert_succeeded(result)
    assert "rejection-align [train]: streaming dataset, counts are not available" in result.stdout + result.stderr
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_a_tokenized_path_saved_with_the_method_on_stops_a_run_with_the_method_off(
    tmp_path, tiny_llava_dir, dataset_dir
):
    masked = run_train(tmp_path / "on", train_config(tiny_llava_dir, dataset_dir, tmp_path, rejection_mask_eos=True))
    assert_succeeded(masked)
    off = train_config(tiny_llava_dir, dataset_dir, tmp_path, output_dir=str(tmp_path / "adapter_off"))
    result = run_train(tmp_path / "off", off)

    assert result.returncode != 0
    assert f"tokenized_path {tmp_path / 'tokenized'} holds a dataset tokenized with rejection_mask_eos=True" in (
        result.stderr
    )
    assert "this run asks for method off" in result.stderr
