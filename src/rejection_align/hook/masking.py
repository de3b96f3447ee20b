"""Where the closing tokens of each answer land in LLaMA-Factory's supervised encoding, and how to untrain them.

LLaMA-Factory's ``SupervisedDatasetProcessor._encode_data_example`` lays the encoded turns out with truncation
(``infer_seqlen``), optional reversal (``mask_history``) and a trailing EOS for ``efficient_eos`` templates. We
let the stock method produce its output and compute, from the same inputs, where each turn ended up; the
processor then checks that layout against the real output before touching anything.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from ..constants import IGNORE_INDEX  # noqa: F401 (re-exported: processor and tests read it here)


# how a closing position may be treated in "drop" mode
TOKEN = "token"  # a real input token that only closes the answer: may be removed
LABEL = "label"  # a label carried by the next prompt's first token (efficient_eos): can only be ignored


class Segment(NamedTuple):
    """One exchange (prompt + answer) as it sits in the encoded example (a tuple: built for every example)."""

    turn: int  # index of the exchange in the conversation (0 = first)
    source_start: int
    source_len: int
    target_start: int
    target_len: int
    target_whole: bool  # False when cutoff_len cut the answer: it has no closing token then

    @property
    def target_end(self) -> int:
        return self.target_start + self.target_len


class Layout(NamedTuple):
    segments: tuple[Segment, ...]  # in output order
    length: int  # length of input_ids
    final_eos: int | None  # position of the EOS appended by efficient_eos templates


def layout_turns(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    prefix_len: int,
    cutoff_len: int,
    infer_seqlen: Callable[[int, int, int], tuple[int, int]],
    efficient_eos: bool,
    mask_history: bool,
) -> Layout:
    """Replay the stock layout arithmetic on the encoded (source, target) pairs; only their lengths matter."""
    total = prefix_len + (1 if efficient_eos else 0)
    order = list(enumerate(pairs))
    if mask_history:
        order.reverse()

    kept: list[tuple[int, int, int, bool]] = []
    for turn, (source, target) in order:
        if total >= cutoff_len:
            break

        source_len, target_len = len(source), len(target)
        if source_len + target_len < cutoff_len - total:  # fits: infer_seqlen would return it unchanged
            new_source_len, new_target_len = source_len, target_len
        else:
            new_source_len, new_target_len = infer_seqlen(source_len, target_len, cutoff_len - total)
        total += new_source_len + new_target_len
        kept.append((turn, new_source_len, new_target_len, new_target_len == target_len))

    if mask_history:  # segments were prepended, so the mm prefix ends up after them
        kept.reverse()
        offset = 0
    else:
        offset = prefix_len

    segments = []
    for turn, source_len, target_len, whole in kept:
        segments.append(Segment(turn, offset, source_len, offset + source_len, target_len, whole))
        offset += source_len + target_len

    return Layout(tuple(segments), total, total - 1 if efficient_eos else None)


class Closing(NamedTuple):
    turn: int
    positions: tuple[int, ...]
    kind: str  # TOKEN or LABEL


def purely_closing_len(target: Sequence[int], suffix: Sequence[int]) -> int:
    """How many trailing tokens of an encoded answer are the template's closing tokens and nothing else.

    The answer's content and the template's closing text are encoded together, so a tokenizer may merge the
    content's last characters with the closing text's first ones (an answer ending in ``\n`` under a template
    that writes ``\n<|EOT|>`` after it gives one ``\n\n`` token). Trailing tokens equal to the trailing tokens
    of the closing text encoded alone hold only closing characters; the merged token and everything before it
    belong (partly) to the answer and are left alone.
    """
    count = 0
    limit = min(len(target), len(suffix))
    while count < limit and target[-1 - count] == suffix[-1 - count]:
        count += 1
    return count


def closing_positions(
    layout: Layout,
    closing_lens: Mapping[int, int],
    efficient_eos: bool,
) -> tuple[list[Closing], list[int]]:
    """Positions of the closing token(s) of each rejection turn, and the rejection turns that were truncated.

    ``closing_lens`` maps each rejection turn to the number of purely closing tokens at the end of its target
    (:func:`purely_closing_len`): ``</s>``, ``<|eot_id|>``, ``<|im_end|>`` + ``\n``; 0 leaves the turn alone.
    ``efficient_eos`` templates keep the EOS out of the target: it is the label on the token right after the
    answer (the next prompt's first token) or, for the last answer, the EOS appended at the very end.
    """
    closings: list[Closing] = []
    truncated: list[int] = []
    segments = layout.segments
    for index, segment in enumerate(segments):
        if segment.turn not in closing_lens:
            continue

        if not segment.target_whole:
            truncated.append(segment.turn)
            continue

        if not efficient_eos:
            count = min(closing_lens[segment.turn], segment.target_len)
            if count:
                start = segment.target_end - count
                closings.append(Closing(segment.turn, tuple(range(start, segment.target_end)), TOKEN))
        elif index == len(segments) - 1:
            closings.append(Closing(segment.turn, (layout.final_eos,), TOKEN))
        elif segments[index + 1].source_len > 0:
            closings.append(Closing(segment.turn, (segments[index + 1].source_start,), LABEL))

    return closings, truncated


def apply_closings(
    input_ids: list[int], labels: list[int], closings: Sequence[Closing], mode: str
) -> tuple[list[int], list[int], list[int]]:
    """Ignore (``mask``) or remove (``drop``) the closing positions; returns new lists and the changed positions.

    The changed positions are those of the input lists (before any removal). In ``drop`` mode a LABEL closing
    cannot be removed without deleting a prompt token, so it is ignored instead.
    """
    labels = list(labels)  # pure: the caller keeps its lists as they were (a copy costs ~1 us per example)
    to_drop: set[int] = set()
    changed: list[int] = []
    for closing in closings:
        for position in closing.positions:
            if mode == "drop" and closing.kind == TOKEN:
                to_drop.add(position)
                changed.append(position)
            elif labels[position] != IGNORE_INDEX:
                labels[position] = IGNORE_INDEX
                changed.append(position)

    changed.sort()
    if not to_drop:
        return input_ids, labels, changed

    keep = [i for i in range(len(input_ids)) if i not in to_drop]
    return [input_ids[i] for i in keep], [labels[i] for i in keep], changed
