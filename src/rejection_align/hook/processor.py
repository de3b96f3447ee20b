"""Supervised dataset processors that leave the closing token(s) of rejection answers untrained.

They subclass LLaMA-Factory's own processors and override only ``_encode_data_example``: the stock method
encodes the example, and we untrain the closing tokens of the answers that match a rejection sentence. With the
method off LLaMA-Factory's own classes are used (the loader patch picks ours only when the method is on).

Nothing happens at import: ``patches`` imports this module on the first call of LLaMA-Factory's processor factory
with the method on (:func:`rejection_processor`), when LLaMA-Factory's data modules are already loaded.
"""

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llamafactory.data.mm_plugin import BasePlugin
from llamafactory.data.processor import supervised as lf_supervised
from llamafactory.data.processor.processor_utils import infer_seqlen
from llamafactory.data.processor.supervised import PackedSupervisedDatasetProcessor, SupervisedDatasetProcessor
from llamafactory.data.template import ReasoningTemplate

from ..errors import ConfigError
from .counters import NO_COUNTS, POSITIONS_COLUMN, STATS_COLUMN, Counters
from .masking import apply_closings, closing_positions, layout_turns, purely_closing_len
from .settings import settings_of


if TYPE_CHECKING:
    from llamafactory.data.mm_plugin import AudioInput, ImageInput, VideoInput
    from llamafactory.data.template import Template
    from transformers import PreTrainedTokenizer


logger = logging.getLogger(__name__)

OUTPUT_VERSION = 2  # bump when the columns or the treated positions change
_SENTINEL = "\u0000rejection-align\u0000"
_NO_TURNS: frozenset[int] = frozenset()
_NO_POSITIONS: tuple[int, ...] = ()


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
    discarding_history_cot: bool = False  # the stock caller's argument (0.9.5+): history thoughts removed

    def __call__(self, *args: Any, **kwargs: Any) -> list[tuple[list[int], list[int]]]:
        self.last = self.function(self.template, *args, **kwargs)
        self.discarding_history_cot = bool(args[4] if len(args) > 4 else kwargs.get("discarding_history_cot"))
        return self.last

    def take(self) -> tuple[list[tuple[list[int], list[int]]], bool]:
        pairs, self.last = self.last, None
        return pairs, self.discarding_history_cot


@dataclass
class RejectionSupervisedDatasetProcessor(SupervisedDatasetProcessor):
    """``SupervisedDatasetProcessor`` that untrains the closing tokens of rejection answers (docs/architecture.md)."""

    def __post_init__(self) -> None:
        self._settings = settings_of(self.data_args)
        self._batch_stats: list[Counters] | None = None
        self._batch_positions: list[tuple[int, Sequence[int]]] | None = None
        if self._settings is None:
            return

        # part of the `datasets` cache fingerprint (the processor is hashed by value): a cache written by an older
        # hook, with other columns or closing rules, is not reused
        self._output_version = OUTPUT_VERSION
        # a private copy of the template: the shared one is also used for generation and must stay untouched
        self.template = copy.copy(self.template)
        self._encoder = _RecordedEncoder(self.template, type(self.template).encode_multiturn)
        self.template.encode_multiturn = self._encoder
        self._suffix_ids = [] if self.template.efficient_eos else closing_suffix_ids(self.template, self.tokenizer)
        plugin_method = type(self.template.mm_plugin).process_token_ids
        self._plain_token_ids = plugin_method is BasePlugin.process_token_ids
        self._removes_thoughts = isinstance(self.template, ReasoningTemplate)

    def _trained_text(self, messages: list[dict[str, str]], index: int, discarding_history_cot: bool) -> str:
        """The answer as the template encodes it: reasoning templates remove thought blocks first."""
        content = messages[index]["content"]
        template = self.template
        if isinstance(template, ReasoningTemplate) and (
            template.enable_thinking is False or (discarding_history_cot and index < len(messages) - 2)
        ):
            return template.remove_thought(content)

        return content

    def _rejection_turns(self, messages: list[dict[str, str]], discarding_history_cot: bool) -> frozenset[int]:
        is_rejection = self._settings.is_rejection
        if self._removes_thoughts:
            turns = [
                index // 2
                for index in range(1, len(messages), 2)
                if messages[index].get("role") == "assistant"
                and is_rejection(self._trained_text(messages, index, discarding_history_cot))
            ]
        else:  # the answer is the message's content: no call per message (this runs for every example)
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

        pairs, discarding_history_cot = self._encoder.take()
        input_ids, labels, changed, counts = self._apply_method(
            prompt + response, pairs, discarding_history_cot, input_ids, labels, images, videos, audios
        )
        if self._batch_stats is not None:
            self._batch_stats.append(counts)
            self._batch_positions.append((len(input_ids), changed))

        return input_ids, labels

    def _apply_method(
        self,
        messages: list[dict[str, str]],
        pairs: list[tuple[list[int], list[int]]],
        discarding_history_cot: bool,
        input_ids: list[int],
        labels: list[int],
        images: list["ImageInput"],
        videos: list["VideoInput"],
        audios: list["AudioInput"],
    ) -> tuple[list[int], list[int], Sequence[int], Counters]:
        """The method's own work on one stock-encoded example (``bench/bench_tokenize.py`` times it alone)."""
        rejection_turns = self._rejection_turns(messages, discarding_history_cot)
        if not rejection_turns:
            return input_ids, labels, _NO_POSITIONS, Counters(examples=1, turns=len(pairs))

        return self._untrain_closings(input_ids, labels, pairs, rejection_turns, images, videos, audios)

    def _untrain_closings(
        self,
        input_ids: list[int],
        labels: list[int],
        pairs: list[tuple[list[int], list[int]]],
        rejection_turns: frozenset[int],
        images: list["ImageInput"],
        videos: list["VideoInput"],
        audios: list["AudioInput"],
    ) -> tuple[list[int], list[int], list[int], Counters]:
        """Find the closing positions of the rejection turns in the stock output and apply the mask mode.

        Returns the new lists, the changed positions, and the example's counters.
        """
        efficient_eos = self.template.efficient_eos
        layout = layout_turns(
            pairs,
            self._prefix_len(images, videos, audios),
            self.data_args.cutoff_len,
            infer_seqlen,
            efficient_eos,
            self.data_args.mask_history,
        )
        closing_lens = {turn: 0 if efficient_eos else self._closing_len(pairs[turn][1]) for turn in rejection_turns}
        merged = sum(1 for count in closing_lens.values() if count < len(self._suffix_ids))
        closings, truncated = closing_positions(layout, closing_lens, efficient_eos)
        self._check_layout(input_ids, labels, layout, closings, pairs)
        input_ids, labels, changed = apply_closings(input_ids, labels, closings, self._settings.mask_mode)
        counts = Counters(1, 1, len(pairs), len(rejection_turns), len(closings), len(truncated), len(changed), merged)
        return input_ids, labels, changed, counts

    def _closing_len(self, target: list[int]) -> int:
        """Trailing tokens of an encoded answer that hold only the template's closing text (see masking)."""
        return purely_closing_len(target, self._suffix_ids)

    def _check_layout(self, input_ids, labels, layout, closings, pairs) -> None:
        """Refuse to edit anything if our replay of the layout disagrees with what the stock method produced."""
        problem = None
        if len(input_ids) != layout.length or len(labels) != len(input_ids):
            problem = (
                f"the encoded example has {len(input_ids)} input ids and {len(labels)} labels, but its "
                f"{len(pairs)} encoded turn(s) laid out with cutoff_len={self.data_args.cutoff_len} and "
                f"mask_history={self.data_args.mask_history} give {layout.length}"
            )
        else:
            closed_turns = {closing.turn for closing in closings}
            for segment in layout.segments:
                if segment.turn not in closed_turns:  # only the answers we edit need to be where we think
                    continue

                target = pairs[segment.turn][1][: segment.target_len]
                start, end = segment.target_start, segment.target_end
                found = input_ids[start:end]
                if found != target:
                    problem = (
                        f"the answer of turn {segment.turn} (0 = first) should be at input positions {start}:{end} "
                        f"as the template encoded it, {target}, but those positions hold {found}"
                    )
                    break

        if problem is not None:
            raise RuntimeError(
                f"rejection-align: {problem}. The hook places closing tokens by replaying the layout of "
                f"{type(self).__mro__[1].__name__}._encode_data_example on the template's encoded turns; since the "
                "replay and the real output disagree, nothing was changed. Something else alters that method's "
                "output (another plugin or a modified LLaMA-Factory); please report the template and this example."
            )

    def preprocess_dataset(self, examples: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if self._settings is None:
            return super().preprocess_dataset(examples)

        self._batch_stats, self._batch_positions = [], []
        try:
            model_inputs = super().preprocess_dataset(examples)
            stats, positions = self._batch_stats, self._batch_positions
        finally:
            self._batch_stats = self._batch_positions = None

        n_rows = len(model_inputs["input_ids"])
        model_inputs[STATS_COLUMN] = self._stats_rows(stats, n_rows)
        model_inputs[POSITIONS_COLUMN] = self._position_rows(positions, model_inputs)
        return model_inputs

    def _stats_rows(self, stats: list[Counters], n_rows: int) -> list[list[int]]:
        """One counter row per output row; a row is one example here."""
        return [list(counts) for counts in stats]

    def _position_rows(self, positions: list[tuple[int, Sequence[int]]], model_inputs: dict) -> list[list[int]]:
        return [list(changed) for _, changed in positions]

    def print_data_example(self, example: dict[str, list[int]]) -> None:
        super().print_data_example(example)
        if self._settings is None or STATS_COLUMN not in example:
            return

        counts = Counters(*example[STATS_COLUMN])
        changed = list(example.get(POSITIONS_COLUMN) or [])
        if self._settings.mask_mode == "drop":
            what = f"{counts.tokens_changed} closing token(s) removed; their positions before removal: {changed}"
        else:
            what = f"{counts.tokens_changed} label(s) changed; untrained closing-token positions: {changed}"
        merged = f", {counts.merged_turns} merged with the template's text" if counts.merged_turns else ""
        print(
            f"rejection_align ({self._settings.mask_mode}): {counts.rejection_turns} rejection answer(s) here, "
            f"closing token(s) of {counts.closed_turns} untrained{merged} ({what})"
        )


@dataclass
class RejectionPackedSupervisedDatasetProcessor(RejectionSupervisedDatasetProcessor, PackedSupervisedDatasetProcessor):
    """Packing variant. The method order (ours, then the stock packed class, then the plain one) makes our
    ``preprocess_dataset`` wrap the stock packing, which encodes each example with our ``_encode_data_example``.
    """

    def _stats_rows(self, stats: list[Counters], n_rows: int) -> list[list[int]]:
        """Rows are packs of several examples here: the batch total goes on the first row, zeros on the others."""
        if n_rows == 0:
            return []

        total = Counters.total(stats)
        return [list(total)] + [list(NO_COUNTS) for _ in range(n_rows - 1)]

    def _position_rows(self, positions: list[tuple[int, Sequence[int]]], model_inputs: dict) -> list[list[int]]:
        """The changed positions in pack coordinates, found by replaying the stock packing order.

        Only the printed example uses them: a pack whose contents do not match the replay gets no positions.
        """
        n_rows = len(model_inputs["input_ids"])
        cutoff_len = self.data_args.cutoff_len
        valid = [(length, changed) for length, changed in positions if length <= cutoff_len]
        length2indexes: dict[int, list[int]] = {}
        for index, (length, _) in enumerate(valid):
            length2indexes.setdefault(length, []).append(index)

        rows = []
        for knapsack in lf_supervised.greedy_knapsack([length for length, _ in valid], cutoff_len):
            offset, row = 0, []
            for length in knapsack:
                index = length2indexes[length].pop()
                row += [offset + position for position in valid[index][1]]
                offset += length
            rows.append(row)

        return rows if len(rows) == n_rows else [[] for _ in range(n_rows)]


# LLaMA-Factory's choice -> ours; a subclass of a stock class (another plugin's) is not ours to replace
_OURS = {
    SupervisedDatasetProcessor: RejectionSupervisedDatasetProcessor,
    PackedSupervisedDatasetProcessor: RejectionPackedSupervisedDatasetProcessor,
}


def rejection_processor(chosen: Any) -> RejectionSupervisedDatasetProcessor:
    """Our counterpart of the supervised processor LLaMA-Factory's factory chose, built from the same fields."""
    ours = _OURS.get(type(chosen))
    if ours is None:
        raise ConfigError(
            f"rejection_mask_eos is set, but LLaMA-Factory chose {type(chosen).__module__}.{type(chosen).__name__} "
            "to tokenize this sft dataset, not its SupervisedDatasetProcessor or PackedSupervisedDatasetProcessor; "
            "another plugin replaced it, so the rejection-align processor cannot take its place"
        )

    return ours(
        template=chosen.template, tokenizer=chosen.tokenizer, processor=chosen.processor, data_args=chosen.data_args
    )
