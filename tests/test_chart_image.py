"""The image and the CNI installer: the Dockerfile's inputs exist and agree with the chart,
the Python bundle runs on a host that has nothing else, and the chart's init-container script
installs a CNI binary that runs.

No Docker engine here: the Dockerfile itself is checked statically; the two steps it runs that
matter at runtime (the interpreter bundle, the init-container script) are run for real.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_rbac import CHART, REPO, render

BUNDLER = REPO / "hack" / "bundle_python.py"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = (REPO / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _pattern(pat: str) -> re.Pattern[str]:
    out = re.escape(pat).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
    return re.compile(out.replace(r"\?", "[^/]") + "$")


def _dockerignored(rel: str) -> bool:
    """.dockerignore semantics: patterns in order, the last match wins, ! re-includes, and a
    pattern matching a directory matches everything under it."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pat = raw.strip()
        if not pat or pat.startswith("#"):
            continue
        negate = pat.startswith("!")
        rx = _pattern(pat.lstrip("!").rstrip("/"))
        if any(rx.match(p) for p in prefixes):
            ignored = not negate
    return ignored


def _labels() -> dict[str, str]:
    labels: dict[str, str] = {}
    for word, rest in _instructions():
        if word == "LABEL":
            for item in shlex.split(rest):
                k, _, v = item.partition("=")
                labels[k] = v
    return labels


def test_everything_the_dockerfile_copies_exists_and_is_in_the_context() -> None:
    copies = [rest for word, rest in _instructions() if word in ("COPY", "ADD")]
    assert copies
    checked = 0
    for rest in copies:
        args = [a for a in shlex.split(rest) if not a.startswith("--")]
        if "--from=" in rest:
            continue
        *sources, _dest = args
        for src in sources:
            path = REPO / src
            assert path.exists(), f"Dockerfile copies {src}, which does not exist"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()
                                                    and "__pycache__" not in p.parts]
            kept = [f for f in files if not _dockerignored(str(f.relative_to(REPO)))]
            assert kept, f"{src} is excluded by .dockerignore"
            checked += 1
    assert checked >= 4
    assert _dockerignored("tests/test_chart.py") and _dockerignored(".git/config")
    assert _dockerignored("operator/eniway_operator/__pycache__/x.pyc")
    assert not _dockerignored("operator/eniway_operator/main.py")


def test_base_image_pinned_and_versions_agree() -> None:
    ins = _instructions()
    args = dict(rest.split("=", 1) for word, rest in ins if word == "ARG" and "=" in rest)
    froms = [rest.split()[0] for word, rest in ins if word == "FROM"]
    assert len(froms) >= 2, "multi-stage"
    for ref in froms:
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], ref)
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", resolved), resolved
    labels = _labels()
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert labels["org.opencontainers.image.version"] == chart["appVersion"] == project["version"]
    assert f"eniway=={project['version']}" in " ".join(r for w, r in ins if w == "RUN")
    # The chart's default image is the one the Dockerfile says it builds.
    docs = render(show_only=("templates/operator-deployment.yaml",))
    dep = next(d for d in docs if d["kind"] == "Deployment")
    image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == labels["org.opencontainers.image.ref.name"]


def test_image_user_commands_and_paths_match_the_chart() -> None:
    ins = _instructions()
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1].split(":")[0] != "0" and users[-1].split(":")[0].isdigit()
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render(
        values={"cloud": {"provider": "cloudsim"}})}
    op_pod = docs[("Deployment", "eniway-operator")]["spec"]["template"]["spec"]
    assert str(op_pod["securityContext"]["runAsUser"]) == users[-1].split(":")[0]
    # Every command the chart runs is a console script of the project.
    scripts = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])
    agent_pod = docs[("DaemonSet", "eniway-agent")]["spec"]["template"]["spec"]
    sim_pod = docs[("Deployment", "eniway-cloudsim")]["spec"]["template"]["spec"]
    commands = {c["command"][0] for p in (op_pod, agent_pod, sim_pod) for c in p["containers"]}
    assert commands == {"eniway-operator", "eniway-agent", "eniway-cloudsim"}
    assert commands <= scripts and "eniway" in scripts
    # The bundle's place in the image and its build prefix match the init container.
    init_script = agent_pod["initContainers"][0]["args"][0]
    bundle_dest = next(shlex.split(r)[-1] for w, r in ins
                       if w == "COPY" and "--from=build" in r and " /bundle " in f" {r} ")
    assert f"src={bundle_dest}\n" in init_script
    args = dict(rest.split("=", 1) for word, rest in ins if word == "ARG" and "=" in rest)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert args["CNI_LIB_DIR"] == values["agent"]["installCNI"]["libDir"]


@pytest.fixture(scope="module")
def empty_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("needs root (chroot)")
    if not shutil.which("patchelf"):
        pytest.fail("patchelf missing: make deps (hack/install-deps.sh)")
    root = tmp_path_factory.mktemp("host")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _in_root(root: Path, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` chrooted into ``root``, environment empty unless given."""
    def enter() -> None:
        os.chroot(root)
        os.chdir("/")

    kw.setdefault("env", {})
    return subprocess.run(argv, preexec_fn=enter, capture_output=True, text=True, timeout=60,
                          **kw)


def _install_in_root(root: Path, bin_dir: str, conf_dir: str, lib_dir: str) -> None:
    """Run the real installer inside ``root`` (with the bundled interpreter itself), so
    every path it writes is the one the host sees."""
    src = root / "src"
    shutil.copytree(REPO / "cni_plugin", src / "cni_plugin",
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import sys; sys.path.insert(0, '/src'); from cni_plugin.cli import main; "
            f"sys.exit(main(['install-cni', '--bin-dir', {bin_dir!r}, '--conf-dir', "
            f"{conf_dir!r}, '--lib-dir', {lib_dir!r}, '--python', "
            f"{lib_dir + '/python/bin/python3'!r}]))")
    out = _in_root(root, [f"{lib_dir}/python/bin/python3", "-I", "-c", code])
    assert out.returncode == 0, out.stderr
    shutil.rmtree(src)


def test_bundled_interpreter_runs_the_cni_binary_on_a_bare_host(empty_root: Path) -> None:
    """A root file system holding only the bundle and the installed CNI files (no libc, no
    /proc, no /usr): the CNI binary runs there exactly as kubelet runs it."""
    out = subprocess.run([sys.executable, str(BUNDLER), str(empty_root / "opt/eniway/python")],
                         check=True, capture_output=True, text=True, timeout=300)
    bundle_id = out.stdout.strip()
    assert re.fullmatch(r"3\.11\.\d+-[0-9a-f]{12}", bundle_id)
    assert (empty_root / "opt/eniway/python/BUNDLE_ID").read_text().strip() == bundle_id
    assert not (empty_root / "usr").exists() and not (empty_root / "lib").exists()
    _install_in_root(empty_root, "/opt/cni/bin", "/etc/cni/net.d", "/opt/eniway")
    launcher = (empty_root / "opt/cni/bin/eniway").read_text()
    assert launcher.startswith("#!/opt/eniway/python/bin/python3 -IS\n")
    version = _in_root(empty_root, ["/opt/cni/bin/eniway"], input="",
                       env={"CNI_COMMAND": "VERSION"})
    assert version.returncode == 0, version.stderr
    assert "1.1.0" in json.loads(version.stdout)["supportedVersions"]
    # The interpreter took nothing from outside its prefix.
    probe = _in_root(empty_root, ["/opt/eniway/python/bin/python3", "-IS", "-c",
                                  "import sys, json, socket, hashlib, select, ssl; "
                                  "print(sys.prefix)"])
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "/opt/eniway/python"


def _init_script(values: dict[str, Any]) -> str:
    docs = render(values=values, show_only=("templates/agent-daemonset.yaml",))
    return str(docs[0]["spec"]["template"]["spec"]["initContainers"][0]["args"][0])


def test_init_container_script_installs_and_upgrades(tmp_path: Path) -> None:
    """The chart's own init-container script, run for real against a scratch "host": it
    installs the bundle under a versioned directory, swaps the symlink atomically, installs
    a launcher that runs, and on upgrade keeps only the new and the previous bundle."""
    if not shutil.which("patchelf"):
        pytest.fail("patchelf missing: make deps (hack/install-deps.sh)")
    host = tmp_path / "host"
    bin_dir, conf_dir, lib_dir = host / "opt/cni/bin", host / "etc/cni/net.d", host / "opt/eni"
    image = tmp_path / "image"
    values = {"agent": {"mtu": 1450, "installCNI": {
        "enabled": True, "binDir": str(bin_dir), "confDir": str(conf_dir),
        "libDir": str(lib_dir)}}}
    script = _init_script(values)
    assert "src=/usr/local/lib/eniway/python\n" in script

    def run(bundle_note: str) -> subprocess.CompletedProcess[str]:
        staged = image / "python"
        subprocess.run([sys.executable, str(BUNDLER), str(staged), "--prefix",
                        f"{lib_dir}/python"], check=True, capture_output=True, timeout=300)
        if bundle_note:  # a different image build: different content, different id
            (staged / "lib" / "NOTE").write_text(bundle_note)
            (staged / "BUNDLE_ID").write_text(f"{bundle_note}\n")
        body = script.replace("src=/usr/local/lib/eniway/python", f"src={staged}")
        return subprocess.run(["/bin/sh", "-ec", body], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PATH": os.environ["PATH"]})

    first = run("")
    assert first.returncode == 0, first.stderr
    first_id = (image / "python" / "BUNDLE_ID").read_text().strip()
    assert os.readlink(lib_dir / "python") == f"python-{first_id}"
    launcher = (bin_dir / "eniway").read_text()
    assert launcher.startswith(f"#!{lib_dir}/python/bin/python3 -IS\n")
    conf = json.loads((conf_dir / "10-eniway.conflist").read_text())
    assert conf["plugins"][0]["type"] == "eniway" and conf["plugins"][0]["mtu"] == 1450
    version = subprocess.run([str(bin_dir / "eniway")], input="", capture_output=True,
                             text=True, env={"CNI_COMMAND": "VERSION"}, timeout=30)
    assert version.returncode == 0 and "supportedVersions" in version.stdout

    for note in ("build-two", "build-three"):
        again = run(note)
        assert again.returncode == 0, again.stderr
        assert os.readlink(lib_dir / "python") == f"python-{note}"
    kept = sorted(p.name for p in lib_dir.iterdir() if p.name.startswith("python-"))
    assert kept == ["python-build-three", "python-build-two"]

    # A bundle built for another prefix is refused with a clear message, not installed
    # silently broken.
    staged = image / "python"
    subprocess.run([sys.executable, str(BUNDLER), str(staged), "--prefix",
                    str(tmp_path / "nowhere" / "python")], check=True, capture_output=True,
                   timeout=300)
    body = script.replace("src=/usr/local/lib/eniway/python", f"src={staged}")
    bad = subprocess.run(["/bin/sh", "-ec", body], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "is built for" in bad.stderr, bad.stderr


def test_wheel_builds_from_the_docker_build_context(tmp_path: Path) -> None:
    """The Dockerfile's build stage, as far as it can run offline: the files the build
    context keeps (after .dockerignore), laid out as its COPY lines do, build the project's
    wheel, and the wheel holds every entry point the chart runs, the instance-type table and
    the CNI shim."""
    import zipfile

    ctx = tmp_path / "src"
    copies = [shlex.split(r) for w, r in _instructions() if w == "COPY" and "--from" not in r]
    for args in copies:
        *sources, dest = args
        for src in sources:
            path = REPO / src
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*")
                                                         if p.is_file())
            for f in files:
                rel = f.relative_to(REPO)
                if _dockerignored(str(rel)):
                    continue
                if dest.startswith("/"):
                    continue  # copied outside the build dir (the bundler), not in the wheel
                target = ctx / dest / (rel.name if path.is_file() else f.relative_to(path))
                if path.is_file() and not dest.endswith("/"):
                    target = ctx / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, target)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "--wheel-dir", str(tmp_path / "wheels"),
                          str(ctx)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (wheel,) = (tmp_path / "wheels").glob("eniway-0.1.0-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "cni_plugin/shim.py" in names and "cni_plugin/contract.py" in names
    assert "eniway_operator/data/aliyun_instance_types.tsv" in names
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    for script in ("eniway-operator", "eniway-agent", "eniway-cloudsim", "eniway "):
        assert script in entry_points, script
