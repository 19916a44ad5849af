"""Packaging, the install-cni command and the control-plane harness itself."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from cni_plugin import contract
from localcluster import LocalCluster

REPO = Path(__file__).resolve().parent.parent


def test_operator_folder_is_not_a_package() -> None:
    # A package importable as `operator` would shadow the standard library module.
    assert not (REPO / "operator" / "__init__.py").exists()
    out = subprocess.run([sys.executable, "-c", "import operator, eniway_operator; "
                          "print(operator.__file__)"], capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert "site-packages" not in out.stdout and "lib/python3" in out.stdout


def test_package_data_globs_match_files() -> None:
    """Each package-data entry names files that exist (a wheel would silently lack them)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    roots = project["tool"]["setuptools"]["packages"]["find"]["where"]
    for package, globs in project["tool"]["setuptools"]["package-data"].items():
        folder = next(REPO / r / package for r in roots if (REPO / r / package).is_dir())
        for pattern in globs:
            assert list(folder.glob(pattern)), f"{package}: {pattern} matches nothing"


@pytest.mark.parametrize("script", ["eniway", "eniway-operator", "eniway-agent",
                                    "eniway-cloudsim"])
def test_console_scripts_installed(script: str) -> None:
    res = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "usage" in res.stdout.lower()


def test_contract_is_stdlib_only() -> None:
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); before = set(sys.modules); "
            "import cni_plugin.contract; "
            "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
            "print(sorted(new - set(sys.stdlib_module_names) - {'cni_plugin'}))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                         text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_install_cni_writes_binary_and_conflist(tmp_path: Path) -> None:
    bin_dir, conf_dir, lib_dir = tmp_path / "bin", tmp_path / "net.d", tmp_path / "lib"
    subprocess.run(["eniway", "install-cni", "--bin-dir", str(bin_dir), "--conf-dir",
                    str(conf_dir), "--lib-dir", str(lib_dir)], check=True, capture_output=True)
    binary = bin_dir / contract.CNI_BINARY_NAME
    assert os.access(binary, os.X_OK)
    shebang = binary.read_text().splitlines()[0]
    assert shebang.startswith("#!") and shebang.endswith(" -IS")
    conf = json.loads((conf_dir / contract.CNI_CONFLIST_NAME).read_text())
    assert conf["name"] == contract.CNI_NETWORK_NAME
    assert conf["plugins"][0]["type"] == contract.CNI_BINARY_NAME
    # The installed binary runs from its own copy, with no access to site-packages.
    res = subprocess.run([str(binary)], env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin"},
                         capture_output=True, text=True, input="{}", timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1.1.0" in json.loads(res.stdout)["supportedVersions"]


def test_veth_name_is_stable_and_short() -> None:
    a = contract.veth_name("default", "web-1")
    assert a == contract.veth_name("default", "web-1")
    assert a != contract.veth_name("default", "web-2")
    assert len(a) <= 15 and a.startswith("eni")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not a listener
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.cluster
def test_localcluster_stop_leaves_nothing() -> None:
    c = LocalCluster(controllers=False, install_crds=False).start()
    pids = [p.pid for p in c.procs.values()]
    ports = list(c.ports.values())
    workdir = c.workdir
    assert c.timings["apiserver_ready_s"] > 0
    c.stop()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or \
            "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert all(_port_free(p) for p in ports)
    assert not workdir.exists()


@pytest.mark.cluster
def test_localcluster_children_die_with_parent(tmp_path: Path) -> None:
    # The harness is SIGKILLed: its children must not outlive it (PR_SET_PDEATHSIG).
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(REPO / 'hack')!r})\n"
        "from localcluster import LocalCluster\n"
        "c = LocalCluster(controllers=False, install_crds=False).start()\n"
        "print(' '.join(str(p.pid) for p in c.procs.values()), flush=True)\n"
        "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pids = [int(x) for x in proc.stdout.readline().split()]
    assert pids
    proc.kill()
    proc.wait()
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists() or \
                    "zombie" in Path(f"/proc/{pid}/status").read_text():
                break
            subprocess.run(["sleep", "0.1"], check=False)
        else:
            pytest.fail(f"child {pid} outlived its parent")
