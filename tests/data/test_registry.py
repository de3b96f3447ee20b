"""dataset_info.json registration: entries kept in order, conflicts refused, atomic and locked across processes."""

import json
import os
import subprocess
import sys

import pytest

from rejection_align.cli import main
from rejection_align.data.registry import file_name_for, read_dataset_info, register_dataset, sharegpt_entry
from rejection_align.errors import DataError


COLUMNS = {"messages": "conversations", "images": "image"}


@pytest.fixture
def data_dir(tmp_path):
    directory = tmp_path / "data"
    directory.mkdir()
    (directory / "mix.json").write_text("[]\n")
    return directory


def entry(file_name):
    return {"file_name": file_name, "formatting": "sharegpt", "columns": dict(COLUMNS)}


def test_register_creates_dataset_info_with_two_space_indent(data_dir):
    info = data_dir / "dataset_info.json"
    assert main(["register", "my_mix", "--file", str(data_dir / "mix.json"), "--dataset-info", str(info)]) == 0
    assert json.loads(info.read_text()) == {"my_mix": entry("mix.json")}
    assert info.read_text() == json.dumps({"my_mix": entry("mix.json")}, indent=2) + "\n"


def test_register_keeps_every_other_entry_and_their_order(data_dir):
    info = data_dir / "dataset_info.json"
    existing = {"zeta": {"file_name": "z.json"}, "alpha": {"hf_hub_url": "x/y"}, "mid": {"file_name": "m.json"}}
    info.write_text(json.dumps(existing, indent=2))
    register_dataset(info, "new", entry("mix.json"))
    assert list(json.loads(info.read_text()).items()) == [*existing.items(), ("new", entry("mix.json"))]


def test_registering_the_same_definition_again_changes_nothing(data_dir):
    info = data_dir / "dataset_info.json"
    assert register_dataset(info, "a", entry("mix.json")) == "added"
    before = info.stat().st_mtime_ns
    assert register_dataset(info, "a", entry("mix.json")) == "unchanged"
    assert info.stat().st_mtime_ns == before


def test_register_refuses_to_replace_a_different_definition(data_dir):
    info = data_dir / "dataset_info.json"
    register_dataset(info, "a", entry("old.json"))
    before = info.read_bytes()
    with pytest.raises(DataError, match="dataset 'a' is already registered with a different definition.*--force"):
        register_dataset(info, "a", entry("mix.json"))
    assert info.read_bytes() == before


def test_register_with_force_replaces_the_entry_in_its_place(data_dir):
    info = data_dir / "dataset_info.json"
    for name in ("first", "a", "last"):
        register_dataset(info, name, entry(f"{name}.json"))
    assert register_dataset(info, "a", entry("mix.json"), force=True) == "updated"
    data = json.loads(info.read_text())
    assert list(data) == ["first", "a", "last"]
    assert data["a"] == entry("mix.json")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"a": {"file_name": "x.json"},', "not valid JSON"),
        ('[{"file_name": "x.json"}]', "expected a JSON object of dataset entries, found a list"),
        ('{"a": {}, "a": {"file_name": "x.json"}}', "duplicate key 'a'"),
        ("", "not valid JSON"),
    ],
)
def test_malformed_dataset_info_is_an_error_and_is_left_untouched(data_dir, content, expected):
    info = data_dir / "dataset_info.json"
    info.write_text(content)
    with pytest.raises(DataError) as err:
        register_dataset(info, "new", entry("mix.json"))
    assert str(err.value).startswith(str(info))
    assert expected in str(err.value)
    assert info.read_text() == content


def test_malformed_dataset_info_makes_the_command_exit_2(data_dir, capsys):
    info = data_dir / "dataset_info.json"
    info.write_text("{oops")
    code = main(["register", "new", "--file", str(data_dir / "mix.json"), "--dataset-info", str(info)])
    assert code == 2
    assert f"rejection-align register: error: {info}: not valid JSON" in capsys.readouterr().err
    assert info.read_text() == "{oops"


def test_registering_a_missing_file_is_an_error(data_dir, capsys):
    info = data_dir / "dataset_info.json"
    assert main(["register", "x", "--file", str(data_dir / "nope.json"), "--dataset-info", str(info)]) == 2
    assert "nope.json: no such file" in capsys.readouterr().err
    assert not info.exists()


def test_file_name_is_relative_under_the_dataset_dir(data_dir):
    (data_dir / "mixes").mkdir()
    assert file_name_for(data_dir / "mixes" / "m.json", data_dir / "dataset_info.json") == "mixes/m.json"


def test_file_name_is_absolute_outside_the_dataset_dir(tmp_path, data_dir):
    outside = tmp_path / "elsewhere" / "m.json"
    assert file_name_for(outside, data_dir / "dataset_info.json") == str(outside)


def test_file_name_is_relative_for_relative_paths_under_the_dataset_dir(data_dir, monkeypatch):
    monkeypatch.chdir(data_dir.parent)
    assert sharegpt_entry("data/mix.json", "data/dataset_info.json")["file_name"] == "mix.json"


def test_missing_dataset_info_reads_as_empty(tmp_path):
    assert read_dataset_info(tmp_path / "none.json") == {}


def test_eight_concurrent_register_processes_all_land(data_dir):
    info = data_dir / "dataset_info.json"
    info.write_text(json.dumps({"existing": {"file_name": "e.json"}}, indent=2))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rejection_align.cli",
                "register",
                f"mix_{i}",
                "--file",
                str(data_dir / "mix.json"),
                "--dataset-info",
                str(info),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for i in range(8)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0] * 8, [err.decode() for _out, err in outputs]
    data = json.loads(info.read_text())
    assert list(data)[0] == "existing"
    assert sorted(data) == ["existing"] + [f"mix_{i}" for i in range(8)]
    assert all(data[f"mix_{i}"] == entry("mix.json") for i in range(8))
    assert not [name for name in os.listdir(data_dir) if name.endswith(".tmp")]


def test_register_writes_through_a_symlinked_dataset_info_and_keeps_its_mode(data_dir, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    real = shared / "dataset_info.json"
    real.write_text('{"other": {"file_name": "o.json"}}')
    real.chmod(0o664)
    link = data_dir / "dataset_info.json"
    link.symlink_to(real)
    assert main(["register", "my_mix", "--file", str(data_dir / "mix.json"), "--dataset-info", str(link)]) == 0
    assert link.is_symlink()
    assert list(json.loads(real.read_text())) == ["other", "my_mix"]
    assert real.stat().st_mode & 0o777 == 0o664


def test_register_removes_the_temp_file_a_killed_register_left(data_dir):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = data_dir / f".dataset_info.json.{int(dead.stdout)}.q1w2e3r4.tmp"
    leftover.write_text("{")
    info = data_dir / "dataset_info.json"
    assert main(["register", "my_mix", "--file", str(data_dir / "mix.json"), "--dataset-info", str(info)]) == 0
    assert not leftover.exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"this is not json", "not a JSON array of records"),
        (b'{"a": 1}', "not a JSON array of records"),
        (b"[1, 2]", "record 0 is not a JSON object"),
        (b'[{"a": NaN}]', "not a JSON array of records"),
    ],
)
def test_register_refuses_a_file_that_is_not_a_json_array_of_records(data_dir, capsys, content, expected):
    bad = data_dir / "bad.json"
    bad.write_bytes(content)
    info = data_dir / "dataset_info.json"
    assert main(["register", "bad", "--file", str(bad), "--dataset-info", str(info)]) == 2
    assert f"{bad}: {expected}" in capsys.readouterr().err
    assert not info.exists()


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("bad.json", b'{"a": 1}', "not a JSON array of records (it is an object); nothing registered"),
        (
            "bad.json",
            b'[{"a": NaN}]',
            "not a JSON array of records (not valid JSON: invalid character at line 1, column 8); nothing registered",
        ),
        ("bad.json", b'[{"a": "\xff"', "not a JSON array of records (not valid JSON: truncated); nothing registered"),
        ("bad.jsonl", b'{"a": 1}\n[1]\n', "line 2 is not a JSON object (it is an array)"),
        (
            "bad.jsonl",
            b'{"a": 1}\n{"a" 1}\n',
            "line 2 is not a JSON object (not valid JSON: expected ':' at line 1, column 6)",
        ),
        ("bad.jsonl", b'{"a": "\xff"}\n', "line 1 is not a JSON object (not valid UTF-8 (byte 0xff at byte 7))"),
    ],
)
def test_register_words_what_is_wrong_with_a_file_itself(data_dir, capsys, name, content, expected):
    bad = data_dir / name
    bad.write_bytes(content)
    info = data_dir / "dataset_info.json"
    assert main(["register", "bad", "--file", str(bad), "--dataset-info", str(info)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"{bad}: {expected}")


def test_register_accepts_json_lines_objects_in_a_jsonl_file(data_dir):
    lines = data_dir / "mix.jsonl"
    lines.write_text('{"conversations": []}\n{"conversations": []}\n')
    info = data_dir / "dataset_info.json"
    assert main(["register", "lines", "--file", str(lines), "--dataset-info", str(info)]) == 0
    assert json.loads(info.read_text())["lines"]["file_name"] == "mix.jsonl"


def test_register_leaves_no_lock_file_beside_dataset_info(data_dir):
    info = data_dir / "dataset_info.json"
    assert main(["register", "my_mix", "--file", str(data_dir / "mix.json"), "--dataset-info", str(info)]) == 0
    assert sorted(os.listdir(data_dir)) == ["dataset_info.json", "mix.json"]


def test_register_through_a_dangling_symlink_is_refused_and_creates_nothing_outside(data_dir, tmp_path):
    outside = tmp_path / "elsewhere" / "dataset_info.json"
    link = data_dir / "dataset_info.json"
    link.symlink_to(outside)
    result = subprocess.run(
        [sys.executable, "-m", "rejection_align.cli", "register", "m", "--file", str(data_dir / "mix.json")]
        + ["--dataset-info", str(link)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"rejection-align register: error: {link}: a symlink to {outside}, which does not exist; refusing to write "
        "through it (remove the link or point it at an existing file)"
    )
    assert not (tmp_path / "elsewhere").exists()
    assert sorted(os.listdir(data_dir)) == ["dataset_info.json", "mix.json"] and link.is_symlink()
