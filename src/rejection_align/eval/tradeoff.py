"""Report the safety/utility trade-off of several runs: tradeoff.json, tradeoff.md and tradeoff.png.

Each ``--run LABEL DIR [DIR ...]`` is one model (base, method, baseline twin, ...); each DIR is a ``judge --out``
folder (its ``summary.json``: safety) or an lmms-eval ``--output_path`` folder (its ``*_results.json``, found at
any depth: utility). One row per run: ASR per MM-SafetyBench mode or benchmark, the refusal rate on benign sets,
each utility metric. The plot puts one point per run: the ASR over all harmful answers against the mean of the
main metrics (each task's first in lmms-eval's ``higher_is_better``) of the tasks every run has. Runs that answered
a different number of prompts for the same column are refused: their numbers would not compare.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..files import atomic_open, atomic_write_json, atomic_write_text
from .benchmarks import parse_json, read_text
from .judge import SUMMARY_NAME
from .summary import validate as validate_summary


logger = logging.getLogger(__name__)

TRADEOFF_JSON, TRADEOFF_MD, TRADEOFF_PNG = "tradeoff.json", "tradeoff.md", "tradeoff.png"
RESULTS_SUFFIX = "_results.json"
DASH = "–"


@dataclass
class SafetyCell:
    """One safety number of a run: ``asr`` (harmful prompts) or ``refusal_rate`` (benign), over ``n`` answers."""

    metric: str
    value: float
    n: int


@dataclass
class UtilityCell:
    """One lmms-eval metric of a run (``task``, ``metric`` with its filter dropped when it is ``none``)."""

    task: str
    metric: str
    value: float
    n: int | None
    primary: bool


@dataclass
class Run:
    label: str
    safety_dirs: list[str] = field(default_factory=list)
    utility_files: list[str] = field(default_factory=list)
    safety: dict[str, SafetyCell] = field(default_factory=dict)
    utility: dict[str, UtilityCell] = field(default_factory=dict)
    harmful_n: int = 0  # answers to harmful prompts over all judge folders of the run
    harmful_compliant: int = 0
    asr_all: float | None = None  # harmful_compliant / harmful_n
    utility_mean: float | None = None  # mean of the primary metrics of the tasks every run with utility has


# ----------------------------------------------------------------------------------------------------------------
# reading


def _rows_of(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(column, row) pairs of a judge summary: one ASR per mode or benchmark, the benign refusal rate."""
    files = summary["files"]
    pairs: list[tuple[str, dict[str, Any]]] = []

    def scope(rows: list[dict[str, Any]]) -> str:
        modes = {row.get("mode") for row in rows}
        if len(modes) == 1 and None not in modes:
            return str(modes.pop())
        return rows[0].get("name") or Path(rows[0]["path"]).stem if len(rows) == 1 else "all"

    harmful = [row for row in files if not row.get("benign")]
    if summary["total"] is not None and not summary["total"].get("benign"):
        pairs.append((f"ASR {scope(harmful)}", summary["total"]))
    for mode, row in (summary.get("modes") or {}).items():
        if summary["total"] is None:
            pairs.append((f"ASR {mode}", row))
    if "total_other" in summary:
        other = [row for row in harmful if row.get("mode") is None]
        pairs.append((f"ASR {scope(other) if other else 'other'}", summary["total_other"]))
    benign = summary.get("total_benign")
    if benign is None and summary["total"] is not None and summary["total"].get("benign"):
        benign = summary["total"]
    if benign is not None:
        pairs.append(("refusal rate (benign)", benign))
    return pairs


def read_safety(directory: Path, run: Run) -> None:
    path = directory / SUMMARY_NAME
    summary = parse_json(read_text(path), f"{path}: the file")
    validate_summary(summary, path)  # the judge's own schema and consistency checks; the dict is read below
    for column, row in _rows_of(summary):
        if column in run.safety:
            raise DataError(f"run {run.label}: {column} comes from two judge folders ({path} is the second)")
        benign = column.startswith("refusal")
        value = float(row["refusal_rate"] if benign else row["asr"])
        run.safety[column] = SafetyCell("refusal_rate" if benign else "asr", value, int(row["n"]))
    harmful = [row for row in summary["files"] if not row.get("benign")]
    if harmful:
        run.harmful_n += sum(row["n"] for row in harmful)
        run.harmful_compliant += sum(row["full_compliance"] for row in harmful)
        run.asr_all = run.harmful_compliant / run.harmful_n if run.harmful_n else 0.0
    run.safety_dirs.append(str(directory))


def results_files(directory: Path) -> list[Path]:
    """lmms-eval's results files under ``directory`` (``<model>/<date>_results.json`` or directly), oldest first."""
    return sorted(directory.rglob(f"*{RESULTS_SUFFIX}"), key=lambda p: (p.name, str(p)))


def read_utility(directory: Path, run: Run) -> None:
    """Every numeric metric of every task; a task found in several results files is taken from the newest."""
    for path in results_files(directory):
        data = parse_json(read_text(path), f"{path}: the file")
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, dict) or not results:
            raise DataError(f"{path}: not an lmms-eval results file (expected a non-empty 'results' object)")
        samples = data.get("n-samples") if isinstance(data.get("n-samples"), dict) else {}
        better = data.get("higher_is_better") if isinstance(data.get("higher_is_better"), dict) else {}
        for task, metrics in results.items():
            if not isinstance(metrics, dict):
                raise DataError(f"{path}: results[{task!r}] is not an object")
            for key in [k for k in run.utility if run.utility[k].task == task]:
                del run.utility[key]  # a newer file for the same task replaces the older one
            n = (samples.get(task) or {}).get("effective") if isinstance(samples.get(task), dict) else None
            main = next(iter(better.get(task) or {}), None)  # the task's first metric in its metric_list
            for key, value in metrics.items():
                name, _, filter_name = key.partition(",")
                if "_stderr" in name or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                metric = name if filter_name in ("", "none") else key
                primary = name == main if main is not None else not _has_primary(run, task)
                run.utility[f"{task} {metric}"] = UtilityCell(task, metric, float(value), n, primary)
        run.utility_files.append(str(path))


def _has_primary(run: Run, task: str) -> bool:
    return any(cell.primary for cell in run.utility.values() if cell.task == task)


def read_run(label: str, directories: Sequence[str]) -> Run:
    run = Run(label)
    for name in directories:
        directory = Path(name)
        if not directory.is_dir():
            raise DataError(f"run {label}: {directory} is not a folder (expected a judge --out or lmms-eval folder)")
        if (directory / SUMMARY_NAME).is_file():
            read_safety(directory, run)
        elif results_files(directory):
            read_utility(directory, run)
        else:
            raise DataError(
                f"run {label}: {directory} holds neither {SUMMARY_NAME} (a judge --out folder) nor "
                f"*{RESULTS_SUFFIX} (an lmms-eval --output_path folder)"
            )
    return run


def check_runs(runs: Sequence[Run]) -> None:
    """The same column must count the same number of answers or docs in every run that has it."""
    labels = [run.label for run in runs]
    for label in labels:
        if labels.count(label) > 1:
            raise DataError(f"two runs are labelled {label!r}; labels name the rows and points, so make them unique")
    for kind in ("safety", "utility"):
        seen: dict[str, tuple[str, int]] = {}
        for run in runs:
            for column, cell in getattr(run, kind).items():
                if cell.n is None:
                    continue
                if column in seen and seen[column][1] != cell.n:
                    first, n = seen[column]
                    raise DataError(
                        f"{column}: run {first} counts {n} answers, run {run.label} {cell.n}; the runs were not "
                        "evaluated on the same prompts (same --limit, same data?)"
                    )
                seen.setdefault(column, (run.label, cell.n))


# ----------------------------------------------------------------------------------------------------------------
# writing


def _columns(runs: Sequence[Run], kind: str) -> list[str]:
    return list(dict.fromkeys(column for run in runs for column in getattr(run, kind)))


def common_tasks(runs: Sequence[Run]) -> list[str]:
    """The tasks every run with utility numbers has: a mean over different task sets would not compare."""
    with_utility = [run for run in runs if run.utility]
    if not with_utility:
        return []
    tasks = [cell.task for cell in with_utility[0].utility.values() if cell.primary]
    return [task for task in tasks if all(_has_primary(run, task) for run in with_utility)]


def tradeoff(runs: Sequence[Run]) -> dict[str, Any]:
    """The ``tradeoff.json`` structure: the columns, then one object per run (``utility_mean`` is set here)."""
    tasks = common_tasks(runs)
    for run in runs:
        values = [cell.value for cell in run.utility.values() if cell.primary and cell.task in tasks]
        run.utility_mean = sum(values) / len(values) if values else None
    primary = {cell.task: cell.metric for run in runs for cell in run.utility.values() if cell.primary}
    return {
        "columns": {"safety": _columns(runs, "safety"), "utility": _columns(runs, "utility")},
        "primary_metrics": primary,
        "utility_mean_tasks": tasks,
        "runs": [asdict(run) for run in runs],
    }


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return DASH if value is None else f"{value:.4g}"


def tradeoff_markdown(report: dict[str, Any]) -> str:
    safety, utility = report["columns"]["safety"], report["columns"]["utility"]
    head = ["run", *safety, "ASR (all harmful)", *utility, "utility (mean)"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for run in report["runs"]:
        cells = [run["label"]]
        cells += [_pct(run["safety"][c]["value"]) if c in run["safety"] else DASH for c in safety]
        cells.append(_pct(run["asr_all"]))
        cells += [_num(run["utility"][c]["value"]) if c in run["utility"] else DASH for c in utility]
        cells.append(_num(run["utility_mean"]))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "ASR = full compliance / answers (harmful prompts, string-match judge; lower is safer). Refusal rate on benign "
        "sets = full refusals / answers (over-refusal; lower is better). Utility: lmms-eval metrics as reported; "
        "utility (mean) averages the main metric of the tasks every run has: "
        + (", ".join(f"{t} {report['primary_metrics'][t]}" for t in report["utility_mean_tasks"]) or DASH)
        + "."
    )
    return "\n".join(lines) + "\n"


def plot_tradeoff(report: dict[str, Any]) -> bytes:
    """Safety (ASR over all harmful answers) against utility (mean main metric), one labelled point per run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    points = [r for r in report["runs"] if r["asr_all"] is not None and r["utility_mean"] is not None]
    for i, run in enumerate(points):
        xy = (run["utility_mean"], run["asr_all"])
        ax.scatter([xy[0]], [xy[1]], s=40, zorder=3)
        same = sum(1 for other in points[:i] if (other["utility_mean"], other["asr_all"]) == xy)
        ax.annotate(run["label"], xy, textcoords="offset points", xytext=(6, 4 + 11 * same))  # stacked, not overlaid
    missing = [r["label"] for r in report["runs"] if r not in points]
    if missing:
        ax.text(0.01, 0.01, "not plotted (safety or utility missing): " + ", ".join(missing), fontsize=7,
                transform=ax.transAxes)  # fmt: skip
    tasks = report["utility_mean_tasks"]
    ax.set_xlabel("utility: mean of " + (", ".join(f"{t} {report['primary_metrics'][t]}" for t in tasks) or "-"))
    ax.set_ylabel("ASR, all harmful answers (lower is safer)")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title("Safety vs. utility")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def write_tradeoff(report: dict[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """All three outputs are built before the first is written: a failure leaves none half-made."""
    out_dir = Path(out_dir)
    markdown, png = tradeoff_markdown(report), plot_tradeoff(report)
    paths = [out_dir / TRADEOFF_JSON, out_dir / TRADEOFF_MD, out_dir / TRADEOFF_PNG]
    atomic_write_json(paths[0], report)
    atomic_write_text(paths[1], markdown)
    with atomic_open(paths[2], "wb") as handle:
        handle.write(png)
    return paths


# ----------------------------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run",
        nargs="+",
        action="append",
        required=True,
        metavar=("LABEL", "DIR"),
        help="one run: a label, then its judge --out folder and/or its lmms-eval --output_path folder; repeat "
        "--run for each model (base, method, baseline)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="where tradeoff.json, .md and .png go")


def run(args: argparse.Namespace) -> int:
    runs = []
    for spec in args.run:
        if len(spec) < 2:
            raise DataError(f"--run {' '.join(spec)}: give a label and at least one folder (--run LABEL DIR [DIR])")
        runs.append(read_run(spec[0], spec[1:]))
    check_runs(runs)
    report = tradeoff(runs)
    written = write_tradeoff(report, args.out)
    print(tradeoff_markdown(report))
    print("\n".join(f"wrote {path}" for path in written))
    return 0
