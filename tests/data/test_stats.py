"""``rejection-align stats``: records, turns, images, rejection answers and duplicated ids."""

import json
from pathlib import Path

import pytest

from conftest import llava_record as record
from rejection_align.cli import main
from rejection_align.data.records import DEFAULT_REJECTION_SENTENCE
from rejection_align.data.stats import file_stats


SORRY = DEFAULT_REJECTION_SENTENCE


RECORDS = [
    record(7, ("<image>\nq", SORRY), ("more?", "Fine."), image="a.jpg"),
    record("7", ("q", f"  {SORRY}\n")),  # the same id as a string; the sentence with surrounding space
    record("b", ("<image>\n<image>\nq", "No."), ("q2", SORRY), ("q3", "x"), image=["1.jpg", "2.jpg"]),
    record("c", ("q", "A longer answer that merely quotes: " + SORRY)),
    record("c", ("q", "Nope.")),
]


@pytest.fixture
def path(tmp_path) -> Path:
    path = tmp_path / "mix.json"
    path.write_text(json.dumps(RECORDS), encoding="utf-8")
    return path


def test_stats_count_records_turns_and_images(path):
    stats = file_stats(path)
    assert (stats.records, stats.turns, stats.pairs_min, stats.pairs_max) == (5, 16, 1, 3)
    assert stats.pairs_mean == 1.6
    assert (stats.images, stats.records_with_image, stats.records_without_image) == (3, 2, 3)
    assert (stats.int_ids, stats.str_ids) == (1, 4)


def test_stats_count_exact_rejection_answers_by_sentence(path):
    stats = file_stats(path, [SORRY, "No."])
    assert stats.rejection_by_sentence == {SORRY: 3, "No.": 1}
    assert stats.rejection_answers == 4
    assert stats.records_with_rejection == 3
    assert stats.records_with_rejection_first == 3


def test_stats_report_ids_duplicated_as_strings(path):
    stats = file_stats(path)
    assert (stats.duplicated_ids, stats.duplicate_records) == (2, 2)
    assert stats.duplicated_id_examples == ["7", "c"]


def test_stats_command_prints_a_readable_report(path, capsys):
    assert main(["stats", str(path)]) == 0
    out = capsys.readouterr().out
    assert "records:              5" in out
    assert "duplicated ids:       2 ids on 4 records (e.g. '7', 'c')" in out
    assert "rejection answers:    3 in 3 records (60.00 %; first answer: 2)" in out


def test_stats_json_output_is_machine_readable(path, capsys):
    assert main(["stats", str(path), "--json", "--sentences", "No.", "Nope."]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["records"] == 5
    assert data["rejection_by_sentence"] == {"No.": 1, "Nope.": 1}


def test_stats_of_a_bad_file_exit_2_naming_the_record(path, capsys):
    path.write_text(
        json.dumps(
            [*RECORDS, {"id": "z", "conversations": [{"from": "bot", "value": "x"}, {"from": "gpt", "value": "y"}]}]
        )
    )
    assert main(["stats", str(path)]) == 2
    assert f"{path}: record 5 (id 'z'): turn 0 has from='bot'" in capsys.readouterr().err


def test_stats_of_a_missing_file_exit_2(tmp_path, capsys):
    assert main(["stats", str(tmp_path / "none.json")]) == 2
    assert "none.json: no such file" in capsys.readouterr().err


def test_stats_of_a_mix_count_its_rejection_examples(tmp_path, capsys):
    source = tmp_path / "src.json"
    source.write_text(json.dumps([record(f"s{i}", ("q", "a"), ("q2", "a2")) for i in range(12)]))
    instruct = tmp_path / "inst.json"
    instruct.write_text(json.dumps([record(i, ("q", "a")) for i in range(30)]))
    main(
        [
            "mix",
            "--rejection-source",
            str(source),
            "--instruct",
            str(instruct),
            "--n-rejection",
            "12",
            "--output",
            str(tmp_path),
            "--name",
            "m",
            "--no-register",
        ]
    )
    capsys.readouterr()
    stats = file_stats(tmp_path / "m.json")
    assert (stats.records, stats.rejection_answers, stats.records_with_rejection_first) == (42, 12, 12)
    assert stats.str_ids == 42


def test_stats_of_a_deeply_nested_record_exit_2_naming_it(tmp_path, capsys):
    path = tmp_path / "deep.json"
    deep = "[" * 1200 + "]" * 1200
    path.write_text(f'[{{"id": "d", "conversations": [], "x": {deep}}}]')
    assert main(["stats", str(path)]) == 2
    assert f"{path}: record 0: nested too deeply" in capsys.readouterr().err
