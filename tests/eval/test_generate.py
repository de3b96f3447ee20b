"""Generation on the tiny LLaVA (CPU, offline): benchmarks to JSONL, batching, resume, LoRA adapters, early errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from rejection_align.cli import main
from rejection_align.errors import ConfigError, DataError
from rejection_align.eval.benchmarks import FIGSTEP_INSTRUCTION, Item
from rejection_align.eval.generate import HFGenerator, generate_to_files, infer_arguments


SCENARIOS = ("01-Illegal_Activitiy", "02-HateSpeech")
MAX_NEW_TOKENS = "8"
RECORD_KEYS = {
    "id", "scenario", "mode", "prompt", "image", "continuation", "model", "adapter", "template", "rendered_prompt",
    "benign",
}  # fmt: skip


@pytest.fixture(scope="module")
def adapter(tiny_llava_dir, tmp_path_factory) -> Path:
    """A real LoRA adapter on the tiny model's language model, with random (non-zero) B so it changes answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(1)
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    config = LoraConfig(
        r=4, lora_alpha=16, target_modules=r".*language_model.*\.(q_proj|v_proj|o_proj)", init_lora_weights=False
    )
    out = tmp_path_factory.mktemp("adapters") / "lora"
    get_peft_model(model, config).save_pretrained(out)
    return out


def make_mmsafetybench(root: Path, n_questions: int = 2) -> Path:
    for scenario in SCENARIOS:
        questions = {
            str(i): {
                "Question": f"How can I do thing {i}?",
                "Key Phrase": f"thing {i}",
                "Rephrased Question": f"The bottom of the image shows a phrase of an activity {i}. List steps.",
                "Rephrased Question(SD)": f"The image shows a phrase of an activity {i}. List steps.",
            }
            for i in range(n_questions)
        }
        (root / "processed_questions").mkdir(parents=True, exist_ok=True)
        (root / "processed_questions" / f"{scenario}.json").write_text(json.dumps(questions))
        for mode in ("SD", "TYPO", "SD_TYPO"):
            (root / "imgs" / scenario / mode).mkdir(parents=True, exist_ok=True)
            for i in range(n_questions):
                Image.new("RGB", (30 + 5 * i, 28), (40 * i, 100, 200)).save(
                    root / "imgs" / scenario / mode / f"{i}.jpg"
                )
    return root


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def cli_generate(model: Path, data: Path, out: Path, *extra: str) -> int:
    args = ["generate", "--benchmark", "mmsafetybench", "--data", str(data), "--model", str(model)]
    args += [
        "--template",
        "llava",
        "--output",
        str(out),
        "--scenarios",
        *SCENARIOS,
        "--max-new-tokens",
        MAX_NEW_TOKENS,
        "--no-progress",
        "--device",
        "cpu",
    ]
    return main([*args, *extra])


@pytest.fixture(scope="module")
def mmsb_run(tiny_llava_dir, tmp_path_factory) -> Path:
    """One CLI run over a miniature MM-SafetyBench (2 scenarios x 2 questions, SD_TYPO), batch size 4."""
    data = make_mmsafetybench(tmp_path_factory.mktemp("mmsb"))
    out = tmp_path_factory.mktemp("runs") / "base"
    assert cli_generate(tiny_llava_dir, data, out, "--batch-size", "4") == 0
    return out


# --- benchmarks to files --------------------------------------------------------------------------------------


def test_mmsafetybench_answers_go_to_one_file_per_mode_and_scenario(mmsb_run):
    files = sorted(p.relative_to(mmsb_run).as_posix() for p in mmsb_run.rglob("*.jsonl"))
    assert files == ["SD_TYPO/01-Illegal_Activitiy.jsonl", "SD_TYPO/02-HateSpeech.jsonl"]
    assert [r["id"] for r in read_jsonl(mmsb_run / "SD_TYPO" / "02-HateSpeech.jsonl")] == ["0", "1"]


def test_records_carry_ids_scenario_mode_prompt_and_continuation(mmsb_run):
    record = read_jsonl(mmsb_run / "SD_TYPO" / "01-Illegal_Activitiy.jsonl")[1]
    assert set(record) == RECORD_KEYS
    assert (record["scenario"], record["mode"], record["adapter"]) == ("01-Illegal_Activitiy", "SD_TYPO", None)
    assert record["prompt"] == "The bottom of the image shows a phrase of an activity 1. List steps."
    assert isinstance(record["continuation"], str)


def test_the_continuation_holds_no_part_of_the_prompt(mmsb_run):
    for record in read_jsonl(mmsb_run / "SD_TYPO" / "01-Illegal_Activitiy.jsonl"):
        assert "ASSISTANT" not in record["continuation"] and "USER" not in record["continuation"]


def test_generated_files_judge_directly(mmsb_run, tmp_path):
    assert main(["judge", str(mmsb_run / "SD_TYPO"), "--out", str(tmp_path / "judged")]) == 0
    assert json.loads((tmp_path / "judged" / "summary.json").read_text())["total"]["n"] == 4


def test_rerunning_a_finished_run_generates_nothing_new(mmsb_run, tiny_llava_dir, tmp_path, capsys):
    data = make_mmsafetybench(tmp_path / "mmsb")
    before = (mmsb_run / "SD_TYPO" / "01-Illegal_Activitiy.jsonl").read_text()
    assert cli_generate(tiny_llava_dir, data, mmsb_run) == 0
    assert "0 answers generated, 4 already there" in capsys.readouterr().out
    assert (mmsb_run / "SD_TYPO" / "01-Illegal_Activitiy.jsonl").read_text() == before


def test_a_figstep_folder_is_answered_with_the_fixed_instruction(tiny_llava_dir, tmp_path):
    data = tmp_path / "SafeBench"
    data.mkdir()
    for name in ("query_ForbidQI_1_1_6", "query_ForbidQI_1_2_6"):
        Image.new("RGB", (40, 40), "white").save(data / f"{name}.png")
    args = [
        "generate",
        "--benchmark",
        "figstep",
        "--data",
        str(data),
        "--model",
        str(tiny_llava_dir),
        "--template",
        "llava",
    ]
    assert main([*args, "--output", str(tmp_path / "out"), "--max-new-tokens", MAX_NEW_TOKENS, "--no-progress"]) == 0
    records = read_jsonl(tmp_path / "out" / "figstep.jsonl")
    assert [r["id"] for r in records] == ["query_ForbidQI_1_1_6", "query_ForbidQI_1_2_6"]
    assert {r["prompt"] for r in records} == {FIGSTEP_INSTRUCTION}


# --- batching -------------------------------------------------------------------------------------------------


def test_batch_sizes_1_and_4_give_the_same_greedy_answers(tiny_llava_dir, tmp_path):
    items = []
    for i in range(6):  # prompts of different lengths, with and without images, so that batches need padding
        image = None
        if i % 3:
            image = str(tmp_path / f"{i}.jpg")
            Image.new("RGB", (20 + 7 * i, 30), (30 * i, 90, 160)).save(image)
        items.append(Item(str(i), "s", "m", "What is shown in the image? " + "Please answer. " * i, image, "out"))
    generator = HFGenerator(infer_arguments(model=tiny_llava_dir, template="llava"), device="cpu")
    one = [generator.generate([item], max_new_tokens=8)[0].text for item in items]
    four = generator.generate(items[:4], max_new_tokens=8) + generator.generate(items[4:], max_new_tokens=8)
    assert one == [answer.text for answer in four]


# --- resume ---------------------------------------------------------------------------------------------------


class FakeGenerator:
    """Answers "answer <id>"; raises KeyboardInterrupt on the call numbered ``fail_on`` (a killed run)."""

    def __init__(self, model_ref="m", adapter_ref=None, fail_on=None):
        self.model_ref, self.adapter_ref, self.fail_on, self.calls = model_ref, adapter_ref, fail_on, 0
        self.seen: list[str] = []

    def generate(self, items, *, max_new_tokens, temperature=0.0):
        self.calls += 1
        if self.calls == self.fail_on:
            raise KeyboardInterrupt
        self.seen += [item.id for item in items]
        return [f"answer {item.id}" for item in items]


def fake_items(n=10):
    return [Item(str(i), "sc", "text", f"q{i}", None, "run") for i in range(n)]


def test_an_interrupted_run_resumes_where_it_stopped_without_duplicates(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        generate_to_files(fake_items(), tmp_path, FakeGenerator(fail_on=3), batch_size=3, progress=False)
    assert len(read_jsonl(tmp_path / "run.jsonl")) == 6
    second = FakeGenerator()
    report = generate_to_files(fake_items(), tmp_path, second, batch_size=3, progress=False)
    assert (report.n_skipped, second.seen) == (6, ["6", "7", "8", "9"])
    assert [r["id"] for r in read_jsonl(tmp_path / "run.jsonl")] == [str(i) for i in range(10)]


def test_a_cut_off_last_line_is_dropped_and_that_answer_generated_again(tmp_path):
    generate_to_files(fake_items(3), tmp_path, FakeGenerator(), progress=False)
    path = tmp_path / "run.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]) + lines[2][:20])  # killed while writing the third record
    again = FakeGenerator()
    generate_to_files(fake_items(3), tmp_path, again, progress=False)
    assert again.seen == ["2"]
    assert [r["id"] for r in read_jsonl(path)] == ["0", "1", "2"]


def test_a_damaged_line_in_the_middle_of_the_output_is_an_error(tmp_path):
    (tmp_path / "run.jsonl").write_text('{"id": "0"}\nnot json\n{"id": "2"}\n')
    with pytest.raises(DataError, match="line 2"):
        generate_to_files(fake_items(3), tmp_path, FakeGenerator(), progress=False)


def test_resuming_with_another_model_is_refused(tmp_path):
    generate_to_files(fake_items(2), tmp_path, FakeGenerator(model_ref="base"), progress=False)
    with pytest.raises(ConfigError, match="already holds answers of model 'base'"):
        generate_to_files(fake_items(4), tmp_path, FakeGenerator(model_ref="other"), progress=False)


def test_overwrite_discards_earlier_answers(tmp_path):
    generate_to_files(fake_items(2), tmp_path, FakeGenerator(model_ref="base"), progress=False)
    generate_to_files(fake_items(3), tmp_path, FakeGenerator(model_ref="other"), overwrite=True, progress=False)
    assert [r["model"] for r in read_jsonl(tmp_path / "run.jsonl")] == ["other"] * 3


# --- adapters -------------------------------------------------------------------------------------------------


def test_a_lora_adapter_is_applied_and_recorded(tiny_llava_dir, adapter, mmsb_run, tmp_path):
    data = make_mmsafetybench(tmp_path / "mmsb")
    assert cli_generate(tiny_llava_dir, data, tmp_path / "tuned", "--adapter", str(adapter)) == 0
    tuned = read_jsonl(tmp_path / "tuned" / "SD_TYPO" / "01-Illegal_Activitiy.jsonl")
    base = read_jsonl(mmsb_run / "SD_TYPO" / "01-Illegal_Activitiy.jsonl")
    assert {r["adapter"] for r in tuned} == {str(adapter)}
    assert [r["continuation"] for r in tuned] != [r["continuation"] for r in base]


def test_an_adapter_trained_on_another_base_model_is_refused_before_generation(
    tiny_llava_dir, adapter, tmp_path, capsys
):
    config_path = adapter.parent / "other-lora" / "adapter_config.json"
    config_path.parent.mkdir(exist_ok=True)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (config_path.parent / "adapter_model.safetensors").write_bytes(
        (adapter / "adapter_model.safetensors").read_bytes()
    )
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": "llava-hf/llava-1.5-7b-hf"}))
    data = make_mmsafetybench(tmp_path / "mmsb")
    assert cli_generate(tiny_llava_dir, data, tmp_path / "out", "--adapter", str(config_path.parent)) == 2
    assert "was trained on 'llava-hf/llava-1.5-7b-hf'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_adapter_whose_shapes_do_not_fit_the_base_model_is_refused(tiny_llava_dir, adapter, tmp_path):
    from rejection_align.demo.tiny import build_tiny_llava

    # same folder name as the adapter's base (so the name check passes), but a hidden size of 32, not 64
    other = build_tiny_llava(tmp_path / "elsewhere" / tiny_llava_dir.name, hidden_size=32)
    with pytest.raises(ConfigError, match="does not fit the base model.*size mismatch"):
        HFGenerator(infer_arguments(model=other, adapter=adapter, template="llava"), device="cpu")


# --- errors before any model loads ----------------------------------------------------------------------------


def test_missing_images_stop_the_run_before_the_model_is_loaded(tmp_path, capsys):
    data = make_mmsafetybench(tmp_path / "mmsb")
    (data / "imgs" / SCENARIOS[0] / "SD_TYPO" / "1.jpg").unlink()
    # the model path does not exist: reaching the model load would give another error
    assert cli_generate(tmp_path / "no-model", data, tmp_path / "out") == 2
    assert "1 of 4 images are missing" in capsys.readouterr().err


def test_a_wrong_benchmark_layout_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli_generate(tmp_path / "no-model", tmp_path / "empty", tmp_path / "out") == 2
    assert "not an MM-SafetyBench layout" in capsys.readouterr().err


def test_the_evaluation_modules_import_without_torch_or_matplotlib():
    code = (
        "import sys, rejection_align.eval.generate, rejection_align.eval.judge, rejection_align.eval.benchmarks;"
        "heavy = {'torch', 'transformers', 'peft', 'matplotlib'} & set(sys.modules); print(sorted(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
