"""``pip install rejection-align`` into an environment that already holds LLaMA-Factory keeps that LLaMA-Factory.

Most users have LLaMA-Factory from a clone of its ``main`` (0.9.6.dev0, installed editable); others 0.9.4 or 0.9.5
from the registry. The test runs in whichever environment runs the suite (``scripts/test.sh`` runs it beside each
of the three): it clones that environment (hard links, so it is cheap and the original is never touched), installs
this project into the clone the way a user would (``pip install <project>``: not editable, dependencies resolved),
and checks that LLaMA-Factory, transformers and torch are the same distributions afterwards.
"""

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest


pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
KEPT = ("llamafactory", "transformers", "torch")
PROBE = """
import json, sys
from importlib.metadata import distribution
out = {}
for name in sys.argv[1:]:
    dist = distribution(name)
    out[name] = {"version": dist.version, "direct_url": dist.read_text("direct_url.json")}
print(json.dumps(out))
"""


def installed(python: Path) -> dict:
    result = subprocess.run([str(python), "-c", PROBE, *KEPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def cloned_env():
    """A hard-linked copy of the running environment; pip replaces files rather than editing them, so it is safe."""
    prefix = Path(sys.prefix)
    if prefix == Path(sys.base_prefix):
        pytest.fail("the suite must run in a virtual environment (scripts/test.sh makes one)")

    workdir = Path(tempfile.mkdtemp(prefix=".venv-install-check-", dir=prefix.parent))
    clone = workdir / "env"
    try:
        subprocess.run(["cp", "-al", str(prefix), str(clone)], check=True, timeout=600)
        yield clone
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_installing_this_package_keeps_the_installed_llamafactory_and_transformers(cloned_env, tmp_path):
    python = cloned_env / "bin" / "python"
    before = installed(python)
    report = tmp_path / "report.json"

    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--report", str(report), str(ROOT)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    planned = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert "rejection-align" in planned or "rejection_align" in planned
    assert planned.isdisjoint(KEPT), f"pip replaced {sorted(planned & set(KEPT))}"
    assert installed(python) == before
