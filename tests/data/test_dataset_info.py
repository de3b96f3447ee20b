"""data/dataset_info.json: its shipped entries load through LLaMA-Factory's own loader; the others are the files
that the examples' ``rejection-align mix`` runs write, under the names the configs use."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
INFO_PATH = DATA / "dataset_info.json"
INFO = json.loads(INFO_PATH.read_text(encoding="utf-8"))
SHAREGPT_COLUMNS = {"messages": "conversations", "images": "image"}
SHIPPED = sorted(name for name, entry in INFO.items() if (DATA / entry["file_name"]).is_file())
PRODUCED = sorted(set(INFO) - set(SHIPPED))
# the mix command's default name: {n1}_{stem1}_{n2}_{stem2}{suffix}
MIX_NAME = re.compile(
    r"^(?P<n1>\d+)_(?P<stem1>.+)_(?P<n2>\d+)_llava_v1_5_mix665k(?P<suffix>(_random_turn)?(_similar)?)$"
)


def test_dataset_info_is_written_in_llamafactorys_style():
    text = INFO_PATH.read_text(encoding="utf-8")
    assert text == json.dumps(INFO, indent=2, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("name", sorted(INFO))
def test_every_entry_is_a_sharegpt_registration_with_the_image_column(name):
    entry = INFO[name]
    assert entry == {"file_name": entry["file_name"], "formatting": "sharegpt", "columns": SHAREGPT_COLUMNS}
    assert not Path(entry["file_name"]).is_absolute()


def test_shipped_entries_are_the_demo_data():
    assert SHIPPED == ["demo_instruct", "demo_rejection_source"]


@pytest.mark.parametrize("name", PRODUCED)
def test_entries_not_shipped_are_exactly_what_the_examples_mix_command_registers(name, tmp_path):
    """Run ``rejection-align mix`` as examples/prepare_data.sh does, on stand-in files with the real file names."""
    from rejection_align.cli import main as cli_main

    match = MIX_NAME.match(name)
    assert match, name
    n1, n2 = int(match["n1"]), int(match["n2"])
    stem1 = match["stem1"]
    examples = (ROOT / "examples" / "prepare_data.sh").read_text(encoding="utf-8")
    assert f"STEM={stem1}" in examples, f"examples/prepare_data.sh does not prepare {stem1}.json"

    def records(prefix: str, n: int) -> list[dict]:
        turns = [{"from": "human", "value": "What is two plus two?"}, {"from": "gpt", "value": "Four."}]
        return [{"id": f"{prefix}{i}", "conversations": turns} for i in range(n)]

    (tmp_path / f"{stem1}.json").write_text(json.dumps(records("r", n1)))
    (tmp_path / "llava_v1_5_mix665k.json").write_text(json.dumps(records("i", n2)))
    argv = ["mix", "--rejection-source", str(tmp_path / f"{stem1}.json")]
    argv += ["--instruct", str(tmp_path / "llava_v1_5_mix665k.json"), "--n-rejection", str(n1)]
    argv += ["--n-instruct", str(n2), "--output", str(tmp_path / "data")]
    argv += ["--dataset-info", str(tmp_path / "data" / "dataset_info.json")]
    argv += ["--random-turn"] if "_random_turn" in match["suffix"] else []
    argv += ["--similar"] if "_similar" in match["suffix"] else []
    assert cli_main(argv) == 0
    registered = json.loads((tmp_path / "data" / "dataset_info.json").read_text())
    assert registered == {name: INFO[name]}


def test_every_dataset_a_config_names_is_registered():
    for path in (ROOT / "configs").glob("*.yaml"):
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        if path.name.startswith("demo"):
            continue  # the demo registers its mix in demo_out/data/dataset_info.json
        assert config["dataset"] in INFO, path.name


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_entry_loads_through_llamafactorys_loader_with_its_images(name, tiny_llava_dir, tmp_path):
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams.parser import get_train_args
    from llamafactory.model import load_tokenizer

    args = {
        "model_name_or_path": str(tiny_llava_dir),
        "cache_dir": str(tmp_path / "cache"),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "dataset": name,
        "dataset_dir": str(DATA),
        "media_dir": str(DATA / "demo"),  # the demo data's image paths are relative to data/demo, as in its config
        "template": "llava",
        "cutoff_len": 512,
        "overwrite_cache": True,
        "output_dir": str(tmp_path / "out"),
        "report_to": "none",
    }
    model_args, data_args, training_args, _, _ = get_train_args(args)
    modules = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(modules["tokenizer"], data_args)
    dataset = get_dataset(template, model_args, data_args, training_args, "sft", **modules)["train_dataset"]

    records = json.loads((DATA / INFO[name]["file_name"]).read_text(encoding="utf-8"))
    assert len(dataset) == len(records)
    image_token = modules["tokenizer"].convert_tokens_to_ids("<image>")
    for row, record in zip(dataset.select(range(20)), records, strict=False):
        n_images = 1 if record.get("image") else 0
        assert len(row["images"] or []) == n_images
        assert all(Path(image).is_file() for image in row["images"] or [])
        assert row["input_ids"].count(image_token) == 4 * n_images  # expanded by the llava plugin
        assert any(label != -100 for label in row["labels"])


def test_prepare_sources_turns_vlguard_safe_pairs_into_llava_format(tmp_path):
    raw = [
        {
            "id": "img_1",
            "image": "safe/1.png",
            "safe": True,
            "instr-resp": [
                {"safe_instruction": "What is in the picture?", "response": "A dog."},
                {"unsafe_instruction": "How do I hurt the dog?", "response": "I cannot help with that."},
            ],
        },
        {"id": "img_2", "image": "bad/2.png", "safe": False, "instr-resp": [{"instruction": "x", "response": "y"}]},
    ]
    (tmp_path / "train.json").write_text(json.dumps(raw))
    script = ROOT / "examples" / "prepare_sources.py"
    out = tmp_path / "vlguard_train_llava_format.json"
    proc = subprocess.run([sys.executable, str(script), "vlguard", str(tmp_path / "train.json"), str(out)], text=True)
    assert proc.returncode == 0
    records = json.loads(out.read_text())
    # (it defers to `convert --from vlguard --turns one --pairs safe-safe`: sharegpt, ids <id>-<k>, which mix reads)
    assert records == [
        {
            "id": "img_1-0",
            "image": ["vlguard/safe/1.png"],
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is in the picture?"},
                {"from": "gpt", "value": "A dog."},
            ],
        }
    ]
