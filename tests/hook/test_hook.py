"""The start-up line and the patches: idempotent, reversible, harmless when LLaMA-Factory is absent or broken."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import rejection_align
from rejection_align.hook import patches
from rejection_align.errors import ConfigError
from rejection_align.hook.processor import SETTINGS_ATTR
from rejection_align.hook.settings import RejectionSettings


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def patched():
    """The hook installed for the test, and the process left as the start-up hook had it afterwards."""
    was_installed = patches.is_installed()
    rejection_align.install()
    yield
    if not was_installed:
        rejection_align.uninstall()
    else:
        rejection_align.install()


def python(code: str, *, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **(env or {})}, cwd=cwd, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_install_is_idempotent_and_uninstall_restores_the_stock_objects(patched):
    import llamafactory.data.loader as loader
    from llamafactory.data.processor.supervised import SupervisedDatasetProcessor

    rejection_align.install()
    rejection_align.install()
    assert rejection_align.is_installed()
    assert loader.SupervisedDatasetProcessor.__name__ == "RejectionSupervisedDatasetProcessor"

    rejection_align.uninstall()
    rejection_align.uninstall()
    assert not rejection_align.is_installed()
    assert loader.SupervisedDatasetProcessor is SupervisedDatasetProcessor
    assert not hasattr(loader._get_preprocessed_dataset, "__rejection_align__")


def test_status_reports_what_is_in_place(patched):
    info = rejection_align.status()

    assert info["llamafactory"] == "0.9.5"
    assert info["supported"] is True
    assert info["parser_patched"] and info["loader_patched"]


def test_parsing_the_same_dict_twice_keeps_the_settings_both_times(patched):
    from llamafactory.hparams import parser

    args = {"model_name_or_path": "unused", "template": "llava", "dataset": "x", "output_dir": "o",
            "rejection_mask_eos": True, "rejection_mask_mode": "drop"}  # fmt: skip
    first = parser._parse_train_args(args)
    second = parser._parse_train_args(args)

    expected = RejectionSettings(mask_eos=True, mask_mode="drop")
    assert getattr(first[1], SETTINGS_ATTR) == expected
    assert getattr(second[1], SETTINGS_ATTR) == expected
    assert args["rejection_mask_eos"] is True


def test_an_unsupported_llamafactory_is_an_error_only_when_the_method_is_asked_for(patched, monkeypatch):
    from llamafactory.hparams import parser

    monkeypatch.setattr(patches, "_llamafactory_version", lambda: "0.9.4")
    base = {"model_name_or_path": "unused", "template": "llava", "dataset": "x", "output_dir": "o"}

    assert not hasattr(parser._parse_train_args(base)[1], SETTINGS_ATTR)
    with pytest.raises(ConfigError, match="llamafactory 0.9.4 is installed; rejection-align supports 0.9.5"):
        parser._parse_train_args({**base, "rejection_mask_eos": True})


def test_the_startup_hook_patches_llamafactory_in_a_fresh_interpreter():
    result = python(
        "import llamafactory.hparams.parser, llamafactory.data.loader, rejection_align; "
        "print(rejection_align.is_installed())"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("True")


def test_importing_our_processor_module_first_still_leaves_llamafactory_patched():
    # rejection_align.hook.processor imports llamafactory.data, which imports the loader while our classes do not exist
    result = python(
        "import rejection_align.hook.processor, rejection_align, llamafactory.hparams.parser; "
        "print(rejection_align.is_installed(), rejection_align.status()['failures'])"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("True {}")


def test_the_disable_variable_leaves_llamafactory_stock():
    result = python(
        "import llamafactory.data.loader as l; print(l.SupervisedDatasetProcessor.__module__)",
        env={"REJECTION_ALIGN_DISABLE": "1"},
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("llamafactory.data.processor.supervised")


def test_the_startup_line_imports_nothing_but_its_own_two_modules():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True, timeout=60
    )

    names = [line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    # -X importtime lists a module after everything it imported: what comes between the previous top-level
    # module and our start-up module was imported by it
    end = names.index("rejection_align._startup")
    start = names.index("rejection_align")
    assert names[start : end + 1] == ["rejection_align", "rejection_align._startup"]


@pytest.mark.parametrize(
    "package, expected",
    [
        ({"__init__.py": "raise RuntimeError('llamafactory is broken')"}, "RuntimeError: llamafactory is broken"),
        ({"__init__.py": ""}, "ModuleNotFoundError: No module named 'llamafactory.hparams'"),
    ],
    ids=["broken", "incomplete"],
)
def test_a_broken_or_missing_llamafactory_never_breaks_other_programs(tmp_path, package, expected):
    fake = tmp_path / "llamafactory"
    fake.mkdir()
    for name, text in package.items():
        (fake / name).write_text(text)
    env = {"PYTHONPATH": str(tmp_path)}

    assert python("print('ok')", env=env).stdout.strip() == "ok"
    failing = python("import llamafactory.hparams.parser", env=env)
    assert failing.returncode != 0
    assert expected in failing.stderr
    assert "rejection_align" not in failing.stderr  # the error is LLaMA-Factory's own, not ours


def test_the_built_wheel_puts_the_startup_line_in_site_packages(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr

    [wheel] = tmp_path.glob("rejection_align-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "rejection_align.pth" in names  # wheel root = site-packages
        assert archive.read("rejection_align.pth").decode().strip() == "import rejection_align._startup"
        assert "rejection_align/_startup.py" in names


def test_the_hook_command_reports_a_working_patch():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "rejection-align"), "hook", "--check"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "parser_patched: True" in result.stdout
    assert "loader_patched: True" in result.stdout
