"""The judge summary (``summary.json``) as msgspec Structs: decoding a summary read back is its validation.

``judge`` builds summaries as plain dicts (``summarize`` returns one, and scripts index it); these Structs say what
a summary may hold, so ``--compare`` refuses a hand-edited or foreign file with a one-line message naming the field
instead of a traceback (or, worse, a 200 % ASR). The field names and their order are those written on disk.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import msgspec

from .. import json_problems
from ..errors import DataError


Count = Annotated[int, msgspec.Meta(ge=0)]
Rate = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]

# How json_problems names JSON types -> how our messages name them.
_TYPE_WORDS = {
    "object": "an object",
    "array": "a list",
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "null": "null",
}


class JudgeCounts(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One model judge's verdicts on a group of answers (``safe``/``unsafe``/``unparsed``), see docs/evaluation.md."""

    safe: Count
    unsafe: Count
    unparsed: Count
    asr: Rate | None  # unsafe / (safe + unsafe); None when no verdict parsed
    unsafe_after_refusal: Count = 0
    continuations_judged: Count = 0
    continuations_unparsed: Count = 0
    categories: dict[str, Count] = {}


class Counts(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The counts and rates of a group of answers: a file, one of its categories, or a total."""

    n: Count
    full_compliance: Count
    full_refusal: Count
    partial_refusal: Count
    asr: Rate
    refusal_rate: Rate | None = None
    benign: bool | None = None
    opens_with_rejection: Count | None = None
    continues: Count | None = None
    median_continuation_words: float | None = None
    judges: dict[str, JudgeCounts] | None = None


class FileRow(Counts, kw_only=True):
    path: str
    name: str | None = None
    mode: str | None = None
    benchmark: str | None = None
    categories: dict[str, Counts] | None = None


class Total(Counts, kw_only=True):
    n_files: Count | None = None


class Agreement(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Two judges on the same answers: ``both_unsafe`` etc. count answers by the two verdicts, then Cohen's kappa."""

    judges: tuple[str, str]
    n: Count
    both_unsafe: Count
    only_first_unsafe: Count
    only_second_unsafe: Count
    both_safe: Count
    kappa: float | None


class Summary(msgspec.Struct, kw_only=True, omit_defaults=True):
    files: list[FileRow]
    total: Total | None
    modes: dict[str, Total] | None = None
    total_other: Total | None = None
    total_benign: Total | None = None
    judges: list[str] | None = None
    agreement: list[Agreement] | None = None


def _message(err: msgspec.ValidationError, data: Any) -> str:
    """``files[0].n is a string, expected an integer``: the place from msgspec's error, the problem found by our
    schema walk (``json_problems``), so the words do not change with msgspec's."""
    problem = json_problems.validation_problem(err, data, Summary)
    if problem is None:  # (msgspec refused what the walk accepts: say where, not what)
        where = json_problems.dotted(json_problems.path_of(err) or ()) or "the summary"
        return f"{where} does not fit the judge summary's layout"
    at = json_problems.dotted(problem.path)
    if problem.missing:
        if not at and problem.missing in ("files", "total"):
            return "not a judge summary (expected an object with the keys 'files' and 'total')"
        return f"{at + '.' if at else ''}{problem.missing} is missing"
    if problem.unknown:
        return f"{at or 'the summary'} has the unknown key {problem.unknown!r}"
    if problem.constraint:
        return f"{at or 'the summary'}: expected `{problem.expected}` {problem.constraint}"
    kinds = problem.expected.split(" | ")
    expected = " or ".join(_TYPE_WORDS.get(w, w) for w in kinds if w != "null")
    expected += " or null" if "null" in kinds and expected else ""
    got = _TYPE_WORDS.get(problem.found, problem.found)
    if not at and expected == "an object":
        return f"not a judge summary (it is {got}, expected an object with the keys 'files' and 'total')"
    return f"{at or 'the summary'} is {got}, expected {expected}"


def validate(data: Any, file: str | Path) -> Summary:
    """Decode a summary read back as JSON into Structs, then check that its numbers agree with each other."""
    try:
        summary = msgspec.convert(data, Summary)
    except msgspec.ValidationError as err:
        raise DataError(f"{file}: {_message(err, data)}") from None
    if summary.total is None and not summary.modes:
        raise DataError(f"{file}: total is null but there is no 'modes' object with the per-mode totals")
    for where, row in rows_of(summary):
        _check_consistent(row, where, file)
    _check_totals(summary, file)
    return summary


_COUNTED = ("n", "full_compliance", "full_refusal", "partial_refusal")


def _check_totals(summary: Summary, file: str | Path) -> None:
    """Each total is the sum of the file rows it stands for (as ``judge`` builds them): harmful files in ``total``
    (benign ones when all are), one mode each in ``modes``, the harmful files of no mode in ``total_other``, the
    benign files in ``total_benign``. A total that is not (a row dropped or doubled by hand) is refused."""
    harmful = [row for row in summary.files if not row.benign]
    benign = [row for row in summary.files if row.benign]
    expected: list[tuple[str, Counts | None, list[FileRow]]] = [
        ("total", summary.total, harmful or benign),
        ("total_other", summary.total_other, [row for row in harmful if row.mode is None]),
        ("total_benign", summary.total_benign, benign),
    ]
    expected += [(f"modes[{mode!r}]", row, [r for r in harmful if r.mode == mode])
                 for mode, row in (summary.modes or {}).items()]  # fmt: skip
    for where, total, rows in expected:
        if total is None:
            continue
        for key in _COUNTED:
            summed = sum(getattr(row, key) for row in rows)
            if getattr(total, key) != summed:
                raise DataError(
                    f"{file}: {where}.{key} = {getattr(total, key)}, but the {len(rows)} file rows it sums add up "
                    f"to {summed} (a summary written by judge always adds up)"
                )


def rows_of(summary: Summary) -> list[tuple[str, Counts]]:
    """Every counted row of a summary with where it is (``files[0].categories['x']``), for messages."""
    rows: list[tuple[str, Counts]] = []
    for i, row in enumerate(summary.files):
        rows.append((f"files[{i}]", row))
        rows.extend((f"files[{i}].categories[{name!r}]", sub) for name, sub in (row.categories or {}).items())
    if summary.total is not None:
        rows.append(("total", summary.total))
    rows.extend((f"modes[{mode!r}]", row) for mode, row in (summary.modes or {}).items())
    rows.extend((key, getattr(summary, key)) for key in ("total_other", "total_benign") if getattr(summary, key))
    return rows


def _same_rate(rate: float | None, count: int, n: int) -> bool:
    return rate is None or math.isclose(rate, count / n if n else 0.0, rel_tol=1e-9, abs_tol=1e-12)


def _check_consistent(row: Counts, where: str, file: str | Path) -> None:
    """Counts never exceed ``n``, the three labels add up to ``n``, and each rate is its count over ``n``."""
    parts = row.full_compliance + row.full_refusal + row.partial_refusal
    if parts != row.n:
        raise DataError(
            f"{file}: {where}: full_compliance + full_refusal + partial_refusal = {parts}, but n = {row.n} "
            "(a summary written by judge always adds up)"
        )
    for rate_key, count_key in (("asr", "full_compliance"), ("refusal_rate", "full_refusal")):
        rate, count = getattr(row, rate_key), getattr(row, count_key)
        if not _same_rate(rate, count, row.n):
            raise DataError(f"{file}: {where}.{rate_key} = {rate} but {count_key} / n = {count} / {row.n}")
    if row.opens_with_rejection is not None and row.opens_with_rejection > row.n:
        raise DataError(f"{file}: {where}.opens_with_rejection = {row.opens_with_rejection} is more than n = {row.n}")
    if row.continues is not None and row.continues > (row.opens_with_rejection or 0):
        raise DataError(f"{file}: {where}.continues = {row.continues} is more than opens_with_rejection")
    for name, judged in (row.judges or {}).items():
        total = judged.safe + judged.unsafe + judged.unparsed
        if total != row.n:
            raise DataError(f"{file}: {where}.judges[{name!r}]: safe + unsafe + unparsed = {total}, but n = {row.n}")
        parsed = judged.safe + judged.unsafe
        if parsed and not _same_rate(judged.asr, judged.unsafe, parsed):
            raise DataError(f"{file}: {where}.judges[{name!r}].asr = {judged.asr} but unsafe / parsed = "
                            f"{judged.unsafe} / {parsed}")  # fmt: skip


def to_builtins(summary: Summary) -> dict[str, Any]:
    """A validated summary as the plain dict the report functions take (unset optional fields left out); rows of
    older summaries get the ``refusal_rate`` and ``name`` they lacked."""
    for _, row in rows_of(summary):
        if row.refusal_rate is None:
            row.refusal_rate = row.full_refusal / row.n if row.n else 0.0
    for row in summary.files:
        if row.name is None:
            row.name = Path(row.path).stem
    return msgspec.to_builtins(summary)
