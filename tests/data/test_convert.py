"""``rejection-align convert``: LLaVA format to registered sharegpt, all or nothing."""

import json
import logging
from pathlib import Path

import pytest

from conftest import llava_record as record
from rejection_align.cli import main


RECORDS = [
    record(1, ("<image>\nWhat is it?", "A cat."), image="coco/1.jpg"),
    record("0002", ("Tell me a joke.", "No.")),
    record("x3", ("<image>\n<image>\nCompare.", "Same é."), image=["a.jpg", "b.jpg"], model="v1"),
]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv("REJECTION_ALIGN_CACHE_DIR", str(directory))
    return directory


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "llava_med.json"
    path.write_text(json.dumps(RECORDS, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def convert(source: Path, *extra: str) -> int:
    data = source.parent / "data"
    return main(
        ["convert", str(source), "--output", str(data), "--dataset-info", str(data / "dataset_info.json"), *extra]
    )


def test_convert_writes_sharegpt_records_in_input_order(source):
    assert convert(source) == 0
    out = json.loads((source.parent / "data" / "llava_med.json").read_text(encoding="utf-8"))
    assert out == [
        {"id": "1", "image": ["coco/1.jpg"], "conversations": RECORDS[0]["conversations"]},
        {"id": "0002", "image": [], "conversations": RECORDS[1]["conversations"]},
        {"id": "x3", "image": ["a.jpg", "b.jpg"], "conversations": RECORDS[2]["conversations"], "model": "v1"},
    ]


def test_convert_registers_the_file_under_the_input_stem(source):
    convert(source)
    info = json.loads((source.parent / "data" / "dataset_info.json").read_text())
    assert info == {
        "llava_med": {
            "file_name": "llava_med.json",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "images": "image"},
        }
    }


def test_convert_name_option_names_file_and_dataset(source):
    convert(source, "--name", "med_sharegpt")
    assert (source.parent / "data" / "med_sharegpt.json").is_file()
    assert "med_sharegpt" in json.loads((source.parent / "data" / "dataset_info.json").read_text())


def test_convert_of_the_same_file_twice_is_byte_identical(source):
    convert(source)
    first = (source.parent / "data" / "llava_med.json").read_bytes()
    convert(source)
    assert (source.parent / "data" / "llava_med.json").read_bytes() == first


def test_convert_bad_record_exits_2_naming_it_and_writes_nothing(source, capsys):
    bad = [*RECORDS, record("z", ("<image>\nq", "a"))]  # a tag, no image
    source.write_text(json.dumps(bad))
    assert convert(source) == 2
    err = capsys.readouterr().err
    assert f"rejection-align convert: error: {source}: record 3 (id 'z'): got 1 <image> tag in the human turns" in err
    assert not (source.parent / "data").exists() or list((source.parent / "data").iterdir()) == []


def test_convert_refuses_to_overwrite_its_input(source, capsys):
    code = main(["convert", str(source), "--output", str(source.parent), "--no-register"])
    assert code == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert json.loads(source.read_text()) == RECORDS


def test_convert_named_dataset_info_is_refused_and_the_registry_survives(source, capsys):
    data = source.parent / "data"
    data.mkdir()
    (data / "dataset_info.json").write_text(json.dumps({"keep_me": {"file_name": "k.json"}}))
    assert convert(source, "--name", "dataset_info") == 2
    assert "would overwrite a dataset_info.json" in capsys.readouterr().err
    assert json.loads((data / "dataset_info.json").read_text()) == {"keep_me": {"file_name": "k.json"}}
    assert sorted(p.name for p in data.iterdir()) == ["dataset_info.json"]


def test_convert_to_an_output_that_is_a_file_exits_2_with_a_message(source, capsys):
    blocker = source.parent / "not_a_dir"
    blocker.write_text("x")
    assert main(["convert", str(source), "--output", str(blocker), "--no-register"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rejection-align convert: error: ") and str(blocker) in err
    assert "Traceback" not in err


def test_convert_refuses_a_different_registration_without_force(source, capsys):
    data = source.parent / "data"
    data.mkdir()
    (data / "dataset_info.json").write_text(json.dumps({"llava_med": {"file_name": "other.json"}}))
    assert convert(source) == 2
    assert "already registered with a different definition" in capsys.readouterr().err
    assert not (data / "llava_med.json").exists()
    assert convert(source, "--force") == 0


def test_convert_missing_images_fail_unless_allowed(source, tmp_path, capsys, caplog):
    images = tmp_path / "images"
    (images / "coco").mkdir(parents=True)
    (images / "coco" / "1.jpg").write_bytes(b"x")
    (images / "a.jpg").write_bytes(b"x")
    assert convert(source, "--image-dir", str(images)) == 2
    assert "1 of 3 images are missing under" in capsys.readouterr().err
    with caplog.at_level(logging.WARNING):
        assert convert(source, "--image-dir", str(images), "--allow-missing-images") == 0
    assert "b.jpg" in caplog.text


def test_convert_leaves_an_index_a_later_mix_reads_from_the_cache(source, tmp_path, caplog):
    convert(source, "--no-register")
    with caplog.at_level(logging.INFO):
        main(
            [
                "mix",
                "--rejection-source",
                str(source),
                "--instruct",
                str(source),
                "--n-rejection",
                "1",
                "--output",
                str(tmp_path / "out"),
                "--no-register",
            ]
        )
    assert "llava_med.json: 3 records, index from the cache" in caplog.text
    assert "reading and validating" not in caplog.text
