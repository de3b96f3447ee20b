"""Reports: Markdown tables and PNG charts for one run and for two runs compared."""

import pytest
from PIL import Image

from rejection_align.errors import DataError
from rejection_align.eval.report import (
    compare,
    compare_markdown,
    plot_compare,
    plot_summary,
    summary_markdown,
    write_summary,
)


def row(name, n, compliance, full, partial, benign=False):
    return {
        "path": f"run/{name}.jsonl",
        "name": name,
        "n": n,
        "full_compliance": compliance,
        "full_refusal": full,
        "partial_refusal": partial,
        "asr": compliance / n,
        "refusal_rate": full / n,
        "benign": benign,
    }


@pytest.fixture
def summary():
    files = [row("01-Illegal_Activitiy", 4, 1, 2, 1), row("02-HateSpeech", 4, 3, 1, 0)]
    total = {**row("total", 8, 4, 3, 1), "benign": False}
    del total["path"], total["name"]
    return {"files": files, "total": total}


def test_the_table_has_one_row_per_file_and_a_bold_total(summary):
    lines = summary_markdown(summary).splitlines()
    assert lines[2] == "| 01-Illegal_Activitiy | 4 | 1 | 2 | 1 | 25.0% | – |"
    assert lines[4] == "| **total** | **8** | **4** | **3** | **1** | **50.0%** | – |"


def test_a_benign_row_shows_the_refusal_rate_instead_of_asr():
    benign = row("xstest", 4, 3, 1, 0, benign=True)
    text = summary_markdown({"files": [benign], "total": {**benign, "benign": True}})
    assert "| xstest | 4 | 3 | 1 | 0 | – | 25.0% |" in text


def test_the_summary_chart_is_a_png_image(summary, tmp_path):
    path = plot_summary(summary, tmp_path / "asr.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100


def test_write_summary_writes_json_markdown_and_png(summary, tmp_path):
    written = write_summary(summary, tmp_path / "out")
    assert [p.name for p in written] == ["summary.json", "summary.md", "asr.png"]
    assert all(p.stat().st_size > 0 for p in written)


def test_compare_pairs_files_by_name_and_computes_the_change(summary):
    tuned = {"files": [row("01-Illegal_Activitiy", 4, 0, 4, 0)], "total": {**row("t", 4, 0, 4, 0), "benign": False}}
    rows = compare(summary, tuned, labels=["base", "tuned"], allow_mismatch=True)["rows"]
    first = rows[0]
    assert (first["a"], first["b"], first["delta"]) == (0.25, 0.0, -0.25)


def test_a_file_only_one_run_has_is_an_error_naming_it(summary):
    tuned = {"files": [row("01-Illegal_Activitiy", 4, 0, 4, 0)], "total": {**row("t", 4, 0, 4, 0), "benign": False}}
    with pytest.raises(DataError, match="generic 02-HateSpeech only in base .*--allow-mismatch"):
        compare(summary, tuned, labels=["base", "tuned"])


def test_with_allow_mismatch_a_file_only_one_run_has_is_compared_with_nothing_and_the_table_says_so(summary):
    tuned = {"files": [row("01-Illegal_Activitiy", 4, 0, 4, 0)], "total": {**row("t", 4, 0, 4, 0), "benign": False}}
    comparison = compare(summary, tuned, labels=["base", "tuned"], allow_mismatch=True)
    rows = {r["name"]: r for r in comparison["rows"]}
    assert rows["02-HateSpeech"]["b"] is None and rows["02-HateSpeech"]["delta"] is None
    assert rows["total"]["delta"] is None  # totals over different files: no Δ
    text = compare_markdown(comparison)
    assert "| 02-HateSpeech | ASR | 75.0% | – | – |" in text
    assert "**Mismatched runs (--allow-mismatch):**" in text and "02-HateSpeech only in base" in text


def test_the_same_file_name_in_two_modes_is_not_compared(two_modes):
    sd_only = {**two_modes, "files": [two_modes["files"][0]]}
    typo_only = {**two_modes, "files": [{**two_modes["files"][1], "name": "SD_TYPO/01-Illegal_Activitiy"}]}
    with pytest.raises(DataError, match="mmsafetybench SD_TYPO 01-Illegal_Activitiy only in a"):
        compare(sd_only, typo_only, labels=["a", "b"])


def test_a_file_of_another_size_is_a_mismatch(summary):
    smaller = {**summary, "files": [row("01-Illegal_Activitiy", 2, 1, 1, 0), summary["files"][1]]}
    with pytest.raises(DataError, match="01-Illegal_Activitiy has n = 4 in a, 2 in b"):
        compare(summary, smaller, labels=["a", "b"])


def test_the_compare_chart_is_a_png_image(summary, tmp_path):
    path = plot_compare(compare(summary, summary, labels=["a", "b"]), tmp_path / "compare.png")
    with Image.open(path) as image:
        assert image.format == "PNG"


def test_drawing_charts_leaves_the_pyplot_backend_alone(summary, tmp_path):
    import matplotlib

    before = matplotlib.get_backend()
    plot_summary(summary, tmp_path / "asr.png")
    assert matplotlib.get_backend() == before


@pytest.fixture
def two_modes():
    """Two MM-SafetyBench modes judged together: a total per mode, none across them."""
    files = [
        {**row("01-Illegal_Activitiy", 4, 3, 1, 0), "name": "SD_TYPO/01-Illegal_Activitiy", "mode": "SD_TYPO"},
        {**row("01-Illegal_Activitiy", 4, 1, 3, 0), "name": "TYPO/01-Illegal_Activitiy", "mode": "TYPO"},
    ]
    modes = {}
    for file in files:
        mode_total = {key: value for key, value in file.items() if key not in ("path", "name", "mode")}
        modes[file["mode"]] = mode_total
    return {"files": files, "total": None, "modes": modes}


def test_the_table_totals_each_mode_and_shows_no_overall_total(two_modes):
    lines = summary_markdown(two_modes).splitlines()
    assert lines[4:6] == [
        "| **total SD_TYPO** | **4** | **3** | **1** | **0** | **75.0%** | – |",
        "| **total TYPO** | **4** | **1** | **3** | **0** | **25.0%** | – |",
    ]
    assert not any(line.startswith("| **total** |") for line in lines)


def test_the_chart_has_one_bar_per_file_and_mode_total(two_modes, tmp_path):
    path = plot_summary(two_modes, tmp_path / "asr.png")
    with Image.open(path) as image:
        assert image.format == "PNG"


def test_a_files_categories_are_compared_by_name(summary):
    figstep = row("figstep", 2, 1, 1, 0)
    figstep["categories"] = {"ForbidQI_1": row("c1", 1, 1, 0, 0), "ForbidQI_2": row("c2", 1, 0, 1, 0)}
    run = {"files": [figstep], "total": {**row("t", 2, 1, 1, 0), "benign": False}}
    rows = {r["name"]: r for r in compare(run, run, labels=["a", "b"])["rows"]}
    assert rows["figstep / ForbidQI_1"]["a"] == 1.0 and rows["figstep / ForbidQI_2"]["b"] == 0.0


def test_a_label_holding_a_pipe_does_not_break_the_compare_table(summary):
    table = compare_markdown(compare(summary, summary, labels=["base|v1", "ours"]))
    assert table.splitlines()[0] == "| file | metric | base\\|v1 | ours | Δ (B − A) |"


def test_reports_are_not_written_under_a_file(summary, tmp_path):
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(DataError, match=r"taken \(above the output folder\) is a file, not a folder"):
        write_summary(summary, tmp_path / "taken" / "out")
    assert (tmp_path / "taken").read_text() == "mine"
