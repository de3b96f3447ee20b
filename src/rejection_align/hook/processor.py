"""Supervised dataset processors that leave the closing token(s) of rejection answers untrained.

They subclass LLaMA-Factory's own processors and override only ``_encode_data_example``: the stock method
encodes the example, and we untrain the closing tokens of the answers that match a rejection sentence. With the
method off they are the stock classes, token for token.
"""

import copy
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llamafactory.data.mm_plugin import BasePlugin
from llamafactory.data.processor.processor_utils import infer_seqlen
from llamafactory.data.processor.supervised import PackedSupervisedDatasetProcessor, SupervisedDatasetProcessor

from .masking import IGNORE_INDEX, apply_closings, closing_positions, layout_turns
from .settings import RejectionSettings


if TYPE_CHECKING:
    from llamafactory.data.mm_plugin import AudioInput, ImageInput, VideoInput
    from llamafactory.data.template import Template
    from transformers import PreTrainedTokenizer


logger = logging.getLogger(__name__)

SETTINGS_ATTR = "rejection_align"  # attribute of LLaMA-Factory's DataArguments that carries RejectionSettings
STATS_COLUMN = "_rejection_align_stats"  # per-row counters, summed and removed again by the loader patch
STATS_FIELDS = ("examples", "rejection_examples", "turns", "rejection_turns", "closed_turns", "truncated_turns",
                "tokens_changed")  # fmt: skip
_SENTINEL = "\u0000rejection-align\u0000"
_NO_TURNS: frozenset[int] = frozenset()


def settings_of(data_args: Any) -> RejectionSettings | None:
    settings = getattr(data_args, SETTINGS_ATTR, None)
    return settings if isinstance(settings, RejectionSettings) and settings.mask_eos else None


def closing_suffix_ids(template: "Template", tokenizer: "PreTrainedTokenizer") -> list[int]:
    """Token ids the template appends after an assistant answer's content (``</s>``, ``<|im_end|>`` + ``\\n``)."""
    elements = template.format_assistant.apply(content=_SENTINEL)
    for index, element in enumerate(elements):
        if isinstance(element, str) and _SENTINEL in element:
            suffix = [element.split(_SENTINEL, 1)[1], *elements[index + 1 :]]
            return template._convert_elements_to_ids(tokenizer, suffix)

    raise ValueError(f"template {type(template).__name__} has no {{{{content}}}} slot in format_assistant")


@dataclass
class _RecordedEncoder:
    """Stands in for ``template.encode_multiturn`` and keeps its last result, so nothing is tokenized twice.

    It holds the plain function (not a bound method): pickling a bound method would re-resolve the attribute on
    unpickling and find this wrapper again.
    """

    template: "Template"
    function: Any
    last: list[tuple[list[int], list[int]]] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> list[tuple[list[int], list[int]]]:
        self.last = self.function(self.template, *args, **kwargs)
        return self.last

    def take(self) -> list[tuple[list[int], list[int]]]:
        pairs, self.last = self.last, None
        return pairs


@dataclass
class RejectionSupervisedDatasetProcessor(SupervisedDatasetProcessor):
    """``SupervisedDatasetProcessor`` that untrains the closing tokens of rejection answers (DESIGN.md §1)."""

    def __post_init__(self) -> None:
        self._settings = settings_of(self.data_args)
        self._batch_stats: list[list[int]] | None = None
        if self._settings is None:
            return

        # a private copy of the template: the shared one is also used for generation and must stay untouched
        self.template = copy.copy(self.template)
        self._encoder = _RecordedEncoder(self.template, type(self.template).encode_multiturn)
        self.template.encode_multiturn = self._encoder
        self._suffix_ids = [] if self.template.efficient_eos else closing_suffix_ids(self.template, self.tokenizer)
        self._efficient_eos_id = self.tokenizer.eos_token_id if self.template.efficient_eos else None
        plugin_method = type(self.template.mm_plugin).process_token_ids
        self._plain_token_ids = plugin_method is BasePlugin.process_token_ids

    def _rejection_turns(self, messages: list[dict[str, str]]) -> frozenset[int]:
        is_rejection = self._settings.is_rejection
        turns = [
            index // 2
            for index in range(1, len(messages), 2)
            if messages[index].get("role") == "assistant" and is_rejection(messages[index]["content"])
        ]
        return frozenset(turns) if turns else _NO_TURNS

    def _prefix_len(self, images: list, videos: list, audios: list) -> int:
        """Tokens the mm plugin puts before the first turn (PaliGemma's image tokens); none for the base plugin."""
        if self._plain_token_ids:
            return 0

        prefix_ids, _ = self.template.mm_plugin.process_token_ids(
            [], [], images, videos, audios, self.tokenizer, self.processor
        )
        return len(prefix_ids)

    def _encode_data_example(
        self,
        prompt: list[dict[str, str]],
        response: list[dict[str, str]],
        system: str | None,
        tools: str | None,
        images: list["ImageInput"],
        videos: list["VideoInput"],
        audios: list["AudioInput"],
    ) -> tuple[list[int], list[int]]:
        input_ids, labels = super()._encode_data_example(prompt, response, system, tools, images, videos, audios)
        if self._settings is None:
            return input_ids, labels

        pairs = self._encoder.take()
        rejection_turns = self._rejection_turns(prompt + response)
        stats = [1, int(bool(rejection_turns)), len(pairs), len(rejection_turns), 0, 0, 0]
        if rejection_turns:
            input_ids, labels, stats[4], stats[5], stats[6] = self._untrain_closings(
                input_ids, labels, pairs, rejection_turns, images, videos, audios
            )

        if self._batch_stats is not None:
            self._batch_stats.append(stats)

        return input_ids, labels

    def _untrain_closings(
        self,
        input_ids: list[int],
        labels: list[int],
        pairs: list[tuple[list[int], list[int]]],
        rejection_turns: frozenset[int],
        images: list["ImageInput"],
        videos: list["VideoInput"],
        audios: list["AudioInput"],
    ) -> tuple[list[int], list[int], int, int, int]:
        """Find the closing positions of the rejection turns in the stock output and apply the mask mode."""
        efficient_eos = self.template.efficient_eos
        layout = layout_turns(
            pairs,
            self._prefix_len(images, videos, audios),
            self.data_args.cutoff_len,
            infer_seqlen,
            efficient_eos,
            self.data_args.mask_history,
        )
        closings, truncated = closing_positions(layout, rejection_turns, len(self._suffix_ids), efficient_eos)
        self._check_layout(input_ids, labels, layout, closings, pairs)
        input_ids, labels, changed = apply_closings(input_ids, labels, closings, self._settings.mask_mode)
        return input_ids, labels, len(closings), len(truncated), changed

    def _check_layout(self, input_ids, labels, layout, closings, pairs) -> None:
        """Refuse to edit anything if our replay of the layout disagrees with what the stock method produced."""
        problem = None
        if len(input_ids) != layout.length or len(labels) != len(input_ids):
            problem = f"length {len(input_ids)} (labels {len(labels)}), expected {layout.length}"
        else:
            closed_turns = {closing.turn for closing in closings}
            for segment in layout.segments:
                if segment.turn not in closed_turns:  # only the answers we edit need to be where we think
                    continue

                source, target = pairs[segment.turn]
                start, end = segment.target_start, segment.target_end
                if input_ids[start:end] != target[: segment.target_len]:
                    problem = f"turn {segment.turn} answer not found at {start}:{end}"
                    break

            if problem is None and not self.template.efficient_eos:
                for closing in closings:
                    found = [input_ids[p] for p in closing.positions]
                    if found != self._suffix_ids:
                        problem = f"turn {closing.turn} ends with {found}, expected {self._suffix_ids}"

        if problem is not None:
            raise RuntimeError(
                f"rejection-align: the encoded example does not have the layout of LLaMA-Factory 0.9.5 ({problem}); "
                "refusing to mask. Is a different llamafactory version installed?"
            )

    def preprocess_dataset(self, examples: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if self._settings is None:
            return super().preprocess_dataset(examples)

        self._batch_stats = []
        try:
            model_inputs = super().preprocess_dataset(examples)
            stats = self._batch_stats
        finally:
            self._batch_stats = None

        model_inputs[STATS_COLUMN] = self._stats_rows(stats, len(model_inputs["input_ids"]))
        return model_inputs

    def _stats_rows(self, stats: list[list[int]], n_rows: int) -> list[list[int]]:
        """One counter row per output row; a row is one example here."""
        return stats

    def print_data_example(self, example: dict[str, list[int]]) -> None:
        super().print_data_example(example)
        if self._settings is None or STATS_COLUMN not in example:
            return

        counts = dict(zip(STATS_FIELDS, example[STATS_COLUMN]))
        untrained = [
            position
            for position, (token, label) in enumerate(zip(example["input_ids"], example["labels"]))
            if label == IGNORE_INDEX and (token in self._suffix_ids or token == self._efficient_eos_id)
        ]
        print(
            f"rejection_align ({self._settings.mask_mode}): {counts['rejection_turns']} rejection answer(s) here, "
            f"closing token(s) of {counts['closed_turns']} untrained ({counts['tokens_changed']} label(s) changed); "
            f"untrained closing-token positions: {untrained}"
        )


@dataclass
class RejectionPackedSupervisedDatasetProcessor(RejectionSupervisedDatasetProcessor, PackedSupervisedDatasetProcessor):
    """Packing variant. The method order (ours, then the stock packed class, then the plain one) makes our
    ``preprocess_dataset`` wrap the stock packing, which encodes each example with our ``_encode_data_example``.
    """

    def _stats_rows(self, stats: list[list[int]], n_rows: int) -> list[list[int]]:
        """Rows are packs of several examples here: the batch total goes on the first row, zeros on the others."""
        if n_rows == 0:
            return []

        total = [sum(column) for column in zip(*stats)] if stats else [0] * len(STATS_FIELDS)
        return [total] + [[0] * len(STATS_FIELDS) for _ in range(n_rows - 1)]


def _finish_deferred_patch() -> None:
    """Importing this module imports LLaMA-Factory's loader, whose start-up patch needs the classes above."""
    from . import patches

    patches.patch_pending()


_finish_deferred_patch()
