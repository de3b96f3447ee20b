"""The records evaluation reads, as msgspec Structs: decoding them is the type check.

Booleans are JSON booleans (``"benign": "false"`` is an error, not a benign prompt), ids strings or integers,
scenarios strings; msgspec refuses NaN and text that is not valid Unicode. A wrong type is reported by
``eval/jsonl.py`` with the file, the record and the field.
"""

from __future__ import annotations

import msgspec


class PromptRecord(msgspec.Struct):
    """One prompt of a generic benchmark file: ``{"id"?, "prompt", "image"?, "scenario"?, "benign"?}``."""

    prompt: str
    id: str | int | msgspec.UnsetType = msgspec.UNSET
    image: str | list[str] | None = None
    scenario: str | msgspec.UnsetType = msgspec.UNSET
    benign: bool = False


class AnswerKey(msgspec.Struct):
    """What ``generate`` needs of an answer it wrote earlier to know it is done (the rest is not decoded)."""

    id: str | int
    scenario: str
    mode: str


PROMPT = msgspec.json.Decoder(PromptRecord)
PROMPTS = msgspec.json.Decoder(list[msgspec.Raw])
ANSWER_KEY = msgspec.json.Decoder(AnswerKey)
# MM-SafetyBench's processed_questions/<scenario>.json: {question id: {"Question": ..., ...}}
QUESTIONS = msgspec.json.Decoder(dict[str, dict[str, msgspec.Raw]])
