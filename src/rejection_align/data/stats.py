"""Count records, turns, images, rejection answers and duplicated ids of a LLaVA-format or sharegpt file.

A rejection answer is a gpt turn whose value, stripped of surrounding white space, equals one of --sentences
(default: the default rejection sentence). The file is validated as it is read; a bad record is an error.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..options import add_arguments as add_option_arguments
from ..options import from_args, option
from .progress import records_bar
from .reading import LlavaFile, gc_paused
from .records import DEFAULT_REJECTION_SENTENCE, image_count


@dataclass
class FileStats:
    file: str
    records: int = 0
    turns: int = 0
    pairs_min: int = 0
    pairs_max: int = 0
    pairs_mean: float = 0.0
    records_with_image: int = 0
    records_without_image: int = 0
    images: int = 0
    int_ids: int = 0
    str_ids: int = 0
    rejection_answers: int = 0
    records_with_rejection: int = 0
    records_with_rejection_first: int = 0
    rejection_by_sentence: dict[str, int] = field(default_factory=dict)
    duplicated_ids: int = 0
    duplicate_records: int = 0
    duplicated_id_examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_stats(
    path: str | os.PathLike, sentences: list[str] | tuple[str, ...] = (DEFAULT_REJECTION_SENTENCE,)
) -> FileStats:
    """One pass over the file, every record validated (memory: the file's bytes and the ids)."""
    stats = FileStats(file=os.fspath(path), rejection_by_sentence=dict.fromkeys(sentences, 0))
    wanted = {sentence.strip(): sentence for sentence in sentences}
    by_sentence = stats.rejection_by_sentence
    pair_counts: Counter[int] = Counter()

    source = LlavaFile.read(path)
    ids: list[str] = []
    with gc_paused(), records_bar(len(source), "stats") as bar:
        for index in range(len(source)):
            if not index & 4095:
                bar.update(min(4096, len(source) - index))
            record = source.record(index)  # validated
            conversations = record.conversations
            stats.turns += len(conversations)
            pair_counts[len(conversations) // 2] += 1
            n_images = image_count(record.image)
            if n_images:
                stats.records_with_image += 1
                stats.images += n_images
            if type(record.id) is int:
                stats.int_ids += 1
            ids.append(str(record.id))
            found = 0
            for turn_index in range(1, len(conversations), 2):  # the gpt turns (validation checked the alternation)
                sentence = wanted.get(conversations[turn_index].value.strip())
                if sentence is not None:
                    by_sentence[sentence] += 1
                    found += 1
                    if turn_index == 1:
                        stats.records_with_rejection_first += 1
            if found:
                stats.rejection_answers += found
                stats.records_with_rejection += 1

    stats.records = len(source)
    stats.records_without_image = stats.records - stats.records_with_image
    stats.str_ids = stats.records - stats.int_ids
    if pair_counts:
        stats.pairs_min, stats.pairs_max = min(pair_counts), max(pair_counts)
        stats.pairs_mean = round(sum(k * v for k, v in pair_counts.items()) / stats.records, 4)
    id_counts = Counter(ids)
    duplicated = [rid for rid, count in id_counts.items() if count > 1]  # first-occurrence order: deterministic
    stats.duplicated_ids = len(duplicated)
    stats.duplicate_records = sum(id_counts[rid] - 1 for rid in duplicated)
    stats.duplicated_id_examples = duplicated[:5]
    return stats


def format_stats(stats: FileStats) -> str:
    """The human-readable report."""

    def pct(part: int) -> str:
        return f"{100.0 * part / stats.records:.2f} %" if stats.records else "-"

    lines = [
        f"file:                 {stats.file}",
        f"records:              {stats.records}",
        f"turns:                {stats.turns} (human/gpt pairs per record: min {stats.pairs_min}, "
        f"mean {stats.pairs_mean}, max {stats.pairs_max})",
        f"images:               {stats.images} in {stats.records_with_image} records; "
        f"{stats.records_without_image} records without image ({pct(stats.records_without_image)})",
        f"ids:                  {stats.str_ids} strings, {stats.int_ids} integers",
        f"duplicated ids:       {stats.duplicated_ids} ids on {stats.duplicated_ids + stats.duplicate_records} records"
        + (f" (e.g. {', '.join(map(repr, stats.duplicated_id_examples))})" if stats.duplicated_ids else ""),
        f"rejection answers:    {stats.rejection_answers} in {stats.records_with_rejection} records "
        f"({pct(stats.records_with_rejection)}; first answer: {stats.records_with_rejection_first})",
    ]
    lines += [f"  {count:>8}  {sentence!r}" for sentence, count in stats.rejection_by_sentence.items()]
    return "\n".join(lines)


@dataclass(frozen=True, kw_only=True)
class StatsOptions:
    """The options of ``rejection-align stats``, declared once (:mod:`rejection_align.options`)."""

    file: Path = field(metadata=option("file", type=Path, metavar="FILE", help="LLaVA-format or sharegpt JSON array"))
    sentences: tuple[str, ...] = field(
        default=(DEFAULT_REJECTION_SENTENCE,),
        metadata=option(
            nargs="+",
            metavar="TEXT",
            help=f"rejection sentences to count (default: {DEFAULT_REJECTION_SENTENCE!r})",
        ),
    )
    json: bool = field(default=False, metadata=option(help="print the figures as one JSON object"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_option_arguments(parser, StatsOptions)


def run(args: argparse.Namespace) -> int:
    options = from_args(StatsOptions, args)
    stats = file_stats(options.file, options.sentences)
    print(json.dumps(stats.to_dict(), ensure_ascii=False, indent=2) if options.json else format_stats(stats))
    return 0
