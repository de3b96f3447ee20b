"""Options declared once: argparse flags, defaults, help, groups and the manifest's record come from one dataclass."""

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rejection_align.options import add_arguments, from_args, option, record, recorded


@dataclass(frozen=True, kw_only=True)
class Greet:
    source: Path = field(metadata=option("source", type=Path, metavar="FILE", record=False, help="input"))
    names: tuple[str, ...] = field(default=("world",), metadata=option("--name", nargs="+", group="who", help="who"))
    times: int | None = field(default=None, metadata=option(type=int, group="how", exclusive="n", help="how often"))
    forever: bool = field(default=False, metadata=option(group="how", exclusive="n", help="never stop"))
    tone: str = field(default="calm", metadata=option("--tone", "-t", choices=("calm", "loud"), help="voice"))
    out: Path = field(metadata=option(type=Path, record=False, help="where"))
    later: Path | None = field(default=None, metadata=option(type=Path, record="if_set", help="added later"))
    internal: int = 0  # no option: not on the command line, not recorded


def parse(*argv: str) -> Greet:
    parser = argparse.ArgumentParser()
    add_arguments(parser, Greet)
    return from_args(Greet, parser.parse_args(argv))


def test_flags_defaults_and_types_come_from_the_fields():
    options = parse("in.json", "--out", "o")
    assert options == Greet(source=Path("in.json"), out=Path("o"))
    options = parse("in.json", "--out", "o", "--times", "3", "-t", "loud", "--name", "a", "b", "--name", "c")
    assert (options.times, options.tone, options.names) == (3, "loud", ("a", "b", "c"))


def test_a_list_option_replaces_its_default_instead_of_extending_it():
    assert parse("x", "--out", "o", "--name", "z").names == ("z",)


def test_required_choices_and_exclusive_groups_are_enforced_by_argparse(capsys):
    for argv in (["x"], ["x", "--out", "o", "--tone", "shrill"], ["x", "--out", "o", "--times", "2", "--forever"]):
        with pytest.raises(SystemExit):
            parse(*argv)
    assert "not allowed with argument" in capsys.readouterr().err


def test_help_shows_groups_metavars_and_help_texts():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Greet)
    text = parser.format_help()
    assert "who:" in text and "how:" in text and "FILE" in text and "never stop" in text
    assert "--internal" not in text


def test_overrides_win_and_fields_without_a_flag_keep_their_default():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Greet)
    options = from_args(Greet, parser.parse_args(["x", "--out", "o"]), internal=7)
    assert options.internal == 7


def test_the_record_holds_recorded_fields_in_order_as_json_values():
    options = parse("x", "--out", "o")
    assert record(options) == {"names": ["world"], "times": None, "forever": False, "tone": "calm"}
    later = record(parse("x", "--out", "o", "--later", "rel/p"))
    assert list(later)[-1] == "later" and later["later"] == os.path.abspath("rel/p")


@dataclass(frozen=True, kw_only=True)
class Run:
    config: str | None = field(default=None, metadata=option("config", nargs="?", record=False, help="a YAML"))
    seed: int = field(default=1, metadata=option(type=int, help="seed"))


def test_an_optional_positional_takes_one_value_or_the_field_default():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Run)
    assert from_args(Run, parser.parse_args([])) == Run()
    assert from_args(Run, parser.parse_args(["a.yaml", "--seed", "2"])) == Run(config="a.yaml", seed=2)


def test_recorded_names_the_fields_a_record_may_hold_in_field_order():
    assert recorded(Greet) == ["names", "times", "forever", "tone", "later"]
    assert recorded(Run) == ["seed"]


@dataclass(frozen=True, kw_only=True)
class Judge:
    paths: tuple[str, ...] = field(default=(), metadata=option("paths", nargs="*", metavar="FILE", help="inputs"))
    compare: tuple[str, ...] | None = field(
        default=None, metadata=option(nargs=2, metavar=("RUN_A", "RUN_B"), help="two runs")
    )


def test_a_star_positional_and_a_fixed_count_option_with_one_metavar_each():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Judge)
    assert from_args(Judge, parser.parse_args([])) == Judge()
    assert from_args(Judge, parser.parse_args(["a", "b", "--compare", "x", "y"])) == Judge(
        paths=("a", "b"), compare=("x", "y")
    )
    assert from_args(Judge, parser.parse_args(["--compare", "a", "b", "--compare", "c", "d"])).compare == ("c", "d")
    assert "--compare RUN_A RUN_B" in parser.format_help()
