"""generate never mixes or misleads (issue 19): one identity per output folder, strict record types, every failure a
message before the model loads, quiet by default, options declared once, one JSON-Lines reader.

Checks that need no model run without one: a model path that does not exist proves that the check came first.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_generate
from test_generate import (
    SCENARIOS,
    FakeGenerator,
    cli_generic,
    fake_items,
    generic_prompts,
    make_mmsafetybench,
    read_jsonl,
)

from rejection_align.cli import build_parser, main
from rejection_align.errors import ConfigError, DataError
from rejection_align.eval import jsonl
from rejection_align.eval.backends import Decoding
from rejection_align.eval.benchmarks import Item, load_generic
from rejection_align.eval.generate import generate_to_files
from rejection_align.eval.settings import SETTINGS_NAME, GenerateOptions
from rejection_align.options import from_args, option_fields, recorded


adapter = test_generate.adapter  # the real LoRA adapter fixture of test_generate.py
SRC = Path(__file__).resolve().parents[2] / "src"


def settings_of(out: Path) -> dict:
    return json.loads((out / SETTINGS_NAME).read_text())["settings"]


def write_prompts(tmp_path: Path, *records: dict | str, name: str = "p.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


# --- one identity per output folder (19.1) ----------------------------------------------------------------------


def test_resuming_with_another_system_prompt_or_decoding_is_refused_naming_setting_and_values(
    tiny_llava_dir, tmp_path, capsys
):
    data = generic_prompts(tmp_path)
    base = ["--model", str(tiny_llava_dir), "--template", "llava", "--limit", "1"]
    assert cli_generic(data, tmp_path / "out", *base, "--system", "You are a pirate.") == 0
    capsys.readouterr()
    before = (tmp_path / "out" / "prompts.jsonl").read_text()
    # no --system, and sampling: both differences named, before any model loads (the run is refused at once)
    assert cli_generic(data, tmp_path / "out", *base, "--temperature", "0.9", "--max-new-tokens", "64") == 2
    err = capsys.readouterr().err
    assert "system: 'You are a pirate.' there, None now" in err
    assert "temperature: 0.0 there, 0.9 now" in err and "max_new_tokens: 4 there, 64 now" in err
    assert (tmp_path / "out" / "prompts.jsonl").read_text() == before


def test_resuming_with_the_same_settings_continues(tmp_path):
    generate_to_files(fake_items(2), tmp_path, FakeGenerator(), progress=False)
    report = generate_to_files(fake_items(4), tmp_path, FakeGenerator(), progress=False)
    assert (report.n_skipped, report.n_generated) == (2, 2)


@pytest.mark.parametrize(
    "change",
    [
        {"decoding": Decoding(max_new_tokens=64)},
        {"decoding": Decoding(temperature=0.7)},
        {"decoding": Decoding(repetition_penalty=1.3)},
        {"settings": {"model": "m", "adapter": None, "template": None, "system": "Be safe."}},
    ],
    ids=["max_new_tokens", "temperature", "repetition_penalty", "system"],
)
def test_any_recorded_difference_refuses_a_resume(tmp_path, change):
    generate_to_files(fake_items(2), tmp_path, FakeGenerator(), progress=False)
    with pytest.raises(ConfigError, match="holds answers made with other settings"):
        generate_to_files(fake_items(3), tmp_path, FakeGenerator(), progress=False, **change)


def test_greedy_decoding_records_no_sampling_values_so_an_unused_top_p_is_no_difference(tmp_path):
    generate_to_files(fake_items(1), tmp_path, FakeGenerator(), progress=False)
    generate_to_files(fake_items(2), tmp_path, FakeGenerator(), decoding=Decoding(top_p=0.5), progress=False)
    assert settings_of(tmp_path)["top_p"] is None and settings_of(tmp_path)["do_sample"] is False


def test_overwrite_starts_the_whole_folder_over_not_only_the_selected_modes(tmp_path):
    sd_typo = [Item(str(i), "sc", "SD_TYPO", "q", None, "SD_TYPO/sc") for i in range(2)]
    typo = [Item(str(i), "sc", "TYPO", "q", None, "TYPO/sc") for i in range(2)]
    generate_to_files(sd_typo + typo, tmp_path, FakeGenerator(adapter_ref="a"), progress=False)
    generate_to_files(sd_typo, tmp_path, FakeGenerator(adapter_ref="other"), overwrite=True, progress=False)
    assert not (tmp_path / "TYPO").exists()
    assert {r["adapter"] for r in read_jsonl(tmp_path / "SD_TYPO" / "sc.jsonl")} == {"other"}
    assert json.loads((tmp_path / SETTINGS_NAME).read_text())["files"] == ["SD_TYPO/sc.jsonl"]


def test_a_folder_with_answers_but_no_settings_record_is_refused(tmp_path):
    (tmp_path / "run.jsonl").write_text('{"id": "0", "scenario": "sc", "mode": "text", "continuation": "x"}\n')
    with pytest.raises(ConfigError, match="no record of the settings"):
        generate_to_files(fake_items(2), tmp_path, FakeGenerator(), progress=False)


def test_a_run_killed_before_its_first_answer_may_restart_with_other_settings(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        generate_to_files(fake_items(2), tmp_path, FakeGenerator(fail_on=1), progress=False)
    generate_to_files(fake_items(2), tmp_path, FakeGenerator(model_ref="other"), progress=False)
    assert settings_of(tmp_path)["model"] == "other"


def test_the_inference_yamls_generation_keys_apply_and_flags_override_them(tiny_llava_dir, tmp_path):
    config = tmp_path / "infer.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_llava_dir}\ntemplate: llava\nmax_new_tokens: 2\ntemperature: 0.8\n"
        "top_p: 0.9\ntop_k: 20\nrepetition_penalty: 1.2\ndo_sample: true\n"
    )
    data = generic_prompts(tmp_path)
    assert main(["generate", str(config), "--benchmark", "generic", "--data", str(data), "--output",
                 str(tmp_path / "yaml"), "--no-progress", "--device", "cpu"]) == 0  # fmt: skip
    recorded = settings_of(tmp_path / "yaml")
    assert {k: recorded[k] for k in ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty")} == {
        "max_new_tokens": 2, "temperature": 0.8, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.2
    }  # fmt: skip
    assert recorded["do_sample"] is True
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llava_dir)
    for record in read_jsonl(tmp_path / "yaml" / "prompts.jsonl"):  # max_new_tokens: 2 from the YAML applied
        assert len(tokenizer(record["continuation"], add_special_tokens=False)["input_ids"]) <= 3
    args = ["--temperature", "0", "--max-new-tokens", "3"]
    assert cli_generic(data, tmp_path / "flags", str(config), *args) == 0
    recorded = settings_of(tmp_path / "flags")
    assert (recorded["temperature"], recorded["do_sample"], recorded["top_p"], recorded["max_new_tokens"]) == (
        0.0, False, None, 3
    )  # fmt: skip


# --- strict types where records are read (19.3) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "record, message",
    [
        ('{"id": "a", "prompt": "x", "benign": "false"}', r"record 0 \(id 'a'\): 'benign' is a string"),
        ('{"id": "a", "prompt": "x", "benign": 0}', "'benign' is an int"),
        ('{"id": NaN, "prompt": "x"}', "line 1 is not valid JSON.*NaN"),
        ('{"id": {"x": 1}, "prompt": "x"}', "'id' is an object.*expected a string or an integer"),
        ('{"id": [1], "prompt": "x"}', "'id' is a list"),
        ('{"id": 1.5, "prompt": "x"}', "'id' is a float"),
        ('{"id": true, "prompt": "x"}', "'id' is a bool"),
        ('{"id": "a", "prompt": "x", "scenario": ["s"]}', "'scenario' is a list"),
        ('{"id": "a", "prompt": "hi\\ud800"}', "line 1: field 'prompt' is not valid Unicode"),
        ('{"id": "a", "prompt": "x", "image": {"p": 1}}', "'image' is a dict"),
        ('{"id": "a", "prompt": ' + "[" * 1500 + "]" * 1500 + "}", "line 1 is nested too deeply"),
    ],
    ids=[
        "benign-str",
        "benign-int",
        "id-nan",
        "id-object",
        "id-list",
        "id-float",
        "id-bool",
        "scenario-list",
        "lone-surrogate",
        "image-object",
        "nested",
    ],  # fmt: skip
)
def test_a_generic_record_of_the_wrong_type_is_an_error_naming_file_record_and_field(tmp_path, record, message):
    path = write_prompts(tmp_path, record)
    with pytest.raises(DataError, match=message) as caught:
        load_generic(path)
    assert str(path) in str(caught.value) and "null" not in str(caught.value)


def test_integer_and_string_ids_and_real_booleans_are_accepted(tmp_path):
    path = write_prompts(tmp_path, {"id": 7, "prompt": "x", "benign": True}, {"id": "b", "prompt": "y"})
    items = load_generic(path)
    assert [(item.id, item.benign) for item in items] == [("7", True), ("b", False)]


def test_a_lone_surrogate_in_a_json_array_is_refused_before_any_model_loads(tmp_path, capsys):
    path = tmp_path / "p.json"
    path.write_text('[{"id": "a", "prompt": "fine"}, {"id": "b", "prompt": "hi\\ud800"}]')
    assert cli_generic(path, tmp_path / "out", "--model", str(tmp_path / "no-model"), "--template", "llava") == 2
    assert "field '[1].prompt' is not valid Unicode" in capsys.readouterr().err


def test_an_mmsafetybench_question_that_is_not_valid_unicode_is_named(tmp_path):
    data = make_mmsafetybench(tmp_path / "mmsb")
    path = data / "processed_questions" / f"{SCENARIOS[1]}.json"
    path.write_text(path.read_text().replace("thing 1?", "thing \\udc80?"))
    with pytest.raises(DataError, match=r"02-HateSpeech\.json: the file: field '1.Question' is not valid Unicode"):
        load_generic_or_mmsb(data)


def load_generic_or_mmsb(data):
    from rejection_align.eval.benchmarks import load_mmsafetybench

    return load_mmsafetybench(data, scenarios=SCENARIOS, modes=["text"], text_field="Question")


def test_an_answer_line_of_the_wrong_type_stops_a_resume_naming_line_and_field(tmp_path):
    generate_to_files(fake_items(2), tmp_path, FakeGenerator(), progress=False)
    path = tmp_path / "run.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[1].replace('"id": "1"', '"id": 1.5'))
    with pytest.raises(DataError, match=r"run\.jsonl: line 2: field 'id'"):
        generate_to_files(fake_items(3), tmp_path, FakeGenerator(), progress=False)


# --- every failure a message, before the model loads (19.4) -----------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--temperature", "-1"], "temperature must be 0 .greedy. or more"),
        (["--temperature", "nan"], "--temperature must be a finite number"),
        (["--top-p", "0"], r"top_p must be in \(0, 1\]"),
        (["--top-p", "1.5"], r"top_p must be in \(0, 1\]"),
        (["--top-k", "-3"], "top_k must be 0"),
        (["--repetition-penalty", "0"], "repetition_penalty must be above 0"),
        (["--max-new-tokens", "0"], "max_new_tokens must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--device", "bogus"], "--device 'bogus' is not a torch device"),
        (["--device", "cuda:99"], "--device cuda:99: "),
        (["--system", "caf\udce9"], "--system: .* is not valid Unicode"),
    ],
    ids=[
        "temperature-negative",
        "temperature-nan",
        "top-p-0",
        "top-p-1.5",
        "top-k",
        "repetition",
        "max-new-0",
        "batch-0",
        "limit-0",
        "device-bogus",
        "device-cuda-99",
        "system-bytes",
    ],  # fmt: skip
)
def test_bad_options_are_refused_before_the_model_loads(tmp_path, capsys, flags, message):
    data = generic_prompts(tmp_path)
    args = ["--model", str(tmp_path / "no-model"), "--template", "llava", *flags]
    assert cli_generic(data, tmp_path / "out", *args) == 2
    err = capsys.readouterr().err
    assert "rejection-align generate: error:" in err and "Traceback" not in err
    assert __import__("re").search(message, err), err


def test_a_prompt_with_an_image_placeholder_but_no_image_is_refused_before_the_model_loads(tmp_path, capsys):
    path = write_prompts(tmp_path, {"id": "a", "prompt": "fine"}, {"id": "b", "prompt": "Look: <image> what?"})
    assert cli_generic(path, tmp_path / "out", "--model", str(tmp_path / "no-model"), "--template", "llava") == 2
    assert "p.jsonl record 1, id 'b': the prompt holds '<image>' but no image" in capsys.readouterr().err


def test_an_output_that_is_a_file_is_refused_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "out").write_text("not a folder")
    args = ["--model", str(tmp_path / "no-model"), "--template", "llava"]
    assert cli_generic(generic_prompts(tmp_path), tmp_path / "out", *args) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_an_output_through_a_dangling_link_or_a_settings_record_that_is_a_folder_is_named(tmp_path, capsys):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere" / "deeper")
    args = ["--model", str(tmp_path / "no-model"), "--template", "llava"]
    assert cli_generic(generic_prompts(tmp_path), tmp_path / "link", *args) == 2
    assert "which does not exist" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()
    (tmp_path / "out" / SETTINGS_NAME).mkdir(parents=True)
    assert cli_generic(generic_prompts(tmp_path), tmp_path / "out", *args) == 2
    assert "expected generate's settings record (a file)" in capsys.readouterr().err


def test_a_yaml_temperature_that_is_not_a_number_is_named(tmp_path, capsys):
    config = tmp_path / "infer.yaml"
    config.write_text(f"model_name_or_path: {tmp_path / 'no-model'}\ntemplate: llava\ntemperature: hot\n")
    assert cli_generic(generic_prompts(tmp_path), tmp_path / "out", str(config)) == 2
    assert f"temperature must be a number (in {config}), got 'hot'" in capsys.readouterr().err


def test_a_corrupt_image_is_an_error_before_any_answer_is_written(tmp_path, capsys):
    data = generic_prompts(tmp_path)
    good = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "a.jpg").write_bytes(good[: len(good) // 2])  # a truncated JPEG: PIL opens it, decoding fails
    args = ["--model", str(tmp_path / "no-model"), "--template", "llava"]
    assert cli_generic(data, tmp_path / "out", *args) == 2
    assert "1 of 1 images cannot be decoded" in capsys.readouterr().err
    assert not list(tmp_path.glob("out/*.jsonl"))


def test_a_corrupt_png_stops_the_library_entry_point_before_the_first_answer(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    items = [Item("0", "s", "m", "q", None, "run"), Item("1", "s", "m", "q", str(bad), "run")]
    generator = FakeGenerator()
    with pytest.raises(DataError, match="bad.png: "):
        generate_to_files(items, tmp_path / "out", generator, progress=False)
    assert generator.calls == 0 and not (tmp_path / "out" / "run.jsonl").exists()


def test_a_full_disk_names_the_file(tmp_path, capsys):
    (tmp_path / "run.jsonl").symlink_to("/dev/full")  # every write there fails with ENOSPC
    with pytest.raises(OSError, match="No space left") as caught:
        generate_to_files(fake_items(2), tmp_path, FakeGenerator(), progress=False)
    assert caught.value.filename == str(tmp_path / "run.jsonl")


def test_an_adapter_folder_without_weights_names_the_adapter_not_the_model(tiny_llava_dir, adapter, tmp_path, capsys):
    empty = tmp_path / "unfinished-lora"
    empty.mkdir()
    (empty / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    args = ["--model", str(tiny_llava_dir), "--template", "llava", "--adapter", str(empty)]
    assert cli_generic(generic_prompts(tmp_path), tmp_path / "out", *args) == 2
    err = capsys.readouterr().err
    assert f"adapter {empty}: no adapter weights" in err and "cannot load" not in err


def test_an_adapter_with_weights_for_modules_the_model_lacks_is_refused_on_the_llamafactory_path(
    tiny_llava_dir, adapter, tmp_path
):
    from safetensors.torch import load_file, save_file

    from rejection_align.eval.backends import HFGenerator, infer_arguments

    extra = tmp_path / "extra-lora"
    extra.mkdir()
    (extra / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    weights = load_file(adapter / "adapter_model.safetensors")
    key = next(k for k in weights if "q_proj.lora_A" in k)
    weights[key.replace("layers.0.", "layers.57.")] = weights[key].clone()  # a layer the tiny model does not have
    save_file(weights, extra / "adapter_model.safetensors")
    with pytest.raises(ConfigError, match="does not fit the base model: 1 of its weights have no module.*layers.57"):
        HFGenerator(infer_arguments(model=tiny_llava_dir, adapter=extra, template="llava"), device="cpu")


def test_a_broken_llamafactory_is_a_message_before_anything_loads(tmp_path):
    fake = tmp_path / "site" / "llamafactory"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise RuntimeError('half-installed')\n")
    data = generic_prompts(tmp_path)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{SRC}"}
    cmd = [sys.executable, "-m", "rejection_align.cli", "generate", "--benchmark", "generic", "--data", str(data),
           "--output", str(tmp_path / "out"), "--model", str(tmp_path / "no-model"), "--template", "llava"]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "LLaMA-Factory cannot be imported (RuntimeError: half-installed)" in result.stderr
    assert "Traceback" not in result.stderr


def test_one_answer_is_one_answer_and_the_scenarios_hint_names_the_file_that_is_there(
    tiny_llava_dir, tmp_path, capsys
):
    data = generic_prompts(tmp_path)
    assert cli_generic(data, tmp_path / "out", "--model", str(tiny_llava_dir), "--template", "llava", "--limit",
                       "1") == 0  # fmt: skip
    assert "1 answer generated, 0 already there" in capsys.readouterr().out
    mmsb = make_mmsafetybench(tmp_path / "mmsb")
    args = ["--scenarios", "01-Illegal_Activity"]  # the usual English spelling; the benchmark's file has a typo
    assert main(["generate", "--benchmark", "mmsafetybench", "--data", str(mmsb), "--output", str(tmp_path / "o"),
                 "--model", "m", "--template", "llava", *args]) == 2  # fmt: skip
    assert "did you mean 01-Illegal_Activitiy (the file that is there)" in capsys.readouterr().err


def test_sigterm_ends_generate_with_a_message_and_the_run_resumes(tiny_llava_dir, tmp_path):
    records = [{"id": str(i), "prompt": "Tell me a long story. " * (1 + i % 3)} for i in range(40)]
    data = tmp_path / "p.json"
    data.write_text(json.dumps(records))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "rejection_align.cli", "generate", "--benchmark", "generic", "--data", str(data),
           "--output", str(out), "--model", str(tiny_llava_dir), "--template", "llava", "--batch-size", "1",
           "--max-new-tokens", "16", "--no-progress", "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    path = out / "p.jsonl"
    while process.poll() is None and not (path.is_file() and path.stat().st_size):
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "terminated; the answers finished so far are kept in" in err and "Traceback" not in err
    assert subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600).returncode == 0
    assert sorted(int(r["id"]) for r in read_jsonl(path)) == list(range(40))


# --- quiet by default (19.6) ------------------------------------------------------------------------------------


def test_generate_is_quiet_by_default_and_shows_library_lines_with_verbose(tiny_llava_dir, tmp_path):
    data = generic_prompts(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(SRC)}

    def run(*extra: str, out: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "rejection_align.cli", *extra, "generate", "--benchmark", "generic", "--data",
               str(data), "--output", str(tmp_path / out), "--model", str(tiny_llava_dir), "--template", "llava",
               "--max-new-tokens", "2", "--no-progress", "--device", "cpu"]  # fmt: skip
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)

    quiet = run(out="quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert "llamafactory" not in quiet.stderr + quiet.stdout and "deprecated" not in quiet.stderr
    assert "Loading weights" not in quiet.stderr
    assert quiet.stdout.count("answers generated") == 1
    loud = run("-v", out="loud")
    assert loud.returncode == 0 and "llamafactory" in loud.stderr + loud.stdout


# --- options declared once (issue 18, item 3) -------------------------------------------------------------------


def test_every_generate_option_comes_from_the_dataclass_with_its_help_and_default(tmp_path):
    parser = build_parser(only="generate")
    sub = next(a for a in parser._actions if a.dest == "command").choices["generate"]
    by_dest = {action.dest: action for action in sub._actions if action.dest != "help"}
    fields = dict((field.name, opt) for field, opt in option_fields(GenerateOptions))
    assert set(by_dest) == set(fields) == {field.name for field in dataclasses.fields(GenerateOptions)}
    for name, opt in fields.items():
        assert by_dest[name].help == opt.help
    args = parser.parse_args(["generate", "--benchmark", "generic", "--data", "d", "--output", str(tmp_path)])
    options = from_args(GenerateOptions, args)
    assert options == GenerateOptions(benchmark="generic", data="d", output=str(tmp_path))
    assert options.batch_size == 8 and options.mode == ("SD_TYPO",) and options.config is None


def test_the_recorded_settings_are_the_fields_marked_recorded(tmp_path):
    options = GenerateOptions(benchmark="generic", data="d", output=str(tmp_path), model="m", template="llava")
    infer = {"model_name_or_path": "m", "template": "llava", "image_max_pixels": 1024}
    decoding = options.decoding(infer)
    settings = options.settings(infer, decoding, "hf")
    assert list(settings) == [*recorded(GenerateOptions), "do_sample", "inference_arguments"]
    assert recorded(GenerateOptions) == [  # the settings file's keys, in this order: a change breaks resuming
        *("benchmark", "model", "adapter", "template", "system", "text_field", "instruction", "max_new_tokens"),
        *("temperature", "top_p", "top_k", "repetition_penalty", "dtype", "backend"),
    ]
    assert settings["inference_arguments"] == {"image_max_pixels": 1024}


# --- one JSON-Lines reader (issue 18, item 6) -------------------------------------------------------------------


def test_the_jsonl_reader_drops_only_a_cut_off_last_line_without_its_newline(tmp_path, caplog):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": 2}\n{"a": ')
    read = jsonl.read_jsonl(path)
    assert [line.value for line in read.lines] == [{"a": 1}, {"a": 2}] and read.cut_off
    assert read.good_size == len(b'{"a": 1}\n\n{"a": 2}\n') and "cut-off last line 4" in caplog.text
    with pytest.raises(DataError, match="line 4 is cut off"):
        jsonl.read_jsonl(path, cut_off="error")


def test_the_jsonl_reader_keeps_a_complete_last_line_without_newline_and_refuses_damage_elsewhere(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}')
    read = jsonl.read_jsonl(path)
    assert len(read.lines) == 2 and not read.cut_off and read.needs_newline
    path.write_bytes(b'{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        jsonl.read_jsonl(path)
    path.write_bytes(b'{"a": 1}\n{"a": 2')  # cut off, but with a newline: damage
    path.write_bytes(b'{"a": 1}\n{"a": 2\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        jsonl.read_jsonl(path)
