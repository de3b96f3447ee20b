"""Progress bars for the data commands: a full mix, convert or stats of the 665k-record LLaVA mix takes seconds.

tqdm on stderr, only for inputs of at least :data:`MIN_RECORDS` records (tqdm is not even imported for smaller ones)
and only when stderr is a terminal (tqdm's ``disable=None``), so logs, pipes and tests stay clean. The bars start no
monitor thread: a thread left behind would keep later mixes in the same process from forking their helpers.
"""

from __future__ import annotations

from typing import Any


MIN_RECORDS = 50_000


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass


def records_bar(total: int, desc: str) -> Any:
    """A context manager whose ``update(n)`` counts records done."""
    if total < MIN_RECORDS:
        return _NoBar()
    from tqdm import tqdm

    class Bar(tqdm):
        monitor_interval = 0

    return Bar(total=total, desc=desc, unit="rec", unit_scale=True, disable=None, mininterval=0.5, leave=False)
