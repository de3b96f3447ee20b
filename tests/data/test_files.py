"""Atomic writes (rename into place, through symlinks, mode kept), temp-file clean-up, and locks."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from rejection_align.files import atomic_open, atomic_write_text, file_lock, remove_stale_temp_files


def temp_files(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_through_a_symlink_replaces_the_target_and_keeps_the_link(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "dataset_info.json"
    target.write_text("old")
    link = tmp_path / "dataset_info.json"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink()
    assert target.read_text() == "new"


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    path = tmp_path / "shared.json"
    path.write_text("old")
    path.chmod(0o664)
    atomic_write_text(path, "new")
    assert (path.stat().st_mode & 0o777, path.read_text()) == (0o664, "new")


def test_a_failure_inside_the_block_leaves_the_file_and_no_temp_file(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(path) as handle:
        handle.write("half")
        raise RuntimeError("bad record")
    assert path.read_text() == "old"
    assert temp_files(tmp_path) == []


def test_temp_files_of_dead_processes_are_removed_on_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / f".out.json.{pid}.abcd1234.tmp").write_text("left by a killed run")
    (tmp_path / f".out.json.{os.getpid()}.live5678.tmp").write_text("a live writer's")
    (tmp_path / f".other.json.{pid}.abcd1234.tmp").write_text("another file's")
    atomic_write_text(tmp_path / "out.json", "x")
    assert temp_files(tmp_path) == [f".other.json.{pid}.abcd1234.tmp", f".out.json.{os.getpid()}.live5678.tmp"]


def test_old_style_temp_files_are_removed_only_when_old(tmp_path):
    old = tmp_path / ".out.json.k2j3h4g5.tmp"
    old.write_text("x")
    os.utime(old, (0, 0))
    fresh = tmp_path / ".out.json.z9y8x7w6.tmp"
    fresh.write_text("x")
    assert remove_stale_temp_files(tmp_path / "out.json") == [old]
    assert fresh.exists()


def test_sigterm_while_writing_removes_the_temp_file_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    script = textwrap.dedent(
        f"""
        import sys, time
        from rejection_align.files import atomic_open
        with atomic_open({str(path)!r}) as handle:
            handle.write("half")
            print("writing", flush=True)
            time.sleep(60)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline() == b"writing\n"
    assert len(temp_files(tmp_path)) == 1
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=60)
    assert process.returncode != 0
    assert b"Terminated" in err
    assert temp_files(tmp_path) == []
    assert path.read_text() == "old"


def test_lock_file_that_is_a_symlink_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "info.json.lock").symlink_to(victim)
    with pytest.raises(OSError, match="lock file is a symlink"), file_lock(tmp_path / "info.json"):
        pass
    assert victim.read_text() == "keep"


def test_disk_full_error_names_the_file(tmp_path, monkeypatch):
    import errno

    def full(_fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as err:
        atomic_write_text(tmp_path / "out.json", "x")
    assert err.value.filename == str(tmp_path / "out.json")
    assert temp_files(tmp_path) == []


def test_the_lock_file_is_removed_when_the_block_ends(tmp_path):
    with file_lock(tmp_path / "info.json"):
        assert (tmp_path / "info.json.lock").exists()
    with pytest.raises(RuntimeError), file_lock(tmp_path / "info.json"):
        raise RuntimeError("failed inside")
    assert list(tmp_path.iterdir()) == []


LOCK_WORKER = """
import os, sys, time
from rejection_align.files import file_lock
target, log, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
for _ in range(rounds):
    with file_lock(target):
        with open(log, "a") as handle:
            handle.write(f"enter {os.getpid()}\\n")
        time.sleep(0.001)
        with open(log, "a") as handle:
            handle.write(f"exit {os.getpid()}\\n")
"""


def test_processes_that_take_turns_on_a_removed_lock_file_never_overlap(tmp_path):
    """Each holder removes the lock file before it lets go; waiters on the removed file must lock the new one."""
    target, log = tmp_path / "dataset_info.json", tmp_path / "log.txt"
    rounds = 100
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", LOCK_WORKER, str(target), str(log), str(rounds)], stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    errors = [process.communicate(timeout=300)[1] for process in processes]
    assert [process.returncode for process in processes] == [0] * 4, errors
    lines = log.read_text().splitlines()
    assert len(lines) == 2 * 4 * rounds
    for enter, leave in zip(lines[0::2], lines[1::2]):  # one holder at a time: each enter followed by its own exit
        assert (enter.split()[0], leave.split()) == ("enter", ["exit", enter.split()[1]])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["log.txt"]
