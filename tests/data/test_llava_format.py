"""LLaVA-format files and records: splitting with msgspec, typed validation, error messages, sharegpt conversion."""

import json
import re
from pathlib import Path

import pytest

from conftest import llava_record as record
from rejection_align.data import llava_format, reading, records, sharegpt
from rejection_align.data import writer as writer_module
from rejection_align.data.images import find_missing_images
from rejection_align.data.reading import LlavaFile
from rejection_align.data.records import FLAG_ALL_WHAT_ABOUT, FLAG_HAS_IMAGE, decode_record, to_sharegpt
from rejection_align.data.sharegpt import encode_record, sharegpt_bytes
from rejection_align.errors import DataError


def write_json(path: Path, data, **dump_args) -> Path:
    path.write_text(json.dumps(data, **dump_args), encoding="utf-8")
    return path


def check(obj, label: str = "f.json", index: int = 0) -> int:
    """Validate one record given as Python objects, the way a file's record is: from its JSON bytes."""
    return records.check_record(decode_record(json.dumps(obj).encode(), label, index), label, index)


IMAGE_RECORD = record("0042", ("<image>\nWhat is shown?", "A cat."), image="coco/1.jpg")


def test_llava_format_still_offers_every_name_from_the_module_that_holds_it():
    # the public re-export module of the old single-file layer: code outside the package may import from it
    from rejection_align.data import images

    homes = (records, reading, sharegpt, writer_module, images)
    assert len(llava_format.__all__) > 30
    for name in llava_format.__all__:
        assert any(getattr(home, name, None) is getattr(llava_format, name) for home in homes), name


# ------------------------------------------------------------------------------------------- validation


def test_valid_record_decodes_to_typed_fields_and_reports_its_image_flag():
    typed = decode_record(json.dumps(IMAGE_RECORD).encode(), "f.json", 0)
    assert (typed.id, typed.image, typed.conversations[1].from_, typed.conversations[1].value) == (
        "0042",
        "coco/1.jpg",
        "gpt",
        "A cat.",
    )
    assert check(IMAGE_RECORD) == FLAG_HAS_IMAGE


def test_integer_id_is_kept_as_an_integer():
    assert decode_record(json.dumps(record(17, ("Hi?", "Hello."))).encode(), "f.json", 0).id == 17


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"id": "a"}, "record 3 (id 'a'): has no 'conversations'"),
        ({"id": "a", "conversations": "hi"}, "record 3 (id 'a'): 'conversations': expected `array`, got `str`"),
        ({"id": "a", "conversations": []}, "record 3 (id 'a'): 'conversations' is empty"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, "record 3 has no 'id'"),
        (record(1.5, ("q", "a")), "record 3 has id 1.5 (number), expected a string or an integer"),
        (record(True, ("q", "a")), "record 3 has id True (boolean), expected a string or an integer"),
        (["not", "an", "object"], "record 3 is an array, expected an object"),
        ({"id": "a", "conversations": [5]}, "record 3 (id 'a'): turn 0: expected `object`, got `int`"),
        ({"id": "a", "image": 5, "conversations": []}, "record 3 (id 'a'): 'image': expected `str | array | null`"),
    ],
)
def test_malformed_record_is_rejected_with_file_and_record_index(bad, expected):
    with pytest.raises(DataError, match="^llava_med.json: ") as err:
        check(bad, "llava_med.json", 3)
    assert expected in str(err.value)


def test_msgspec_error_path_becomes_the_turn_and_key_of_the_record():
    bad = record("0042", ("q", "a"), ("q2", "a2"))
    bad["conversations"][2]["value"] = 7
    with pytest.raises(DataError) as err:
        check(bad, "llava_med.json", 31)
    assert str(err.value) == "llava_med.json: record 31 (id '0042'): turn 2 'value': expected `str`, got `int`"


def test_turn_with_another_from_is_rejected_naming_the_turn():
    bad = record("0042", ("q", "a"), ("q2", "a2"))
    bad["conversations"][3]["from"] = "system"
    with pytest.raises(DataError) as err:
        check(bad, "llava_med.json", 17)
    assert (
        str(err.value) == "llava_med.json: record 17 (id '0042'): turn 3 has from='system', expected 'human' or 'gpt'"
    )


def test_odd_number_of_turns_is_rejected():
    bad = record("x", ("q", "a"))
    bad["conversations"].append({"from": "human", "value": "dangling?"})
    with pytest.raises(DataError, match="has 3 turns, expected an even number"):
        check(bad)


def test_first_turn_not_human_is_rejected():
    bad = record("x", ("q", "a"))
    bad["conversations"].reverse()
    with pytest.raises(DataError, match="first turn has from='gpt', expected 'human'"):
        check(bad)


def test_turns_that_do_not_alternate_are_rejected():
    bad = record("x", ("q", "a"), ("q2", "a2"))
    bad["conversations"][1]["from"] = "human"
    with pytest.raises(DataError, match=r"turn 1 has from='human', expected 'gpt' \(turns must alternate"):
        check(bad)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "turn 1 (gpt) has an empty value"),
        ("   \n", "turn 1 (gpt) has an empty value"),
        (None, "turn 1 'value': expected `str`, got `null`"),
        (5, "turn 1 'value': expected `str`, got `int`"),
    ],
)
def test_empty_or_non_string_value_is_rejected(value, expected):
    bad = record("x", ("q", "a"))
    bad["conversations"][1]["value"] = value
    with pytest.raises(DataError) as err:
        check(bad)
    assert str(err.value) == f"f.json: record 0 (id 'x'): {expected}"


def test_missing_value_is_rejected_naming_the_turn():
    bad = record("x", ("q", "a"))
    del bad["conversations"][1]["value"]
    with pytest.raises(DataError, match=r"^f.json: record 0 \(id 'x'\): turn 1 has no 'value'$"):
        check(bad)


def test_image_without_tag_is_rejected():
    bad = record("x", ("What is shown?", "A cat."), image="a.jpg")
    with pytest.raises(DataError, match=r"got 0 <image> tags in the human turns, expected 1 \(one per image\)"):
        check(bad)


def test_tag_without_image_is_rejected():
    bad = record("x", ("<image>\nWhat is shown?", "A cat."))
    with pytest.raises(DataError, match="got 1 <image> tag in the human turns, expected 0"):
        check(bad)


def test_tags_must_match_a_list_of_images():
    two = record("x", ("<image>\n<image>\nCompare.", "Same."), image=["a.jpg", "b.jpg"])
    assert check(two) == FLAG_HAS_IMAGE
    with pytest.raises(DataError, match="got 2 <image> tags in the human turns, expected 3"):
        check({**two, "image": ["a.jpg", "b.jpg", "c.jpg"]})


def test_image_tag_in_a_gpt_turn_is_rejected():
    bad = record("x", ("<image>\nq", "see <image>"), image="a.jpg")
    with pytest.raises(DataError, match=r"turn 1 \(gpt\) contains '<image>'"):
        check(bad)


def test_record_whose_every_question_is_a_what_about_follow_up_is_flagged():
    follow_ups = record("x", ("What about the dog?", "Brown."), ("WHAT ABOUT the cat?", "Grey."))
    mixed = record("y", ("What is it?", "A dog."), ("What about the cat?", "Grey."))
    assert check(follow_ups) & FLAG_ALL_WHAT_ABOUT
    assert not check(mixed) & FLAG_ALL_WHAT_ABOUT


def test_follow_ups_only_marks_the_records_whose_every_question_is_what_about(tmp_path):
    follow_ups = record("x", ("What about the dog?", "Brown."), ("WHAT ABOUT the cat?", "Grey."))
    mixed = record("y", ("What is it?", "A dog."), ("What about the cat?", "Grey."))
    path = write_json(tmp_path / "f.json", [mixed, follow_ups, mixed, follow_ups, follow_ups])
    assert LlavaFile.read(path).follow_ups_only() == [False, True, False, True, True]


@pytest.mark.parametrize(
    "bad",
    [
        {"id": "b", "conversations": []},
        {"id": "b", "conversations": [{"from": "human", "value": "What about it?"}]},
        {"id": "b", "conversations": "What about it?"},
        {"id": "b", "image": 5, "conversations": [{"from": "human", "value": "What about it?"}] * 2},
    ],
    ids=["no-turns", "odd-turns", "not-a-list", "bad-image"],
)
def test_follow_ups_only_counts_a_record_that_breaks_a_rule_as_usable_to_refuse_it_when_drawn(tmp_path, bad):
    follow_ups = record("x", ("What about the dog?", "Brown."))
    path = write_json(tmp_path / "f.json", [follow_ups, bad, follow_ups])
    source = LlavaFile.read(path)
    assert source.follow_ups_only() == [True, False, True]
    source.check([0, 2])
    with pytest.raises(DataError, match=r"record 1 \(id 'b'\)"):
        source.check([2, 1, 0])


def test_check_names_the_first_bad_record_in_the_files_order(tmp_path):
    good = record("g", ("Q?", "A."))
    records = [good, record("b1", ("Q?", " ")), good, record("b2", ("Q?", ""))]
    source = LlavaFile.read(write_json(tmp_path / "f.json", records))
    source.check([0, 2])
    with pytest.raises(DataError, match=r"record 1 \(id 'b1'\): turn 1 \(gpt\) has an empty value"):
        source.check([3, 2, 1])


def test_a_file_is_mapped_not_copied_and_an_empty_one_is_still_an_error(tmp_path):
    import mmap

    path = write_json(tmp_path / "f.json", [IMAGE_RECORD])
    with open(path, "rb") as handle:
        assert isinstance(reading._map_or_read(handle), mmap.mmap)
    (tmp_path / "empty.json").write_bytes(b"")
    with pytest.raises(DataError, match="empty file, expected a JSON array"):
        LlavaFile.read(tmp_path / "empty.json")


def test_the_writer_syncs_its_file_to_disk_as_it_goes(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(writer_module, "SYNC_BYTES", 100)
    monkeypatch.setattr(writer_module.os, "fdatasync", synced.append)
    with open(tmp_path / "out.json", "wb") as handle:
        writer = writer_module.JsonArrayWriter(handle)
        for _ in range(3):
            writer.write_bytes(b"x" * 50)
            writer._flush()  # (a batch is 4 MiB: flush each record here)
        writer.close()
        assert synced and set(synced) == {handle.fileno()}
    assert (tmp_path / "out.json").read_bytes() == b"[\n" + b",\n".join([b"x" * 50] * 3) + b"\n]\n"


def test_record_nested_too_deeply_is_an_error_naming_the_record_not_a_recursion_error(tmp_path):
    deep = "[" * 1500 + "]" * 1500
    path = tmp_path / "deep.json"
    path.write_text(f'[{json.dumps(IMAGE_RECORD)}, {{"id": "d", "conversations": [], "x": {deep}}}]')
    source = LlavaFile.read(path)
    assert source.ids() == ["0042", "d"]
    with pytest.raises(DataError, match=rf"^{path}: record 1: nested too deeply"):
        source.record(1)


def test_file_nested_beyond_the_split_limit_is_an_error_naming_the_file(tmp_path):
    depth = reading.SPLIT_RECURSION_LIMIT + 10
    path = tmp_path / "deep.json"
    path.write_text("[" + "[" * depth + "]" * depth + "]")
    with pytest.raises(DataError, match=rf"^{path}: not supported: a value is nested more than"):
        LlavaFile.read(path)


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


def non_ascii_records() -> list[dict]:
    return [
        record("a", ("<image>\nCafé au lait?", "Oui — très bien. 日本語 😀"), image="x/é.jpg"),
        record(2, ("Plain ascii?", "Yes.")),
        record("ß", ("Zürich?", 'A city.\nWith a "quote" and a \\ backslash.')),
        record("d", ("Escaped \\u00e9?", "\u00e9 \U0001f600")),
    ]


# ------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("ensure_ascii", [False, True])
def test_each_record_is_split_out_as_its_raw_json(tmp_path, indent, ensure_ascii):
    records = non_ascii_records()
    source = LlavaFile.read(write_json(tmp_path / "f.json", records, indent=indent, ensure_ascii=ensure_ascii))
    assert source.ids() == ["a", "2", "ß", "d"]
    assert [json.loads(bytes(raw)) for raw in source.raws] == records
    assert [source.decode(i) for i in range(len(source))] == records


def test_file_sha256_and_size_are_those_of_its_bytes(tmp_path):
    import hashlib

    path = write_json(tmp_path / "f.json", non_ascii_records())
    source = LlavaFile.read(path)
    assert (source.sha256, source.size) == (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size)


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([IMAGE_RECORD]).encode())
    source = LlavaFile.read(path)
    assert source.decode(0) == IMAGE_RECORD


def test_empty_array_has_no_records(tmp_path):
    assert len(LlavaFile.read(write_json(tmp_path / "e.json", []))) == 0


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty file, expected a JSON array"),
        (b"   \n", "empty file, expected a JSON array"),
        (b'{"id": 1}', "not a JSON array: it starts with '{', expected '['"),
        (b'{"id": 1}\n{"id": 2}\n', "JSON Lines?"),
        (b"hello", "not a JSON array: it starts with 'h'"),
        (b'[{"id": "a", "conversations": []}', "not valid JSON: the file ends inside the array (truncated)"),
        (b'[{"id": "a", "conv', "not valid JSON: the file ends inside the array (truncated)"),
        (b'[{"id": "a"} {"id": "b"}]', "not valid JSON: expected ',' or ']' at line 1, column 14 (byte 13)"),
        (b'[{"id": "a"},]', "not valid JSON: trailing comma in array at line 1, column 14"),
        (b'[{"id": "a"}] x', "not valid JSON: trailing characters at line 1"),
        (b'[{"id": "a", "n": NaN}]', "line 1, column 19 (byte 18) (NaN is not JSON; write null or a number)"),
        (b'[\n {"id": "a", "n": -Infinity}]', "at line 2, column 20 (byte 21) (Infinity is not JSON"),
        (b'[{"id": "a", "n": Infinity}]', "(Infinity is not JSON; write null or a number)"),
        (b'[{"id": "\\ud800"}]', "or a string holds an invalid \\u escape"),
    ],
)
def test_text_that_is_not_a_json_array_is_an_error_naming_the_file(tmp_path, content, expected):
    path, message = read_error(tmp_path, content)
    assert message.startswith(f"{path}: ")
    assert expected in message


def read_error(tmp_path: Path, content: bytes) -> tuple[Path, str]:
    """The message of reading a file holding ``content``."""
    path = tmp_path / "broken.json"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        LlavaFile.read(path)
    return path, str(err.value)


def test_invalid_utf8_inside_a_record_names_the_record(tmp_path):
    path = tmp_path / "f.json"
    path.write_bytes(b'[{"id": "\xff", "conversations": []}]')
    with pytest.raises(DataError, match=rf"^{path}: record 0: not valid UTF-8"):
        LlavaFile.read(path).record(0)


def test_invalid_utf8_in_an_id_is_named_by_the_id_pass_too(tmp_path):
    path = tmp_path / "f.json"
    path.write_bytes(b'[{"id": "a", "conversations": []}, {"id": "b\xc3(", "conversations": []}]')
    with pytest.raises(DataError) as err:
        LlavaFile.read(path).ids()
    assert str(err.value) == f"{path}: record 1: not valid UTF-8 (byte 0xc3 at byte 9 of the record)"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'[{"id": "a\\x"}]', "record 0: not valid JSON: invalid escaped character at line 1, column 12 (byte 11)"),
        (b'[{"id": "a\x01"}]', "record 0: not valid JSON: invalid character at line 1, column 11 (byte 10)"),
        (b'[{"id": "\\u12"}]', "record 0: not valid JSON: invalid character in unicode escape at line 1, column 14"),
        (b'[{"id": "\\udc00"}]', "record 0: not valid JSON: invalid utf-16 surrogate pair at line 1, column 16"),
        (b'[{"id": 01}]', "record 0: not valid JSON: invalid number at line 1, column 10 (byte 9)"),
        (b'[{"id": 1.}]', "record 0: not valid JSON: invalid number at line 1, column 11 (byte 10)"),
        (b'[{"id" "a"}]', "record 0: not valid JSON: expected ':' at line 1, column 8 (byte 7)"),
        (b"[{1: 2}]", "record 0: not valid JSON: expected '\"' at line 1, column 3 (byte 2)"),
        (b'[{"id": "a",}]', "record 0: not valid JSON: trailing comma in object at line 1, column 13 (byte 12)"),
        (b'[{"id": "a"]', "record 0: not valid JSON: expected ',' or '}' at line 1, column 12 (byte 11)"),
        (b'[{"id": "a"}, {"id": "b"}, {"id": "c"}, ]', "record 3: not valid JSON: trailing comma in array at line 1"),
        (b'[{"id": "a"}]]', "not valid JSON: trailing characters at line 1, column 14 (byte 13)"),
        (b'[{"id": "a"}, {"id": "b"', "record 1: not valid JSON: the file ends inside the array (truncated)"),
        (b'[{"id": "a"}, tr', "record 1: not valid JSON: the file ends inside the array (truncated)"),
        (b"[\xff]", "record 0: not valid JSON: invalid character at line 1, column 2 (byte 1)"),
        # more than 64 commas into the broken record: found by scanning the (small) file whole
        (b'[{"id": "a"}, {"id": "b", "x": [' + b"1," * 100 + b"}]", "record 1: not valid JSON: invalid character"),
    ],
)
def test_each_kind_of_broken_json_is_found_and_worded_by_us_with_its_record_and_place(tmp_path, content, expected):
    path, message = read_error(tmp_path, content)
    assert message.startswith(f"{path}: {expected}")


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (
            {"id": "a", "image": ["x.jpg", 2], "conversations": []},
            "record 0 (id 'a'): 'image[1]': expected `str`, got `int`",
        ),
        ({"id": "a", "conversations": {"a": 1}}, "record 0 (id 'a'): 'conversations': expected `array`, got `object`"),
        ({"id": "a", "conversations": [{"value": "q"}]}, "record 0 (id 'a'): turn 0 has no 'from'"),
        (
            {"id": "a", "conversations": [{"from": "human", "value": True}]},
            "record 0 (id 'a'): turn 0 'value': expected `str`, got `bool`",
        ),
        (
            {"id": "a", "conversations": [{"from": "human", "value": 1.5}]},
            "record 0 (id 'a'): turn 0 'value': expected `str`, got `float`",
        ),
        (None, "record 0 is a null, expected an object"),
        ({"id": None, "conversations": []}, "record 0 has id None (null), expected a string or an integer"),
    ],
)
def test_validation_messages_are_made_from_our_schema_walk(bad, expected):
    with pytest.raises(DataError) as err:
        check(bad)
    assert str(err.value) == f"f.json: {expected}"
    assert "- at `$" not in str(err.value) and "Expected" not in str(err.value)  # (msgspec's wording)


def test_a_record_too_deep_to_decode_is_still_named_by_its_type(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" + "[" * 1500 + "]" * 1500 + "]")
    with pytest.raises(DataError, match=rf"^{path}: record 0 is an array, expected an object$"):
        LlavaFile.read(path).record(0)


def test_the_grammar_scanner_refuses_exactly_what_msgspec_refuses():
    """Randomly broken JSON texts: our scanner (which words the errors) and msgspec agree on which are JSON."""
    import random

    import msgspec

    from rejection_align.data import json_problems

    valid = json.dumps([IMAGE_RECORD, {"n": [1, -2.5e3, 0, True, False, None, {}, []], "s": "é\\u00e9\\ud83d\\ude00"}])
    alphabet = b'{}[]",:\\ueE+-.019abfnlrstx \n\x01'
    rng = random.Random(0)
    refused = 0
    for _ in range(3000):
        text = bytearray(valid.encode())
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(text))
            text[at : at + rng.randint(0, 1)] = bytes([rng.choice(alphabet)])
        try:
            msgspec.json.decode(bytes(text))
            accepted = True
        except msgspec.DecodeError:
            accepted = False
        refused += not accepted
        assert (json_problems.syntax_problem(bytes(text)) is None) == accepted, bytes(text)
    assert refused > 1000


def test_record_without_an_id_is_found_by_the_id_pass_with_its_number(tmp_path):
    records = [record(i, ("q", "a")) for i in range(50)]
    del records[41]["id"]
    with pytest.raises(DataError, match=r"record 41 has no 'id'"):
        LlavaFile.read(write_json(tmp_path / "f.json", records)).ids()


def test_record_with_a_bad_id_type_is_found_by_the_id_pass_with_its_number(tmp_path):
    records = [record(i, ("q", "a")) for i in range(50)]
    records[7]["id"] = [1]
    with pytest.raises(DataError, match=r"record 7 has id \[1\] \(array\), expected a string or an integer"):
        LlavaFile.read(write_json(tmp_path / "f.json", records)).ids()


def test_bad_record_is_found_by_number_when_decoded(tmp_path):
    records = [record(i, ("q", "a")) for i in range(50)]
    records[41]["conversations"][0]["from"] = "user"
    source = LlavaFile.read(write_json(tmp_path / "f.json", records))
    with pytest.raises(DataError, match="record 41 \\(id 41\\): turn 0 has from='user'"):
        source.record(41)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        LlavaFile.read(tmp_path / "nope.json")


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


@pytest.mark.parametrize("text", PLAIN_TEXTS)
def test_plain_record_copied_from_its_bytes_equals_the_encoded_sharegpt_record(text):
    data = text.encode("utf-8")
    out, images = sharegpt.plain_sharegpt_bytes(data)
    assert json.loads(out) == to_sharegpt(json.loads(text))
    assert images == to_sharegpt(json.loads(text))["image"]
    assert b"\n" not in out and b"\r" not in out


@pytest.mark.parametrize("text", OTHER_TEXTS)
def test_other_layouts_are_not_copied_from_their_bytes_but_re_encoded(text):
    assert sharegpt.plain_sharegpt_bytes(text.encode("utf-8")) is None
    out, images = sharegpt_bytes(text.encode("utf-8"))
    assert out == encode_record(to_sharegpt(json.loads(text)))
    assert images == to_sharegpt(json.loads(text))["image"]


def test_convert_style_output_re_encodes_even_plain_records():
    text = PLAIN_TEXTS[1]
    out, _images = sharegpt_bytes(text.encode("utf-8"), copy_plain=False)
    assert out == encode_record(to_sharegpt(json.loads(text)))


# ------------------------------------------------------------------------------------------- many records at once

ANSWER_TAG = '[{"from": "human", "value": "<image>\\nQ?"}, {"from": "gpt", "value": "see <image>"}]'
ESCAPED_ANSWER_TAG = '[{"from": "human", "value": "<image>\\nQ?"}, {"from": "gpt", "value": "\\u003cimage\\u003e"}]'
ESCAPED_QUESTION_TAG = '[{"from": "human", "value": "\\u003cimage\\u003e\\nQ?"}, {"from": "gpt", "value": "A"}]'
CHUNK_TEXTS = [  # (a backslash in an id or image sends a chunk one by one: tested below)
    PLAIN_TEXTS[0],
    PLAIN_TEXTS[3],
    '{ "id" : -12 ,\n  "image":"x y é.jpg",\r\n  "conversations" :\n  ' + CONVERSATION + "\n  }",
    *OTHER_TEXTS,
    '{"id": "tag", "image": "a.jpg", "conversations": ' + ESCAPED_QUESTION_TAG + "}",  # an escaped tag counts
    '{"id": "turn-key", "image": "a.jpg", "conversations": '  # an extra key in a turn is ignored, <image> in it too
    '[{"from": "human", "value": "<image>\\nQ?", "<image>": 1}, {"from": "gpt", "value": "A"}]}',
]


def _chunk_file(tmp_path: Path, texts: list[str]) -> LlavaFile:
    path = tmp_path / "chunk.json"
    path.write_text("[\n" + ",\n".join(texts) + "\n]\n", encoding="utf-8")
    return LlavaFile.read(path)


def test_lines_of_many_records_at_once_are_the_lines_made_one_by_one(tmp_path):
    source = _chunk_file(tmp_path, CHUNK_TEXTS)
    items = [b'{"id": "ready"}', *range(len(source)), b'{"id": "ready2"}']
    lines, images = source.sharegpt_lines(items)
    one_by_one = [item if isinstance(item, bytes) else source.sharegpt(item) for item in items]
    assert lines == [item if isinstance(item, bytes) else item[0] for item in one_by_one]
    assert images == [image for item in one_by_one if not isinstance(item, bytes) for image in item[1]]


@pytest.mark.parametrize(
    ("conversation", "expected"),
    [
        (ANSWER_TAG, "record 1 (id 'bad'): turn 1 (gpt) contains '<image>'"),
        (ESCAPED_ANSWER_TAG, "record 1 (id 'bad'): turn 1 (gpt) contains '<image>'"),
        (CONVERSATION.replace("<image>\\n", ""), "record 1 (id 'bad'): got 0 <image> tags in the human turns"),
    ],
)
def test_a_bad_plain_record_leaves_its_chunk_to_the_one_by_one_path_which_names_it(tmp_path, conversation, expected):
    source = _chunk_file(
        tmp_path, [PLAIN_TEXTS[0], '{"id": "bad", "image": "a.jpg", "conversations": ' + conversation + "}"]
    )
    assert source.sharegpt_lines([0, 1]) is None
    with pytest.raises(DataError, match=re.escape(expected)):
        source.sharegpt(1)


@pytest.mark.parametrize(
    "text",
    [
        PLAIN_TEXTS[1],  # an escape in the image
        PLAIN_TEXTS[2],  # escapes in the id
        '{"id": "a", "image": "", "conversations": ' + CONVERSATION.replace("<image>\\n", "") + "}",  # empty image
    ],
)
def test_a_plain_record_in_doubt_leaves_its_chunk_to_the_one_by_one_path(tmp_path, text):
    source = _chunk_file(tmp_path, [PLAIN_TEXTS[0], text])
    assert source.sharegpt_lines([0, 1]) is None


def test_a_bad_record_of_another_layout_is_named_after_the_plain_ones_are_checked(tmp_path):
    bad = '{"conversations": ' + ANSWER_TAG + ', "id": "late", "image": "a.jpg"}'
    source = _chunk_file(tmp_path, [PLAIN_TEXTS[0], bad, PLAIN_TEXTS[3]])
    with pytest.raises(DataError, match=re.escape("record 1 (id 'late'): turn 1 (gpt) contains '<image>'")):
        source.sharegpt_lines([0, 1, 2])


# ------------------------------------------------------------------------------------------- each rule once


def random_records(seed: int, n: int) -> list[dict]:
    """Valid records, about half of them then broken in one random way (speakers, lengths, values, tags, images)."""
    import random

    rng = random.Random(seed)
    breakages = [
        lambda r: r["conversations"].clear(),
        lambda r: r["conversations"].pop(),
        lambda r: rng.choice(r["conversations"]).update({"from": rng.choice(["human", "gpt", "system"])}),
        lambda r: rng.choice(r["conversations"]).update({"value": rng.choice(["", "  \n"])}),
        lambda r: r["conversations"][-1].update({"value": "see <image>"}),
        lambda r: r["conversations"][0].update({"value": "<image>\n" + r["conversations"][0]["value"]}),
        lambda r: r.update({"image": rng.choice(["", ["a.jpg", ""], ["a.jpg", "b.jpg"], None, "b.jpg"])}),
    ]
    out = []
    for i in range(n):
        turns = []
        for _ in range(rng.randint(1, 3)):
            question = rng.choice(["Q?", "What about it?", "WHAT ABOUT that?"])
            turns += [{"from": "human", "value": question}, {"from": "gpt", "value": rng.choice(["A.", "What about"])}]
        image = rng.choice([None, "a.jpg", ["a.jpg", "b.jpg"]])
        n_images = 0 if image is None else 1 if isinstance(image, str) else len(image)
        turns[0]["value"] = "<image>\n" * n_images + turns[0]["value"]
        record = {"id": i, "image": image, "conversations": turns}
        if rng.random() < 0.5:
            rng.choice(breakages)(record)
        out.append(record)
    return out


def test_the_rules_in_list_operations_and_their_wording_agree_on_every_record():
    """The predicate every path uses refuses a record exactly when the wording (error path) finds a problem in it."""
    from rejection_align.data import records as rules

    worded_count = 0
    for record_dict in random_records(0, 400):
        typed = rules.RECORD.decode(json.dumps(record_dict).encode())
        try:
            rules._raise_record_error(typed, "f.json", 0)
        except DataError:
            worded = True
        except AssertionError:  # (it found nothing to word)
            worded = False
        worded_count += worded
        assert rules.check_records([typed]) is not worded, record_dict
    assert 100 < worded_count < 300


def test_many_records_at_once_meet_the_rules_exactly_when_each_one_does():
    from rejection_align.data import records as rules

    typed = [rules.RECORD.decode(json.dumps(r).encode()) for r in random_records(1, 300)]
    each = [rules.check_records([record]) for record in typed]
    assert 50 < sum(each) < 250  # (both kinds are there)
    good = [typed_record for typed_record, ok in zip(typed, each) if ok]
    assert rules.check_records(good)
    for bad in (typed_record for typed_record, ok in zip(typed, each) if not ok):
        assert not rules.check_records([*good[:7], bad, *good[7:20]])
    assert rules.follow_ups_only(good) == [rules.follow_ups_only([one])[0] for one in good]


@pytest.mark.parametrize(
    ("image", "count"), [(None, 0), ("a.jpg", 1), ("", -1), (["a.jpg", "b.jpg"], 2), ([], 0), (["a.jpg", ""], -1)]
)
def test_one_image_count_serves_validation_and_stats(image, count):
    from rejection_align.data.records import image_count

    assert image_count(image) == count
