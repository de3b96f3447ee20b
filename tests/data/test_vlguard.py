"""``convert --from vlguard`` and the ablation options of ``mix``, on VLGuard-shaped files made here.

The file has all three kinds of pair (safe image + safe instruction, safe image + unsafe instruction, unsafe image),
records with several pairs, categories and subcategories, integer and string ids.
"""

import hashlib
import json
import sys
from pathlib import Path

import pytest
import yaml

from conftest import run_llamafactory_cli
from rejection_align.cli import main
from rejection_align.data.records import DEFAULT_REJECTION_SENTENCE as SORRY


def safe_record(rid, n_safe=1, n_unsafe=1):
    pairs = [
        {"safe_instruction": f"What is in {rid} ({k})?", "response": f"A view {k} of {rid}."} for k in range(n_safe)
    ]
    pairs += [
        {"unsafe_instruction": f"How to misuse {rid} ({k})?", "response": f"I cannot help with misusing {rid}."}
        for k in range(n_unsafe)
    ]
    return {"id": rid, "image": f"safe/{rid}.png", "safe": True, "instr-resp": pairs}


def unsafe_record(rid, category, subcategory, n=1):
    pairs = [
        {"instruction": f"Tell me about {rid} ({k}).", "response": f"{rid} shows harm; I won't."} for k in range(n)
    ]
    return {
        "id": rid,
        "image": f"unsafe/{rid}.png",
        "safe": False,
        "harmful_category": category,
        "harmful_subcategory": subcategory,
        "instr-resp": pairs,
    }


# 10 records: 5 safe (pairs: safe_safe 7, safe_unsafe 5), 5 unsafe (pairs 7: privacy 4, deception 3)
RECORDS = [
    safe_record("s0"),
    safe_record("s1", 2, 1),
    safe_record(2, 1, 2),
    safe_record("s3", 2, 0),
    safe_record("s4", 1, 1),
    unsafe_record("u0", "privacy", "personal data"),
    unsafe_record("u1", "deception", "disinformation", 2),
    unsafe_record(5, "privacy", "surveillance", 2),
    unsafe_record("u3", "deception", "fraud"),
    unsafe_record("u4", "privacy", "personal data"),
]
#: --pairs -> (one-turn records, multi-turn records, multi-turn turns)
EXPECTED = {
    "all": (19, 10, 38),
    "no-safe-safe": (12, 9, 24),
    "safe-safe": (7, 5, 14),
    "unsafe": (7, 5, 14),
}


class Work:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.info = self.data / "dataset_info.json"
        self.vlguard = root / "train.json"
        self.vlguard.write_text(json.dumps(RECORDS, indent=1), encoding="utf-8")

    def convert(self, *extra: str) -> int:
        args = ["convert", str(self.vlguard), "--from", "vlguard", "--output", str(self.data)]
        return main([*args, "--dataset-info", str(self.info), *extra])

    def read(self, name: str, suffix: str = ".json") -> dict | list:
        return json.loads((self.data / f"{name}{suffix}").read_text(encoding="utf-8"))

    def files(self) -> list[str]:
        return sorted(p.name for p in self.data.iterdir()) if self.data.exists() else []


@pytest.fixture
def work(tmp_path):
    return Work(tmp_path)


# ------------------------------------------------------------------------------------------- convert --from vlguard


@pytest.mark.parametrize("pairs", sorted(EXPECTED))
def test_each_variant_has_its_counts_ids_turns_and_images(work, pairs):
    one, multi, multi_turns = EXPECTED[pairs]
    suffix = "" if pairs == "all" else "_" + pairs.replace("-", "_")
    assert work.convert("--turns", "one", "--pairs", pairs) == 0
    out = work.read(f"vlguard_train_one_turn{suffix}")
    assert len(out) == one
    assert all(len(rec["conversations"]) == 2 and len(rec["image"]) == 1 for rec in out)
    assert all(rec["conversations"][0]["value"].startswith("<image>\n") for rec in out)
    manifest = work.read(f"vlguard_train_one_turn{suffix}", ".manifest.json")
    assert manifest["counts"]["records"] == one and manifest["counts"]["turns"] == 2 * one

    assert work.convert("--turns", "multi", "--pairs", pairs) == 0
    out = work.read(f"vlguard_train_multi_turn{suffix}")
    assert len(out) == multi and sum(len(rec["conversations"]) for rec in out) == multi_turns
    if pairs == "all":
        assert [rec["id"] for rec in out] == [str(r["id"]) for r in RECORDS]
    for rec in out:  # the image tag opens the first question only
        questions = [turn["value"] for turn in rec["conversations"][::2]]
        assert questions[0].startswith("<image>\n") and not any("<image>" in q for q in questions[1:])
    assert work.read(f"vlguard_train_multi_turn{suffix}", ".manifest.json")["counts"]["turns"] == multi_turns


def test_one_turn_ids_are_the_record_id_and_the_pair_index(work):
    work.convert("--turns", "one", "--pairs", "no-safe-safe")
    ids = [rec["id"] for rec in work.read("vlguard_train_one_turn_no_safe_safe")]
    # s1 has pairs [safe, safe, unsafe]: its unsafe pair is index 2; 2 has [safe, unsafe, unsafe]
    assert ids[:5] == ["s0-1", "s1-2", "2-1", "2-2", "s4-1"]
    assert ids[5:] == ["u0-0", "u1-0", "u1-1", "5-0", "5-1", "u3-0", "u4-0"]


def test_multi_turn_keeps_the_pairs_of_an_image_in_order(work):
    work.convert("--turns", "multi", "--pairs", "all")
    s1 = next(rec for rec in work.read("vlguard_train_multi_turn") if rec["id"] == "s1")
    assert [turn["value"] for turn in s1["conversations"]] == [
        "<image>\nWhat is in s1 (0)?",
        "A view 0 of s1.",
        "What is in s1 (1)?",
        "A view 1 of s1.",
        "How to misuse s1 (0)?",
        "I cannot help with misusing s1.",
    ]
    assert s1["image"] == ["safe/s1.png"]


def test_the_manifest_counts_kinds_categories_and_images(work):
    work.convert("--turns", "one", "--pairs", "all", "--image-prefix", "vlguard", "--name", "v")
    manifest = work.read("v", ".manifest.json")
    counts = manifest["counts"]
    assert counts["source_records"] == 10
    assert counts["source_pairs"] == counts["kept_pairs"] == {"safe_safe": 7, "safe_unsafe": 5, "unsafe": 7}
    assert counts["categories"] == {"deception": 3, "privacy": 4}
    assert counts["subcategories"] == {"disinformation": 2, "fraud": 1, "personal data": 2, "surveillance": 2}
    assert (counts["records"], counts["turns"], counts["images"], counts["distinct_images"]) == (19, 38, 19, 10)
    assert manifest["options"]["turns"] == "one" and manifest["options"]["pairs"] == "all"
    assert manifest["inputs"]["file"]["sha256"] == hashlib.sha256(work.vlguard.read_bytes()).hexdigest()
    assert manifest["output"]["sha256"] == hashlib.sha256((work.data / "v.json").read_bytes()).hexdigest()
    assert all(rec["image"][0].startswith("vlguard/") for rec in work.read("v"))
    assert json.loads(work.info.read_text())["v"]["file_name"] == "v.json"


def test_the_same_input_converts_to_the_same_bytes(work):
    work.convert("--turns", "multi", "--pairs", "no-safe-safe", "--name", "a", "--no-register")
    work.convert("--turns", "multi", "--pairs", "no-safe-safe", "--name", "b", "--no-register")
    assert (work.data / "a.json").read_bytes() == (work.data / "b.json").read_bytes()


def test_the_output_is_a_valid_rejection_source_and_instruct_file_for_mix(work):
    work.convert("--turns", "one", "--pairs", "all", "--name", "v", "--no-register")
    assert main(["stats", str(work.data / "v.json")]) == 0


def bad(mutate):
    records = json.loads(json.dumps(RECORDS))
    mutate(records)
    return records


@pytest.mark.parametrize(
    "records, message",
    [
        (bad(lambda r: r[3].update(safe="true")), "record 3 (id 's3'): 'safe': expected `bool`, got `str`"),
        (bad(lambda r: r[1].pop("instr-resp")), "record 1 (id 's1'): has no 'instr-resp'"),
        (bad(lambda r: r[6].update(id=None)), "record 6 has id None (NoneType), expected a string or an integer"),
        (
            bad(lambda r: r[2]["instr-resp"][1].pop("unsafe_instruction")),
            "record 2 (id 2): instr-resp[1] needs one of safe_instruction, unsafe_instruction, instruction; found none",
        ),
        (
            bad(lambda r: r[0]["instr-resp"][0].update(unsafe_instrution="x")),
            "record 0 (id 's0'): 'instr-resp[0]': object contains unknown field `unsafe_instrution`",
        ),
        (bad(lambda r: r[5]["instr-resp"][0].update(response=" ")), "record 5 (id 'u0'): instr-resp[0].response is empty"),
        (
            bad(lambda r: r[4]["instr-resp"][0].update(instruction="x")),
            "record 4 (id 's4'): instr-resp[0] needs one of safe_instruction, unsafe_instruction, instruction; "
            "found safe_instruction, instruction",
        ),
        (
            bad(lambda r: r[4]["instr-resp"].append({"instruction": "x", "response": "y"})),
            "record 4 (id 's4'): instr-resp[2]: a safe image's pair says whether its instruction is safe",
        ),
        (bad(lambda r: r[7].update({"instr-resp": []})), "record 7 (id 5): 'instr-resp' is empty"),
        (bad(lambda r: r.append(3)), "record 10: expected an object"),
    ],
    ids=["safe-string", "no-pairs", "null-id", "no-instruction", "misspelt-key", "empty-response", "two-keys",
         "safe-instruction", "empty-pairs", "not-object"],
)  # fmt: skip
def test_a_bad_record_is_one_line_naming_file_record_and_field_and_nothing_is_written(work, capsys, records, message):
    work.vlguard.write_text(json.dumps(records), encoding="utf-8")
    assert work.convert("--turns", "one", "--pairs", "all") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"rejection-align convert: error: {work.vlguard}: ")
    assert message in err
    assert work.files() == []


def test_a_filter_that_keeps_nothing_is_refused(work, capsys):
    work.vlguard.write_text(json.dumps([safe_record("only", 1, 0)]), encoding="utf-8")
    assert work.convert("--turns", "one", "--pairs", "unsafe") == 2
    assert "no pair kept by --pairs unsafe (1 records read); nothing written" in capsys.readouterr().err
    assert work.files() == []


def test_vlguard_options_are_required_with_vlguard_and_refused_without(work, capsys):
    assert work.convert("--turns", "one") == 2
    assert "--from vlguard needs --turns one|multi and --pairs" in capsys.readouterr().err
    assert main(["convert", str(work.vlguard), "--output", str(work.data), "--pairs", "all"]) == 2
    assert "are options of --from vlguard" in capsys.readouterr().err


def test_prepare_sources_vlguard_defers_to_the_command(work):
    import subprocess

    root = Path(__file__).resolve().parents[2]
    out = work.root / "prepared" / "vlguard_train_llava_format.json"
    proc = subprocess.run(
        [sys.executable, str(root / "examples" / "prepare_sources.py"), "vlguard", str(work.vlguard), str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = json.loads(out.read_text())
    assert len(records) == 7 and records[0]["id"] == "s0-0" and records[0]["image"] == ["vlguard/safe/s0.png"]


# ------------------------------------------------------------------------------------------- mix for the ablations


@pytest.fixture
def sources(work):
    """A one-turn VLGuard dataset (the rejection source) and 30 instruct records with COCO-like images."""
    work.convert("--turns", "one", "--pairs", "no-safe-safe", "--name", "vg", "--no-register")
    instruct = [
        {
            "id": f"c{i}",
            "image": f"coco/{i:03d}.jpg",
            "conversations": [
                {"from": "human", "value": f"<image>\nWhat is in picture {i}?"},
                {"from": "gpt", "value": f"Picture {i} shows a cat."},
            ],
        }
        for i in range(30)
    ]
    path = work.root / "mix665k.json"
    path.write_text(json.dumps(instruct), encoding="utf-8")
    return work.data / "vg.json", path


def mix(work, sources, *extra: str) -> int:
    source, instruct = sources
    args = ["mix", "--rejection-source", str(source), "--instruct", str(instruct), "--output", str(work.data)]
    return main([*args, "--dataset-info", str(work.info), *extra])


def test_keep_replies_keeps_the_sources_answers_and_says_so(work, sources, capsys):
    assert mix(work, sources, "--n-rejection", "5", "--n-instruct", "10", "--keep-replies") == 0
    assert "(5 with their own answers, 10 instruct)" in capsys.readouterr().out
    name = "5_vg_10_mix665k_keep_replies"
    originals = {rec["id"]: rec for rec in work.read("vg")}
    out = work.read(name)
    drawn = [rec for rec in out if rec["id"] in originals]
    assert len(drawn) == 5 and all(rec == originals[rec["id"]] for rec in drawn)
    assert not any(turn["value"] == SORRY for rec in out for turn in rec["conversations"])
    manifest = work.read(name, ".manifest.json")
    assert manifest["options"]["keep_replies"] is True and manifest["counts"]["rejection_by_reply"] == {}


def test_keep_replies_with_random_turn_keeps_the_chosen_pairs_answer(work, sources):
    work.convert("--turns", "multi", "--pairs", "all", "--name", "vgm", "--no-register")
    source = work.data / "vgm.json"
    assert mix(work, (source, sources[1]), "--n-rejection", "10", "--n-instruct", "0", "--keep-replies",
               "--random-turn", "--name", "m") == 0  # fmt: skip
    answers = {turn["value"] for rec in work.read("vgm") for turn in rec["conversations"][1::2]}
    for rec in work.read("m"):
        assert len(rec["conversations"]) == 2 and rec["conversations"][1]["value"] in answers


def test_keep_replies_and_reply_together_are_refused(work, sources, capsys):
    assert mix(work, sources, "--keep-replies", "--reply", "No.") == 2
    assert "give --reply or --keep-replies, not both" in capsys.readouterr().err


def test_replace_images_draws_distinct_images_of_the_other_file_and_records_it(work, sources):
    _, instruct = sources
    args = ("--n-rejection", "8", "--n-instruct", "10", "--keep-replies", "--replace-images-from", str(instruct))
    assert mix(work, sources, *args) == 0
    name = "8_vg_10_mix665k_keep_replies_images_mix665k"
    vg_ids = {rec["id"] for rec in work.read("vg")}
    drawn = [rec for rec in work.read(name) if rec["id"] in vg_ids]
    images = [rec["image"][0] for rec in drawn]
    assert len(set(images)) == 8 and all(image.startswith("coco/") for image in images)
    manifest = work.read(name, ".manifest.json")
    assert manifest["options"]["replace_images_from"] == str(instruct.resolve())
    assert manifest["inputs"]["replace_images_from"]["sha256"] == hashlib.sha256(instruct.read_bytes()).hexdigest()
    assert manifest["counts"]["images_replaced"] == 8
    first = (work.data / f"{name}.json").read_bytes()
    (work.data / f"{name}.json").unlink()  # the same run again
    assert mix(work, sources, *args, "--force") == 0
    assert (work.data / f"{name}.json").read_bytes() == first
    assert mix(work, sources, *args, "--seed", "5", "--name", "other") == 0
    assert [r["image"] for r in work.read("other") if r["id"] in vg_ids] != [[i] for i in images]


def test_too_few_replacement_images_is_a_clear_error(work, sources, capsys):
    small = work.root / "small.json"
    small.write_text(json.dumps(json.loads(sources[1].read_text())[:3]), encoding="utf-8")
    assert mix(work, sources, "--n-rejection", "5", "--replace-images-from", str(small), "--name", "m") == 2
    err = capsys.readouterr().err
    assert "3 distinct images, fewer than the 5 images of the 5 drawn --rejection-source records" in err
    assert [name for name in work.files() if name.startswith("m")] == []


def test_no_rejection_control_is_instruct_data_alone(work, sources):
    assert mix(work, sources, "--n-rejection", "0", "--n-instruct", "17") == 0
    out = work.read("0_vg_17_mix665k")
    assert len(out) == 17 and all(rec["id"].startswith("c") for rec in out)
    manifest = work.read("0_vg_17_mix665k", ".manifest.json")
    assert manifest["counts"]["rejection"] == 0 and manifest["counts"]["rejection_fraction"] == 0.0
    assert "keep_replies" not in manifest["options"] and "images_replaced" not in manifest["counts"]
    assert mix(work, sources, "--n-rejection", "0", "--n-instruct", "0") == 2  # an empty mix stays refused


# ------------------------------------------------------------------------------------------- training on them


def _images(root: Path, records: list[dict]) -> None:
    from PIL import Image

    for rec in records:
        for image in rec["image"]:
            (root / image).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (28, 28), (len(image) * 7 % 255, 90, 200)).save(root / image)


@pytest.mark.parametrize("family", ["convert", "mix"])
def test_a_tiny_llava_trains_on_a_produced_dataset(work, sources, tiny_llava_dir, family):
    if family == "convert":
        assert work.convert("--turns", "multi", "--pairs", "all", "--name", "produced") == 0
    else:
        assert mix(work, sources, "--n-rejection", "4", "--n-instruct", "4", "--keep-replies", "--replace-images-from",
                   str(sources[1]), "--name", "produced") == 0  # fmt: skip
    records = work.read("produced")
    _images(work.data, records)
    config = {
        "model_name_or_path": str(tiny_llava_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "lora_target": "all", "lora_rank": 4, "dataset": "produced", "dataset_dir": str(work.data),
        "template": "llava", "cutoff_len": 256, "overwrite_cache": True, "output_dir": str(work.root / "adapter"),
        "per_device_train_batch_size": 2, "max_steps": 2, "learning_rate": 1.0e-4, "logging_steps": 1,
        "save_strategy": "no", "report_to": "none", "bf16": False, "dataloader_num_workers": 0,
        "rejection_mask_eos": family == "mix",
    }  # fmt: skip
    (work.root / "train.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_llamafactory_cli(work.root, "train", str(work.root / "train.yaml"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert (work.root / "adapter" / "adapter_model.safetensors").is_file()
    assert f"Num examples = {len(records)}" in result.stdout + result.stderr
