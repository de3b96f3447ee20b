"""The check of the LLaMA-Factory internals the hook relies on (instead of one accepted version number)."""

import dataclasses
from importlib.metadata import version

import pytest

from rejection_align.hook import compat


@pytest.mark.parametrize("internal", compat.INTERNALS, ids=lambda internal: internal.name)
def test_every_internal_the_hook_relies_on_matches_in_the_installed_llamafactory(internal):
    problem = compat.check(internal)

    assert problem is None or (internal.optional and problem == "is missing"), f"{internal.name} {problem}"


def test_the_report_lists_each_checked_internal_as_ok_and_no_problem_is_found():
    report = compat.report()

    assert set(report.values()) == {"ok"}
    assert "llamafactory.hparams.parser._parse_train_args" in report
    assert compat.problem() is None


def test_a_changed_signature_is_named_with_what_was_found_and_what_was_expected(monkeypatch):
    from llamafactory.data.processor import processor_utils

    monkeypatch.setattr(processor_utils, "infer_seqlen", lambda source, target: (source, target))

    message = compat.problem("loader")

    assert f"llamafactory {version('llamafactory')} is installed" in message
    assert (
        "processor_utils.infer_seqlen takes (source, target), expected (source_len, target_len, cutoff_len, ...)"
        in (message)
    )


def test_a_missing_internal_is_named_and_an_optional_one_is_left_out_of_the_report(monkeypatch):
    from llamafactory.hparams import parser

    monkeypatch.delattr(parser, "read_args")
    monkeypatch.delattr(parser, "_parse_train_mbridge_args", raising=False)

    report = compat.report("parser")

    assert report["llamafactory.hparams.parser.read_args"] == "is missing"
    assert "llamafactory.hparams.parser._parse_train_mbridge_args" not in report


def test_a_template_field_that_is_gone_is_named(monkeypatch):
    from llamafactory.data.template import Template

    fields = [field for field in dataclasses.fields(Template) if field.name != "efficient_eos"]
    monkeypatch.setattr(Template, "__dataclass_fields__", {field.name: field for field in fields})

    assert compat.report("loader")["llamafactory.data.template.Template.efficient_eos"] == "is not a field"


def test_the_checks_only_need_llamafactory_when_the_hook_is_used():
    # the start-up path must not import it: compat is imported by patches, which the start-up finder loads lazily
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", "import sys, rejection_align; print('llamafactory' in sys.modules)"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    "found, note",
    [("0.9.3", "; 0.9.3 is older than all of them"), ("0.9.5", ""), ("0.10.0", "; 0.10.0 is newer than all of them"),
     ("0.9.6.dev0", ""), ("not-a-version", "")],
)  # fmt: skip
def test_a_mismatch_says_whether_the_version_is_outside_the_tested_ones(monkeypatch, found, note):
    from llamafactory.data.processor import processor_utils

    monkeypatch.setattr(processor_utils, "infer_seqlen", lambda source, target: (source, target))
    monkeypatch.setattr(compat, "llamafactory_version", lambda: found)

    assert compat.problem("loader").endswith(f"(known to work: 0.9.4, 0.9.5, 0.9.6.dev0{note})")
