"""``examples/prepare_sources.py`` on inputs it cannot read: one line naming the file, exit 2, nothing written."""

import subprocess
import sys
from pathlib import Path

import pytest


SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "prepare_sources.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_a_missing_input_is_one_line_naming_it_and_exit_2(tmp_path):
    missing, out = tmp_path / "nope" / "train.json", tmp_path / "out" / "prepared.json"
    proc = _run("llava-med", str(missing), str(out))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {missing}: No such file or directory"]
    assert not out.exists() and not out.parent.exists()


def test_a_missing_vlguard_input_is_refused_by_convert_naming_it_and_exit_2(tmp_path):
    missing, out = tmp_path / "nope" / "train.json", tmp_path / "out" / "prepared.json"
    proc = _run("vlguard", str(missing), str(out))
    assert proc.returncode == 2
    *_, last = proc.stderr.splitlines()
    assert last.startswith("rejection-align convert: error: ") and str(missing) in last
    assert not out.exists()


@pytest.mark.parametrize("content", [b"[{", b"\xff\xfe not utf-8"])
def test_an_input_that_is_not_json_is_one_line_naming_it_and_exit_2(tmp_path, content):
    bad, out = tmp_path / "train.json", tmp_path / "prepared.json"
    bad.write_bytes(content)
    proc = _run("llava-med", str(bad), str(out))
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"error: {bad}: not a JSON file (")
    assert not out.exists()


def test_a_folder_given_as_input_is_one_line_and_exit_2(tmp_path):
    proc = _run("llava-med", str(tmp_path), str(tmp_path / "prepared.json"))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {tmp_path}: Is a directory"]
