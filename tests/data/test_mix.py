"""``rejection-align mix``: sampling, exclusion, --similar, --random-turn, replies, sizing, output, manifest, safety."""

import hashlib
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import llava_record as record
from conftest import no_child_left, stop_other_threads
from rejection_align import __version__
from rejection_align.cli import main
from rejection_align.data.records import DEFAULT_REJECTION_SENTENCE


SORRY = DEFAULT_REJECTION_SENTENCE
#: the mix below as release 0.1.0 (the hand-written reader with its index cache) wrote it
RELEASE_0_1_MIX_SHA256 = "0812eaee514d8fc2306b040766521c6c81a05220203531f72e9290431341bf06"


def image_record(rid, n_pairs=2, image=True):
    """A record with ``n_pairs`` pairs; with an image, the first question carries the tag (LLaVA style)."""
    pairs = [(f"Question {k} about {rid}?", f"Answer {k} about {rid}.") for k in range(n_pairs)]
    if image:
        pairs[0] = (f"{pairs[0][0]}\n<image>", pairs[0][1])
    return record(rid, *pairs, image=f"img/{rid}.jpg" if image else None)


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


class Work:
    """Two input files in a tmp dir and the command line to mix them into ``data/``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.info = self.data / "dataset_info.json"
        self.rejection = write_json(root / "llava_med.json", [image_record(f"med{i}", 1 + i % 3) for i in range(40)])
        # instruct ids: integers and strings; every 10th record without image
        self.instruct = write_json(
            root / "mix665k.json",
            [image_record(i if i % 2 else f"{i:06d}", 1 + i % 4, image=i % 10 != 0) for i in range(100)],
        )

    def args(self, *extra: str) -> list[str]:
        return [
            "mix",
            "--rejection-source",
            str(self.rejection),
            "--instruct",
            str(self.instruct),
            "--output",
            str(self.data),
            "--dataset-info",
            str(self.info),
            *extra,
        ]

    def run(self, *extra: str) -> int:
        return main(self.args(*extra))

    def output(self, name: str) -> list[dict]:
        return json.loads((self.data / f"{name}.json").read_text(encoding="utf-8"))

    def manifest(self, name: str) -> dict:
        return json.loads((self.data / f"{name}.manifest.json").read_text(encoding="utf-8"))

    def files(self) -> list[str]:
        return sorted(p.name for p in self.data.iterdir()) if self.data.exists() else []


@pytest.fixture
def work(tmp_path):
    return Work(tmp_path)


def is_rejection(rec: dict) -> bool:
    return any(turn["value"] == SORRY for turn in rec["conversations"][1::2])


# ------------------------------------------------------------------------------------------- basic mix


def test_mix_writes_the_requested_counts_and_registers_the_dataset(work):
    assert work.run("--n-rejection", "10", "--n-instruct", "30") == 0
    name = "10_llava_med_30_mix665k"
    out = work.output(name)
    assert len(out) == 40
    assert sum(map(is_rejection, out)) == 10
    assert json.loads(work.info.read_text())[name] == {
        "file_name": f"{name}.json",
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "images": "image"},
    }


def test_rejection_examples_answer_the_first_question_with_the_sentence(work):
    work.run("--n-rejection", "10", "--n-instruct", "0")
    originals = {r["id"]: r for r in json.loads(work.rejection.read_text())}
    for rec in work.output("10_llava_med_0_mix665k"):
        original = originals[rec["id"]]["conversations"]
        assert rec["conversations"][1]["value"] == SORRY
        assert rec["conversations"][0] == original[0]
        assert rec["conversations"][2:] == original[2:]


def test_instruct_records_are_unchanged_apart_from_id_and_image(work):
    work.run("--n-rejection", "0", "--n-instruct", "50")
    originals = {str(r["id"]): r for r in json.loads(work.instruct.read_text())}
    out = work.output("0_llava_med_50_mix665k")
    assert len(out) == 50
    for rec in out:
        original = originals[rec["id"]]
        assert rec["conversations"] == original["conversations"]
        assert rec["image"] == ([original["image"]] if "image" in original else [])


def test_output_records_have_string_ids_and_image_lists(work):
    work.run("--n-rejection", "5")
    out = work.output("5_llava_med_100_mix665k")
    assert all(isinstance(rec["id"], str) and isinstance(rec["image"], list) for rec in out)
    assert any(rec["image"] == [] for rec in out)
    assert {rec["id"] for rec in out} >= {"7", "000008"}


def test_output_is_shuffled(work):
    work.run("--n-rejection", "20", "--n-instruct", "20")
    kinds = [is_rejection(rec) for rec in work.output("20_llava_med_20_mix665k")]
    assert kinds != sorted(kinds) and kinds != sorted(kinds, reverse=True)


def test_mix_with_same_seed_is_byte_identical(work, tmp_path):
    args = ("--n-rejection", "10", "--n-instruct", "30", "--random-turn", "--reply", "No.", "Sorry.")
    work.run(*args)
    first = {name: (work.data / name).read_bytes() for name in work.files()}
    shutil.rmtree(work.data)
    work.run(*args)
    assert {name: (work.data / name).read_bytes() for name in work.files()} == first


def test_mix_with_another_seed_draws_other_records(work):
    work.run("--n-rejection", "10", "--n-instruct", "10", "--name", "a")
    work.run("--n-rejection", "10", "--n-instruct", "10", "--name", "b", "--seed", "7")
    assert {r["id"] for r in work.output("a")} != {r["id"] for r in work.output("b")}


def test_default_seed_is_42(work):
    work.run("--n-rejection", "10", "--n-instruct", "10", "--name", "a")
    work.run("--n-rejection", "10", "--n-instruct", "10", "--name", "b", "--seed", "42")
    assert work.output("a") == work.output("b")


# ------------------------------------------------------------------------------------------- exclusion, similar


def test_instruct_sample_excludes_ids_drawn_as_rejection_examples(work):
    shared = [image_record(f"s{i}") for i in range(20)]
    write_json(work.rejection, shared)
    write_json(work.instruct, shared + [image_record(f"t{i}") for i in range(20)])
    work.run("--n-rejection", "10")
    out = work.output("10_llava_med_30_mix665k")
    rejected = {r["id"] for r in out if is_rejection(r)}
    kept = [r["id"] for r in out if not is_rejection(r)]
    assert len(kept) == 30
    assert not rejected & set(kept)
    assert work.manifest("10_llava_med_30_mix665k")["counts"]["instruct_excluded_by_id"] == 10


def test_exclusion_compares_integer_and_string_ids_as_strings(work):
    write_json(work.rejection, [image_record(i) for i in range(10)])  # integer ids
    write_json(work.instruct, [image_record(str(i)) for i in range(10)] + [image_record("x")])  # the same, as strings
    work.run("--n-rejection", "10")
    out = work.output("10_llava_med_1_mix665k")
    assert [r["id"] for r in out if not is_rejection(r)] == ["x"]


def test_similar_draws_instruct_records_only_among_the_drawn_ids(work):
    write_json(work.rejection, [image_record(f"s{i}") for i in range(30)])
    write_json(
        work.instruct, [image_record(f"s{i}") for i in range(0, 30, 2)] + [image_record(f"t{i}") for i in range(50)]
    )
    work.run("--n-rejection", "10", "--similar")
    name = "10_llava_med_"
    out_name = next(p.stem for p in work.data.glob(f"{name}*_similar.json"))
    out = work.output(out_name)
    rejected = {r["id"] for r in out if is_rejection(r)}
    instruct_ids = [r["id"] for r in out if not is_rejection(r)]
    assert instruct_ids and set(instruct_ids) <= rejected
    assert out_name == f"10_llava_med_{len(instruct_ids)}_mix665k_similar"


# ------------------------------------------------------------------------------------------- --random-turn


def test_random_turn_keeps_one_pair_with_the_image_tag_in_front(work):
    work.run("--n-rejection", "40", "--n-instruct", "0", "--random-turn")
    out = work.output("40_llava_med_0_mix665k_random_turn")
    originals = {r["id"]: r for r in json.loads(work.rejection.read_text())}
    for rec in out:
        assert len(rec["conversations"]) == 2
        question, answer = (turn["value"] for turn in rec["conversations"])
        assert answer == SORRY
        assert question.startswith("<image>\n") and question.count("<image>") == 1
        assert question.removeprefix("<image>\n") in {
            t["value"].replace("\n<image>", "") for t in originals[rec["id"]]["conversations"][::2]
        }


def test_random_turn_picks_various_pairs(work):
    write_json(work.rejection, [image_record(f"m{i}", 4) for i in range(40)])
    work.run("--n-rejection", "40", "--n-instruct", "0", "--random-turn")
    questions = {
        rec["conversations"][0]["value"].split()[2] for rec in work.output("40_llava_med_0_mix665k_random_turn")
    }
    assert questions == {"0", "1", "2", "3"}


def test_random_turn_never_keeps_a_what_about_question(work):
    records = [
        record(
            f"m{i}",
            ("<image>\nWhat is this?", "A dog."),
            ("What about the cat?", "Grey."),
            ("what About it?", "x"),
            image="a.jpg",
        )
        for i in range(30)
    ]
    write_json(work.rejection, records)
    work.run("--n-rejection", "30", "--n-instruct", "0", "--random-turn")
    out = work.output("30_llava_med_0_mix665k_random_turn")
    assert {rec["conversations"][0]["value"] for rec in out} == {"<image>\nWhat is this?"}


def test_random_turn_skips_records_whose_every_question_is_what_about(work, caplog):
    follow_ups = [record(f"w{i}", ("<image>\nWhat about the dog?", "Brown."), image="a.jpg") for i in range(5)]
    write_json(work.rejection, follow_ups + [image_record(f"ok{i}") for i in range(3)])
    with caplog.at_level(logging.WARNING):
        assert work.run("--n-rejection", "8", "--n-instruct", "0", "--random-turn") == 0
    out = work.output("3_llava_med_0_mix665k_random_turn")
    assert sorted(r["id"] for r in out) == ["ok0", "ok1", "ok2"]
    assert work.manifest("3_llava_med_0_mix665k_random_turn")["counts"]["rejection_source_skipped_what_about"] == 5
    assert "5 records skipped for --random-turn" in caplog.text


def test_random_turn_on_a_file_of_only_what_about_records_terminates_with_no_rejection_example(work):
    write_json(work.rejection, [record(f"w{i}", ("What about it?", "x"), ("What about that?", "y")) for i in range(4)])
    assert work.run("--n-rejection", "2", "--n-instruct", "3", "--random-turn") == 0
    assert len(work.output("0_llava_med_3_mix665k_random_turn")) == 3


def test_random_turn_on_a_record_without_image_adds_no_tag(work):
    write_json(work.rejection, [image_record(f"t{i}", 3, image=False) for i in range(10)])
    work.run("--n-rejection", "10", "--n-instruct", "0", "--random-turn")
    out = work.output("10_llava_med_0_mix665k_random_turn")
    assert all("<image>" not in rec["conversations"][0]["value"] and rec["image"] == [] for rec in out)


def test_random_turn_keeps_one_tag_per_image_of_a_multi_image_record(work):
    two = record("two", ("<image>\nFirst?", "a"), ("<image>\nSecond?", "b"), ("Third?", "c"), image=["1.jpg", "2.jpg"])
    write_json(work.rejection, [two])
    work.run("--n-rejection", "1", "--n-instruct", "0", "--random-turn")
    (rec,) = work.output("1_llava_med_0_mix665k_random_turn")
    assert rec["image"] == ["1.jpg", "2.jpg"]
    assert rec["conversations"][0]["value"].startswith("<image>\n<image>\n")
    assert rec["conversations"][0]["value"].count("<image>") == 2


# ------------------------------------------------------------------------------------------- replies


def test_several_replies_are_each_used_and_counted_in_the_manifest(work):
    replies = ["No.", "I cannot help with that.", "Sorry, no."]
    work.run("--n-rejection", "40", "--n-instruct", "0", "--reply", *replies, "--name", "r")
    answers = [rec["conversations"][1]["value"] for rec in work.output("r")]
    assert set(answers) == set(replies)
    by_reply = work.manifest("r")["counts"]["rejection_by_reply"]
    assert by_reply == {reply: answers.count(reply) for reply in replies}


def test_empty_reply_is_an_error(work, capsys):
    assert work.run("--n-rejection", "4", "--reply", "  ") == 2
    assert "a rejection sentence must not be empty" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- sizing


def test_rejection_ratio_sets_the_fraction_of_the_mix(work):
    work.run("--rejection-ratio", "0.25", "--n-instruct", "30")
    out = work.output("10_llava_med_30_mix665k")
    assert sum(map(is_rejection, out)) == 10
    assert work.manifest("10_llava_med_30_mix665k")["counts"]["rejection_fraction"] == 0.25


def test_rejection_ratio_without_n_instruct_uses_every_instruct_record(work):
    work.run("--rejection-ratio", "0.2")
    # 100 instruct records, no shared ids: 25 rejection examples make 20 % of 125
    out = work.output("25_llava_med_100_mix665k")
    assert sum(map(is_rejection, out)) == 25


def test_rejection_ratio_stays_exact_when_exclusion_shrinks_the_instruct_sample(work):
    shared = [image_record(f"s{i}") for i in range(40)]
    write_json(work.rejection, shared)
    write_json(work.instruct, shared[:20] + [image_record(f"t{i}") for i in range(20)])
    work.run("--rejection-ratio", "0.5", "--name", "r")
    counts = work.manifest("r")["counts"]
    assert counts["rejection"] == counts["instruct"]
    rejected = {r["id"] for r in work.output("r") if is_rejection(r)}
    assert not rejected & {r["id"] for r in work.output("r") if not is_rejection(r)}


def test_rejection_ratio_beyond_the_source_keeps_the_fraction_with_fewer_instruct_records(work, caplog):
    with caplog.at_level(logging.WARNING):
        work.run("--rejection-ratio", "0.5", "--n-instruct", "100")
    out = work.output("40_llava_med_40_mix665k")
    assert sum(map(is_rejection, out)) == 40
    assert "--rejection-ratio 0.5 needs 100 records, only 40 available" in caplog.text


def test_rejection_ratio_beyond_the_source_with_strict_is_an_error(work, capsys):
    assert work.run("--rejection-ratio", "0.5", "--n-instruct", "100", "--strict") == 2
    assert "asked for 100 records, only 40 available (--strict)" in capsys.readouterr().err
    assert work.files() == []


@pytest.mark.parametrize("ratio", ["1", "1.5", "-0.1", "nan"])
def test_rejection_ratio_outside_zero_to_one_is_a_usage_error(work, ratio):
    with pytest.raises(SystemExit) as exit_info:
        work.run("--rejection-ratio", ratio)
    assert exit_info.value.code == 2


def test_n_rejection_and_rejection_ratio_are_exclusive(work):
    with pytest.raises(SystemExit) as exit_info:
        work.run("--rejection-ratio", "0.1", "--n-rejection", "3")
    assert exit_info.value.code == 2


def test_rejection_ratio_with_similar_is_an_error(work, capsys):
    assert work.run("--rejection-ratio", "0.1", "--similar") == 2
    assert "--rejection-ratio cannot be combined with --similar" in capsys.readouterr().err


def test_omitted_sizes_take_every_record(work):
    work.run()
    out = work.output("40_llava_med_100_mix665k")
    assert len(out) == 140


def test_sample_larger_than_available_is_clamped_with_a_warning(work, caplog):
    with caplog.at_level(logging.WARNING):
        assert work.run("--n-rejection", "500", "--n-instruct", "1000") == 0
    assert len(work.output("40_llava_med_100_mix665k")) == 140
    assert "asked for 500 records, only 40 available; using 40" in caplog.text
    assert "asked for 1000 records, only 100 available; using 100" in caplog.text
    assert work.manifest("40_llava_med_100_mix665k")["counts"]["requested"] == {"rejection": 500, "instruct": 1000}


def test_sample_larger_than_available_with_strict_is_an_error_and_writes_nothing(work, capsys):
    assert work.run("--n-rejection", "10", "--n-instruct", "1000", "--strict") == 2
    assert "mix665k.json: asked for 1000 records, only 100 available (--strict)" in capsys.readouterr().err
    assert work.files() == []


# ------------------------------------------------------------------------------------------- names, registration


def test_default_name_has_a_suffix_per_content_option(work):
    work.run("--n-rejection", "4", "--n-instruct", "5", "--random-turn", "--similar", "--seed", "3", "--reply", "No")
    reply_hash = hashlib.sha256(b"No").hexdigest()[:8]
    names = [name for name in work.files() if name.endswith(".json") and not name.endswith(".manifest.json")]
    assert names == [f"4_llava_med_0_mix665k_random_turn_similar_seed3_reply{reply_hash}.json", "dataset_info.json"]


def test_name_option_names_the_file_and_the_dataset(work):
    work.run("--n-rejection", "3", "--n-instruct", "3", "--name", "sweep_a")
    assert "sweep_a.json" in work.files() and "sweep_a.manifest.json" in work.files()
    assert json.loads(work.info.read_text())["sweep_a"]["file_name"] == "sweep_a.json"


def test_name_with_a_path_separator_is_an_error(work, capsys):
    assert work.run("--n-rejection", "3", "--name", "../x") == 2
    assert "must be a plain name" in capsys.readouterr().err


def test_output_outside_the_dataset_dir_is_registered_by_absolute_path(work, tmp_path):
    other = tmp_path / "elsewhere"
    args = work.args("--n-rejection", "3", "--n-instruct", "3", "--name", "m")
    args[args.index("--output") + 1] = str(other)
    assert main(args) == 0
    assert json.loads(work.info.read_text())["m"]["file_name"] == str(other / "m.json")


def test_output_in_a_subfolder_of_the_dataset_dir_is_registered_relative(work):
    args = work.args("--n-rejection", "3", "--n-instruct", "3", "--name", "m")
    args[args.index("--output") + 1] = str(work.data / "mixes")
    assert main(args) == 0
    assert json.loads(work.info.read_text())["m"]["file_name"] == "mixes/m.json"


def test_existing_different_registration_fails_before_writing_unless_force(work, capsys):
    work.info.parent.mkdir()
    work.info.write_text(json.dumps({"m": {"file_name": "other.json"}}))
    assert work.run("--n-rejection", "3", "--name", "m") == 2
    assert "dataset 'm' is already registered with a different definition" in capsys.readouterr().err
    assert work.files() == ["dataset_info.json"]
    assert work.run("--n-rejection", "3", "--name", "m", "--force") == 0
    assert json.loads(work.info.read_text())["m"]["file_name"] == "m.json"


@pytest.mark.parametrize("register", [True, False])
def test_a_mix_named_dataset_info_is_refused_and_the_registry_survives(work, capsys, register):
    work.info.parent.mkdir()
    work.info.write_text(json.dumps({"keep_me": {"file_name": "k.json"}}))
    extra = () if register else ("--no-register",)
    assert work.run("--n-rejection", "3", "--name", "dataset_info", *extra) == 2
    assert "would overwrite a dataset_info.json" in capsys.readouterr().err
    assert json.loads(work.info.read_text()) == {"keep_me": {"file_name": "k.json"}}
    assert work.files() == ["dataset_info.json"]


def test_no_register_leaves_dataset_info_alone(work):
    assert work.run("--n-rejection", "3", "--name", "m", "--no-register") == 0
    assert not work.info.exists()
    assert work.manifest("m")["dataset"] is None


def test_registered_mix_is_understood_by_llamafactory(work):
    parser = pytest.importorskip("llamafactory.data.parser")
    work.run("--n-rejection", "3", "--n-instruct", "3", "--name", "m")
    (attr,) = parser.get_dataset_list(["m"], str(work.data))
    assert (attr.load_from, attr.dataset_name, attr.formatting) == ("file", "m.json", "sharegpt")
    assert (attr.messages, attr.images, attr.role_tag, attr.user_tag) == ("conversations", "image", "from", "human")


# ------------------------------------------------------------------------------------------- manifest


def test_manifest_records_inputs_options_seed_counts_and_version(work):
    work.run("--n-rejection", "10", "--n-instruct", "20", "--name", "m")
    manifest = work.manifest("m")
    rejection = manifest["inputs"]["rejection_source"]
    assert rejection["sha256"] == hashlib.sha256(work.rejection.read_bytes()).hexdigest()
    assert rejection["records"] == 40 and rejection["path"] == str(work.rejection.resolve())
    assert manifest["inputs"]["instruct"]["records"] == 100
    assert manifest["seed"] == 42 and manifest["version"] == __version__
    assert manifest["options"]["n_rejection"] == 10 and manifest["options"]["replies"] == [SORRY]
    assert manifest["counts"]["rejection"] == 10 and manifest["counts"]["instruct"] == 20
    assert manifest["output"]["sha256"] == hashlib.sha256((work.data / "m.json").read_bytes()).hexdigest()
    assert manifest["output"]["records"] == 30


def test_manifest_holds_no_timestamp(work):
    work.run("--n-rejection", "2", "--n-instruct", "2", "--name", "m")

    def keys(node):
        if isinstance(node, dict):
            return set(node) | {key for value in node.values() for key in keys(value)}
        return set()

    assert not [key for key in keys(work.manifest("m")) if "time" in key or "date" in key]


# ------------------------------------------------------------------------------------------- images


@pytest.fixture
def image_dir(work):
    directory = work.root / "images"
    for rec in json.loads(work.rejection.read_text()) + json.loads(work.instruct.read_text()):
        if "image" in rec:
            (directory / rec["image"]).parent.mkdir(parents=True, exist_ok=True)
            (directory / rec["image"]).write_bytes(b"jpg")
    return directory


def test_image_check_passes_when_every_image_exists(work, image_dir):
    assert work.run("--n-rejection", "10", "--image-dir", str(image_dir), "--name", "m") == 0


def test_missing_images_fail_the_mix_with_their_count_and_first_names(work, image_dir, capsys):
    for i in range(7):
        (image_dir / "img" / f"med{i}.jpg").unlink()
    assert work.run("--image-dir", str(image_dir), "--name", "m") == 2
    err = capsys.readouterr().err
    assert "7 of 130 images are missing under" in err and "img/med" in err and "(2 more)" in err
    assert "--allow-missing-images" in err
    assert work.files() == []


def test_allow_missing_images_writes_the_mix_with_a_warning(work, image_dir, caplog):
    (image_dir / "img" / "med0.jpg").unlink()
    with caplog.at_level(logging.WARNING):
        assert work.run("--image-dir", str(image_dir), "--allow-missing-images", "--name", "m") == 0
    assert "1 of 130 images are missing" in caplog.text
    assert len(work.output("m")) == 140


# ------------------------------------------------------------------------------------------- bad input


BAD_INPUTS = {
    "not_json": (b"this is not json", "not a JSON array: it starts with 't'"),
    "object": (b'{"id": 1, "conversations": []}', "not a JSON array"),
    "no_conversations": (
        json.dumps([image_record("a"), {"id": "b", "image": "x.jpg"}]).encode(),
        "record 1 (id 'b'): has no 'conversations'",
    ),
    "other_from": (
        json.dumps(
            [
                record("a", ("q", "a"))
                | {"conversations": [{"from": "human", "value": "q"}, {"from": "system", "value": "a"}]}
            ]
        ).encode(),
        "record 0 (id 'a'): turn 1 has from='system', expected 'human' or 'gpt'",
    ),
    "odd_turns": (
        json.dumps([{"id": 3, "conversations": [{"from": "human", "value": "q"}]}]).encode(),
        "record 0 (id 3): has 1 turns, expected an even number",
    ),
    "first_not_human": (
        json.dumps(
            [{"id": 3, "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}]
        ).encode(),
        "record 0 (id 3): first turn has from='gpt', expected 'human'",
    ),
    "empty_value": (
        json.dumps([image_record("a"), record("b", ("q", ""))]).encode(),
        "record 1 (id 'b'): turn 1 (gpt) has an empty value",
    ),
    "tag_mismatch": (
        json.dumps([record("a", ("q", "a"), image="x.jpg")]).encode(),
        "record 0 (id 'a'): got 0 <image> tags in the human turns, expected 1",
    ),
    "truncated": (json.dumps([image_record("a"), image_record("b")]).encode()[:-30], "not valid JSON"),
}


@pytest.mark.parametrize("which", ["rejection", "instruct"])
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_an_error_naming_file_and_record_and_writes_nothing(work, capsys, which, case):
    content, expected = BAD_INPUTS[case]
    bad = work.rejection if which == "rejection" else work.instruct
    bad.write_bytes(content)
    work.data.mkdir()
    work.info.write_text("{}\n")
    assert work.run("--name", "m") == 2  # every record goes into the mix, so every record is validated
    err = capsys.readouterr().err
    assert f"rejection-align mix: error: {bad}: " in err
    assert expected in err
    assert work.files() == ["dataset_info.json"]
    assert work.info.read_text() == "{}\n"


def test_missing_input_file_is_an_error(work, capsys):
    work.instruct.unlink()
    assert work.run("--n-rejection", "1") == 2
    assert f"{work.instruct}: no such file" in capsys.readouterr().err


def test_bad_input_exits_with_code_2_from_the_command_line(work):
    work.instruct.write_text('[{"id": 1}]')
    result = subprocess.run(
        [sys.executable, "-m", "rejection_align.cli", *work.args("--n-rejection", "1")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().endswith(f"{work.instruct}: record 0 (id 1): has no 'conversations'")
    assert "Traceback" not in result.stderr


def test_instruct_records_left_out_of_the_mix_are_not_decoded(work):
    records = json.loads(work.instruct.read_text())
    records[99]["conversations"][0]["from"] = "user"  # bad, but never drawn below
    write_json(work.instruct, records)
    assert work.run("--n-rejection", "2", "--n-instruct", "3", "--seed", "1", "--name", "m") == 0
    assert "99" not in {r["id"] for r in work.output("m")}


def test_a_record_without_an_id_anywhere_in_the_instruct_file_is_an_error(work, capsys):
    records = json.loads(work.instruct.read_text())
    del records[99]["id"]
    write_json(work.instruct, records)
    assert work.run("--n-rejection", "2", "--n-instruct", "3", "--name", "m") == 2
    assert f"{work.instruct}: record 99 has no 'id'" in capsys.readouterr().err
    assert work.files() == []


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused_naming_file_and_record(work, capsys, literal):
    text = work.instruct.read_text()
    work.instruct.write_text(text.replace('"id": 3,', f'"score": {literal}, "id": 3,', 1))
    assert work.run("--n-rejection", "2", "--name", "m") == 2
    err = capsys.readouterr().err
    assert f"{work.instruct}: record 3: not valid JSON: invalid character at line" in err
    assert "Infinity is not JSON" in err or "NaN is not JSON" in err
    assert work.files() == []


def test_a_deeply_nested_record_is_an_error_naming_it_not_a_recursion_error(work, capsys):
    records = json.loads(work.rejection.read_text())
    records[5]["extra"] = "DEEP"
    work.rejection.write_text(json.dumps(records).replace('"DEEP"', "[" * 1200 + "]" * 1200))
    assert work.run("--name", "m") == 2  # (every record drawn: a record is validated when it is drawn)
    err = capsys.readouterr().err
    assert f"{work.rejection}: record 5: nested too deeply" in err
    assert "Traceback" not in err
    assert work.files() == []


def test_an_input_with_a_byte_order_mark_mixes_like_one_without(work):
    work.run("--n-rejection", "5", "--n-instruct", "20", "--name", "a")
    work.instruct.write_bytes(b"\xef\xbb\xbf" + work.instruct.read_bytes())
    work.run("--n-rejection", "5", "--n-instruct", "20", "--name", "b")
    assert (work.data / "a.json").read_bytes() == (work.data / "b.json").read_bytes()


def test_an_empty_mix_is_refused_and_nothing_is_written_or_registered(work, capsys):
    assert work.run("--n-rejection", "0", "--n-instruct", "0") == 2
    assert "the mix would be empty" in capsys.readouterr().err
    assert work.files() == []


def test_output_through_a_symlink_to_the_input_folder_never_replaces_an_input(work, capsys):
    link = work.root / "linkdir"
    link.symlink_to(work.root)
    before = work.instruct.read_bytes()
    args = work.args("--n-rejection", "2", "--n-instruct", "8", "--name", "mix665k", "--no-register")
    args[args.index("--output") + 1] = str(link)
    assert main(args) == 2
    assert "would overwrite the input --instruct" in capsys.readouterr().err
    assert work.instruct.read_bytes() == before


def test_a_failure_while_writing_leaves_no_registration_and_no_temp_file(work, monkeypatch, capsys):
    import errno
    import os

    def full(_fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    work.data.mkdir()
    work.info.write_text("{}\n")
    monkeypatch.setattr(os, "fsync", full)
    assert work.run("--n-rejection", "2", "--n-instruct", "8", "--name", "m") == 2
    err = capsys.readouterr().err
    assert f"rejection-align mix: error: {work.data / 'm.'}" in err and ": No space left on device" in err
    assert work.files() == ["dataset_info.json"]
    assert work.info.read_text() == "{}\n"


def test_output_name_that_is_a_directory_is_refused_before_anything_is_registered(work, capsys):
    (work.data / "m.json").mkdir(parents=True)
    assert work.run("--n-rejection", "2", "--n-instruct", "8", "--name", "m") == 2
    assert "m.json: is a directory" in capsys.readouterr().err
    assert not work.info.exists()


def test_a_rerun_removes_the_temp_file_a_killed_mix_left(work):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    work.data.mkdir()
    leftover = work.data / f".m.json.{int(dead.stdout)}.a1b2c3d4.tmp"
    leftover.write_bytes(b"[\n" * 1000)
    assert work.run("--n-rejection", "2", "--n-instruct", "8", "--name", "m") == 0
    assert not leftover.exists()
    assert [name for name in work.files() if name.endswith(".tmp")] == []


def test_deprecated_cache_options_are_accepted_with_a_warning(work, caplog, tmp_path):
    with caplog.at_level(logging.WARNING):
        assert work.run("--n-rejection", "3", "--name", "m", "--cache-dir", str(tmp_path / "c"), "--no-cache") == 0
    assert "--cache-dir and --no-cache are deprecated and ignored" in caplog.text
    assert not (tmp_path / "c").exists()


def test_same_inputs_and_seed_give_the_bytes_release_0_1_wrote(work):
    """The msgspec reader changed neither the draw nor the output format."""
    work.run("--n-rejection", "7", "--n-instruct", "20", "--random-turn", "--name", "m")
    assert hashlib.sha256((work.data / "m.json").read_bytes()).hexdigest() == RELEASE_0_1_MIX_SHA256


def test_non_ascii_input_mixes_identically_run_after_run(work):
    records = [
        record(f"é{i}", ("<image>\nQu'est-ce que c'est ? 日本", f"Réponse {i} 😀"), image=f"é/{i}.jpg")
        for i in range(30)
    ]
    write_json(work.instruct, records)
    work.run("--n-rejection", "5", "--n-instruct", "20", "--name", "a")
    work.run("--n-rejection", "5", "--n-instruct", "20", "--name", "b")
    assert (work.data / "a.json").read_bytes() == (work.data / "b.json").read_bytes()
    assert {r["conversations"][1]["value"] for r in work.output("b") if not is_rejection(r)} <= {
        f"Réponse {i} 😀" for i in range(30)
    }


def test_records_of_every_layout_are_written_as_their_sharegpt_form(work):
    conversation = [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}]
    records = [
        {"id": "plain", "image": "a.jpg", "conversations": conversation},
        {"conversations": conversation, "image": "b.jpg", "id": 5},
        {"id": "list", "image": ["c.jpg"], "conversations": conversation},
        {"id": "extra", "image": "d.jpg", "conversations": conversation, "model": "v1"},
    ]
    work.instruct.write_text("[\r\n" + ",\r\n".join(json.dumps(r, indent=3) for r in records) + "\r\n]")
    work.run("--n-rejection", "0", "--name", "a")
    work.run("--n-rejection", "0", "--name", "b")
    expected = sorted(
        [
            {
                **{"id": str(r["id"]), "image": r["image"] if isinstance(r["image"], list) else [r["image"]]},
                "conversations": conversation,
                **({"model": "v1"} if "model" in r else {}),
            }
            for r in records
        ],
        key=lambda r: r["id"],
    )
    assert sorted(work.output("a"), key=lambda r: r["id"]) == expected
    lines = (work.data / "a.json").read_bytes().split(b"\n")
    assert len(lines) == len(records) + 3  # "[", one line per record, "]", ""
    assert (work.data / "a.json").read_bytes() == (work.data / "b.json").read_bytes()


# ------------------------------------------------------------------------------------------- forked helpers


def fork_helpers(monkeypatch) -> list[bool]:
    """Lower the thresholds so that the small test files take the forked paths (ids, then every other chunk of 3
    records); return the list of Forked.start results, to prove the children ran."""
    from rejection_align.data import forked, mix, reading

    stop_other_threads()
    started: list[bool] = []
    real_start = forked.Forked.start.__func__

    def spy(cls, work):
        child = real_start(cls, work)
        started.append(child is not None)
        return child

    monkeypatch.setattr(forked.Forked, "start", classmethod(spy))
    monkeypatch.setattr(reading, "IDS_IN_CHILD_BYTES", 1)
    monkeypatch.setattr(mix, "LINES_IN_CHILD_RECORDS", 1)
    monkeypatch.setattr(mix, "_CHUNK", 3)
    return started


def comparable(manifest: dict) -> dict:
    """A manifest without what names the output."""
    manifest["options"]["name"] = manifest["output"]["file"] = manifest["dataset"] = None
    return manifest


@pytest.mark.parametrize(
    "options",
    [
        (),
        ("--random-turn", "--n-instruct", "70"),
        ("--similar", "--n-rejection", "10", "--seed", "3"),
        ("--rejection-ratio", "0.2", "--reply", "No.", "Sorry."),
    ],
    ids=["all", "random-turn", "similar", "ratio-replies"],
)
def test_a_mix_made_with_forked_helpers_has_the_bytes_of_one_made_alone(work, monkeypatch, options):
    assert work.run(*options, "--name", "alone") == 0
    started = fork_helpers(monkeypatch)
    assert work.run(*options, "--name", "forked") == 0
    assert started == [True, True]  # the ids child, then the lines child
    assert (work.data / "forked.json").read_bytes() == (work.data / "alone.json").read_bytes()
    assert comparable(work.manifest("forked")) == comparable(work.manifest("alone"))
    assert no_child_left()


def test_images_of_chunks_made_by_the_child_are_checked_in_order(work, monkeypatch, caplog, tmp_path):
    images = tmp_path / "images" / "img"
    images.mkdir(parents=True)
    for i in range(0, 100, 3):
        (images / f"{i if i % 2 else f'{i:06d}'}.jpg").touch()
    args = ("--image-dir", str(images.parent), "--allow-missing-images")
    with caplog.at_level(logging.WARNING):
        assert work.run(*args, "--name", "alone") == 0
        alone = [r.getMessage() for r in caplog.records if "missing" in r.getMessage()]
        caplog.clear()
        started = fork_helpers(monkeypatch)
        assert work.run(*args, "--name", "forked") == 0
        forked = [r.getMessage() for r in caplog.records if "missing" in r.getMessage()]
    assert started == [True, True]
    assert forked == alone and "images are missing" in alone[0]
    assert (work.data / "forked.json").read_bytes() == (work.data / "alone.json").read_bytes()


@pytest.mark.parametrize("maker", ["parent", "child"])
def test_a_bad_instruct_record_is_named_as_without_helpers_whichever_process_makes_it(
    work, monkeypatch, capsys, maker
):
    assert work.run("--name", "good", "--no-register") == 0
    # an instruct record in an even chunk of 3 (made by this process) or an odd one (made by the child)
    order = [rec["id"] for rec in work.output("good")]
    instruct_ids = {str(rec["id"]) for rec in json.loads(work.instruct.read_text())}
    position = next(
        p for p, rid in enumerate(order) if rid in instruct_ids and (p // 3) % 2 == (maker == "child") and p > 20
    )
    records = json.loads(work.instruct.read_text())
    bad = next(i for i, rec in enumerate(records) if str(rec["id"]) == order[position])
    records[bad]["conversations"][1]["value"] = " "
    write_json(work.instruct, records)
    capsys.readouterr()
    assert work.run("--name", "m") == 2
    alone = capsys.readouterr().err
    started = fork_helpers(monkeypatch)
    assert work.run("--name", "m") == 2
    assert capsys.readouterr().err == alone
    assert f"record {bad} (id {records[bad]['id']!r}): turn 1 (gpt) has an empty value" in alone
    assert started == [True, True]
    assert [name for name in work.files() if name.startswith("m")] == []
    assert no_child_left()


def test_a_bad_id_met_by_the_ids_child_is_named_as_without_it(work, monkeypatch, capsys):
    records = json.loads(work.instruct.read_text())
    records[61]["id"] = 1.5
    write_json(work.instruct, records)
    assert work.run("--name", "m") == 2
    alone = capsys.readouterr().err
    started = fork_helpers(monkeypatch)
    assert work.run("--name", "m") == 2
    assert capsys.readouterr().err == alone
    assert "record 61 has id 1.5 (number), expected a string or an integer" in alone
    assert started == [True]  # no lines child: the error came first
    assert no_child_left()


def test_random_turn_does_not_refuse_a_bad_source_record_it_does_not_draw(work):
    records = json.loads(work.rejection.read_text())
    records[5]["conversations"] = records[5]["conversations"][:1]  # one turn: refused if drawn
    write_json(work.rejection, records)
    assert work.run("--n-rejection", "3", "--n-instruct", "0", "--random-turn", "--name", "m") == 0
    assert "med5" not in {rec["id"] for rec in work.output("m")}
    assert work.run("--n-rejection", "40", "--n-instruct", "0", "--random-turn", "--name", "all") == 2


def test_the_command_prints_each_result_once(work):
    proc = subprocess.run(
        [sys.executable, "-m", "rejection_align.cli", *work.args("--n-rejection", "3", "--n-instruct", "4")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    both = proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [
        f"wrote 7 records (3 rejection, 4 instruct) to {work.data / '3_llava_med_4_mix665k.json'}",
        f"manifest: {work.data / '3_llava_med_4_mix665k.manifest.json'}",
        f"dataset '3_llava_med_4_mix665k' added in {work.info}",
    ]
    assert both.count("added") == 1 and both.count("wrote") == 1


def test_the_manifest_reads_back_as_its_struct(work):
    from rejection_align.data.mix import read_manifest

    work.run("--n-rejection", "3", "--n-instruct", "4", "--name", "m")
    manifest = read_manifest(work.data / "m.manifest.json")
    assert (manifest.counts.rejection, manifest.counts.requested.instruct, manifest.output.records) == (3, 4, 7)
    assert manifest.options == work.manifest("m")["options"]


def test_the_python_api_takes_the_same_options_as_the_command_line(work):
    from rejection_align.data.mix import MixOptions, mix

    result = mix(
        MixOptions(
            rejection_source=work.rejection, instruct=work.instruct, output=work.data, n_rejection=4, n_instruct=6,
            random_turn=True, dataset_info=None, name="api",
        )
    )  # fmt: skip
    assert (result.name, result.n_rejection, result.n_instruct, result.registration) == ("api", 4, 6, None)
    assert work.run("--n-rejection", "4", "--n-instruct", "6", "--random-turn", "--name", "cli", "--no-register") == 0
    assert (work.data / "api.json").read_bytes() == (work.data / "cli.json").read_bytes()
    assert comparable(work.manifest("api")) == comparable(work.manifest("cli"))
    assert result.counts == work.manifest("api")["counts"]
    assert not work.info.exists()
