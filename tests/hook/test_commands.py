"""One YAML for every command: export, chat, webchat, api and eval ignore the ``rejection_*`` keys; USE_V1 refuses them.

In-process tests call LLaMA-Factory's own ``get_infer_args`` (``export``, ``chat``, ``webchat``, ``api``) and
``get_eval_args`` (its evaluator); the slow ones run ``llamafactory-cli`` on the tiny LLaVA.
"""

import importlib.metadata
import logging
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from packaging.version import Version

from conftest import SENTENCE, run_llamafactory_cli
from rejection_align.errors import ConfigError
from rejection_align.hook import patches
from rejection_align.hook.settings import settings_of


# the training YAML's own section (configs/*_rejection.yaml)
REJECTION_SECTION = {
    "rejection_mask_eos": True,
    "rejection_mask_mode": "mask",
    "rejection_match": "exact",
    "rejection_sentences": [SENTENCE, "I cannot help with that"],
}
MODEL_SECTION = {"model_name_or_path": "unused", "template": "llava"}


@pytest.fixture
def patched(patched, monkeypatch):
    """The hook installed (conftest's fixture) with the once-per-process log flag fresh."""
    monkeypatch.setattr(patches, "_LOGGED", set())


@pytest.fixture
def v1_parser():
    """LLaMA-Factory's v1 argument parser module, patched as the start-up hook patches it, restored afterwards."""
    from llamafactory.v1.config import arg_parser

    original = arg_parser.get_args
    patches.patch_v1_parser(arg_parser)
    yield arg_parser
    arg_parser.get_args = patches._ORIGINALS.pop((arg_parser.__name__, "get_args"), original)


def ignored_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if "taken out and ignored" in record.getMessage()]


# ------------------------------------------------------------------------------------------------------ in process


def test_get_infer_args_accepts_the_training_yaml_keys_and_leaves_the_dict_intact(patched):
    from llamafactory.hparams import get_infer_args

    args = {**MODEL_SECTION, **REJECTION_SECTION}
    model_args, data_args, _, _ = get_infer_args(args)

    assert model_args.model_name_or_path == "unused"
    assert settings_of(data_args) is None  # nothing to tokenize, nothing attached
    assert args["rejection_mask_eos"] is True


def test_get_eval_args_accepts_the_training_yaml_keys(patched):
    from llamafactory.hparams import get_eval_args

    model_args, _, eval_args, _ = get_eval_args({**MODEL_SECTION, "task": "mmlu_test", **REJECTION_SECTION})

    assert model_args.model_name_or_path == "unused"
    assert eval_args.task == "mmlu_test"


def test_one_info_line_per_process_names_the_ignored_keys(patched, caplog):
    from llamafactory.hparams import get_infer_args

    with caplog.at_level(logging.INFO, logger=patches.logger.name):
        get_infer_args({**MODEL_SECTION, **REJECTION_SECTION})
        get_infer_args({**MODEL_SECTION, **REJECTION_SECTION})

    [line] = ignored_lines(caplog)
    keys = "rejection_mask_eos, rejection_mask_mode, rejection_match, rejection_sentences"
    assert f"get_infer_args does not use {keys}" in line


def test_without_the_keys_inference_parsing_is_stock_and_silent(patched, caplog):
    from llamafactory.hparams import get_infer_args

    with caplog.at_level(logging.INFO, logger=patches.logger.name):
        get_infer_args(dict(MODEL_SECTION))

    assert ignored_lines(caplog) == []


def test_a_misspelt_key_is_still_an_error_for_inference_commands(patched):
    from llamafactory.hparams import get_infer_args

    with pytest.raises(ConfigError, match="Did you mean 'rejection_mask_eos'"):
        get_infer_args({**MODEL_SECTION, "rejection_mask_eso": True})


TRAINING_SECTION = {"stage": "sft", "do_train": True, "finetuning_type": "lora", "dataset": "demo_mix",
                    "output_dir": "saves/x", "learning_rate": 1.0e-4, "num_train_epochs": 3.0, "bf16": True}  # fmt: skip


def test_a_whole_training_yaml_parses_for_inference_with_one_line_naming_the_trainer_keys(patched, caplog):
    from llamafactory.hparams import get_infer_args

    with caplog.at_level(logging.INFO, logger=patches.logger.name):
        model_args, data_args, finetuning_args, _ = get_infer_args(
            {**MODEL_SECTION, **TRAINING_SECTION, **REJECTION_SECTION}
        )

    assert (model_args.model_name_or_path, data_args.dataset, finetuning_args.finetuning_type) == (
        "unused", ["demo_mix"], "lora",
    )  # fmt: skip
    [line] = ignored_lines(caplog)
    assert "output_dir, learning_rate, num_train_epochs, bf16" in line and "rejection_mask_eos" in line
    assert "stage" not in line.split("does not use")[1]  # a key inference reads is kept, not ignored


def test_a_key_no_llamafactory_parser_knows_is_still_an_error_for_inference(patched):
    from llamafactory.hparams import get_infer_args

    with pytest.raises(ValueError, match="learning_rat"):
        get_infer_args({**MODEL_SECTION, **TRAINING_SECTION, "learning_rat": 1.0e-4})


def test_the_argv_form_with_an_unquoted_sentence_parses_for_inference(patched):
    from llamafactory.hparams import get_infer_args

    argv = ["--model_name_or_path", "unused", "--rejection_sentences", *SENTENCE.split(), "--template", "llava"]
    model_args, data_args, _, _ = get_infer_args(argv)

    assert model_args.model_name_or_path == "unused"
    assert data_args.template == "llava"


def test_the_argv_form_gives_training_the_whole_sentence(patched):
    from llamafactory.hparams import parser

    argv = ["--model_name_or_path", "unused", "--template", "llava", "--dataset", "x", "--output_dir", "o",
            "--rejection_mask_eos", "true", "--rejection_sentences", *SENTENCE.split()]  # fmt: skip
    data_args = parser._parse_train_args(argv)[1]

    assert settings_of(data_args).sentences == (SENTENCE,)


def test_patching_a_parser_module_without_some_entry_points_patches_the_rest():
    fake = types.ModuleType("fake_llamafactory_parser")
    fake._parse_infer_args = lambda args=None: args

    patches.patch_parser(fake)  # no _parse_train_args, _parse_eval_args, ... in this "version"

    assert getattr(fake._parse_infer_args, "__rejection_align__", False)


def test_the_v1_parser_refuses_the_keys_with_a_message_about_v1(v1_parser):
    with pytest.raises(ConfigError) as info:
        v1_parser.get_args({"model": "unused", **REJECTION_SECTION})

    message = str(info.value)
    assert "not supported on LLaMA-Factory's v1 path (USE_V1=1) yet; unset USE_V1 or remove the keys" in message
    assert "found: rejection_mask_eos" in message


def test_the_v1_parser_finds_the_keys_in_the_yaml_named_on_the_command_line(v1_parser, tmp_path, monkeypatch):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"model": "unused"}), encoding="utf-8")
    monkeypatch.setattr(sys, "argv", ["llamafactory-cli", str(config), "rejection_mask_mode=drop"])

    with pytest.raises(ConfigError, match=r"v1 path .* \(found: rejection_mask_mode\)"):
        v1_parser.get_args()


def test_the_v1_parser_without_the_keys_is_stock(v1_parser):
    parsed = v1_parser.get_args({"model": "unused"})  # the order of the dataclasses differs between versions

    [model_args] = [args for args in parsed if type(args).__name__ == "ModelArguments"]
    assert model_args.model == "unused"


# ----------------------------------------------------------------------------------------------- llamafactory-cli


def run_cli(tmp_path: Path, *args: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    return run_llamafactory_cli(tmp_path, *args, stdin=stdin, env=env)


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.mark.slow
def test_export_runs_on_the_training_yaml_and_logs_one_line(tmp_path, tiny_llava_dir):
    config = {"model_name_or_path": str(tiny_llava_dir), "template": "llava", "export_dir": str(tmp_path / "merged"),
              "export_device": "cpu", **TRAINING_SECTION, **REJECTION_SECTION}  # fmt: skip
    result = run_cli(tmp_path, "export", str(write_yaml(tmp_path / "export.yaml", config)))

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert output.count("taken out and ignored") == 1
    assert "llamafactory-cli export does not use rejection_mask_eos" in output


@pytest.mark.slow
def test_chat_accepts_an_unquoted_sentence_in_argv_form(tmp_path, tiny_llava_dir):
    argv = ["--model_name_or_path", str(tiny_llava_dir), "--template", "llava", "--rejection_mask_eos", "true",
            "--rejection_sentences", *SENTENCE.split()]  # fmt: skip
    result = run_cli(tmp_path, "chat", *argv, stdin="exit\n")

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "Welcome to the CLI application" in output
    assert "llamafactory-cli chat does not use rejection_mask_eos, rejection_sentences" in output


@pytest.mark.slow
@pytest.mark.skipif(
    Version(importlib.metadata.version("llamafactory")) < Version("0.9.5"),
    reason="LLaMA-Factory 0.9.4's own v1 sft stops before it parses anything (run_sft() missing 'user_args'); "
    "its v1 parser is patched all the same (test_the_v1_parser_refuses_the_keys_with_a_message_about_v1)",
)
def test_use_v1_stops_on_the_keys_with_a_v1_message_not_llamafactorys_generic_one(tmp_path, tiny_llava_dir):
    config = write_yaml(tmp_path / "train.yaml", {"model": str(tiny_llava_dir), **REJECTION_SECTION})
    result = run_cli(tmp_path, "sft", str(config), env={"USE_V1": "1"})

    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "the rejection_* keys are not supported on LLaMA-Factory's v1 path (USE_V1=1) yet" in output
    assert "not used by the HfArgumentParser" not in output
