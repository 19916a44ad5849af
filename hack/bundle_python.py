#!/usr/bin/env python3
"""Build a self-contained copy of this Python interpreter for the CNI binary's host.

Kubelet runs /opt/cni/bin/eniway in the host's filesystem, where Python may be missing or
too old. The image carries this bundle; the agent's init container copies it to the host's
``PREFIX`` (default /opt/eniway/python) and the CNI launcher's shebang points at it.

The bundle brings its own glibc: the interpreter's ELF interpreter is set to the bundled
``ld-linux`` at ``PREFIX/lib`` and every object's RPATH is ``PREFIX/lib``, so the host
needs nothing but a Linux kernel of the same CPU architecture. The standard library is
byte-compiled with hash-based (mtime-independent) .pyc files, so copying does not make them
stale and the first CNI call does not compile anything.

    python3 hack/bundle_python.py OUT_DIR [--prefix /opt/eniway/python]

OUT_DIR must end up at PREFIX on the target (the loader path is absolute).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

# Parts of the standard library the CNI shim can never need.
SKIP_DIRS = {
    "site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib", "tkinter",
    "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "__pycache__", "venv",
}
SKIP_DYNLOAD = re.compile(r"^(_tkinter|_test|xx|_xx|_ctypes_test)")
_LDD_LINE = re.compile(r"^\s*(?:(\S+)\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)")
# glibc's own objects: copied, never patched (they find each other through the loader).
_GLIBC = re.compile(r"^(ld-linux.*|ld64.*|libc|libm|libdl|libpthread|librt|libutil|"
                    r"libresolv|libanl|libnsl|libcrypt|libmvec)(\.so.*|-.*)$")


def _ldd(path: Path) -> list[Path]:
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
    if out.returncode != 0 and "not a dynamic executable" in out.stdout + out.stderr:
        return []
    deps = []
    for line in out.stdout.splitlines():
        if "not found" in line:
            raise RuntimeError(f"{path}: unresolved dependency: {line.strip()}")
        m = _LDD_LINE.match(line)
        if m:
            deps.append(Path(m.group(2)))
    return deps


def _patchelf(*args: str) -> None:
    subprocess.run(["patchelf", *args], check=True, capture_output=True)


def _copy_stdlib(src: Path, dst: Path) -> None:
    def ignore(directory: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n in SKIP_DIRS or n.startswith("config-")}
        if Path(directory).name == "lib-dynload":
            skip |= {n for n in names if SKIP_DYNLOAD.match(n)}
        return skip

    shutil.copytree(src, dst, ignore=ignore, symlinks=False)


def bundle(out: Path, prefix: str) -> str:
    """Build the bundle in ``out``; returns its id (version and content hash)."""
    exe = Path(os.path.realpath(sys.executable))
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    stdlib = Path(sysconfig.get_path("stdlib"))
    if out.exists():
        shutil.rmtree(out)
    (out / "bin").mkdir(parents=True)
    lib = out / "lib"
    lib.mkdir()
    shutil.copy2(exe, out / "bin" / "python3")
    _copy_stdlib(stdlib, lib / ver)

    # Every shared object the interpreter and its extension modules load, glibc included.
    dynload = lib / ver / "lib-dynload"
    objects = [out / "bin" / "python3", *sorted(dynload.glob("*.so"))]
    loader: Path | None = None
    copied: set[str] = set()
    for obj in objects:
        for dep in _ldd(obj):
            if dep.name.startswith(("ld-linux", "ld64")):
                loader = dep
            if dep.name not in copied:
                shutil.copy2(os.path.realpath(dep), lib / dep.name)
                (lib / dep.name).chmod(0o755)
                copied.add(dep.name)
    if loader is None:
        raise RuntimeError(f"{exe}: no ELF interpreter found (static build?)")

    # Debug symbols are most of an unstripped libpython's size (about 23 MB of 25).
    if shutil.which("strip"):
        for name in sorted(copied):
            if not _GLIBC.match(name):
                subprocess.run(["strip", "--strip-unneeded", str(lib / name)], check=True)

    # Absolute paths, not $ORIGIN: glibc resolves $ORIGIN through /proc/self/exe, which a
    # minimal environment may lack, and the loader path is absolute anyway.
    rpath = f"{prefix}/lib"
    _patchelf("--set-interpreter", f"{rpath}/{loader.name}", "--force-rpath",
              "--set-rpath", rpath, str(out / "bin" / "python3"))
    for so in sorted(dynload.glob("*.so")):
        _patchelf("--force-rpath", "--set-rpath", rpath, str(so))
    for name in sorted(copied):
        if not _GLIBC.match(name):
            _patchelf("--force-rpath", "--set-rpath", rpath, str(lib / name))

    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j0", "--invalidation-mode",
         "unchecked-hash", str(lib / ver)],
        check=True,
    )
    digest = hashlib.sha256()
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(out)).encode())
        digest.update(path.read_bytes())
    bundle_id = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}" \
                f"-{digest.hexdigest()[:12]}"
    (out / "BUNDLE_ID").write_text(bundle_id + "\n")
    (out / "PREFIX").write_text(prefix + "\n")
    return bundle_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--prefix", default="/opt/eniway/python",
                        help="where the bundle lives on the target (default %(default)s)")
    args = parser.parse_args(argv)
    print(bundle(args.out, args.prefix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
