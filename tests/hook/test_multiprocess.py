"""Several processes: ``FORCE_TORCHRUN=1 NPROC_PER_NODE=2 llamafactory-cli train configs/demo_tiny_llava.yaml``.

LLaMA-Factory's launcher re-runs itself under torchrun, so every worker is a fresh interpreter that only the
installed start-up hook (``rejection_align.pth``) can reach. Rank 0 tokenizes and saves the dataset
(``tokenized_path``); the masked closing tokens in it prove that the hook ran inside a torchrun worker, and the
hook's start-up line from both ranks shows that each worker read the settings. Two CPU processes, gloo.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rejection_align.cli import main as cli_main


pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SENTENCE = "I'm sorry, but I cannot assist with your request"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory, tiny_llava_dir):
    work = tmp_path_factory.mktemp("torchrun")
    data_dir = work / "data"
    status = cli_main(
        [
            "mix",
            "--rejection-source", str(ROOT / "data/demo/rejection_source.json"),
            "--instruct", str(ROOT / "data/demo/instruct.json"),
            "--n-rejection", "8",
            "--n-instruct", "16",
            "--random-turn",
            "--output", str(data_dir),
            "--name", "demo_mix",
            "--dataset-info", str(data_dir / "dataset_info.json"),
        ]
    )  # fmt: skip
    assert status == 0

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.update(FORCE_TORCHRUN="1", NPROC_PER_NODE="2", NNODES="1", NODE_RANK="0", MASTER_ADDR="127.0.0.1")
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])  # torchrun is found on PATH only
    env.pop("MASTER_PORT", None)  # the launcher picks a free one
    overrides = {
        "model_name_or_path": tiny_llava_dir,
        "dataset_dir": data_dir,
        "media_dir": ROOT / "data/demo",
        "output_dir": work / "adapter",
        "tokenized_path": work / "tokenized",
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "ddp_backend": "gloo",
    }
    command = [str(VENV_BIN / "llamafactory-cli"), "train", str(ROOT / "configs/demo_tiny_llava.yaml")]
    command += [f"{key}={value}" for key, value in overrides.items()]
    proc = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    return work, log, json.loads((data_dir / "demo_mix.json").read_text())


def test_launcher_ran_two_torchrun_workers(torchrun_run):
    _, log, _ = torchrun_run
    assert "Initializing 2 distributed tasks" in log
    assert re.search(r"world size: 2", log)


def test_every_worker_loaded_the_rejection_settings(torchrun_run):
    _, log, _ = torchrun_run
    ranks = set(re.findall(r"rejection_mask_eos=True\b.*?\brank (\d+)", log))
    assert ranks == {"0", "1"}


def test_tokenized_dataset_saved_by_a_worker_shows_the_masked_closing_tokens(torchrun_run, tiny_llava_dir):
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    work, _, mixed = torchrun_run
    eos = AutoTokenizer.from_pretrained(tiny_llava_dir).eos_token_id
    dataset = load_from_disk(str(work / "tokenized"))["train"]
    assert len(dataset) == len(mixed)  # single dataset, no val_size/max_samples: input order is kept
    for row, record in zip(dataset, mixed, strict=True):
        answers = [turn["value"] for turn in record["conversations"] if turn["from"] == "gpt"]
        ids, labels = row["input_ids"], row["labels"]
        closing = [pos for pos in range(1, len(ids)) if ids[pos] == eos and labels[pos - 1] != -100]
        assert len(closing) == len(answers), record["id"]
        for pos, answer in zip(closing, answers, strict=True):
            expected = -100 if answer == SENTENCE else eos
            assert labels[pos] == expected, (record["id"], answer)
    assert any(answer == SENTENCE for record in mixed for answer in [t["value"] for t in record["conversations"]])


def test_two_process_training_saves_one_adapter(torchrun_run):
    work, _, _ = torchrun_run
    assert (work / "adapter" / "adapter_model.safetensors").is_file()
    state = json.loads((work / "adapter" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
