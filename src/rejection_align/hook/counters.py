"""The per-example counters the processor adds as a column, and the one log line the loader patch makes of them.

The processor cannot log: it runs in ``datasets``' worker processes, batch by batch. So each output row carries its
counters in :data:`STATS_COLUMN` (and the positions it changed, for the printed example, in
:data:`POSITIONS_COLUMN`); the loader patch sums them after ``map`` and drops both columns before anything else
sees the dataset.
"""

from collections.abc import Iterable, Sequence
from typing import NamedTuple


STATS_COLUMN = "_rejection_align_stats"
POSITIONS_COLUMN = "_rejection_align_positions"
OUR_COLUMNS = (STATS_COLUMN, POSITIONS_COLUMN)


class Counters(NamedTuple):
    """What the method did to one example (or, summed, to a dataset). Stored in the column as a plain int list."""

    examples: int = 0
    rejection_examples: int = 0  # examples with at least one rejection answer
    turns: int = 0
    rejection_turns: int = 0
    closed_turns: int = 0  # rejection turns whose closing token(s) were untrained
    truncated_turns: int = 0  # rejection turns cut by cutoff_len: no closing token left to untrain
    tokens_changed: int = 0
    merged_turns: int = 0  # closing text merged with the answer's last characters into one token

    @classmethod
    def total(cls, rows: Iterable[Sequence[int]]) -> "Counters":
        """Field-by-field sum of counter rows (all zeros for none)."""
        return cls(*map(sum, zip(*rows)))


STATS_FIELDS = Counters._fields
NO_COUNTS = Counters()


def summary(totals: Counters, mask_mode: str) -> str:
    """The log line of a tokenized split (without its ``[split: names]`` prefix)."""
    action = "dropped" if mask_mode == "drop" else "masked"
    return (
        f"{totals.rejection_examples} of {totals.examples} examples have a rejection answer ({totals.rejection_turns} "
        f"of {totals.turns} turns); closing token(s) {action} in {totals.closed_turns} turns ({totals.tokens_changed} "
        f"tokens), {totals.truncated_turns} truncated by cutoff_len left untouched, {totals.merged_turns} whose "
        "answer merged with the template's closing text (only purely closing tokens untrained)"
    )
