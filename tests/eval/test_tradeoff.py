"""``rejection-align report``: judge folders (real ``judge`` runs) and lmms-eval results into one trade-off table."""

import json
from pathlib import Path

import pytest

from rejection_align.cli import main


COMPLY = "Sure, here is a detailed plan with many steps."
REFUSE = "I'm sorry, but I cannot assist with your request"


def answers(path: Path, texts: list[str], *, mode: str | None, benign: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scenario = "01-Illegal_Activitiy" if mode else None  # generate's MM-SafetyBench records carry both
    records = [
        {"id": str(i), "prompt": "q", "continuation": t, "mode": mode, "scenario": scenario, "benign": benign}
        for i, t in enumerate(texts)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def judged(root: Path, *, n_comply_sd: int, n_comply_typo: int, benign_refusals: int, n: int = 4) -> Path:
    """A real ``judge --out`` folder: two MM-SafetyBench modes, FigStep and a benign set."""
    results = root / "answers"
    answers(results / "sd_typo.jsonl", [COMPLY] * n_comply_sd + [REFUSE] * (n - n_comply_sd), mode="SD_TYPO")
    answers(results / "typo.jsonl", [COMPLY] * n_comply_typo + [REFUSE] * (n - n_comply_typo), mode="TYPO")
    answers(results / "figstep.jsonl", [COMPLY, REFUSE], mode=None)
    answers(results / "benign.jsonl", [REFUSE] * benign_refusals + [COMPLY] * (n - benign_refusals), mode=None,
            benign=True)  # fmt: skip
    assert main(["judge", str(results), "--out", str(root / "judge")]) == 0
    return root / "judge"


def lmms_results(
    root: Path, *, sqa: float, pope: float, n_sqa: int = 3, name: str = "20261203_000000", only_sqa: bool = False
) -> Path:
    """An lmms-eval --output_path folder: ``<model>/<date>_results.json`` in lmms-eval 0.7's shape."""
    data = {
        "results": {
            "scienceqa_img": {"alias": "scienceqa_img", "exact_match,none": sqa, "exact_match_stderr,none": 0.1},
            "pope": {
                "alias": "pope",
                "pope_accuracy,none": pope,
                "pope_accuracy_stderr,none": "N/A",
                "pope_yes_ratio,none": 0.5,
            },
        },  # fmt: skip
        "higher_is_better": {
            "scienceqa_img": {"exact_match": True},
            "pope": {"pope_accuracy": True, "pope_yes_ratio": True},
        },
        "n-samples": {
            "scienceqa_img": {"original": n_sqa, "effective": n_sqa},
            "pope": {"original": 2, "effective": 2},
        },
    }
    if only_sqa:
        for key in ("results", "higher_is_better", "n-samples"):
            del data[key]["pope"]
    path = root / "model__x" / f"{name}_results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return root


@pytest.fixture
def two_runs(tmp_path):
    base = (judged(tmp_path / "base", n_comply_sd=3, n_comply_typo=4, benign_refusals=0),
            lmms_results(tmp_path / "base_u", sqa=2 / 3, pope=0.5))  # fmt: skip
    method = (judged(tmp_path / "method", n_comply_sd=1, n_comply_typo=2, benign_refusals=1),
              lmms_results(tmp_path / "method_u", sqa=1 / 3, pope=0.5))  # fmt: skip
    return base, method


def report(tmp_path, *runs: tuple[str, ...]) -> int:
    argv = ["report"]
    for run in runs:
        argv += ["--run", *map(str, run)]
    return main([*argv, "--out", str(tmp_path / "tradeoff")])


def test_one_row_per_run_with_asr_per_mode_benign_refusal_and_each_utility_metric(two_runs, tmp_path):
    (base_j, base_u), (method_j, method_u) = two_runs
    assert report(tmp_path, ("base", base_j, base_u), ("method", method_j, method_u)) == 0
    data = json.loads((tmp_path / "tradeoff" / "tradeoff.json").read_text())
    assert data["columns"]["safety"] == ["ASR SD_TYPO", "ASR TYPO", "ASR figstep", "refusal rate (benign)"]
    assert data["columns"]["utility"] == ["scienceqa_img exact_match", "pope pope_accuracy", "pope pope_yes_ratio"]
    assert data["primary_metrics"] == {"scienceqa_img": "exact_match", "pope": "pope_accuracy"}
    base, method = data["runs"]
    assert (base["label"], method["label"]) == ("base", "method")
    assert base["safety"]["ASR SD_TYPO"] == {"metric": "asr", "value": 0.75, "n": 4}
    assert method["safety"]["ASR TYPO"]["value"] == 0.5
    assert method["safety"]["refusal rate (benign)"] == {"metric": "refusal_rate", "value": 0.25, "n": 4}
    assert base["asr_all"] == pytest.approx((3 + 4 + 1) / 10) and method["asr_all"] == pytest.approx(4 / 10)
    assert method["utility_mean"] == pytest.approx((1 / 3 + 0.5) / 2)
    md = (tmp_path / "tradeoff" / "tradeoff.md").read_text()
    assert "| base | 75.0% | 100.0% | 50.0% | 0.0% | 80.0% | 0.6667 | 0.5 | 0.5 | 0.5833 |" in md
    assert (tmp_path / "tradeoff" / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_report_is_byte_identical_when_run_twice(two_runs, tmp_path):
    (base_j, base_u), (method_j, method_u) = two_runs
    outputs = []
    for _ in range(2):
        assert report(tmp_path, ("base", base_j, base_u), ("method", method_j, method_u)) == 0
        outputs.append(
            [(tmp_path / "tradeoff" / n).read_bytes() for n in ("tradeoff.json", "tradeoff.md", "tradeoff.png")]
        )
    assert outputs[0] == outputs[1]


def test_a_run_with_only_safety_or_only_utility_gets_dashes_and_no_point(two_runs, tmp_path):
    (base_j, _), (_, method_u) = two_runs
    assert report(tmp_path, ("base", base_j), ("method", method_u)) == 0
    md = (tmp_path / "tradeoff" / "tradeoff.md").read_text()
    assert "| base | 75.0% | 100.0% | 50.0% | 0.0% | 80.0% | – | – | – | – |" in md
    data = json.loads((tmp_path / "tradeoff" / "tradeoff.json").read_text())
    assert data["runs"][1]["asr_all"] is None and data["runs"][1]["utility_mean"] == pytest.approx(5 / 12)


def test_the_utility_mean_covers_only_the_tasks_every_run_has(tmp_path):
    full = lmms_results(tmp_path / "full", sqa=0.2, pope=0.9)
    part = lmms_results(tmp_path / "part", sqa=0.4, pope=0.0, only_sqa=True)
    assert report(tmp_path, ("full", full), ("part", part)) == 0
    data = json.loads((tmp_path / "tradeoff" / "tradeoff.json").read_text())
    assert data["utility_mean_tasks"] == ["scienceqa_img"]
    assert [run["utility_mean"] for run in data["runs"]] == [0.2, 0.4]
    md = (tmp_path / "tradeoff" / "tradeoff.md").read_text()
    assert "| part | – | 0.4 | – | – | 0.4 |" in md  # ASR (all harmful), sqa, pope x2, mean


def test_a_newer_results_file_for_the_same_task_replaces_the_older(tmp_path):
    utility = lmms_results(tmp_path / "u", sqa=0.1, pope=0.2, name="20261201_000000")
    lmms_results(tmp_path / "u", sqa=0.9, pope=0.2, name="20261202_000000")
    assert report(tmp_path, ("m", utility)) == 0
    data = json.loads((tmp_path / "tradeoff" / "tradeoff.json").read_text())
    assert data["runs"][0]["utility"]["scienceqa_img exact_match"]["value"] == 0.9
    assert len(data["runs"][0]["utility_files"]) == 2


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "is not a folder"),
        ("neither", "holds neither summary.json"),
        ("bad_summary", "summary.json: files is an integer, expected a list"),
        ("bad_results", "not an lmms-eval results file"),
        ("duplicate_label", "two runs are labelled 'a'"),
        ("other_limit", "scienceqa_img exact_match: run a counts 3 answers, run b 5"),
        ("label_only", "give a label and at least one folder"),
    ],
)
def test_bad_or_mismatched_inputs_are_one_line_errors_with_exit_2(case, message, tmp_path, capsys):
    good = lmms_results(tmp_path / "good", sqa=0.5, pope=0.5)
    runs = {
        "missing": [("a", tmp_path / "nope")],
        "neither": [("a", tmp_path / "empty")],
        "bad_summary": [("a", tmp_path / "j")],
        "bad_results": [("a", tmp_path / "r")],
        "duplicate_label": [("a", good), ("a", good)],
        "other_limit": [("a", good), ("b", lmms_results(tmp_path / "five", sqa=0.5, pope=0.5, n_sqa=5))],
        "label_only": [("a",)],
    }[case]
    (tmp_path / "empty").mkdir()
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "summary.json").write_text('{"files": 3}')
    (tmp_path / "r" / "m").mkdir(parents=True)
    (tmp_path / "r" / "m" / "x_results.json").write_text('{"results": []}')
    assert report(tmp_path, *runs) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "tradeoff").exists()
