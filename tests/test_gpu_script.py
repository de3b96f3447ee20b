"""``bench/gpu/run.sh --dry-run``: every step of the GPU checks on CPU, tiny models, vLLM skipped.

The script is meant for the day a GPU is lent; this runs it now (real ``rejection-align generate`` and
``llamafactory-cli train`` subprocesses in the running environment) and reads its summary table, so a broken step
shows up here and not on the GPU machine.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest


pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("llava-tiny", "qwen2-vl-tiny")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_dry_run")
    command = ["bash", str(ROOT / "bench" / "gpu" / "run.sh"), "--dry-run", "--python", sys.executable]
    command += ["--out", str(tmp / "out"), "--work", str(tmp / "work")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=tmp)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return tmp, result.stdout


def table_rows(path: Path) -> list[list[str]]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("| ")]
    assert lines[0] == "| check | model | setting | figure | answers compared | seconds |"
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def test_the_summary_table_has_a_row_for_every_check(dry_run):
    tmp, stdout = dry_run
    rows = table_rows(tmp / "out" / "gpu_summary.md")
    by_key = {(check, model, setting): (figure, compared) for check, model, setting, figure, compared, _ in rows}

    for model in MODELS:  # (a): hf measured, vLLM skipped, without and with the adapter trained in (b)
        for adapter in ("no adapter", "LoRA (b)"):
            figure, _ = by_key[("a: generate", model, f"{adapter}, hf, batch 8")]
            assert re.fullmatch(r"\d+\.\d\d examples/s", figure), figure
            assert by_key[("a: generate", model, f"{adapter}, vllm, batch 8")] == (
                "skipped (dry run: vLLM is skipped)", "—"
            )  # fmt: skip
    for method in ("true", "false"):  # (b): both trainings measured
        figure, _ = by_key[("b: train", "llava-tiny", f"rejection_mask_eos={method}, 3 steps x batch 4")]
        assert re.fullmatch(r"\d+\.\d\d samples/s", figure), figure
    figure, _ = by_key[("b: train", "llava-tiny", "method on vs off")]
    assert re.fullmatch(r"[+-]\d+\.\d % time per sample", figure), figure
    figure, compared = by_key[("c: bf16 batch parity", "llava-tiny", "no adapter, hf, batch 8 vs 1")]
    assert re.fullmatch(r"\d+\.\d\d examples/s at batch 1", figure), figure
    assert re.fullmatch(r"[0-6]/6 identical to batch 1, [0-6]/6 same first 5 words", compared), compared
    assert len(rows) == 4 * 2 + 3 + 1

    summary = json.loads((tmp / "out" / "gpu_summary.json").read_text(encoding="utf-8"))
    assert summary["dry_run"] is True and summary["failed"] == [] and len(summary["rows"]) == len(rows)
    assert "[gpu 5/5] (c) bf16 batch 8 vs batch 1 answers" in stdout


def test_the_method_run_masks_rejection_answers_and_the_baseline_run_does_not(dry_run):
    tmp, _ = dry_run
    method = (tmp / "work" / "train" / "llava_on" / "train.log").read_text(encoding="utf-8")
    baseline = (tmp / "work" / "train" / "llava_off" / "train.log").read_text(encoding="utf-8")
    assert re.search(r"rejection-align \[train: gpu_mix\]: 20 of 80 examples have a rejection answer", method)
    assert "rejection_mask_eos=False" in baseline and "have a rejection answer" not in baseline


def test_the_adapter_rows_generated_with_the_adapter_of_the_method_run(dry_run):
    tmp, _ = dry_run
    answers = tmp / "work" / "generate" / "llava-tiny_lora_hf_b8" / "answers" / "prompts.jsonl"
    records = [json.loads(line) for line in answers.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 6
    assert {r["adapter"] for r in records} == {str(tmp / "work" / "train" / "llava_on" / "adapter")}
