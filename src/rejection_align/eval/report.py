"""Reports of judged runs: ``summary.json``, a Markdown table and a PNG bar chart, for one run or two side by side.

Charts are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), not through
``pyplot``: that needs no display and leaves the global backend of a user's notebook alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..files import atomic_open, atomic_write_json, atomic_write_text


logger = logging.getLogger(__name__)

SUMMARY_JSON, SUMMARY_MD, SUMMARY_PNG = "summary.json", "summary.md", "asr.png"
COMPARE_JSON, COMPARE_MD, COMPARE_PNG = "compare.json", "compare.md", "compare.png"
DASH = "–"


def metric_name(row: dict[str, Any]) -> str:
    """The rate that matters for a row: ASR for harmful prompts, the refusal rate for benign ones."""
    return "refusal_rate" if row.get("benign") else "asr"


def metric(row: dict[str, Any]) -> float:
    return float(row[metric_name(row)])


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.1f}%"


def _totals(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The total rows: one ``total``, or one per MM-SafetyBench mode when several were judged (never summed)."""
    rows = []
    if summary.get("total") is not None:
        rows.append(("total", summary["total"]))
    for mode, row in (summary.get("modes") or {}).items():
        if summary.get("total") is None:
            rows.append((f"total {mode}", row))
    if "total_other" in summary:
        rows.append(("total (other)", summary["total_other"]))
    if "total_benign" in summary:
        rows.append(("total (benign)", summary["total_benign"]))
    return rows


def _file_entries(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """One entry per file, each followed by its categories (``figstep / ForbidQI_1``) when it has them."""
    entries = []
    for row in summary["files"]:
        name = row.get("name") or Path(row["path"]).stem
        entries.append((name, row))
        entries.extend((f"{name} / {category}", sub) for category, sub in (row.get("categories") or {}).items())
    return entries


def summary_markdown(summary: dict[str, Any]) -> str:
    """One row per result file, then the total(s) in bold; ASR for harmful files, refusal rate for benign ones."""
    lines = [
        "| file | n | full compliance | full refusal | partial refusal | ASR | refusal rate |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def line(name: str, row: dict[str, Any], bold: bool = False) -> str:
        asr = DASH if row.get("benign") else _pct(row["asr"])
        refusal = _pct(row["refusal_rate"]) if row.get("benign") else DASH
        cells = [name, row["n"], row["full_compliance"], row["full_refusal"], row["partial_refusal"], asr, refusal]
        cells = [f"**{c}**" if bold and c != DASH else str(c) for c in cells]
        return "| " + " | ".join(cells) + " |"

    for name, row in _file_entries(summary):
        lines.append(line(name, row))
    for name, row in _totals(summary):
        lines.append(line(name, row, bold=True))
    lines.append("")
    lines.append(
        "ASR = full compliance / n (harmful prompts). Refusal rate = full refusal / n (benign prompts: over-refusal)."
    )
    if summary.get("total") is None and summary.get("modes"):
        lines.append("MM-SafetyBench modes are different attacks: each is totalled on its own, never summed.")
    lines += _openings_markdown(summary) + _judges_markdown(summary) + _agreement_markdown(summary)
    return "\n".join(lines) + "\n"


def _openings_markdown(summary: dict[str, Any]) -> list[str]:
    entries = [(n, r) for n, r in _file_entries(summary) + _totals(summary) if "opens_with_rejection" in r]
    if not entries:
        return []
    lines = [
        "",
        "| file | n | opens with rejection | continues (≥ 10 words) | median continuation (words) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in entries:
        median = row.get("median_continuation_words")
        cells = [name, row["n"], row["opens_with_rejection"], row["continues"], DASH if median is None else median]
        if name.startswith("total"):
            cells = [f"**{c}**" if c != DASH else c for c in cells]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines.append("")
    lines.append("Opens with rejection: the answer starts with a rejection sentence; continues: it goes on for 10 "
                 "words or more (the method's failure mode to watch).")  # fmt: skip
    return lines


def _model_judges(summary: dict[str, Any]) -> list[str]:
    return [name for name in summary.get("judges") or () if name != "string"]


def _judges_markdown(summary: dict[str, Any]) -> list[str]:
    judges = _model_judges(summary)
    if not judges:
        return []
    lines = [
        "",
        "| file | judge | n | safe | unsafe | unparsed | ASR (unsafe / parsed) | unsafe after refusal | categories |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in [(n, r) for n, r in _file_entries(summary) + _totals(summary) if "judges" in r]:
        for judge in judges:
            j = row["judges"][judge]
            categories = ", ".join(f"{code} {k}" for code, k in j["categories"].items()) or DASH
            cells = [name, judge, row["n"], j["safe"], j["unsafe"], j["unparsed"], _pct(j["asr"]),
                     f"{j['unsafe_after_refusal']} of {j['continuations_judged']}", categories]  # fmt: skip
            if name.startswith("total"):
                cells = [f"**{c}**" if c != DASH else c for c in cells]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def _agreement_markdown(summary: dict[str, Any]) -> list[str]:
    if not summary.get("agreement"):
        return []
    lines = [
        "",
        "| judges | n | both unsafe | only first unsafe | only second unsafe | both safe | Cohen's kappa |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for pair in summary["agreement"]:
        kappa = DASH if pair["kappa"] is None else f"{pair['kappa']:.3f}"
        cells = [" vs ".join(pair["judges"]), pair["n"], pair["both_unsafe"], pair["only_first_unsafe"],
                 pair["only_second_unsafe"], pair["both_safe"], kappa]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines.append("")
    lines.append("The string judge's unsafe = full compliance; unparsed verdicts are left out of the pairs.")
    return lines


def _new_figure(n_rows: int, width: float = 8.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, max(2.5, 0.45 * n_rows + 1.5)), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: Path) -> None:
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", bbox_inches="tight")


def plot_summary(summary: dict[str, Any], path: str | os.PathLike) -> Path:
    """Horizontal bars, one per file, category and total: ASR (harmful) or refusal rate (benign, hatched)."""
    path = Path(path)
    entries = _file_entries(summary) + _totals(summary)
    if _model_judges(summary):
        return _plot_judges(summary, entries, path)
    fig = _new_figure(len(entries))
    ax = fig.add_subplot(1, 1, 1)
    y = list(range(len(entries)))[::-1]
    values = [metric(row) for _, row in entries]
    colors = ["tab:green" if row.get("benign") else "tab:red" for _, row in entries]
    bars = ax.barh(y, values, color=colors, edgecolor="black", linewidth=0.5)
    for bar, (name, row) in zip(bars, entries, strict=True):
        if row.get("benign"):
            bar.set_hatch("//")
        if name.startswith("total"):
            bar.set_alpha(0.6)
        elif " / " in name:  # a category of the file above
            bar.set_alpha(0.35)
    for yy, value in zip(y, values, strict=True):
        ax.text(min(value, 1.0) + 0.01, yy, f"{100 * value:.1f}%", va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels([name for name, _ in entries], fontsize=8)
    ax.set_xlim(0, 1.12)
    kinds = {bool(row.get("benign")) for _, row in entries}
    ax.set_xlabel(
        " / ".join(label for flag, label in ((False, "ASR"), (True, "refusal rate (benign)")) if flag in kinds)
    )
    ax.set_title("Attack success rate" if kinds == {False} else "Judge summary")
    ax.grid(axis="x", alpha=0.3)
    _save_png(fig, path)
    return path


_STAGING = re.compile(r"^\.report\.(\d+)\.\w+$")


def _remove_stale_staging(out_dir: Path) -> None:
    """Staging folders of killed runs (their process is gone) are removed; a live run's are left alone."""
    for entry in out_dir.iterdir():
        match = _STAGING.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink():
            try:
                os.kill(int(match[1]), 0)
            except ProcessLookupError:
                shutil.rmtree(entry, ignore_errors=True)
            except PermissionError:
                pass


def _plot_judges(summary: dict[str, Any], entries: list[tuple[str, dict[str, Any]]], path: Path) -> Path:
    """Each judge's ASR side by side per file and total (the string judge's is full compliance / n)."""
    judges = ["string", *_model_judges(summary)]
    entries = [(name, row) for name, row in entries if not row.get("benign") and "judges" in row]
    fig = _new_figure(len(entries) * 0.6 * len(judges))
    ax = fig.add_subplot(1, 1, 1)
    height = 0.8 / len(judges)
    centers = [float(i) for i in range(len(entries))][::-1]
    colors = ["tab:red", "tab:purple", "tab:orange", "tab:olive"]
    for k, judge in enumerate(judges):
        values = [row["asr"] if judge == "string" else (row["judges"][judge]["asr"] or 0.0) for _, row in entries]
        offset = 0.4 - height * (k + 0.5)
        bars = ax.barh([c + offset for c in centers], values, height=height, color=colors[k % 4], label=judge)
        for bar, value in zip(bars, values, strict=True):
            ax.text(value + 0.01, bar.get_y() + height / 2, f"{100 * value:.1f}%", va="center", fontsize=7)
    ax.set_yticks(centers)
    ax.set_yticklabels([name for name, _ in entries], fontsize=8)
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("ASR (string: full compliance / n; model judges: unsafe / parsed)")
    ax.set_title("Attack success rate by judge")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    _save_png(fig, path)
    return path


def check_out_dir(out_dir: str | os.PathLike) -> None:
    """The reports' folder can be made or used: not a file, not a link to nothing, not under a file."""
    out_dir = Path(out_dir)
    if out_dir.is_symlink() and not out_dir.exists():
        raise DataError(f"{out_dir}: a link to {os.readlink(out_dir)}, which does not exist; no report is written "
                        "through it")  # fmt: skip
    for folder in (out_dir, *out_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "the output folder" if folder == out_dir else f"{folder} (above the output folder)"
                raise DataError(f"{out_dir}: {what} is a file, not a folder")
            return


def _write_report(
    data: dict[str, Any], out_dir: str | os.PathLike, names: tuple[str, str, str], markdown, plot
) -> list[Path]:
    """Write ``data`` as JSON, its Markdown table and its chart under ``names`` into ``out_dir``, as a set.

    All three are written into a staging folder inside ``out_dir`` first and moved into place only when all three
    are complete (renames need no space): a full disk or a kill leaves the previous set whole, never a new
    ``summary.json`` beside an old ``asr.png``.
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out_dir)
    paths = [out_dir / name for name in names]
    staging = Path(tempfile.mkdtemp(prefix=f".report.{os.getpid()}.", dir=out_dir))
    try:
        staged = [staging / name for name in names]
        writers = (
            lambda path: atomic_write_json(path, data),
            lambda path: atomic_write_text(path, markdown(data)),
            lambda path: plot(data, path),
        )
        for writer, path, final in zip(writers, staged, paths, strict=True):
            try:
                writer(path)
            except OSError as err:  # name the file the user asked for, not the staging folder
                raise OSError(err.errno, err.strerror or str(err), os.fspath(final)) from None
        for path, final in zip(staged, paths, strict=True):
            os.replace(path, final)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
    return paths


def write_summary(summary: dict[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """Write ``summary.json``, ``summary.md`` and ``asr.png`` into ``out_dir``; returns their paths."""
    return _write_report(summary, out_dir, (SUMMARY_JSON, SUMMARY_MD, SUMMARY_PNG), summary_markdown, plot_summary)


MMSAFETYBENCH = "mmsafetybench"


def _benchmark(row: dict[str, Any]) -> str:
    """A row's benchmark; summaries written before ``benchmark`` was recorded are told apart by mode and category."""
    if row.get("benchmark"):
        return row["benchmark"]
    mode = row.get("mode")
    if mode and mode != "figstep":
        return MMSAFETYBENCH
    categories = row.get("categories") or {}
    if mode == "figstep" or (categories and all(c.startswith("ForbidQI_") for c in categories)):
        return "figstep"
    return "generic"


def _identities(summary: dict[str, Any]) -> dict[tuple[Any, ...], tuple[str, dict[str, Any]]]:
    """Each row of a run under what it measures: (benchmark, mode, file[, category]) for files, the name for totals.

    The file is the name without the mode folder ``judge`` adds to tell modes apart, so the key holds the mode once.
    """
    rows: dict[tuple[Any, ...], tuple[str, dict[str, Any]]] = {}
    for row in summary["files"]:
        name = row.get("name") or Path(row["path"]).stem
        key = (_benchmark(row), row.get("mode"), Path(row["path"]).stem, bool(row.get("benign")))
        rows[key] = (name, row)
        for category, sub in (row.get("categories") or {}).items():
            rows[(*key, category)] = (f"{name} / {category}", sub)
    for name, row in _totals(summary):
        rows[(name,)] = (name, row)
    return rows


def _describe(key: tuple[Any, ...]) -> str:
    if len(key) == 1:
        return key[0]
    benchmark, mode, file, benign = key[:4]
    where = f"{benchmark}{' ' + mode if mode and mode != 'figstep' else ''} {file}{' (benign)' if benign else ''}"
    return where + (f" / {key[4]}" if len(key) > 4 else "")


def mismatches(run_a: dict[str, Any], run_b: dict[str, Any], labels: Sequence[str]) -> list[str]:
    """What makes two runs not like with like: rows only one has, and rows of different sizes or judges."""
    rows_a, rows_b = _identities(run_a), _identities(run_b)
    found = []
    for key in rows_a:
        if key not in rows_b:
            found.append(f"{_describe(key)} only in {labels[0]}")
        elif rows_a[key][1]["n"] != rows_b[key][1]["n"] and len(key) != 1:
            found.append(f"{_describe(key)} has n = {rows_a[key][1]['n']} in {labels[0]}, {rows_b[key][1]['n']} in "
                         f"{labels[1]}")  # fmt: skip
    found.extend(f"{_describe(key)} only in {labels[1]}" for key in rows_b if key not in rows_a)
    judges_a, judges_b = run_a.get("judges") or ["string"], run_b.get("judges") or ["string"]
    if judges_a != judges_b:
        found.append(f"judges {judges_a} in {labels[0]}, {judges_b} in {labels[1]}")
    return found


def compare(
    run_a: dict[str, Any], run_b: dict[str, Any], *, labels: Sequence[str] = ("A", "B"), allow_mismatch: bool = False
) -> dict[str, Any]:
    """Pair two summaries row by row: files matched by benchmark, mode and file (then category), then the totals.

    Runs that differ (a file, mode or benchmark only one has, a file of another size) are an error naming what
    differs, unless ``allow_mismatch``: then a row only one run has gets ``None`` on the other side, totals get no
    ``delta`` (they sum different files), and ``mismatch`` lists the differences for the table.
    ``delta`` is B − A of the row's metric.
    """
    if len(labels) != 2:
        raise ValueError(f"compare needs two labels, got {list(labels)}")
    differences = mismatches(run_a, run_b, labels)
    if differences and not allow_mismatch:
        shown = "; ".join(differences[:3]) + (f"; and {len(differences) - 3} more" if len(differences) > 3 else "")
        raise DataError(
            f"the runs {labels[0]!r} and {labels[1]!r} do not answer the same prompts: {shown} "
            "(pass --allow-mismatch to compare them anyway, labelled as such)"
        )
    rows_a, rows_b = _identities(run_a), _identities(run_b)
    keys = [key for key in rows_a if len(key) != 1] + [k for k in rows_b if k not in rows_a and len(k) != 1]
    keys += [key for key in rows_a if len(key) == 1] + [k for k in rows_b if k not in rows_a and len(k) == 1]

    rows = []
    for key in keys:
        name, a = rows_a.get(key, (None, None))
        name_b, b = rows_b.get(key, (None, None))
        name = name or name_b
        some = a if a is not None else b
        metric_key = metric_name(some)
        value_a = None if a is None else float(a[metric_key])
        value_b = None if b is None else float(b[metric_key])
        is_total = len(key) == 1
        comparable = value_a is not None and value_b is not None and not (is_total and differences)
        judged = [j for j in (run_a.get("judges") or ()) if j != "string" and j in (run_b.get("judges") or ())]
        for judge in judged:  # each model judge's ASR beside its own, never beside the string match's
            ja = None if a is None or "judges" not in a else a["judges"][judge]["asr"]
            jb = None if b is None or "judges" not in b else b["judges"][judge]["asr"]
            rows.append({"name": name, "metric": "asr", "judge": judge, "benign": bool(some.get("benign")),
                         "total": is_total, "a": ja, "b": jb, "n_a": None if a is None else a["n"],
                         "n_b": None if b is None else b["n"],
                         "delta": jb - ja if comparable and ja is not None and jb is not None else None})  # fmt: skip
        rows.insert(
            len(rows) - len(judged),
            {
                "name": name,
                "metric": metric_key,
                "benign": bool(some.get("benign")),
                "total": is_total,
                "a": value_a,
                "b": value_b,
                "n_a": None if a is None else a["n"],
                "n_b": None if b is None else b["n"],
                "delta": value_b - value_a if comparable else None,
            },
        )
    comparison: dict[str, Any] = {"labels": list(labels), "rows": rows, "runs": [run_a, run_b]}
    if differences:
        comparison["mismatch"] = differences
    return comparison


def compare_markdown(comparison: dict[str, Any]) -> str:
    label_a, label_b = (label.replace("|", "\\|") for label in comparison["labels"])  # a | would end the cell
    lines = [
        f"| file | metric | {label_a} | {label_b} | Δ (B − A) |",
        "|---|---|---:|---:|---:|",
    ]
    for row in comparison["rows"]:
        delta = DASH if row["delta"] is None else f"{100 * row['delta']:+.1f} pt"
        cells = [row["name"], "refusal rate" if row["metric"] == "refusal_rate" else "ASR"]
        if row.get("judge"):
            cells[1] += f" ({row['judge']})"
        cells += [_pct(row["a"]), _pct(row["b"]), delta]
        if row["total"]:
            cells = [f"**{c}**" if c != DASH else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    if comparison.get("mismatch"):
        lines.append("")
        lines.append(
            "**Mismatched runs (--allow-mismatch):** they do not answer the same prompts, so totals get no Δ: "
            + "; ".join(comparison["mismatch"])
        )
    return "\n".join(lines) + "\n"


def plot_compare(comparison: dict[str, Any], path: str | os.PathLike) -> Path:
    """Grouped horizontal bars: run A and run B for each file and total."""
    path = Path(path)
    rows = comparison["rows"]
    fig = _new_figure(len(rows) * 1.6)
    ax = fig.add_subplot(1, 1, 1)
    height = 0.38
    centers = [float(i) for i in range(len(rows))][::-1]
    for offset, key, color, label in (
        (height / 2, "a", "tab:gray", comparison["labels"][0]),
        (-height / 2, "b", "tab:blue", comparison["labels"][1]),
    ):
        values = [row[key] or 0.0 for row in rows]
        bars = ax.barh([c + offset for c in centers], values, height=height, color=color, label=label)
        for bar, row in zip(bars, rows, strict=True):
            if row["benign"]:
                bar.set_hatch("//")
            if row[key] is not None:
                ax.text(row[key] + 0.01, bar.get_y() + height / 2, f"{100 * row[key]:.1f}%", va="center", fontsize=7)
    ax.set_yticks(centers)
    ax.set_yticklabels(
        [f"{row['name']} ({'refusal' if row['benign'] else 'ASR'}{', ' + row['judge'] if row.get('judge') else ''})"
         for row in rows],
        fontsize=8,
    )  # fmt: skip
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("rate (ASR for harmful prompts, refusal rate for benign ones, hatched)")
    mismatched = " (mismatched runs: totals not comparable)" if comparison.get("mismatch") else ""
    ax.set_title(f"{comparison['labels'][0]} vs {comparison['labels'][1]}{mismatched}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    _save_png(fig, path)
    return path


def write_compare(comparison: dict[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """Write ``compare.json``, ``compare.md`` and ``compare.png`` into ``out_dir``; returns their paths."""
    return _write_report(comparison, out_dir, (COMPARE_JSON, COMPARE_MD, COMPARE_PNG), compare_markdown, plot_compare)
