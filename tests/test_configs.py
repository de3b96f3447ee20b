"""Every YAML under configs/ goes through LLaMA-Factory's own argument parser, with the plugin keys accepted.

What a CPU-only, offline machine cannot check is overridden in the parse and checked as plain values instead:
``bf16: true`` (LLaMA-Factory/transformers refuse bf16 without a GPU), ``tf32: true`` (needs an Ampere GPU),
``deepspeed`` (the package needs CUDA and is not installed in CI: the path is checked to exist and to be a ZeRO-3
JSON) and ``output_dir`` (pointed at a temporary folder). The hub model names are parsed as they are: the parser
does not load the model, so no download happens.
"""

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
SENTENCE = "I'm sorry, but I cannot assist with your request"

# The paper's training runs (docs/training.md, "The configs"): model -> (HF id, template, per-device batch, DeepSpeed JSON or None); plus Qwen2.5-VL
# (issue 9: not a paper run, the paper's LoRA hyperparameters on LLaMA-Factory's qwen2_vl template)
PAPER_RUNS = {
    "llava1_5_7b": ("llava-hf/llava-1.5-7b-hf", "llava", 16, None),
    "llava_next_llama3_8b": ("llava-hf/llama3-llava-next-8b-hf", "llava_next_llama3", 4, "ds_z3_offload_config.json"),
    "llava_next_mistral_7b": ("llava-hf/llava-v1.6-mistral-7b-hf", "llava_next_mistral", 8, "ds_z3_config.json"),
    "yi_vl_6b": ("BUAADreamer/Yi-VL-6B-hf", "yi_vl", 4, "ds_z3_offload_config.json"),
    "qwen2_5_vl_7b": ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_vl", 4, None),
}
SHARED = {
    "finetuning_type": "lora",
    "lora_rank": 128,
    "lora_alpha": 256,
    "lora_target": "all",
    "freeze_vision_tower": True,
    "learning_rate": 2.0e-4,
    "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.03,
    "weight_decay": 0.0,
    "num_train_epochs": 3.0,
    "cutoff_len": 2048,
    "bf16": True,
    "save_only_model": True,
    "max_samples": 100000,
    "preprocessing_num_workers": 8,
    "flash_attn": "fa2",
}
# the keys of LLaMA-Factory's examples/deepspeed/ds_z3_config.json (repository hiyouga/LLaMA-Factory; pip's
# llamafactory ships no examples/, so they are written out here)
LLAMAFACTORY_Z3_KEYS = {
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "zero_allow_untested_optimizer",
    "fp16",
    "bf16",
    "zero_optimization",
    "comms_config",
    "monitor_config",
}
LLAMAFACTORY_Z3_ZERO_KEYS = {
    "stage",
    "overlap_comm",
    "contiguous_gradients",
    "sub_group_size",
    "reduce_bucket_size",
    "stage3_prefetch_bucket_size",
    "stage3_param_persistence_threshold",
    "stage3_max_live_parameters",
    "stage3_max_reuse_distance",
    "stage3_gather_16bit_weights_on_model_save",
}

TRAIN_YAMLS = sorted(CONFIGS.glob("*.yaml"))
PAPER_YAMLS = [path for path in TRAIN_YAMLS if not path.name.startswith("demo")]
MERGE_YAMLS = sorted((CONFIGS / "merge").glob("*.yaml"))
INFER_YAMLS = sorted((CONFIGS / "inference").glob("*.yaml"))
DS_JSONS = sorted((CONFIGS / "deepspeed").glob("*.json"))
# examples/ablations.sh: one YAML per question (issue 17), LLaVA-1.5-7B
ABLATION_YAMLS = sorted((CONFIGS / "ablations").glob("*.yaml"))
ABLATIONS = {"curated", "curated_multi_turn", "curated_no_safe_safe", "curated_random_images", "plain_sentence",
             "no_rejection"}  # fmt: skip


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def model_key(path: Path) -> str:
    return path.stem.rsplit("_lora_", 1)[0]


def cpu_parsable(config: dict, tmp_path: Path) -> dict:
    """The config with the fields a CPU-only machine cannot parse replaced (see the module docstring)."""
    config = copy.deepcopy(config)
    config["bf16"] = False
    config.pop("tf32", None)
    config.pop("deepspeed", None)
    config["output_dir"] = str(tmp_path / "out")
    return config


def test_configs_exist_for_every_paper_run_with_a_baseline_for_each():
    names = {path.name for path in TRAIN_YAMLS}
    for key in PAPER_RUNS:
        assert f"{key}_lora_rejection.yaml" in names
        assert f"{key}_lora_baseline.yaml" in names
    assert "demo_tiny_llava.yaml" in names
    assert {p.name for p in MERGE_YAMLS} == {p.name for p in PAPER_YAMLS}
    assert {p.name for p in INFER_YAMLS} == {p.name for p in PAPER_YAMLS}


# Parsed in a fresh interpreter, as ``llamafactory-cli train`` does it (LLaMA-Factory's data loader imported before
# the parser runs, the plugin reached only through its start-up hook): the result cannot depend on what other
# tests imported or patched in this process.
_PARSE_SCRIPT = """
import json, sys
import llamafactory.data.loader
from llamafactory.hparams.parser import get_train_args
from rejection_align.hook.settings import settings_of

results = {}
for name, config in json.load(sys.stdin).items():
    try:
        model_args, data_args, training_args, finetuning_args, _ = get_train_args(config)
    except BaseException as err:
        results[name] = {"error": f"{type(err).__name__}: {err}"}
        continue
    settings = settings_of(data_args)
    results[name] = {
        "model_name_or_path": model_args.model_name_or_path,
        "template": data_args.template,
        "finetuning_type": finetuning_args.finetuning_type,
        "learning_rate": training_args.learning_rate,
        "settings": None if settings is None else {
            "mask_eos": settings.mask_eos, "mask_mode": settings.mask_mode,
            "sentences": list(settings.sentences), "match": settings.match,
        },
    }
print("RESULTS " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def parsed_train_yamls(tiny_llava_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parse")
    configs = {}
    for path in TRAIN_YAMLS + ABLATION_YAMLS:
        config = cpu_parsable(load(path), tmp / path.stem)
        if path.name.startswith("demo"):
            config["model_name_or_path"] = str(tiny_llava_dir)
        configs[path.name] = config
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", _PARSE_SCRIPT], input=json.dumps(configs), env=env, cwd=ROOT, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return configs, json.loads(lines[-1].removeprefix("RESULTS "))


@pytest.mark.parametrize("path", TRAIN_YAMLS + ABLATION_YAMLS, ids=lambda p: p.name)
def test_train_yaml_passes_llamafactory_train_parser_with_plugin_keys(path, parsed_train_yamls):
    configs, results = parsed_train_yamls
    config, result = load(path), results[path.name]
    assert "error" not in result, result.get("error")
    assert any(key.startswith("rejection_") for key in config), "every training YAML states the method's setting"
    assert result["model_name_or_path"] == configs[path.name]["model_name_or_path"]
    assert result["template"] == config["template"]
    assert result["finetuning_type"] == "lora"
    assert result["learning_rate"] == config["learning_rate"]
    settings = result["settings"]
    if config["rejection_mask_eos"]:
        assert settings == {"mask_eos": True, "mask_mode": "mask", "sentences": [SENTENCE], "match": "exact"}
    else:  # method off: stock LLaMA-Factory behaviour, whether or not a disabled settings object is attached
        assert settings is None or settings["mask_eos"] is False


def test_an_unknown_rejection_key_in_a_yaml_is_refused_by_the_parser(parsed_train_yamls):
    """The parse above is not vacuous: the same route rejects a misspelt plugin key."""
    configs, _ = parsed_train_yamls
    config = dict(configs["demo_tiny_llava.yaml"], rejection_mask_oes=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", _PARSE_SCRIPT], input=json.dumps({"typo": config}), env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    result = json.loads(proc.stdout.split("RESULTS ", 1)[1])["typo"]
    assert "rejection_mask_oes" in result["error"]


@pytest.mark.parametrize("path", TRAIN_YAMLS + ABLATION_YAMLS, ids=lambda p: p.name)
def test_train_yaml_numbers_are_numbers_not_strings(path):
    config = load(path)
    for key in ("learning_rate", "warmup_ratio", "weight_decay", "num_train_epochs"):
        if key in config:
            assert isinstance(config[key], float), f"{path.name}: {key}={config[key]!r} (write floats as 2.0e-4)"


@pytest.mark.parametrize("path", PAPER_YAMLS, ids=lambda p: p.name)
def test_paper_yaml_has_the_papers_hyperparameters_and_a_global_batch_of_128_on_4_gpus(path):
    config = load(path)
    model_id, template, per_device, deepspeed = PAPER_RUNS[model_key(path)]
    assert config["model_name_or_path"] == model_id
    assert config["template"] == template
    for key, value in SHARED.items():
        assert config[key] == value, f"{path.name}: {key}"
    assert config["per_device_train_batch_size"] == per_device
    assert config["per_device_train_batch_size"] * config["gradient_accumulation_steps"] * 4 == 128
    assert "128" in path.read_text(encoding="utf-8").split("### model")[0], "the header says how to keep 128"
    if deepspeed is None:
        assert "deepspeed" not in config
    else:
        assert config["deepspeed"] == f"configs/deepspeed/{deepspeed}"
        assert (ROOT / config["deepspeed"]).is_file()
    assert config.get("tf32", False) is (model_key(path) == "llava1_5_7b")


@pytest.mark.parametrize("key", sorted(PAPER_RUNS))
def test_baseline_differs_from_the_rejection_run_only_in_the_method_switch_and_output_dir(key):
    method = load(CONFIGS / f"{key}_lora_rejection.yaml")
    baseline = load(CONFIGS / f"{key}_lora_baseline.yaml")
    assert method.pop("rejection_mask_eos") is True
    assert baseline.pop("rejection_mask_eos") is False
    assert method.pop("output_dir") != baseline.pop("output_dir")
    assert method == baseline


def test_every_ablation_has_a_yaml_built_by_the_ablations_example():
    assert {path.stem.removeprefix("llava1_5_7b_") for path in ABLATION_YAMLS} == ABLATIONS
    script = (ROOT / "examples" / "ablations.sh").read_text(encoding="utf-8")
    for path in ABLATION_YAMLS:
        assert f"ablation_{path.stem.removeprefix('llava1_5_7b_')}" == load(path)["dataset"]
        assert f" {path.stem.removeprefix('llava1_5_7b_')} " in script  # in its list of ablations
    assert len({load(path)["output_dir"] for path in ABLATION_YAMLS}) == len(ABLATIONS)


@pytest.mark.parametrize("path", ABLATION_YAMLS, ids=lambda p: p.name)
def test_ablation_yaml_is_the_paper_run_but_for_dataset_method_switch_and_output_dir_and_says_its_question(path):
    config, paper = load(path), load(CONFIGS / "llava1_5_7b_lora_rejection.yaml")
    assert config.pop("rejection_mask_eos") is (path.stem == "llava1_5_7b_plain_sentence")
    for key in ("dataset", "output_dir", "rejection_mask_eos"):
        config.pop(key, None), paper.pop(key)
    assert config == paper
    header = path.read_text(encoding="utf-8").split("### model")[0]
    assert "# Question: " in header and "128" in header


@pytest.mark.parametrize("path", MERGE_YAMLS, ids=lambda p: p.name)
def test_merge_yaml_passes_llamafactory_export_parser_and_points_at_the_trained_adapter(path):
    from llamafactory.hparams.parser import get_infer_args

    config = load(path)
    model_args, data_args, finetuning_args, _ = get_infer_args(copy.deepcopy(config))
    assert model_args.export_dir == config["export_dir"]
    assert model_args.export_device == "cpu"
    assert model_args.adapter_name_or_path == [config["adapter_name_or_path"]]
    train = load(CONFIGS / path.name)
    assert config["adapter_name_or_path"] == train["output_dir"]
    assert (config["model_name_or_path"], config["template"]) == (train["model_name_or_path"], train["template"])
    assert data_args.template == train["template"]


@pytest.mark.parametrize("path", INFER_YAMLS, ids=lambda p: p.name)
def test_inference_yaml_passes_llamafactory_infer_parser_and_points_at_the_trained_adapter(path):
    from llamafactory.hparams.parser import get_infer_args

    config = load(path)
    model_args, data_args, _, generating_args = get_infer_args(copy.deepcopy(config))
    assert str(model_args.infer_backend) in ("huggingface", "EngineName.HF")
    train = load(CONFIGS / path.name)
    assert model_args.adapter_name_or_path == [train["output_dir"]]
    assert data_args.template == train["template"]


@pytest.mark.parametrize("path", INFER_YAMLS, ids=lambda p: p.name)
def test_inference_yaml_is_accepted_by_generate_with_its_template_and_image_size(path):
    from rejection_align.eval.backends import backend_of, infer_arguments, parse_infer_args

    args = infer_arguments(path)
    train = load(CONFIGS / path.name)
    assert (args["template"], backend_of(args, None)) == (train["template"], "hf")
    model_args, _, _, _ = parse_infer_args(args)
    assert model_args.image_max_pixels == train.get("image_max_pixels", model_args.image_max_pixels)
    assert "image_max_pixels" not in train or "image_max_pixels" in args


@pytest.mark.parametrize("path", DS_JSONS, ids=lambda p: p.name)
def test_deepspeed_json_parses_and_has_llamafactorys_zero3_keys(path):
    config = json.loads(path.read_text(encoding="utf-8"))
    assert set(config) == LLAMAFACTORY_Z3_KEYS
    zero = config["zero_optimization"]
    assert zero["stage"] == 3
    assert LLAMAFACTORY_Z3_ZERO_KEYS <= set(zero)
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        assert config[key] == "auto", "batch sizes come from the YAML through the HF integration"
    assert config["bf16"]["enabled"] == "auto"
    offload = {key for key in zero if key.startswith("offload_")}
    if "offload" in path.stem:
        assert offload == {"offload_optimizer", "offload_param"}
        assert all(zero[key]["device"] == "cpu" for key in offload)
    else:
        assert offload == set()


def test_deepspeed_jsons_are_the_two_the_configs_use():
    used = {load(path).get("deepspeed") for path in PAPER_YAMLS} - {None}
    assert used == {f"configs/deepspeed/{path.name}" for path in DS_JSONS}


def test_flash_attn_fa2_falls_back_to_the_default_attention_when_flash_attn_is_not_installed():
    """Why the YAMLs say ``fa2``: in LLaMA-Factory 0.9.5 ``auto`` never picks FlashAttention-2 (it leaves
    transformers' default, SDPA), while ``fa2`` picks it when installed and only warns when it is not."""
    from llamafactory.extras.constants import AttentionFunction
    from llamafactory.hparams import ModelArguments
    from llamafactory.model.model_utils.attention import configure_attn_implementation
    from transformers import LlamaConfig
    from transformers.utils import is_flash_attn_2_available

    if is_flash_attn_2_available():
        pytest.skip("flash-attn is installed here: the fallback cannot be observed")

    for choice in ("fa2", "auto"):
        config = LlamaConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=1, intermediate_size=64)
        before = config._attn_implementation
        model_args = ModelArguments(model_name_or_path="unused", flash_attn=choice)
        configure_attn_implementation(config, model_args)
        assert config._attn_implementation == before != "flash_attention_2"
        assert model_args.flash_attn == AttentionFunction(choice)


# ---------------------------------------------------------------------------------------------- examples/


EXAMPLE_SCRIPTS = sorted((ROOT / "examples").glob("*.sh"))


def _run_example(script: str, *args: str, env_extra: dict | None = None, tmp_path: Path):
    # a PATH with this environment's CLIs but no nvidia-smi: the situation of a CPU machine
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin", RAW_DIR=str(tmp_path / "raw"))
    env.update(env_extra or {})
    return subprocess.run(
        ["bash", str(ROOT / "examples" / script), *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )


@pytest.mark.parametrize("path", EXAMPLE_SCRIPTS, ids=lambda p: p.name)
def test_example_script_is_valid_bash(path):
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("train.sh", ["llava1_5_7b", "rejection"], "needs at least 1 NVIDIA GPU"),
        ("evaluate.sh", ["yi_vl_6b", "baseline"], "needs at least 1 NVIDIA GPU"),
        ("train.sh", ["llava2_13b"], "unknown model 'llava2_13b'"),
        ("prepare_data.sh", ["llava-med"], "llava_v1_5_mix665k.json not found"),
        ("merge.sh", ["llava1_5_7b", "baseline"], "train it first"),
    ],
)
def test_example_script_stops_with_a_clear_message_when_gpus_or_data_are_missing(script, args, message, tmp_path):
    if shutil.which("nvidia-smi", path="/usr/bin:/bin"):
        pytest.skip("a GPU machine: the missing-GPU messages cannot be observed")
    proc = _run_example(script, *args, tmp_path=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and message in proc.stderr


def test_multinode_example_refuses_overrides_with_spaces(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: fake'\n")
    (fake_bin / "nvidia-smi").chmod(0o755)
    env = {"NNODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    env["PATH"] = f"{fake_bin}:{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    proc = _run_example("multinode.sh", "llava1_5_7b", "rejection", "rejection_sentences=No way", env_extra=env,
                        tmp_path=tmp_path)  # fmt: skip
    assert proc.returncode == 1
    assert "contains a space" in proc.stderr


def test_ablations_dry_run_prints_every_command_each_accepted_by_its_parser_and_runs_none(tmp_path):
    import shlex

    from rejection_align.cli import build_parser

    proc = _run_example("ablations.sh", "--dry-run", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    commands = [shlex.split(line) for line in proc.stdout.splitlines() if line and not line.startswith("#")]
    by_tool: dict[str, int] = {}
    for argv in commands:
        tool = argv[0] if argv[0] != "rejection-align" else argv[1]
        by_tool[tool] = by_tool.get(tool, 0) + 1
        if argv[0] == "rejection-align":
            build_parser(only=argv[1]).parse_args(argv[1:])  # a wrong flag exits here
    assert by_tool == {"convert": 3, "python": 1, "mix": 7, "llamafactory-cli": 7, "generate": 14, "judge": 20}
    for path in ABLATION_YAMLS:
        assert f"llamafactory-cli train configs/ablations/{path.name}" in proc.stdout
    assert not (tmp_path / "raw").exists()  # nothing ran
