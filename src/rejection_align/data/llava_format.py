"""The names of the LLaVA-format data layer, where earlier code imports them from (kept for it; new code imports from
the module that holds each name):

- :mod:`.records`: the typed Structs, the rules a record meets (each written once) and the wording of problems;
- :mod:`.reading`: :class:`LlavaFile` (a file mapped, split into raw records, its ids) and ``split_array``;
- :mod:`.sharegpt`: the sharegpt encoding and the fast paths that copy plain-layout records;
- :mod:`.writer`: :class:`JsonArrayWriter`;
- :mod:`.images`: the check for missing images;
- :mod:`..json_problems`: what is wrong with JSON that msgspec refused, found and worded by us.
"""

from .images import find_missing_images, missing_images_message
from .reading import IDS_IN_CHILD_BYTES, SPLIT_RECURSION_LIMIT, LlavaFile, gc_paused, split_array
from .records import (
    DEFAULT_REJECTION_SENTENCE,
    FLAG_ALL_WHAT_ABOUT,
    FLAG_HAS_IMAGE,
    GPT,
    HUMAN,
    IMAGE_TAG,
    WHAT_ABOUT,
    LlavaRecord,
    Turn,
    check_record,
    check_records,
    decode_record,
    describe,
    follow_ups_only,
    is_follow_up,
    record_id,
    record_images,
    to_sharegpt,
)
from .sharegpt import (
    SHAREGPT_COLUMNS,
    encode_record,
    plain_sharegpt_bytes,
    plain_sharegpt_lines,
    sharegpt_bytes,
)
from .writer import SYNC_BYTES, JsonArrayWriter


__all__ = [
    "DEFAULT_REJECTION_SENTENCE",
    "FLAG_ALL_WHAT_ABOUT",
    "FLAG_HAS_IMAGE",
    "GPT",
    "HUMAN",
    "IDS_IN_CHILD_BYTES",
    "IMAGE_TAG",
    "SHAREGPT_COLUMNS",
    "SPLIT_RECURSION_LIMIT",
    "SYNC_BYTES",
    "WHAT_ABOUT",
    "JsonArrayWriter",
    "LlavaFile",
    "LlavaRecord",
    "Turn",
    "check_record",
    "check_records",
    "decode_record",
    "describe",
    "encode_record",
    "find_missing_images",
    "follow_ups_only",
    "gc_paused",
    "is_follow_up",
    "missing_images_message",
    "plain_sharegpt_bytes",
    "plain_sharegpt_lines",
    "record_id",
    "record_images",
    "sharegpt_bytes",
    "split_array",
    "to_sharegpt",
]
