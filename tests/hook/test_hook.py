"""The start-up line and the patches: idempotent, reversible, harmless when LLaMA-Factory is absent or broken."""

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import rejection_align
from rejection_align.errors import ConfigError
from rejection_align.hook import patches
from rejection_align.hook.settings import RejectionSettings, attach, settings_of


ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "rejection_align"


def python(code: str, *, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **(env or {})}, cwd=cwd, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_install_is_idempotent_and_uninstall_restores_the_stock_objects(patched):
    import llamafactory.data.loader as loader

    stock = patches._ORIGINALS[(loader.__name__, "_get_dataset_processor")]

    rejection_align.install()
    rejection_align.install()
    assert rejection_align.is_installed()
    assert loader._get_dataset_processor.__wrapped__ is stock  # wrapped once, not twice

    rejection_align.uninstall()
    rejection_align.uninstall()
    assert not rejection_align.is_installed()
    assert loader._get_dataset_processor is stock
    assert not hasattr(loader._get_preprocessed_dataset, "__rejection_align__")


@pytest.mark.parametrize("packing", [False, True], ids=["plain", "packing"])
def test_llamafactorys_processor_factory_gives_ours_only_for_sft_training_with_the_method_on(
    patched, processor_factory, packing
):
    import llamafactory.data.loader as loader
    from llamafactory.data.processor import PretrainDatasetProcessor, UnsupervisedDatasetProcessor

    stock = processor_factory("llava", stock=True, packed=packing, packing=packing)
    data_args, fields = stock.data_args, (stock.template, stock.tokenizer, stock.processor)

    off = loader._get_dataset_processor(data_args, "sft", *fields)
    attach(data_args, RejectionSettings(mask_eos=True))
    on = loader._get_dataset_processor(data_args, "sft", *fields)
    generating = loader._get_dataset_processor(data_args, "sft", *fields, do_generate=True)
    pretraining = loader._get_dataset_processor(data_args, "pt", *fields)

    assert type(off) is type(stock)
    assert type(on).__name__ == ("RejectionPacked" if packing else "Rejection") + "SupervisedDatasetProcessor"
    assert isinstance(on, type(stock)) and on.data_args is data_args and on.tokenizer is stock.tokenizer
    assert type(generating) is UnsupervisedDatasetProcessor
    assert type(pretraining) is PretrainDatasetProcessor


def test_status_reports_the_installed_version_and_every_internal_as_ok(patched):
    from importlib.metadata import version

    info = rejection_align.status()

    assert info["llamafactory"] == version("llamafactory")
    assert info["supported"] is True
    assert "llamafactory.data.template.Template.encode_multiturn" in info["internals"]
    assert set(info["internals"].values()) == {"ok"}
    assert info["parser_patched"] and info["loader_patched"]


def test_every_train_parser_this_llamafactory_has_is_wrapped(patched):
    from llamafactory.hparams import parser

    present = [name for name in patches._PARSER_ATTRS if hasattr(parser, name)]

    assert "_parse_train_args" in present
    assert all(getattr(getattr(parser, name), "__rejection_align__", False) for name in present)


def test_parsing_the_same_dict_twice_keeps_the_settings_both_times(patched):
    from llamafactory.hparams import parser

    args = {"model_name_or_path": "unused", "template": "llava", "dataset": "x", "output_dir": "o",
            "rejection_mask_eos": True, "rejection_mask_mode": "drop"}  # fmt: skip
    first = parser._parse_train_args(args)
    second = parser._parse_train_args(args)

    expected = RejectionSettings(mask_eos=True, mask_mode="drop")
    assert settings_of(first[1]) == expected
    assert settings_of(second[1]) == expected
    assert args["rejection_mask_eos"] is True


def test_a_changed_internal_is_an_error_naming_it_only_when_the_method_is_asked_for(patched, monkeypatch):
    from importlib.metadata import version

    from llamafactory.data.template import Template
    from llamafactory.hparams import parser

    def encode_multiturn(self, tokenizer, conversation):  # a different signature than every known release
        raise AssertionError("never called")

    monkeypatch.setattr(Template, "encode_multiturn", encode_multiturn)
    base = {"model_name_or_path": "unused", "template": "llava", "dataset": "x", "output_dir": "o"}

    assert settings_of(parser._parse_train_args(base)[1]) is None
    with pytest.raises(ConfigError) as caught:
        parser._parse_train_args({**base, "rejection_mask_eos": True})
    message = str(caught.value)
    assert f"llamafactory {version('llamafactory')} is installed" in message
    assert "llamafactory.data.template.Template.encode_multiturn takes (self, tokenizer, conversation)" in message


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


def test_a_run_with_the_method_off_never_loads_our_processor_module():
    result = python(
        "import sys, llamafactory.hparams.parser, llamafactory.data.loader, rejection_align; "
        "print(rejection_align.is_installed(), 'rejection_align.hook.processor' in sys.modules)"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("True False")


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``path`` imports, at its top or inside a function (``from . import x`` is
    an import of ``x``, not of the package)."""
    module = "rejection_align." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    package = module.removesuffix(".__init__") if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names} & modules
            found |= submodules or {base}
    return found & modules


def test_the_hook_and_its_start_up_module_import_each_other_without_a_cycle():
    paths = [PACKAGE / "_startup.py", *sorted((PACKAGE / "hook").glob("*.py"))]
    modules = {"rejection_align." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts): p for p in paths}
    modules = {name.removesuffix(".__init__"): path for name, path in modules.items()}
    graph = {name: imports_of(path, set(modules)) - {name} for name, path in modules.items()}

    def cycle_from(name: str, trail: tuple[str, ...]) -> tuple[str, ...] | None:
        if name in trail:
            return trail[trail.index(name) :] + (name,)
        return next(filter(None, (cycle_from(dep, (*trail, name)) for dep in sorted(graph[name]))), None)

    # the parser finds the lazy imports: the start-up hook's of the patches, the package's of its public names
    assert "rejection_align.hook.patches" in graph["rejection_align._startup"]
    assert graph["rejection_align.hook"] == {"rejection_align.hook.patches", "rejection_align.hook.command"}
    assert [cycle_from(name, ()) for name in graph] == [None] * len(graph)


def test_the_disable_variable_leaves_llamafactory_stock():
    result = python(
        "import llamafactory.data.loader as l; print(l._get_dataset_processor.__module__)",
        env={"REJECTION_ALIGN_DISABLE": "1"},
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("llamafactory.data.loader")


def test_the_startup_line_imports_nothing_but_its_own_two_modules():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True, timeout=60
    )

    names = [line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    # -X importtime lists a module after everything it imported: what comes between the previous top-level
    # module and our start-up module was imported by it
    end = names.index("rejection_align._startup")
    start = names.index("rejection_align")
    # the package, the hook's module of names (which imports nothing) with its package, and the start-up module
    expected = ["rejection_align", "rejection_align.hook", "rejection_align.hook.targets", "rejection_align._startup"]
    assert names[start : end + 1] == expected


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
        assert archive.read("rejection_align.start").decode().strip() == "rejection_align._startup:activate"
        assert "rejection_align/_startup.py" in names


def hook_command(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "rejection-align"), "hook", *args],
        env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_hook_command_reports_a_working_patch():
    result = hook_command("--check")

    assert result.returncode == 0, result.stderr
    assert "parser_patched: True" in result.stdout
    assert "loader_patched: True" in result.stdout
    assert result.stdout.rstrip().endswith("result: the hook works")


def test_the_hook_command_says_what_is_wrong_with_a_broken_llamafactory(tmp_path):
    (tmp_path / "llamafactory").mkdir()
    (tmp_path / "llamafactory" / "__init__.py").write_text("raise RuntimeError('llamafactory is broken')")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))

    result = hook_command("--check", env={"PYTHONPATH": path})

    assert result.returncode == 1, result.stderr
    assert "result: the hook cannot work: llamafactory.hparams.parser: import failed: RuntimeError: llamafactory is " \
        "broken" in result.stdout  # fmt: skip
    assert "cannot import llamafactory.data.loader: RuntimeError: llamafactory is broken" in result.stdout
    assert "--check" not in result.stdout  # not "use --check": it was used


def test_the_hook_command_help_names_every_supported_llamafactory():
    result = hook_command("--help")

    assert result.returncode == 0, result.stderr
    assert "(0.9.4, 0.9.5 or main)" in " ".join(result.stdout.split())


# PEP 829 (Python 3.15+): site runs the entry points of ``<name>.start`` files, and a ``.start`` file turns off the
# ``import`` lines of the matching ``.pth``; later releases ignore ``.pth`` import lines altogether. Python 3.15 is not
# here, so these runs skip ``site`` (-S) and do what PEP 829's site does: path lines of ``.pth`` files, then
# ``.start`` entry points, resolved with ``pkgutil.resolve_name`` and called without arguments.
PEP_829_SITE = """
import os, pkgutil, sys
from pathlib import Path
site_dir = Path(SITE_DIR)
sys.path.append(str(site_dir))
for pth in sorted(site_dir.glob("*.pth")):
    for line in pth.read_text(encoding="utf-8-sig").splitlines():
        if line.strip() and not line.startswith(("#", "import ", "import\t")) and os.path.exists(site_dir / line):
            sys.path.append(str(site_dir / line.strip()))
RUN_PTH_IMPORTS and [exec(line) for pth in sorted(site_dir.glob("*.pth"))
                     for line in pth.read_text(encoding="utf-8-sig").splitlines() if line.startswith("import ")]
RUN_START_FILES and [pkgutil.resolve_name(line.strip())() for start in sorted(site_dir.glob("*.start"))
                     for line in start.read_text(encoding="utf-8-sig").splitlines()
                     if line.strip() and not line.startswith("#")]
"""


def pep_829_python(code: str, *, pth_imports: bool, start_files: bool) -> subprocess.CompletedProcess:
    import sysconfig

    site_dir = sysconfig.get_paths()["purelib"]  # python -S does not even set sys.prefix to the venv (site does)
    prelude = (
        f"SITE_DIR = {site_dir!r}\nRUN_PTH_IMPORTS = {pth_imports}\nRUN_START_FILES = {start_files}\n{PEP_829_SITE}\n"
    )
    return subprocess.run(
        [sys.executable, "-S", "-c", prelude + code], env=os.environ, capture_output=True, text=True, timeout=300
    )


def test_the_start_file_alone_patches_llamafactory_where_pth_import_lines_are_ignored():
    code = "import llamafactory.hparams.parser, llamafactory.data.loader, rejection_align; print(rejection_align.is_installed())"

    with_start = pep_829_python(code, pth_imports=False, start_files=True)
    without_either = pep_829_python(code, pth_imports=False, start_files=False)

    assert with_start.returncode == 0, with_start.stderr
    assert with_start.stdout.strip().endswith("True")
    assert without_either.stdout.strip().endswith("False")  # so it is the .start file that did it


def test_the_pth_line_and_the_start_file_together_put_one_finder_in_place():
    result = pep_829_python(
        "print(sum(type(f).__name__ == '_PatchOnImport' for f in sys.meta_path))", pth_imports=True, start_files=True
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"
