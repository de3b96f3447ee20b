"""Reading and validating LLaVA-format files: record checks, streaming with byte offsets, sharegpt conversion."""

import json
import logging
from pathlib import Path

import pytest

from conftest import llava_record as record
from rejection_align.data import llava_format
from rejection_align.errors import DataError
from rejection_align.data.llava_format import (
    FLAG_ALL_WHAT_ABOUT,
    FLAG_HAS_IMAGE,
    check_record,
    encode_record,
    find_missing_images,
    load_records,
    read_spans,
    scan_file,
    to_sharegpt,
)


def write_json(path: Path, data, **dump_args) -> Path:
    path.write_text(json.dumps(data, **dump_args), encoding="utf-8")
    return path


IMAGE_RECORD = record("0042", ("<image>\nWhat is shown?", "A cat."), image="coco/1.jpg")


# ------------------------------------------------------------------------------------------- check_record


def test_valid_record_returns_its_id_and_image_flag():
    assert check_record(IMAGE_RECORD, "f.json", 0) == ("0042", FLAG_HAS_IMAGE)


def test_integer_id_is_returned_as_a_string():
    assert check_record(record(17, ("Hi?", "Hello.")), "f.json", 0)[0] == "17"


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"id": "a"}, "record 3 (id 'a'): has no 'conversations'"),
        ({"id": "a", "conversations": "hi"}, "'conversations' is a str, expected a list"),
        ({"id": "a", "conversations": []}, "'conversations' is empty"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, "record 3 has no 'id'"),
        (record(1.5, ("q", "a")), "record 3 has id 1.5 (float), expected a string or an integer"),
        (record(True, ("q", "a")), "expected a string or an integer"),
        (["not", "an", "object"], "record 3 is a list, expected an object"),
    ],
)
def test_malformed_record_is_rejected_with_file_and_record_index(bad, expected):
    with pytest.raises(DataError, match="^llava_med.json: ") as err:
        check_record(bad, "llava_med.json", 3)
    assert expected in str(err.value)


def test_turn_with_another_from_is_rejected_naming_the_turn():
    bad = record("0042", ("q", "a"), ("q2", "a2"))
    bad["conversations"][3]["from"] = "system"
    with pytest.raises(DataError) as err:
        check_record(bad, "llava_med.json", 17)
    assert (
        str(err.value) == "llava_med.json: record 17 (id '0042'): turn 3 has from='system', expected 'human' or 'gpt'"
    )


def test_odd_number_of_turns_is_rejected():
    bad = record("x", ("q", "a"))
    bad["conversations"].append({"from": "human", "value": "dangling?"})
    with pytest.raises(DataError, match="has 3 turns, expected an even number"):
        check_record(bad, "f.json", 0)


def test_first_turn_not_human_is_rejected():
    bad = record("x", ("q", "a"))
    bad["conversations"].reverse()
    with pytest.raises(DataError, match="first turn has from='gpt', expected 'human'"):
        check_record(bad, "f.json", 0)


def test_turns_that_do_not_alternate_are_rejected():
    bad = record("x", ("q", "a"), ("q2", "a2"))
    bad["conversations"][1]["from"] = "human"
    with pytest.raises(DataError, match=r"turn 1 has from='human', expected 'gpt' \(turns must alternate"):
        check_record(bad, "f.json", 0)


@pytest.mark.parametrize("value", ["", "   \n", None, 5])
def test_empty_or_missing_value_is_rejected(value):
    bad = record("x", ("q", "a"))
    bad["conversations"][1]["value"] = value
    with pytest.raises(DataError, match=r"record 0 \(id 'x'\): turn 1 \(gpt\) has (an empty|no|a non-string) value"):
        check_record(bad, "f.json", 0)


def test_image_without_tag_is_rejected():
    bad = record("x", ("What is shown?", "A cat."), image="a.jpg")
    with pytest.raises(DataError, match=r"got 0 <image> tags in the human turns, expected 1 \(one per image\)"):
        check_record(bad, "f.json", 0)


def test_tag_without_image_is_rejected():
    bad = record("x", ("<image>\nWhat is shown?", "A cat."))
    with pytest.raises(DataError, match="got 1 <image> tag in the human turns, expected 0"):
        check_record(bad, "f.json", 0)


def test_tags_must_match_a_list_of_images():
    two = record("x", ("<image>\n<image>\nCompare.", "Same."), image=["a.jpg", "b.jpg"])
    assert check_record(two, "f.json", 0)[1] == FLAG_HAS_IMAGE
    with pytest.raises(DataError, match="got 2 <image> tags in the human turns, expected 3"):
        check_record({**two, "image": ["a.jpg", "b.jpg", "c.jpg"]}, "f.json", 0)


def test_image_tag_in_a_gpt_turn_is_rejected():
    bad = record("x", ("<image>\nq", "see <image>"), image="a.jpg")
    with pytest.raises(DataError, match=r"turn 1 \(gpt\) contains '<image>'"):
        check_record(bad, "f.json", 0)


def test_record_whose_every_question_is_a_what_about_follow_up_is_flagged():
    follow_ups = record("x", ("What about the dog?", "Brown."), ("WHAT ABOUT the cat?", "Grey."))
    mixed = record("y", ("What is it?", "A dog."), ("What about the cat?", "Grey."))
    assert check_record(follow_ups, "f.json", 0)[1] & FLAG_ALL_WHAT_ABOUT
    assert not check_record(mixed, "f.json", 0)[1] & FLAG_ALL_WHAT_ABOUT


# ------------------------------------------------------------------------------------------- sharegpt


@pytest.mark.parametrize(
    ("image", "expected"), [(None, []), ("a.jpg", ["a.jpg"]), (["a.jpg", "b.jpg"], ["a.jpg", "b.jpg"])]
)
def test_sharegpt_record_has_a_list_of_images_and_a_string_id(image, expected):
    out = to_sharegpt(record(7, ("q", "a"), image=image))
    assert out["image"] == expected
    assert out["id"] == "7"
    assert list(out)[:3] == ["id", "image", "conversations"]


def test_sharegpt_conversion_keeps_extra_keys_and_leaves_the_input_unchanged():
    original = record(7, ("q", "a"), image="a.jpg", model="gpt-4")
    snapshot = json.loads(json.dumps(original))
    out = to_sharegpt(original)
    assert out["model"] == "gpt-4"
    assert original == snapshot


def test_lone_surrogate_is_written_as_an_escape_that_decodes_back():
    value = "bad \ud800 char"
    data = encode_record({"id": "x", "value": value})
    assert json.loads(data)["value"] == value
    assert b"\\ud800" in data


# ------------------------------------------------------------------------------------------- reading


def non_ascii_records() -> list[dict]:
    return [
        record("a", ("<image>\nCafé au lait?", "Oui — très bien. 日本語 😀"), image="x/é.jpg"),
        record(2, ("Plain ascii?", "Yes.")),
        record("ß", ("Zürich?", 'A city.\nWith a "quote" and a \\ backslash.')),
        record("d", ("Escaped \\u00e9?", "\u00e9 \U0001f600")),
    ]


@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("ensure_ascii", [False, True])
def test_byte_offsets_point_at_each_record_in_a_non_ascii_file(tmp_path, indent, ensure_ascii):
    records = non_ascii_records()
    path = write_json(tmp_path / "f.json", records, indent=indent, ensure_ascii=ensure_ascii)
    scan = scan_file(path)
    assert scan.ids == ["a", "2", "ß", "d"]
    raw = path.read_bytes()
    for i, expected in enumerate(records):
        assert json.loads(raw[scan.offsets[i] : scan.offsets[i] + scan.lengths[i]]) == expected


def test_records_spanning_read_chunks_are_read_whole(tmp_path, monkeypatch):
    records = non_ascii_records() * 30 + [record("long", ("q", "é" * 500))]
    path = write_json(tmp_path / "f.json", records, indent=1, ensure_ascii=False)
    monkeypatch.setattr(llava_format, "CHUNK_BYTES", 37)  # records and multi-byte characters cross chunk ends
    seen = []
    scan = scan_file(path, visit=lambda i, rec: seen.append(rec))
    assert seen == records
    raw = path.read_bytes()
    assert [json.loads(raw[o : o + n]) for o, n in zip(scan.offsets, scan.lengths, strict=True)] == records


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([IMAGE_RECORD]).encode())
    scan = scan_file(path)
    assert path.read_bytes()[scan.offsets[0] : scan.offsets[0] + 1] == b"{"


def test_empty_array_has_no_records(tmp_path):
    assert load_records(write_json(tmp_path / "e.json", [])) == []


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty file, expected a JSON array"),
        (b"   \n", "empty file, expected a JSON array"),
        (b'{"id": 1}', "not a JSON array: it starts with '{', expected '['"),
        (b'{"id": 1}\n{"id": 2}\n', "JSON Lines?"),
        (b"hello", "not a JSON array: it starts with 'h'"),
        (b'[{"id": "a", "conversations": []}', "the file ends inside the array (after 1 record, no closing ']')"),
        (
            b'[{"id": "a", "conversations": []',
            "record 0: not valid JSON: Expecting ',' delimiter at line 1, column 33",
        ),
        (b'[{"id": "a", "conv', "record 0: not valid JSON: Unterminated string"),
        (b'[{"id": "a"} {"id": "b"}]', "expected ',' or ']' after record 0, found '{' at line 1, column 14"),
        (b'[{"id": "a"},]', "record 1: not valid JSON: Expecting value"),
        (b'[{"id": "a"}] x', "extra data after the closing ']' at line 1, column 15"),
        (b'[{"id": "\xff"}]', "not valid UTF-8 at byte 9"),
    ],
)
def test_text_that_is_not_a_json_array_is_an_error_naming_the_file(tmp_path, content, expected):
    path = tmp_path / "broken.json"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        list(llava_format.walk_records(path))
    assert str(err.value).startswith(f"{path}: ")
    assert expected in str(err.value)


def test_json_error_inside_a_later_record_names_its_index_and_line(tmp_path):
    good = json.dumps([IMAGE_RECORD, IMAGE_RECORD], indent=2)
    path = tmp_path / "f.json"
    path.write_text(good[:-2] + ',\n  {"id": "c", "conversations": [}\n]', encoding="utf-8")
    line = good[:-2].count("\n") + 2
    with pytest.raises(DataError, match=rf"record 2: not valid JSON: Expecting value at line {line}, column 33 "):
        scan_file(path)


def test_bad_record_anywhere_in_the_file_stops_the_scan(tmp_path):
    records = [record(i, ("q", "a")) for i in range(50)]
    records[41]["conversations"][0]["from"] = "user"
    path = write_json(tmp_path / "f.json", records)
    with pytest.raises(DataError, match="record 41 \\(id 41\\): turn 0 has from='user'"):
        scan_file(path)


def test_read_spans_returns_bytes_in_the_order_asked(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 4)
    spans = [(900, 3), (5, 2), (300, 4), (5, 1)]
    got = dict(read_spans(path, spans, max_gap=100))
    assert [got[i] for i in range(4)] == [
        bytes([900 % 256, 901 % 256, 902 % 256]),
        b"\x05\x06",
        bytes([44, 45, 46, 47]),
        b"\x05",
    ]


# ------------------------------------------------------------------------------------------- images


def test_missing_images_are_listed_in_reference_order(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "ok.jpg").write_bytes(b"x")
    checked, missing = find_missing_images(["z.jpg", "ok.jpg", "a.jpg", "z.jpg"], tmp_path / "img")
    assert (checked, missing) == (3, ["z.jpg", "a.jpg"])


# ------------------------------------------------------------------------------------------- plain layout


CONVERSATION = '[{"from": "human", "value": "<image>\\nQ?"}, {"from": "gpt", "value": "A \\"quoted\\" é"}]'
PLAIN_TEXTS = [
    '{"id": "a1", "image": "coco/1.jpg", "conversations": ' + CONVERSATION + "}",
    '{ "id" : -12 ,\n  "image":"x\\/y \\u00e9.jpg",\r\n  "conversations" :\n  ' + CONVERSATION + "\n  }",
    '{"id": "esc\\"aped\\\\", "image": "日本.jpg", "conversations": ' + CONVERSATION + "}",
    '{"id": 0, "conversations": ' + CONVERSATION.replace("<image>\\n", "") + "}",
]
OTHER_TEXTS = [
    '{"conversations": ' + CONVERSATION + ', "id": "late", "image": "a.jpg"}',  # another key order
    '{"id": "list", "image": ["a.jpg"], "conversations": ' + CONVERSATION + "}",  # a list of images
    '{"id": "extra", "image": "a.jpg", "conversations": ' + CONVERSATION + ', "model": "v1"}',  # a key after
    '{"id": "dup", "image": "a.jpg", "conversations": ' + CONVERSATION + ', "id": "dup2"}',  # a duplicated key
]


def test_plain_and_other_layouts_decode_like_json_and_only_plain_ones_are_flagged(tmp_path):
    path = tmp_path / "layouts.json"
    path.write_text("[\n" + ",\n".join(PLAIN_TEXTS + OTHER_TEXTS) + "\n]", encoding="utf-8")
    walked = list(llava_format.walk_records(path))
    assert [value for *_, value, _plain in walked] == json.loads(path.read_text(encoding="utf-8"))
    assert [plain for *_, plain in walked] == [True] * len(PLAIN_TEXTS) + [False] * len(OTHER_TEXTS)
    flags = scan_file(path).flags
    assert [bool(flag & llava_format.FLAG_PLAIN) for flag in flags] == [True] * 4 + [False] * 4


@pytest.mark.parametrize("text", PLAIN_TEXTS)
def test_plain_record_copied_from_its_bytes_equals_the_encoded_sharegpt_record(text):
    data = text.encode("utf-8")
    out, images = llava_format.plain_record_to_sharegpt(data)
    assert json.loads(out) == to_sharegpt(json.loads(text))
    assert images == to_sharegpt(json.loads(text))["image"]
    assert b"\n" not in out and b"\r" not in out


@pytest.mark.parametrize("text", OTHER_TEXTS[:2])
def test_layouts_without_the_plain_prefix_are_not_copied_from_their_bytes(text):
    assert llava_format.plain_record_to_sharegpt(text.encode("utf-8")) is None


def test_invalid_escape_in_a_plain_id_is_reported_as_invalid_json(tmp_path):
    path = tmp_path / "f.json"
    path.write_text('[{"id": "bad\\q", "conversations": ' + CONVERSATION + "}]")
    with pytest.raises(DataError, match=r"record 0: not valid JSON: Invalid \\escape"):
        scan_file(path)


def test_plain_record_cut_by_a_read_chunk_after_its_conversations_is_read_whole(tmp_path, monkeypatch):
    text = '{"id": "a", "conversations": ' + CONVERSATION + "     \n    }"
    path = tmp_path / "f.json"
    path.write_text("[" + text + "," + text + "]", encoding="utf-8")
    for chunk in range(1, len(text) + 3):
        monkeypatch.setattr(llava_format, "CHUNK_BYTES", chunk)
        assert [plain for *_, plain in llava_format.walk_records(path)] == [True, True]


# ------------------------------------------------------------------------------------------- two processes


@pytest.fixture
def big_file(tmp_path):
    records = non_ascii_records() * 50 + [record(i, ("<image>\nq", "a"), image=f"{i}.jpg") for i in range(300)]
    return write_json(tmp_path / "big.json", records, indent=1, ensure_ascii=False), records


def test_two_process_scan_gives_the_same_index_as_one_process(big_file, caplog):
    path, _records = big_file
    one = scan_file(path)
    with caplog.at_level(logging.DEBUG, logger="rejection_align.data.llava_format"):
        two = llava_format.scan_file_parallel(path, min_bytes=0)
    assert (two.offsets, two.lengths, two.ids, two.flags) == (one.offsets, one.lengths, one.ids, one.flags)
    assert "read by a second process" in caplog.text


def test_two_process_scan_with_a_split_inside_a_record_reads_on_alone(big_file, monkeypatch):
    path, _records = big_file
    one = scan_file(path)
    inside = one.offsets[len(one) // 2] + 5
    monkeypatch.setattr(llava_format, "guess_record_start", lambda _path, _near: inside)
    two = llava_format.scan_file_parallel(path, min_bytes=0)
    assert (two.offsets, two.ids, two.flags) == (one.offsets, one.ids, one.flags)


def test_two_process_scan_reports_an_error_in_the_second_half_with_its_record_number(tmp_path):
    records = [record(i, ("q", "a")) for i in range(400)]
    records[350]["conversations"][1]["from"] = "assistant"
    path = write_json(tmp_path / "f.json", records, indent=2)
    with pytest.raises(DataError, match=r"record 350 \(id 350\): turn 1 has from='assistant'"):
        llava_format.scan_file_parallel(path, min_bytes=0)


def test_two_process_scan_reports_an_error_in_the_first_half(tmp_path):
    records = [record(i, ("q", "a")) for i in range(400)]
    records[20]["conversations"] = []
    path = write_json(tmp_path / "f.json", records, indent=2)
    with pytest.raises(DataError, match=r"record 20 \(id 20\): 'conversations' is empty"):
        llava_format.scan_file_parallel(path, min_bytes=0)


def test_two_process_scan_survives_a_failing_worker(big_file, monkeypatch, caplog):
    path, _records = big_file
    monkeypatch.setattr(llava_format, "_WORKER_CODE", "import sys; sys.exit(3)")
    two = llava_format.scan_file_parallel(path, min_bytes=0)
    assert two.ids == scan_file(path).ids
    assert "the second reading process failed (exit code 3" in caplog.text
