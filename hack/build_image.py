#!/usr/bin/env python3
"""Build eniway's image without a registry, from Debian packages: a docker-archive
tarball that ``ctr -n k8s.io images import`` takes.

The Dockerfile stays the recipe where a registry is reachable; this build reads it, so the
two cannot drift: the runtime stage's Debian packages, its ENV, LABELs, USER, CMD and the
``groupadd``/``useradd`` commands, the build stage's Debian packages (for the CNI
interpreter bundle) and its ``CNI_LIB_DIR`` all come from the Dockerfile; both install
the dependencies pinned in image-requirements.txt.

Two layers, each cached in ``$ENIWAY_CACHE/images`` under a key of its inputs:

- base: a Debian bookworm rootfs (``mmdebstrap --variant=minbase``) with python3, the
  runtime packages, the pinned dependencies (wheels from the package index) and the CNI
  interpreter bundle (built in the rootfs by hack/bundle_python.py, with the build
  packages purged afterwards);
- app: the project's own wheel, installed over the base.

    python3 hack/build_image.py [--out DIR] [--ref eniway.local/eniway:0.1.0]
    python3 hack/build_image.py --relock    # rewrite image-requirements.txt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
LOCK = REPO / "image-requirements.txt"
CACHE = Path(os.environ.get("ENIWAY_CACHE", Path.home() / ".cache" / "eniway"))
SUITE = "bookworm"
# The python:*-slim base image brings these; Debian's minbase does not.
BASE_PACKAGES = ("python3", "ca-certificates")
# What Debian's slim images leave out (the python:*-slim base is one).
SLIM_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*",
                 "/usr/share/locale/*", "/usr/share/groff/*", "/usr/share/lintian/*",
                 "/usr/share/linda/*")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
APP_SOURCES = ("pyproject.toml", "README.md", "operator", "cni_plugin")


STALE_S = 86400


def version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


DEFAULT_REF = f"eniway.local/eniway:{version()}"


# -- the Dockerfile, read -------------------------------------------------------------------

@dataclass
class Stage:
    """What this build takes from one stage of the Dockerfile."""

    apt: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    args: dict[str, str] = field(default_factory=dict)
    commands: list[list[str]] = field(default_factory=list)  # each `&&`-joined command
    user: str = ""
    cmd: list[str] = field(default_factory=list)


def _instructions(text: str) -> Iterable[tuple[str, str]]:
    """(INSTRUCTION, rest) with continuation lines joined and comments dropped."""
    logical = ""
    for line in text.splitlines():
        if not logical and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        logical += line
        word, _, rest = logical.strip().partition(" ")
        yield word.upper(), rest.strip()
        logical = ""


def _pairs(rest: str) -> dict[str, str]:
    return dict(w.split("=", 1) for w in shlex.split(rest))


def parse_dockerfile(text: str) -> list[Stage]:
    """The Dockerfile's stages in order (the last one is the runtime image)."""
    stages: list[Stage] = []
    for word, rest in _instructions(text):
        if word == "FROM":
            stages.append(Stage())
        if not stages:
            continue
        st = stages[-1]
        if word == "ENV":
            st.env.update(_pairs(rest))
        elif word == "LABEL":
            st.labels.update(_pairs(rest))
        elif word == "ARG":
            name, _, default = rest.partition("=")
            st.args[name] = default
        elif word == "USER":
            st.user = rest
        elif word == "CMD":
            st.cmd = json.loads(rest)
        elif word == "RUN":
            words = [w for w in shlex.split(rest) if not w.startswith("--mount=")]
            cmds: list[list[str]] = [[]]
            for w in words:
                if w == "&&":
                    cmds.append([])
                else:
                    cmds[-1].append(w)
            for c in cmds:
                if c[:2] == ["apt-get", "install"]:
                    st.apt += [w for w in c[2:] if not w.startswith("-")]
                else:
                    st.commands.append(c)
    if len(stages) < 2:
        raise SystemExit(f"{DOCKERFILE}: expected a build stage and a runtime stage")
    return stages


# -- inputs and cache -----------------------------------------------------------------------

def _files(paths: Iterable[str]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        path = REPO / p
        if path.is_dir():
            out += [f for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts
                    and not any(part.endswith(".egg-info") for part in f.parts)]
        else:
            out.append(path)
    return sorted(out)


def key_of(files: Iterable[Path], *extra: str) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    for e in extra:
        h.update(e.encode() + b"\0")
    return h.hexdigest()[:16]


def base_key() -> str:
    stages = parse_dockerfile(DOCKERFILE.read_text())
    return key_of([LOCK, REPO / "hack" / "bundle_python.py"], SUITE,
                  *base_recipe(stages[0], stages[-1]))


def app_key() -> str:
    return key_of(_files(APP_SOURCES), base_key())


def log(msg: str) -> None:
    print(f"[image] {msg}", file=sys.stderr, flush=True)


def run(*args: str, **kw: object) -> None:
    subprocess.run(list(args), check=True, **kw)  # type: ignore[call-overload]


def _pip() -> list[str]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]


def _pip_wheel_file() -> Path:
    """A pip wheel to run inside the rootfs (``python3 pip.whl/pip``): the image keeps no pip."""
    found = sorted(Path("/usr/share/python-wheels").glob("pip-*.whl"))
    if found:
        return found[-1]
    raise SystemExit("no pip wheel in /usr/share/python-wheels: apt-get install python3-venv")


# -- base layer -----------------------------------------------------------------------------

INSIDE = "/tmp/eniway-build"  # where the build's inputs are staged in the rootfs


def base_recipe(build: Stage, runtime: Stage) -> list[str]:
    """mmdebstrap's arguments, its customize hook last (run after the inputs are staged in
    the rootfs at INSIDE): the base layer's key is made of them."""
    lib_dir = build.args.get("CNI_LIB_DIR") or "/opt/eniway"
    users = [c for c in runtime.commands if c and c[0] in ("groupadd", "useradd")]
    script = [
        f"chroot \"$1\" python3 {INSIDE}/pip.whl/pip install --disable-pip-version-check -q "
        f"--root-user-action=ignore --no-index --find-links {INSIDE}/wheels "
        f"--break-system-packages -r {INSIDE}/requirements.txt",
        f"chroot \"$1\" python3 {INSIDE}/bundle_python.py /usr/local/lib/eniway/python "
        f"--prefix {lib_dir}/python",
        f"chroot \"$1\" apt-get purge -y -qq --auto-remove {' '.join(build.apt)} >/dev/null",
        *(f"chroot \"$1\" {shlex.join(c)}" for c in users),
        f"rm -rf \"$1{INSIDE}\" \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*",
    ]
    packages = [*BASE_PACKAGES, *runtime.apt, *build.apt]
    return ["--variant=minbase", "--mode=root", "--format=tar", "--skip=output/dev",
            f"--include={','.join(packages)}",
            # /usr merged by a hook, without the usrmerge package (and the perl it needs)
            "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
            *(f"--dpkgopt=path-exclude={p}" for p in SLIM_EXCLUDES),
            "--dpkgopt=path-include=/usr/share/doc/*/copyright", " && ".join(script)]


def build_base(dest: Path, build: Stage, runtime: Stage, work: Path) -> None:
    """mmdebstrap the rootfs, install the pinned wheels and the CNI bundle in it."""
    wheels = work / "wheels"
    log("fetching the pinned dependencies' wheels")
    run(*_pip(), "wheel", "--wheel-dir", str(wheels), "--no-deps", "-r", str(LOCK))
    stage_dir = work / "stage"
    stage_dir.mkdir()
    shutil.copytree(wheels, stage_dir / "wheels")
    shutil.copy(LOCK, stage_dir / "requirements.txt")
    shutil.copy(REPO / "hack" / "bundle_python.py", stage_dir / "bundle_python.py")
    shutil.copy(_pip_wheel_file(), stage_dir / "pip.whl")
    *opts, script = base_recipe(build, runtime)
    log(f"mmdebstrap {SUITE}: {opts[4].split('=', 1)[1]}")
    tmp = dest.with_suffix(".tmp")
    stage = f"cp -a {shlex.quote(str(stage_dir))} \"$1{INSIDE}\""
    run("mmdebstrap", "--quiet", *opts, f"--customize-hook={stage} && {script}", SUITE,
        str(tmp))
    tmp.rename(dest)


# -- app layer ------------------------------------------------------------------------------

def build_app(dest: Path, base: Path, work: Path) -> None:
    """The project's wheel installed over the base: only what it adds goes in the layer."""
    log("building the eniway wheel")
    wheels = work / "app-wheel"
    run(*_pip(), "wheel", "--no-deps", "--wheel-dir", str(wheels), str(REPO))
    (wheel,) = wheels.glob("eniway-*.whl")
    root = work / "rootfs"
    root.mkdir()
    run("tar", "-xf", str(base), "-C", str(root))
    inside = Path(INSIDE)
    (root / inside.relative_to("/")).mkdir(parents=True)
    shutil.copy(wheel, root / inside.relative_to("/") / wheel.name)
    shutil.copy(_pip_wheel_file(), root / inside.relative_to("/") / "pip.whl")
    stage = inside / "layer"
    # Without --no-deps: a dependency missing from the base (not in the lock) fails here.
    run("chroot", str(root), "python3", str(inside / "pip.whl" / "pip"), "install",
        "--disable-pip-version-check", "-q", "--no-index",
        "--root-user-action=ignore", "--no-warn-script-location", "--break-system-packages",
        "--root", str(stage),
        str(inside / wheel.name), env={**os.environ, "PATH": PATH})
    tmp = dest.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        src = root / stage.relative_to("/")
        for path in sorted(src.rglob("*")):
            info = tar.gettarinfo(str(path), "./" + str(path.relative_to(src)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"  # mtimes kept: the .pyc files check them
            if info.isfile():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    tmp.rename(dest)


# -- the archive ----------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def image_config(runtime: Stage, diff_ids: list[str]) -> dict[str, object]:
    env = {"PATH": PATH, **runtime.env}
    return {
        "architecture": "amd64", "os": "linux",
        "config": {"Env": [f"{k}={v}" for k, v in env.items()], "Cmd": runtime.cmd,
                   "User": runtime.user, "Labels": runtime.labels},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        "history": [{"created_by": f"hack/build_image.py: mmdebstrap {SUITE} base"},
                    {"created_by": "hack/build_image.py: eniway wheel"}],
    }


def write_archive(dest: Path, ref: str, runtime: Stage, layers: list[Path]) -> None:
    """A docker-archive (``docker save`` layout) of the layers, tagged ``ref``."""
    diff_ids = [_sha256(p) for p in layers]
    config = json.dumps(image_config(runtime, diff_ids), sort_keys=True).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [ref],
                 "Layers": [f"{d}/layer.tar" for d in diff_ids]}]
    tmp = dest.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for d, p in zip(diff_ids, layers, strict=True):
            tar.add(str(p), f"{d}/layer.tar")
        for name, data in ((config_name, config),
                           ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, __import__("io").BytesIO(data))
    tmp.rename(dest)


def unpinned() -> list[str]:
    """pyproject.toml's dependencies that image-requirements.txt does not pin."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = {re.sub(r"[-_.]+", "-", line.split("==")[0]).lower()
              for line in LOCK.read_text().splitlines() if "==" in line}
    names = [re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]).lower()
             for d in deps]
    return [n for n in names if n not in pinned]


def build(out: Path, ref: str) -> Path:
    """The image archive for the current inputs (cached); returns its path."""
    if missing := unpinned():
        raise SystemExit(f"{LOCK.name} does not pin {', '.join(missing)} (a dependency in "
                         "pyproject.toml): run python3 hack/build_image.py --relock")
    stages = parse_dockerfile(DOCKERFILE.read_text())
    build_stage, runtime = stages[0], stages[-1]
    out.mkdir(parents=True, exist_ok=True)
    tag = ref.rsplit(":", 1)[1]
    dest = out / f"eniway-{tag}-{app_key()}.tar"
    if dest.exists():
        dest.touch()  # in use: kept by the clean-up below
        log(f"{ref}: cached in {dest}")
        return dest
    t0 = time.monotonic()
    base = out / f"eniway-base-{base_key()}.layer.tar"
    app = out / f"eniway-app-{app_key()}.layer.tar"
    with tempfile.TemporaryDirectory(prefix="eniway-image-") as tmp:
        if not base.exists():
            build_base(base, build_stage, runtime, Path(tmp))
        if not app.exists():
            build_app(app, base, Path(tmp))
    # builds of other sources (other checkouts share the cache) unused for a day
    for old in out.glob("eniway-*.tar"):
        if old not in (base, app) and time.time() - old.stat().st_mtime > STALE_S:
            old.unlink(missing_ok=True)
    write_archive(dest, ref, runtime, [base, app])
    log(f"{ref}: built {dest} ({dest.stat().st_size / 1e6:.0f} MB) in "
        f"{time.monotonic() - t0:.0f}s")
    return dest


def relock() -> None:
    """Resolve pyproject.toml's dependencies and pin them in image-requirements.txt."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        run(*_pip(), "install", "--dry-run", "--ignore-installed", "--report", str(report),
            str(REPO))
        pins = sorted((re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(),
                       i["metadata"]["version"])
                      for i in json.loads(report.read_text())["install"]
                      if i["metadata"]["name"] != "eniway")
    head = [line for line in LOCK.read_text().splitlines() if line.startswith("#")]
    LOCK.write_text("\n".join([*head, *(f"{n}=={v}" for n, v in pins)]) + "\n")
    log(f"{LOCK.name}: {len(pins)} pins")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CACHE / "images")
    parser.add_argument("--ref", default=DEFAULT_REF)
    parser.add_argument("--relock", action="store_true")
    args = parser.parse_args(argv)
    if args.relock:
        relock()
        return 0
    print(build(args.out, args.ref))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
