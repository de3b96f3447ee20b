"""The ``rejection-align`` command line: every command listed, and a data command imports no evaluation module."""

import subprocess
import sys

import pytest

from rejection_align.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


@pytest.mark.parametrize("argv", [["mix", "--help"], ["-v", "stats", "--help"]])
def test_a_data_command_imports_its_module_and_none_of_the_evaluation_demo_or_hook_commands(argv):
    code = (
        "import sys\n"
        "from rejection_align import cli\n"
        "try:\n"
        f"    cli.main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in cli.COMMANDS.values() if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = eval(result.stdout.strip().splitlines()[-1])
    assert COMMANDS[argv[-2]] in loaded
    assert [module for module in loaded if not module.startswith("rejection_align.data.")] == []


def test_an_unknown_command_is_refused_with_the_list_of_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["mixx"])
    assert exit_.value.code == 2
    assert "invalid choice: 'mixx'" in capsys.readouterr().err


# A command whose run logs like a library at import (numexpr's "NumExpr defaulting to 2 threads.") and like us.
_LOGGING_COMMAND = """
import logging, sys
import rejection_align.data.stats as stats
from rejection_align import cli

def run(args):
    logging.getLogger("numexpr.utils").info("library info line")
    logging.getLogger("numexpr.utils").warning("library warning line")
    logging.getLogger("rejection_align.data.stats").info("our info line")
    return 0

stats.run = run
raise SystemExit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_library_info_lines_are_shown_only_with_verbose_while_ours_and_warnings_always_are(tmp_path, verbose):
    argv = ["-v"] * verbose + ["stats", str(tmp_path / "any.json")]
    proc = subprocess.run([sys.executable, "-c", _LOGGING_COMMAND, *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "our info line" in proc.stderr
    assert "library warning line" in proc.stderr
    assert ("library info line" in proc.stderr) is verbose
