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


def test_convert_through_a_symlinked_output_folder_never_replaces_the_input(source, tmp_path, capsys):
    link = tmp_path / "linkdir"
    link.symlink_to(source.parent)
    before = source.read_bytes()
    assert main(["convert", str(source), "--output", str(link), "--no-register"]) == 2
    assert "would overwrite the input file" in capsys.readouterr().err
    assert source.read_bytes() == before


def test_deeply_nested_record_is_an_error_naming_the_record_not_a_traceback(source, capsys):
    deep = "[" * 1200 + "]" * 1200
    source.write_text(f'[{json.dumps(RECORDS[0])}, {{"id": "d", "conversations": [], "x": {deep}}}]')
    assert convert(source) == 2
    assert f"{source}: record 1: nested too deeply" in capsys.readouterr().err
    assert list((source.parent / "data").iterdir()) == []


def test_output_name_that_is_a_directory_is_refused_before_registering(source, capsys):
    (source.parent / "data" / "llava_med.json").mkdir(parents=True)
    assert convert(source) == 2
    assert "llava_med.json: is a directory" in capsys.readouterr().err
    assert not (source.parent / "data" / "dataset_info.json").exists()


def test_output_option_naming_a_file_is_an_error_naming_the_option(source, tmp_path, capsys):
    (tmp_path / "outf").write_text("x")
    assert main(["convert", str(source), "--output", str(tmp_path / "outf"), "--no-register"]) == 2
    assert f"--output {tmp_path / 'outf'}: exists and is not a directory" in capsys.readouterr().err


def test_disk_full_while_writing_names_the_file_and_registers_nothing(source, monkeypatch, capsys):
    import errno
    import os

    def full(_fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    assert convert(source) == 2
    err = capsys.readouterr().err
    assert f"{source.parent / 'data' / 'llava_med.json'}: No space left on device" in err
    data = source.parent / "data"
    assert sorted(p.name for p in data.iterdir()) == []  # no data file, no temp file, no registration


def test_deprecated_cache_option_is_accepted_with_a_warning(source, caplog):
    with caplog.at_level(logging.WARNING):
        assert convert(source, "--no-cache") == 0
    assert "deprecated and ignored" in caplog.text


def test_an_empty_array_is_refused_and_nothing_is_written_or_registered(tmp_path, capsys):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    assert convert(empty) == 2
    assert capsys.readouterr().err == (
        f"rejection-align convert: error: {empty}: no records (an empty array); nothing written or registered\n"
    )
    assert not (tmp_path / "data").exists() or list((tmp_path / "data").iterdir()) == []


def test_the_command_prints_its_result_once(source):
    import subprocess
    import sys

    data = source.parent / "data"
    proc = subprocess.run(
        [sys.executable, "-m", "rejection_align.cli", "convert", str(source), "--output", str(data),
         "--dataset-info", str(data / "dataset_info.json")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    both = proc.stdout + proc.stderr
    assert both.count("llava_med") == 2  # "wrote 3 records to .../llava_med.json" and "dataset 'llava_med' added"
    assert proc.stdout.splitlines()[1] == f"dataset 'llava_med' added in {data / 'dataset_info.json'}"
