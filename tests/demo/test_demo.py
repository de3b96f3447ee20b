"""The demo (``rejection-align demo``) end to end, and the shipped demo data it runs on.

The demo runs once per module as a real subprocess: tiny model, ``rejection-align mix``, ``llamafactory-cli train
configs/demo_tiny_llava.yaml`` (a subprocess of the demo), the tokenized dataset, generation and judging.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rejection_align.demo import assets


ROOT = Path(__file__).resolve().parents[2]
DEMO_DATA = ROOT / "data" / "demo"
SENTENCE = "I'm sorry, but I cannot assist with your request"
VENV_BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    return env


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    command = [
        str(VENV_BIN / "rejection-align"),
        "demo",
        "--out",
        str(out),
        "--max-steps",
        "3",
        "--max-new-tokens",
        "4",
    ]
    proc = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, proc.stdout


# ---------------------------------------------------------------------------------------------- the demo


@pytest.mark.slow
def test_demo_trains_a_lora_adapter_with_llamafactory_cli_and_saves_the_loss_plot(demo_run):
    out, stdout = demo_run
    adapter = out / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert (adapter / "training_loss.png").stat().st_size > 1000
    assert json.loads((adapter / "trainer_state.json").read_text())["global_step"] == 3
    assert "llamafactory-cli train" in stdout


@pytest.mark.slow
def test_demo_prints_a_rejection_answer_whose_closing_token_is_not_trained(demo_run):
    _, stdout = demo_run
    assert "I'm sorry, but I cannot assist with your request</s>" in stdout
    masked_rows = [line for line in stdout.splitlines() if "<- not trained (-100)" in line]
    assert masked_rows and "'</s>'" in masked_rows[0]


@pytest.mark.slow
def test_demo_masks_exactly_the_closing_tokens_of_the_rejection_answers_in_the_mix(demo_run):
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    out, _ = demo_run
    mixed = json.loads((out / "data" / "demo_mix.json").read_text())
    n_rejection_turns = sum(
        turn["from"] == "gpt" and turn["value"] == SENTENCE for record in mixed for turn in record["conversations"]
    )
    assert n_rejection_turns == 20

    eos = AutoTokenizer.from_pretrained(out / "tiny_llava").eos_token_id
    dataset = load_from_disk(str(out / "run" / "tokenized"))["train"]
    masked = trained = 0
    for row in dataset:
        ids, labels = row["input_ids"], row["labels"]
        for pos in range(1, len(ids)):
            if ids[pos] == eos and labels[pos - 1] != -100:
                masked += labels[pos] == -100
                trained += labels[pos] == eos
    assert masked == n_rejection_turns
    n_answers = sum(turn["from"] == "gpt" for record in mixed for turn in record["conversations"])
    assert trained == n_answers - n_rejection_turns


@pytest.mark.slow
def test_demo_judges_the_base_model_and_the_trained_adapter_side_by_side(demo_run):
    out, stdout = demo_run
    comparison = json.loads((out / "judge" / "compare.json").read_text())
    text = json.dumps(comparison)
    assert "base" in text and "trained" in text
    for label in ("base", "trained"):
        answers = (out / "generate" / label / "safety_prompts.jsonl").read_text().splitlines()
        assert len(answers) == len(json.loads((DEMO_DATA / "safety_prompts.json").read_text()))
    assert (out / "judge" / "compare.png").is_file()
    assert "demo finished" in stdout


@pytest.mark.slow
def test_demo_prints_every_step_with_its_wall_time(demo_run):
    _, stdout = demo_run
    for number in range(1, 6):
        assert f"[{number}/5]" in stdout
    assert stdout.count(" s\n") >= 5 and stdout.count("done in") == 5


# ---------------------------------------------------------------------------------------------- shipped demo data


def test_shipped_demo_data_is_byte_identical_to_what_the_generator_writes():
    expected = assets.render()
    shipped = {str(path.relative_to(DEMO_DATA)): path.read_bytes() for path in DEMO_DATA.rglob("*") if path.is_file()}
    assert sorted(shipped) == sorted(expected)
    for name, content in expected.items():
        assert shipped[name] == content, f"{name} differs: run scripts/make_demo_data.py"


def test_make_demo_data_script_regenerates_the_files(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_demo_data.py"), str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    for path in DEMO_DATA.rglob("*.png"):
        assert (tmp_path / path.relative_to(DEMO_DATA)).read_bytes() == path.read_bytes()


def test_demo_images_are_small_rgb_pngs_that_pil_reads():
    from PIL import Image

    images = sorted((DEMO_DATA / "images").glob("*.png"))
    assert len(images) == len(assets.COLORS) * len(assets.SHAPES)
    for path in images:
        assert path.stat().st_size < 8 * 1024
        with Image.open(path) as image:
            image.load()
            assert image.size == (32, 32) and image.mode == "RGB"
            assert image.getpixel((0, 0)) == (255, 255, 255)
            assert image.getpixel((16, 16)) != (255, 255, 255) or "stripes" in path.name


@pytest.mark.parametrize("name, size", [("rejection_source.json", 60), ("instruct.json", 200)])
def test_demo_llava_files_are_valid_llava_format_with_existing_images(name, size):
    records = json.loads((DEMO_DATA / name).read_text())
    assert len(records) == size
    assert len({record["id"] for record in records}) == size
    for record in records:
        turns = record["conversations"]
        assert [turn["from"] for turn in turns] == ["human", "gpt"] * (len(turns) // 2)
        n_tags = sum(turn["value"].count("<image>") for turn in turns)
        if "image" in record:
            assert (DEMO_DATA / record["image"]).is_file()
            assert n_tags == 1
        else:
            assert n_tags == 0


def test_demo_data_supports_every_mix_option():
    source = json.loads((DEMO_DATA / "rejection_source.json").read_text())
    instruct = json.loads((DEMO_DATA / "instruct.json").read_text())
    follow_ups = [t for r in source for t in r["conversations"] if t["value"].lower().startswith("what about")]
    assert follow_ups, "--random-turn has 'what about' follow-ups to skip"
    assert {r["id"] for r in source} <= {r["id"] for r in instruct}, "--similar finds shared ids"
    assert any("image" not in r for r in instruct), "text-only records, as in llava_v1_5_mix665k.json"
    assert any(t["value"].endswith("\n<image>") for r in source for t in r["conversations"]), "image tag at the end"


@pytest.mark.parametrize("name, benign", [("safety_prompts.json", False), ("benign_prompts.json", True)])
def test_demo_prompt_sets_load_as_generic_benchmarks(name, benign):
    from rejection_align.eval.benchmarks import load_generic

    items = load_generic(DEMO_DATA / name)
    assert len(items) >= 12
    assert all(Path(item.image).is_file() for item in items)
    assert all(item.benign is benign for item in items)
