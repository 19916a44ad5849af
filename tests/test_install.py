"""The README's install path on plain Debian: `make deps` with Debian's own python3
(which refuses pip installs outside a virtual environment) builds the project's
venv with a dependency set pip finds no conflict in, and a failed pip install fails
the command instead of being recorded as done."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"


def _clone(tmp_path: Path) -> Path:
    dest = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True)
    # Working-tree changes not yet committed are part of what is under test.
    for rel in subprocess.run(["git", "ls-files", "-m", "-o", "--exclude-standard"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout.split():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    return dest


def _make_deps(clone: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "deps", f"PYTHON={SYSTEM_PYTHON}"], cwd=clone,
                          capture_output=True, text=True, timeout=1500,
                          env={**os.environ, **env})


# A cold `pip install` of every dependency into a new venv takes minutes on a small machine
# (about 8.5 on 2 shared cores, more with boto3's botocore and under load): more than the
# suite's default per-test timeout.
@pytest.mark.timeout(2400)
@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason="no Debian python3")
def test_make_deps_with_debians_python3(tmp_path: Path) -> None:
    externally = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sys, sysconfig, os; "
         "print(os.path.exists(os.path.join(sysconfig.get_path('stdlib'), "
         "'EXTERNALLY-MANAGED')))"], capture_output=True, text=True, check=True)
    clone = _clone(tmp_path)
    res = _make_deps(clone)
    assert res.returncode == 0, res.stdout + res.stderr
    vpy = clone / ".venv" / "bin" / "python"
    base = subprocess.run([str(vpy), "-c", "import sys; print(sys.base_prefix)"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert base == "/usr", base  # built on Debian's interpreter, not another one
    where = subprocess.run([str(vpy), "-c", "import eniway_operator, cni_plugin.agent; "
                            "print(eniway_operator.__file__)"], cwd="/",
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(clone)), where
    assert (clone / ".venv" / "bin" / "eniway-agent").exists()
    # One consistent set: boto3's botocore and the kubernetes client resolve together.
    log = (clone / ".venv" / "pip-install.log").read_text()
    assert "dependency conflicts" not in log and "incompatible" not in log, log
    check = subprocess.run([str(vpy), "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    both = subprocess.run([str(vpy), "-c", "import boto3, kubernetes, dateutil; "
                           "print(boto3.__version__, kubernetes.__version__)"], cwd="/",
                          capture_output=True, text=True)
    assert both.returncode == 0, both.stderr
    if externally.stdout.strip() == "True":
        # The reason for the venv: Debian's python3 itself refuses the install.
        refused = subprocess.run([SYSTEM_PYTHON, "-m", "pip", "install", "--dry-run",
                                  "sortedcontainers"], capture_output=True, text=True)
        assert refused.returncode != 0

    # A second run only verifies.
    again = _make_deps(clone)
    assert again.returncode == 0 and "pip install" not in again.stderr, again.stderr

    # A pip install that fails (no package source) fails `make deps` and records nothing.
    (clone / ".venv" / ".eniway-stamp").unlink()
    broken = _make_deps(clone, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path / "none"),
                        PIP_EXTRA_INDEX_URL="", PIP_NO_CACHE_DIR="1")
    assert broken.returncode != 0, broken.stderr
    assert "pip install failed" in broken.stderr
    assert not (clone / ".venv" / ".eniway-stamp").exists()
