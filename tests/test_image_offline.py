"""The image built offline (hack/build_image.py) holds what the Dockerfile's image holds:
the same Python distributions at the same versions (the ones pip resolves for the
Dockerfile's ``pip wheel -c image-requirements.txt .``), the project's entry points, the
runtime stage's Debian packages without the build stage's, and the Dockerfile's user,
command, environment and labels. The Dockerfile is read here independently of the
builder's own parser (tests/test_chart_image.py's)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest
from test_chart_image import _instructions, _labels

from build_image import DEFAULT_REF, LOCK, build
from localcluster import CACHE

REPO = Path(__file__).resolve().parent.parent
SITE = "usr/local/lib/python3.11/dist-packages/"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def image() -> Path:
    return build(CACHE / "images", DEFAULT_REF)  # cached by make deps


@pytest.fixture(scope="module")
def members(image: Path) -> dict[str, bytes]:
    """Small files of interest from every layer, later layers winning: dist-info
    metadata, console scripts, dpkg's status, passwd."""
    want = re.compile(rf"^(\./)?({re.escape(SITE)}[^/]+\.dist-info/(METADATA|entry_points"
                      r"\.txt)|usr/local/bin/[^/]+|var/lib/dpkg/status|etc/passwd)$")
    out: dict[str, bytes] = {}
    with tarfile.open(image) as archive:
        manifest = json.loads(archive.extractfile("manifest.json").read())  # type: ignore[union-attr]
        out["config.json"] = archive.extractfile(manifest[0]["Config"]).read()  # type: ignore[union-attr]
        for name in manifest[0]["Layers"]:
            with tarfile.open(fileobj=archive.extractfile(name)) as layer:
                for m in layer:
                    if m.isfile() and want.match(m.name):
                        out[m.name.removeprefix("./")] = layer.extractfile(m).read()  # type: ignore[union-attr]
    return out


def _lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_norm(name)] = version
    return pins


def _dockerfile_resolution() -> dict[str, str]:
    """What the Dockerfile's build stage installs: pip's resolution of the project with the
    constraints file its ``pip wheel`` line names."""
    (line,) = [r for w, r in _instructions() if w == "RUN" and "pip wheel" in r]
    words = shlex.split(line)
    constraints = REPO / words[words.index("-c") + 1]
    assert words[-1] == "." and constraints == LOCK
    copied = " ".join(r for w, r in _instructions() if w == "COPY")
    assert LOCK.name in copied, "the Dockerfile copies the lock into its build context"
    report = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
         "--report", "-", "-c", str(constraints), str(REPO)],
        capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    return {_norm(i["metadata"]["name"]): i["metadata"]["version"]
            for i in json.loads(report.stdout)["install"]}


def _dists(members: dict[str, bytes]) -> Iterator[tuple[str, str]]:
    for name, data in members.items():
        if name.endswith(".dist-info/METADATA"):
            meta = Parser().parsestr(data.decode())
            yield _norm(meta["Name"]), meta["Version"]


def test_python_distributions_are_the_dockerfiles(members: dict[str, bytes]) -> None:
    installed = dict(_dists(members))
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert installed == {**_lock(), "eniway": version}
    assert _dockerfile_resolution() == installed


def test_entry_points_are_the_projects(members: dict[str, bytes]) -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    (ep,) = [v for k, v in members.items() if "/eniway-" in k and k.endswith("entry_points.txt")]
    section = ep.decode().split("[console_scripts]", 1)[1].split("[", 1)[0]
    found = dict(line.replace(" ", "").split("=", 1) for line in section.splitlines()
                 if line.strip())
    assert found == scripts
    for name in scripts:  # run by the image's own interpreter
        assert members[f"usr/local/bin/{name}"].startswith(b"#!/usr/bin/python3\n"), name


def test_debian_packages_are_the_runtime_stages(members: dict[str, bytes]) -> None:
    status = members["var/lib/dpkg/status"].decode()
    installed = {m.group(1) for m in re.finditer(
        r"^Package: (\S+)\n(?:.+\n)*?Status: install ok installed", status, re.M)}
    stages: list[list[str]] = []
    for word, rest in _instructions():
        if word == "FROM":
            stages.append([])
        elif word == "RUN" and "apt-get install" in rest:
            cmd = rest.split("apt-get install", 1)[1].split("&&", 1)[0]
            stages[-1] += [w for w in cmd.split() if not w.startswith("-")]
    build_pkgs, runtime_pkgs = stages[0], stages[-1]
    assert runtime_pkgs and set(runtime_pkgs) <= installed
    assert {"python3", "ca-certificates"} <= installed  # the python slim base's
    assert not set(build_pkgs) & installed, "the bundle's build tools are purged"


def test_config_is_the_dockerfiles(members: dict[str, bytes], image: Path) -> None:
    config = json.loads(members["config.json"])["config"]
    ins = _instructions()
    user = [r for w, r in ins if w == "USER"][-1]
    assert config["User"] == user
    assert config["Cmd"] == json.loads([r for w, r in ins if w == "CMD"][-1])
    assert config["Labels"] == _labels()
    env = dict(e.split("=", 1) for e in config["Env"])
    for word, rest in ins[[w for w, _ in ins].index("FROM", 1):]:
        if word == "ENV":
            for item in shlex.split(rest):
                k, _, v = item.partition("=")
                assert env[k] == v
    uid = user.split(":")[0]
    assert any(line.split(":")[2] == uid for line in members["etc/passwd"].decode().splitlines())
    print(f"\nimage {DEFAULT_REF}: {image.stat().st_size / 1e6:.0f} MB (docker-archive, "
          "uncompressed)")
