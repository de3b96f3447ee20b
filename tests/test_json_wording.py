"""Our messages never depend on msgspec's wording (issue 14): only ``json_problems`` reads a msgspec error's text,
and only for a location; every module's bad-JSON message is our own words."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import msgspec
import pytest

import rejection_align
from rejection_align.errors import ConfigError, DataError


SRC = Path(rejection_align.__file__).parent
# Phrases of msgspec's error texts (0.18 ... 0.23): code that holds them as literals is parsing msgspec's words.
MSGSPEC_PHRASES = re.compile(
    r"Expected `|Object missing required field|Object contains unknown field|Input data was truncated"
    r"|Invalid UTF-8 encoded string| - at `"
)
LOCATION_READER = SRC / "json_problems.py"  # the one module that reads a msgspec error's text (its location only)


def _msgspec_handlers(tree: ast.AST) -> list[ast.ExceptHandler]:
    """``except`` clauses catching a msgspec error and binding it to a name."""
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ExceptHandler) and node.name and "msgspec" in ast.unparse(node.type or ast.Pass())
    ]


def _text_uses(handler: ast.ExceptHandler) -> list[str]:
    """Where the caught error is turned into text: ``str(err)``, ``f"{err}"``, ``err.args``, ``repr(err)``."""
    found = []
    for node in ast.walk(handler):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("str", "repr", "format")
            and any(isinstance(arg, ast.Name) and arg.id == handler.name for arg in node.args)
        ):
            found.append(ast.unparse(node))
        elif (
            isinstance(node, ast.FormattedValue) and isinstance(node.value, ast.Name) and node.value.id == handler.name
        ):
            found.append(ast.unparse(node))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == handler.name:
            if node.attr == "args":
                found.append(ast.unparse(node))
    return found


def wording_offences(source: str, name: str) -> list[str]:
    """Lines of ``source`` that quote or parse a msgspec error's text."""
    tree = ast.parse(source)
    offences = [
        f"{name}:{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and MSGSPEC_PHRASES.search(node.value)
    ]
    for handler in _msgspec_handlers(tree):
        offences += [f"{name}:{handler.lineno}: {use}" for use in _text_uses(handler)]
    return offences


def test_the_check_catches_code_that_quotes_or_parses_msgspec_errors():
    quoting = 'try:\n    f()\nexcept msgspec.ValidationError as err:\n    raise DataError(f"bad ({err})")\n'
    parsing = 're.match(r"Object missing required field `(\\w+)`", text)\n'
    stringify = "try:\n    f()\nexcept (msgspec.DecodeError, OSError) as e:\n    m = str(e)\n"
    assert wording_offences(quoting, "q") and wording_offences(parsing, "p") and wording_offences(stringify, "s")
    ours = "try:\n    f()\nexcept msgspec.ValidationError as err:\n    raise DataError(words(err, value))\n"
    assert wording_offences(ours, "o") == []


def test_no_module_but_json_problems_reads_msgspec_error_text():
    offences = []
    for path in sorted(SRC.rglob("*.py")):
        if path != LOCATION_READER:
            offences += wording_offences(path.read_text(encoding="utf-8"), str(path.relative_to(SRC)))
    assert offences == []


# --- each module's error paths, fed real bad data: the message is ours -----------------------------------------


def _summary_error(tmp_path: Path) -> str:
    from rejection_align.eval.summary import validate

    summary = {"files": [{"path": "a", "n": "2", "full_compliance": 0, "full_refusal": 0, "partial_refusal": 0,
                          "asr": 0.0}], "total": None}  # fmt: skip
    with pytest.raises(DataError) as caught:
        validate(summary, tmp_path / "summary.json")
    return str(caught.value)


def _vlguard_errors(tmp_path: Path) -> list[str]:
    from rejection_align.data.vlguard import read_vlguard

    good = {"id": "a", "image": "x.png", "safe": True, "instr-resp": [{"instruction": "q", "response": "r"}]}
    bads = [
        [{**good, "safe": "true"}],
        [{k: v for k, v in good.items() if k != "image"}],
        [{**good, "instr-resp": [{"response": "r", "instrution": "q"}]}],
    ]
    messages = []
    for records in bads:
        with pytest.raises(DataError) as caught:
            read_vlguard(json.dumps(records).encode(), "train.json")
        messages.append(str(caught.value))
    for data in (b'[{"id": "a",', b'[{"id": "a" "image": 1}]'):
        with pytest.raises(DataError) as caught:
            read_vlguard(data, "train.json")
        messages.append(str(caught.value))
    return messages


def _jsonl_errors(tmp_path: Path) -> list[str]:
    from rejection_align.eval import jsonl
    from rejection_align.eval.records import ANSWER_KEY, PROMPT

    cases = [
        (b'{"id": 1.5, "scenario": "s", "mode": "m"}', ANSWER_KEY),
        (b'{"id": "a", "mode": "m"}', ANSWER_KEY),
        (b'{"prompt": "x", "image": [1]}', PROMPT),
        (b'{"prompt": 1,', PROMPT),
        (b'{"prompt": "\xff"}', PROMPT),
        (b"[1e400]", msgspec.json.Decoder()),
    ]
    messages = []
    for data, decoder in cases:
        with pytest.raises(DataError) as caught:
            jsonl.decode(data, decoder, where="p.jsonl: line 1")
        messages.append(str(caught.value))
    return messages


def _generic_prompt_errors(tmp_path: Path) -> list[str]:
    from rejection_align.eval.benchmarks import load_generic

    messages = []
    for record in ('{"id": "a", "prompt": "x", "benign": "no"}', '{"id": "a", "prompt": "x", "image": [3]}'):
        path = tmp_path / "p.jsonl"
        path.write_text(record + "\n")
        with pytest.raises(DataError) as caught:
            load_generic(path)
        messages.append(str(caught.value))
    return messages


def _manifest_errors(tmp_path: Path) -> list[str]:
    from rejection_align.data.manifest import decode_manifest
    from rejection_align.data.mix import MixManifest

    messages = []
    for text in ("{}", '{"tool": 3', "[1]"):
        path = tmp_path / "m.json"
        path.write_text(text)
        with pytest.raises(DataError) as caught:
            decode_manifest(path, MixManifest)
        messages.append(str(caught.value))
    return messages


def _saved_record_error(tmp_path: Path) -> str:
    from rejection_align.hook.saved import RECORD_NAME, read_record

    (tmp_path / RECORD_NAME).write_text('{"format": 1, "settings": {"rejection_mask_eos": 3}}')
    with pytest.raises(ConfigError) as caught:
        read_record(tmp_path)
    return str(caught.value)


@pytest.mark.parametrize(
    "make, expected",
    [
        (_summary_error, [r"summary\.json: files\[0\]\.n is a string, expected an integer"]),
        (
            _vlguard_errors,
            [
                r"train\.json: record 0 \(id 'a'\): 'safe': expected `bool`, got `str`",
                r"train\.json: record 0 \(id 'a'\): has no 'image'",
                r"'instr-resp\[0\]': object contains unknown field `instrution`",
                r"train\.json: not a JSON array of VLGuard records \(not valid JSON: truncated\)",
                r"train\.json: not a JSON array of VLGuard records \(not valid JSON: expected ',' or '}' at line 1",
            ],
        ),
        (
            _jsonl_errors,
            [
                r"line 1: field 'id': expected `int \| str`, got `float`",
                r"line 1: missing the required field 'scenario'",
                r"line 1: field 'image\[0\]': expected `str`, got `int`",
                r"line 1 is not valid JSON: truncated",
                r"line 1 is not UTF-8 text \(byte 0xff at byte 12\)",
                r"line 1 is not valid JSON here \(a number too large to read\)",
            ],
        ),
        (
            _generic_prompt_errors,
            [r"record 0 \(id 'a'\): 'benign' is a str", r"record 0 \(id 'a'\): 'image' holds an int"],
        ),
        (
            _manifest_errors,
            [
                r"not a MixManifest \(missing the required field 'tool'\)",
                r"not a MixManifest \(not valid JSON: truncated\)",
                r"not a MixManifest \(expected `object`, got `array`\)",
            ],
        ),
        (
            _saved_record_error,
            [r"does not hold the settings rejection-align writes \(at \$\.settings\.rejection_mask"],
        ),
    ],
    ids=["summary", "vlguard", "jsonl", "generic-prompts", "manifest", "saved-record"],
)
def test_every_bad_json_message_is_in_our_words(tmp_path, make, expected):
    messages = make(tmp_path)
    messages = [messages] if isinstance(messages, str) else messages
    assert len(messages) == len(expected)
    for message, pattern in zip(messages, expected, strict=True):
        assert re.search(pattern, message), message
        assert not MSGSPEC_PHRASES.search(message), message
