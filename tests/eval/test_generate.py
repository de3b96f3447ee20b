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


# answer lines as generate writes them
KEY0, KEY2 = (json.dumps({"id": i, "scenario": "sc", "mode": "text"}) for i in "02")


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
    (tmp_path / "run.jsonl").write_text(f"{KEY0}\nnot json\n{KEY2}\n")
    with pytest.raises(DataError, match="line 2"):
        generate_to_files(fake_items(3), tmp_path, FakeGenerator(), progress=False)


def test_a_line_nested_too_deeply_in_the_output_is_an_error_not_a_traceback(tmp_path):
    (tmp_path / "run.jsonl").write_text(f"{KEY0}\n" + "[" * 5000 + "]" * 5000 + f"\n{KEY2}\n")
    with pytest.raises(DataError, match="line 2"):
        generate_to_files(fake_items(3), tmp_path, FakeGenerator(), progress=False)


def test_an_output_file_that_is_not_utf8_is_an_error_naming_it(tmp_path):
    (tmp_path / "run.jsonl").write_bytes(b'{"id": "\xff"}\n')
    with pytest.raises(DataError, match="run.jsonl is not UTF-8"):
        generate_to_files(fake_items(3), tmp_path, FakeGenerator(), progress=False)


def test_resuming_with_another_model_is_refused(tmp_path):
    generate_to_files(fake_items(2), tmp_path, FakeGenerator(model_ref="base"), progress=False)
    with pytest.raises(ConfigError, match="model: 'base' there, 'other' now"):
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


# --- prompts through LLaMA-Factory's template -----------------------------------------------------------------

LLAVA_HF_CHAT_TEMPLATE = (  # llava-hf/llava-1.5-7b-hf's own chat template: no system prompt
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}"
    "{% elif item['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% if message['role'] == 'user' %} {% else %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@pytest.fixture(scope="module")
def llava_hf_style_dir(tiny_llava_dir, tmp_path_factory) -> Path:
    """The tiny LLaVA with llava-hf's chat template (no system prompt), as the real checkpoint ships it."""
    import shutil

    out = tmp_path_factory.mktemp("llava-hf-style") / tiny_llava_dir.name
    shutil.copytree(tiny_llava_dir, out)
    for name in ("chat_template.jinja", "chat_template.json"):
        (out / name).unlink(missing_ok=True)
    (out / "chat_template.jinja").write_text(LLAVA_HF_CHAT_TEMPLATE)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def generic_prompts(tmp_path: Path) -> Path:
    image = tmp_path / "a.jpg"
    Image.new("RGB", (30, 30), "red").save(image)
    records = [{"id": "img", "prompt": "What is shown?", "image": "a.jpg"}, {"id": "txt", "prompt": "Say hi."}]
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(records))
    return path


def cli_generic(data: Path, out: Path, *extra: str) -> int:
    args = ["generate", "--benchmark", "generic", "--data", str(data), "--output", str(out)]
    return main([*args, "--max-new-tokens", "4", "--no-progress", "--device", "cpu", *extra])


def test_records_keep_the_llava_template_prompt_with_its_system_prompt_not_the_checkpoint_chat_template(
    llava_hf_style_dir, tmp_path
):
    data = generic_prompts(tmp_path)
    assert cli_generic(data, tmp_path / "out", "--model", str(llava_hf_style_dir), "--template", "llava") == 0
    image_record, text_record = read_jsonl(tmp_path / "out" / "prompts.jsonl")
    assert image_record["rendered_prompt"].startswith("A chat between a curious user and an artificial intelligence")
    assert image_record["rendered_prompt"].endswith("USER: <image>\nWhat is shown? ASSISTANT:")
    assert text_record["rendered_prompt"].endswith("questions.USER: Say hi. ASSISTANT:")
    assert image_record["template"] == "llava"


def test_template_hf_chat_keeps_the_checkpoint_chat_template(llava_hf_style_dir, tmp_path):
    data = generic_prompts(tmp_path)
    assert cli_generic(data, tmp_path / "out", "--model", str(llava_hf_style_dir), "--template", "hf-chat") == 0
    image_record, _ = read_jsonl(tmp_path / "out" / "prompts.jsonl")
    assert image_record["rendered_prompt"] == "USER: <image>\nWhat is shown? ASSISTANT:"


def test_a_system_prompt_given_on_the_command_line_replaces_the_template_default(tiny_llava_dir, tmp_path):
    data = generic_prompts(tmp_path)
    args = ["--model", str(tiny_llava_dir), "--template", "llava", "--system", "Be safe."]
    assert cli_generic(data, tmp_path / "out", *args) == 0
    assert read_jsonl(tmp_path / "out" / "prompts.jsonl")[1]["rendered_prompt"] == "Be safe.USER: Say hi. ASSISTANT:"


def test_without_a_template_generate_stops_before_loading_anything(tiny_llava_dir, tmp_path, capsys):
    data = generic_prompts(tmp_path)
    assert cli_generic(data, tmp_path / "out", "--model", str(tiny_llava_dir)) == 2
    assert "no template: pass --template NAME" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_unknown_template_is_a_clear_error(tiny_llava_dir, tmp_path, capsys):
    data = generic_prompts(tmp_path)
    assert cli_generic(data, tmp_path / "out", "--model", str(tiny_llava_dir), "--template", "no_such") == 2
    assert "no_such" in capsys.readouterr().err


def test_an_inference_yaml_replaces_model_adapter_and_template_flags(tiny_llava_dir, adapter, tmp_path):
    import yaml

    config = tmp_path / "infer.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(tiny_llava_dir),
                "adapter_name_or_path": str(adapter),
                "template": "llava",
                "infer_backend": "huggingface",
                "infer_dtype": "float32",
                "trust_remote_code": True,
            }
        )
    )
    data = generic_prompts(tmp_path)
    assert cli_generic(data, tmp_path / "yaml", str(config)) == 0
    args = ["--model", str(tiny_llava_dir), "--adapter", str(adapter), "--template", "llava"]
    assert cli_generic(data, tmp_path / "flags", *args) == 0
    from_yaml = read_jsonl(tmp_path / "yaml" / "prompts.jsonl")
    from_flags = read_jsonl(tmp_path / "flags" / "prompts.jsonl")
    assert [(r["adapter"], r["continuation"]) for r in from_yaml] == [
        (r["adapter"], r["continuation"]) for r in from_flags
    ]


def test_an_unknown_key_in_the_inference_yaml_is_a_clear_error(tiny_llava_dir, tmp_path, capsys):
    config = tmp_path / "infer.yaml"
    config.write_text(f"model_name_or_path: {tiny_llava_dir}\ntemplate: llava\nno_such_key: 1\n")
    assert cli_generic(generic_prompts(tmp_path), tmp_path / "out", str(config)) == 2
    assert "no_such_key" in capsys.readouterr().err


def test_resuming_with_another_template_is_refused(tmp_path):
    first = FakeGenerator()
    first.template_ref = "llava"
    generate_to_files(fake_items(2), tmp_path, first, progress=False)
    second = FakeGenerator()
    second.template_ref = "vicuna"
    with pytest.raises(ConfigError, match="template: 'llava' there, 'vicuna' now"):
        generate_to_files(fake_items(3), tmp_path, second, progress=False)


def test_an_adapter_config_that_is_not_an_object_exits_2_with_a_message(tiny_llava_dir, tmp_path, capsys):
    bad = tmp_path / "bad-lora"
    bad.mkdir()
    (bad / "adapter_config.json").write_text("[1, 2]")
    args = ["--model", str(tiny_llava_dir), "--template", "llava", "--adapter", str(bad)]
    assert cli_generic(generic_prompts(tmp_path), tmp_path / "out", *args) == 2
    assert "adapter_config.json: expected a JSON object" in capsys.readouterr().err


def test_a_missing_adapter_folder_is_a_clear_error_before_loading(tiny_llava_dir, tmp_path, capsys):
    args = ["--model", str(tiny_llava_dir), "--template", "llava", "--adapter", str(tmp_path / "saves" / "lora")]
    assert cli_generic(generic_prompts(tmp_path), tmp_path / "out", *args) == 2
    assert "adapter folder" in capsys.readouterr().err


def test_an_adapter_lacking_weights_for_modules_it_targets_is_refused(tiny_llava_dir, adapter, tmp_path):
    from safetensors.torch import load_file, save_file

    partial = tmp_path / "partial-lora"
    partial.mkdir()
    (partial / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    weights = load_file(adapter / "adapter_model.safetensors")
    save_file(
        {key: value for key, value in weights.items() if "v_proj" not in key}, partial / "adapter_model.safetensors"
    )
    with pytest.raises(ConfigError, match="does not fit the base model: Found missing adapter keys"):
        HFGenerator(infer_arguments(model=tiny_llava_dir, adapter=partial, template="llava"), device="cpu")
