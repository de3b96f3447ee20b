"""Progress bars of the data commands: every record counted, tqdm only for large inputs, no monitor thread."""

import io
import json
import sys
import threading

import pytest

from conftest import llava_record as record
from rejection_align.cli import main
from rejection_align.data import convert, mix, progress, stats


class SpyBar:
    """Stands in for records_bar: remembers its total and what was counted."""

    made: list["SpyBar"] = []

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.done = total, desc, 0
        SpyBar.made.append(self)

    def __enter__(self) -> "SpyBar":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: int = 1) -> None:
        self.done += n


@pytest.fixture
def spy(monkeypatch):
    SpyBar.made = []
    for module in (convert, mix, stats):
        monkeypatch.setattr(module, "records_bar", SpyBar)
    return SpyBar.made


@pytest.fixture
def llava(tmp_path):
    records = [record(f"r{i}", (f"<image>\nQ{i}?", f"A{i}."), image=f"{i}.jpg") for i in range(9000)]
    path = tmp_path / "in.json"
    path.write_text(json.dumps(records))
    return path


@pytest.mark.parametrize("command", ["convert", "stats", "mix"])
def test_every_record_is_counted_once_on_the_commands_progress_bar(tmp_path, llava, spy, command):
    args = {
        "convert": ["convert", str(llava), "--output", str(tmp_path / "out"), "--no-register"],
        "stats": ["stats", str(llava)],
        "mix": ["mix", "--rejection-source", str(llava), "--instruct", str(llava), "--n-rejection", "1000"]
        + ["--output", str(tmp_path / "out"), "--no-register"],
    }[command]
    assert main(args) == 0
    assert [(bar.desc, bar.total, bar.done) for bar in spy] == [(command, 9000, 9000)]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_small_inputs_get_no_bar_and_large_ones_a_tqdm_bar_on_a_terminal_without_a_monitor_thread(monkeypatch):
    assert isinstance(progress.records_bar(progress.MIN_RECORDS - 1, "x"), progress._NoBar)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    before = threading.active_count()
    with progress.records_bar(progress.MIN_RECORDS, "mix") as bar:
        bar.update(progress.MIN_RECORDS)
        assert threading.active_count() == before
    assert "mix:   0%| " in terminal.getvalue() and "/50.0k [" in terminal.getvalue()  # (erased when done)


def test_no_bar_is_drawn_when_stderr_is_not_a_terminal(capsys):
    with progress.records_bar(progress.MIN_RECORDS, "mix") as bar:
        bar.update(progress.MIN_RECORDS)
    assert capsys.readouterr().err == ""
