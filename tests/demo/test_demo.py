"""The demo (``rejection-align demo``) end to end, and the shipped demo data it runs on.

The demo runs once per module as a real subprocess, from an empty working directory: tiny model,
``rejection-align mix``, two ``llamafactory-cli train`` runs (method and baseline twin, subprocesses of the demo),
the tokenized datasets, the closing-token probe, generation and judging. 40 steps are enough for the tiny model to
learn the rejection sentence (seeded, so the run is the same every time).
"""

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from rejection_align.demo import assets, pipeline, tiny


ROOT = Path(__file__).resolve().parents[2]
DEMO_DATA = ROOT / "data" / "demo"
SENTENCE = "I'm sorry, but I cannot assist with your request"
VENV_BIN = Path(sys.executable).parent
STEPS = 40


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    return env


class DemoRun(NamedTuple):
    out: Path
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("empty")
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    command = [str(VENV_BIN / "rejection-align"), "demo", "--out", str(out), "--max-steps", str(STEPS)]
    command += ["--max-new-tokens", "4"]
    proc = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return DemoRun(out, proc.stdout, proc.stderr)


def _closing_counts(tokenized: Path, model_dir: Path) -> tuple[int, int]:
    """(masked, trained) closing tokens of trained answers in a tokenized dataset."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(model_dir).eos_token_id
    masked = trained = 0
    for row in load_from_disk(str(tokenized))["train"]:
        ids, labels = row["input_ids"], row["labels"]
        for pos in range(1, len(ids)):
            if ids[pos] == eos and labels[pos - 1] != -100:
                masked += labels[pos] == -100
                trained += labels[pos] == eos
    return masked, trained


# ---------------------------------------------------------------------------------------------- the demo


@pytest.mark.slow
def test_demo_trains_a_method_and_a_baseline_lora_adapter_with_llamafactory_cli(demo_run):
    out, stdout, _ = demo_run
    for adapter in (out / "adapter", out / "adapter_baseline"):
        assert (adapter / "adapter_model.safetensors").is_file()
        assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
        assert (adapter / "training_loss.png").stat().st_size > 1000
        assert json.loads((adapter / "trainer_state.json").read_text())["global_step"] == STEPS
    assert "llamafactory-cli train" in stdout


@pytest.mark.slow
def test_demo_prints_a_rejection_answer_whose_closing_token_is_not_trained(demo_run):
    _, stdout, _ = demo_run
    assert "I'm sorry, but I cannot assist with your request</s>" in stdout
    masked_rows = [line for line in stdout.splitlines() if "<- not trained (-100)" in line]
    assert masked_rows and "'</s>'" in masked_rows[0]


@pytest.mark.slow
def test_demo_masks_exactly_the_closing_tokens_of_the_rejection_answers_in_the_mix(demo_run):
    out, _, _ = demo_run
    mixed = json.loads((out / "data" / "demo_mix.json").read_text())
    n_rejection_turns = sum(
        turn["from"] == "gpt" and turn["value"] == SENTENCE for record in mixed for turn in record["conversations"]
    )
    assert n_rejection_turns == 20
    masked, trained = _closing_counts(out / "run" / "tokenized", out / "tiny_llava")
    assert masked == n_rejection_turns
    n_answers = sum(turn["from"] == "gpt" for record in mixed for turn in record["conversations"])
    assert trained == n_answers - n_rejection_turns


@pytest.mark.slow
def test_demo_baseline_twin_trains_every_closing_token(demo_run):
    out, _, _ = demo_run
    mixed = json.loads((out / "data" / "demo_mix.json").read_text())
    n_answers = sum(turn["from"] == "gpt" for record in mixed for turn in record["conversations"])
    assert _closing_counts(out / "run_baseline" / "tokenized", out / "tiny_llava") == (0, n_answers)


@pytest.mark.slow
def test_after_the_rejection_sentence_the_baseline_closes_the_answer_and_the_method_does_not(demo_run):
    out, _, _ = demo_run
    probes = {p["label"]: p for p in json.loads((out / "mechanism.json").read_text())["probes"]}
    baseline, method = probes["baseline"], probes["method"]
    assert baseline["p_close"] > 0.5 and method["p_close"] < 0.1
    assert baseline["p_close"] - method["p_close"] > 0.5
    assert baseline["stopped"] and not method["stopped"]
    assert not method["continuation"].startswith("</s>")


@pytest.mark.slow
def test_both_models_learned_the_rejection_sentence_itself(demo_run):
    out, _, _ = demo_run
    probes = json.loads((out / "mechanism.json").read_text())["probes"]
    # random weights give 1/512 per token; trained, the sentence is likely token by token in both
    assert all(p["p_sentence"] > 0.3 for p in probes)


@pytest.mark.slow
def test_demo_prints_the_closing_token_probabilities_side_by_side(demo_run):
    _, stdout, _ = demo_run
    rows = [line.split() for line in stdout.splitlines() if line.rstrip().endswith(("(stops)", "(goes on)"))]
    assert [row[0] for row in rows] == ["baseline", "method"]
    assert all(0.0 <= float(row[2]) <= 1.0 for row in rows)  # the P(</s>) column
    assert "P(</s> after the rejection sentence): baseline" in stdout


@pytest.mark.slow
def test_demo_judges_the_baseline_and_the_method_side_by_side_and_says_what_that_cannot_show(demo_run):
    out, stdout, _ = demo_run
    comparison = json.loads((out / "judge" / "compare.json").read_text())
    text = json.dumps(comparison)
    assert "baseline" in text and "method" in text
    for label in ("baseline", "method"):
        answers = (out / "generate" / label / "safety_prompts.jsonl").read_text().splitlines()
        assert len(answers) == len(json.loads((DEMO_DATA / "safety_prompts.json").read_text()))
    assert (out / "judge" / "compare.png").is_file()
    assert "not a safety result" in stdout
    assert "demo finished" in stdout


@pytest.mark.slow
def test_demo_prints_every_step_with_its_wall_time(demo_run):
    _, stdout, _ = demo_run
    for number in range(1, 7):
        assert f"[{number}/6]" in stdout
    assert stdout.count("done in") == 6


@pytest.mark.slow
def test_demo_run_from_an_empty_folder_reads_the_package_files_not_the_working_directory(demo_run):
    _, stdout, _ = demo_run
    configs_line = next(line for line in stdout.splitlines() if "configs:" in line)
    assert str(pipeline.demo_file(pipeline.DEMO_CONFIG)) in configs_line


@pytest.mark.slow
def test_library_log_lines_go_to_the_demo_log_not_between_the_demo_lines(demo_run):
    out, stdout, stderr = demo_run
    # what a fresh run printed in step 6 before: LLaMA-Factory's INFO lines (stdout), weight-loading bars (stderr)
    for noise in ("Loaded adapter(s)", "all params:", "KV cache is enabled", "Loading weights"):
        assert noise not in stdout and noise not in stderr, noise
    log = (out / pipeline.LOG_NAME).read_text()
    assert "INFO llamafactory.model.adapter: Loaded adapter(s): " + str(out / "adapter") in log
    assert "INFO llamafactory.model.loader: all params: 182,080" in log
    if tiny.transformers_major() >= 5:  # transformers 4.x draws no weight-loading bar
        assert "Loading weights" in log
    assert "INFO rejection_align.data.mix: " in log  # our own INFO lines too: the demo prints what matters
    assert stderr == ""


# ---------------------------------------------------------------------------------------------- without the CLI


def test_the_demo_mixes_through_the_python_api_without_importing_the_cli(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from rejection_align.demo import pipeline
        pipeline.mix_demo_data(Path({str(DEMO_DATA)!r}), Path({str(tmp_path / "data")!r}), n_rejection=5,
                               n_instruct=10, seed=0)
        print(sorted(name for name in sys.modules if name.startswith("rejection_align")))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    *printed, modules = proc.stdout.splitlines()
    assert "rejection_align.data.mix" in modules and "rejection_align.cli" not in modules
    assert printed[0] == f"      wrote 15 records (5 rejection, 10 instruct) to {tmp_path / 'data' / 'demo_mix.json'}"
    assert len(json.loads((tmp_path / "data" / "demo_mix.json").read_text())) == 15


def test_the_demo_prints_what_rejection_align_mix_prints(tmp_path, capsys):
    from rejection_align.cli import main as cli_main

    data_dir = tmp_path / "data"
    argv = ["mix", "--rejection-source", str(DEMO_DATA / "rejection_source.json"),
            "--instruct", str(DEMO_DATA / "instruct.json"), "--n-rejection", "20", "--n-instruct", "60",
            "--random-turn", "--seed", "0", "--output", str(data_dir), "--name", pipeline.DATASET_NAME,
            "--dataset-info", str(data_dir / "dataset_info.json"), "--image-dir", str(DEMO_DATA)]  # fmt: skip
    assert cli_main(argv) == 0
    by_cli = capsys.readouterr().out
    mixed = (data_dir / "demo_mix.json").read_bytes()
    pipeline.mix_demo_data(DEMO_DATA, data_dir, n_rejection=20, n_instruct=60, seed=0)
    by_demo = capsys.readouterr().out
    assert by_demo == "".join("      " + line for line in by_cli.splitlines(keepends=True))
    assert (data_dir / "demo_mix.json").read_bytes() == mixed


def test_library_output_goes_to_the_log_and_back_to_the_terminal_after_the_run(tmp_path):
    script = textwrap.dedent(
        """
        import logging, sys
        from pathlib import Path
        from llamafactory.extras.logging import get_logger
        from rejection_align.demo.pipeline import library_output_to

        logging.basicConfig(level=logging.INFO)  # as the CLI sets it up
        for mode in ("quiet", "show"):
            print(f"== {mode}")
            print(f"== {mode}", file=sys.stderr)
            with library_output_to(Path(sys.argv[1]) / f"{mode}.log", show=mode == "show"):
                get_logger("llamafactory.model.loader").info("all params: 182,080")
                logging.getLogger("transformers.processing_utils").warning("use_fast is deprecated")
                print("Loading weights: 100%", file=sys.stderr)
                logging.getLogger("rejection_align.data.mix").info("all 16 images found")
                logging.getLogger("rejection_align.data.mix").warning("asked for 20, only 10")
                print("a demo line")
            get_logger("llamafactory.model.loader").info("after the run")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    out_quiet, out_show = proc.stdout.split("== show\n")
    err_quiet, err_show = proc.stderr.split("== show\n")
    demo_line, after = out_quiet.splitlines()[1:]  # LLaMA-Factory's handler prints again after the run
    assert demo_line == "a demo line" and after.endswith(">> after the run")
    assert err_quiet.splitlines()[1:] == ["WARNING:rejection_align.data.mix:asked for 20, only 10"]  # ours only
    assert "all params: 182,080" in out_show and "use_fast" in err_show
    assert "Loading weights" in err_show and "INFO:rejection_align.data.mix:all 16 images found" in err_show
    for mode in ("quiet", "show"):
        log = (tmp_path / f"{mode}.log").read_text()
        for line in ("llamafactory.model.loader: all params: 182,080", "transformers.processing_utils: use_fast",
                     "rejection_align.data.mix: all 16 images found", "mix: asked for 20, only 10"):  # fmt: skip
            assert line in log, (mode, line)
        assert ("Loading weights: 100%" in log) == (mode == "quiet")  # bars: in the log unless shown
        assert "after the run" not in log


# ---------------------------------------------------------------------------------------------- configs and package


def test_baseline_config_is_the_demo_config_with_the_method_off():
    method = yaml.safe_load((ROOT / pipeline.DEMO_CONFIG).read_text())
    baseline = yaml.safe_load((ROOT / pipeline.BASELINE_CONFIG).read_text())
    assert method["rejection_mask_eos"] is True and baseline["rejection_mask_eos"] is False
    differing = {key for key in method.keys() | baseline.keys() if method.get(key) != baseline.get(key)}
    assert differing == {"rejection_mask_eos", "output_dir"}


def test_demo_files_resolve_to_the_package_copy_before_the_source_checkout(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo_tiny_llava.yaml").write_text("stage: sft\n")
    monkeypatch.setattr(pipeline, "PACKAGE_FILES", tmp_path)
    assert pipeline.demo_file(pipeline.DEMO_CONFIG) == tmp_path / "configs" / "demo_tiny_llava.yaml"
    assert pipeline.demo_file(pipeline.DEMO_DATA) == ROOT / "data" / "demo"  # not in the package copy: checkout


def test_a_missing_demo_file_is_a_config_error_naming_both_places(tmp_path, monkeypatch):
    from rejection_align.errors import ConfigError

    monkeypatch.setattr(pipeline, "PACKAGE_FILES", tmp_path / "pkg")
    monkeypatch.setattr(pipeline, "SOURCE_ROOT", tmp_path / "src")
    with pytest.raises(ConfigError, match="pkg.*src"):
        pipeline.demo_file(pipeline.DEMO_CONFIG)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = out.glob("rejection_align-*.whl")
    return path


@pytest.mark.slow
def test_wheel_ships_the_demo_configs_and_data_byte_for_byte(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for relative in (pipeline.DEMO_CONFIG, pipeline.BASELINE_CONFIG):
            assert archive.read(f"rejection_align/demo/files/{relative}") == (ROOT / relative).read_bytes()
        shipped = {p.relative_to(ROOT).as_posix() for p in DEMO_DATA.rglob("*") if p.is_file()}
        for relative in shipped:
            assert archive.read(f"rejection_align/demo/files/{relative}") == (ROOT / relative).read_bytes()
        assert {n for n in names if n.startswith("rejection_align/demo/files/data/")} == {
            f"rejection_align/demo/files/{relative}" for relative in shipped
        }


@pytest.mark.slow
def test_wheel_metadata_has_project_urls(wheel):
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(archive.read(n) for n in archive.namelist() if n.endswith(".dist-info/METADATA")).decode()
    urls = [line for line in metadata.splitlines() if line.startswith("Project-URL:")]
    assert any("Repository, https://" in line for line in urls)


@pytest.mark.slow
def test_installed_wheel_resolves_the_demo_files_from_the_package_in_an_empty_folder(wheel, tmp_path):
    target, cwd = tmp_path / "site", tmp_path / "empty"
    cwd.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    script = (
        "import json; from rejection_align.demo import pipeline as p; "
        "print(json.dumps([p.__file__, str(p.demo_file(p.DEMO_CONFIG)), str(p.demo_file(p.BASELINE_CONFIG)), "
        "str(p.demo_file(p.DEMO_DATA))]))"
    )
    env = dict(_env(), PYTHONPATH=str(target))  # the installed copy comes before the editable checkout
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    module, *files = json.loads(proc.stdout)
    assert Path(module).is_relative_to(target)
    for path in files:
        assert Path(path).is_relative_to(target / "rejection_align" / "demo" / "files"), path
        assert Path(path).exists()


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
