"""``pip install 'rejection-align[lmms]'`` beside an installed LLaMA-Factory: a working lmms-eval, nothing replaced.

As ``tests/test_install.py``, in a hard-linked clone of the running environment. The clone first gets what a
LLaMA-Factory 0.9.5 environment holds today (filelock 4.x, with which lmms-eval 0.7.3 fails every task) and loses
lmms-eval, so the extra is really installed; then it must bring lmms-eval and a filelock that works, keep
LLaMA-Factory, transformers and torch, and lmms-eval must find the ``llamafactory`` model by its entry point.
"""

import json
import subprocess

import pytest

from test_install import KEPT, ROOT, cloned_env, installed  # noqa: F401 (cloned_env is a fixture)


pytest.importorskip(
    "lmms_eval",
    reason="lmms-eval is not installed: the [lmms] extra is checked in the environments that have it (CI: the "
    "LLaMA-Factory 0.9.5 leg)",
)

pytestmark = pytest.mark.slow

PROBE = """
from importlib.metadata import version
from lmms_eval.models import get_model
print(version("filelock"), get_model("llamafactory").__name__)
"""


def pip(python, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(python), "-m", "pip", *args], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_the_lmms_extra_installs_a_working_lmms_eval_and_keeps_llamafactory(cloned_env, tmp_path):  # noqa: F811
    python = cloned_env / "bin" / "python"
    pip(python, "uninstall", "--yes", "--quiet", "lmms_eval")
    pip(python, "install", "--quiet", "filelock>=4")  # what a fresh LLaMA-Factory 0.9.5 environment resolves to
    before = installed(python)
    report = tmp_path / "report.json"

    pip(python, "install", "--quiet", "--report", str(report), f"{ROOT}[lmms]")

    planned = {
        item["metadata"]["name"].lower().replace("_", "-") for item in json.loads(report.read_text())["install"]
    }
    assert {"rejection-align", "lmms-eval", "filelock"} <= planned
    assert planned.isdisjoint(KEPT), f"pip replaced {sorted(planned & set(KEPT))}"
    assert installed(python) == before
    probe = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    filelock_version, model_class = probe.stdout.split()
    assert int(filelock_version.split(".")[0]) < 4
    assert model_class == "LlamaFactoryLMM"
