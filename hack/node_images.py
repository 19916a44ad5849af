#!/usr/bin/env python3
"""The real nodes' container images, built locally (no registry): docker-archive
tarballs that ``ctr -n k8s.io images import`` takes.

- ``pause``: the sandbox image, from the Kubernetes source tree's
  ``build/pause/linux/pause.c`` (``gcc -Os -static``);
- ``busybox``: Debian's busybox-static with its applets linked, for pods that
  ping, fetch (``wget``) and serve HTTP (``httpd``).

    python3 hack/node_images.py --src KUBERNETES_SOURCE --out DIR

An image already in DIR is kept (the file name carries its version).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PAUSE_IMAGE = "eniway.local/pause:3.4.1"
BUSYBOX_IMAGE = "eniway.local/busybox:1.35"


def archive_name(ref: str) -> str:
    """The tarball's file name in the cache for an image reference."""
    return ref.split("/", 1)[1].replace(":", "-") + ".tar"


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", mode: int = 0o644,
         kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.mode, info.type, info.linkname, info.mtime = mode, kind, link, 0
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def layer(files: dict[str, bytes], links: dict[str, str], dirs: list[str]) -> bytes:
    """One image layer (a plain tar): directories, executables, symlinks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for d in dirs:
            _add(tar, d, mode=0o1777 if d == "tmp" else 0o755, kind=tarfile.DIRTYPE)
        for name, data in sorted(files.items()):
            _add(tar, name, data, mode=0o755)
        for name, target in sorted(links.items()):
            _add(tar, name, kind=tarfile.SYMTYPE, link=target)
    return buf.getvalue()


def docker_archive(ref: str, layer_tar: bytes, cmd: list[str]) -> bytes:
    """A docker-archive (``docker save`` layout) holding one single-layer image."""
    diff_id = hashlib.sha256(layer_tar).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created_by": "eniway hack/node_images.py"}],
    }, sort_keys=True).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [ref],
                            "Layers": [f"{diff_id}/layer.tar"]}]).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        _add(tar, diff_id, kind=tarfile.DIRTYPE, mode=0o755)
        _add(tar, f"{diff_id}/layer.tar", layer_tar)
        _add(tar, config_name, config)
        _add(tar, "manifest.json", manifest)
    return buf.getvalue()


def build_pause(src: Path) -> bytes:
    pause_c = src / "build" / "pause" / "linux" / "pause.c"
    if not pause_c.exists():
        raise SystemExit(f"{pause_c} missing: the Kubernetes source tree is needed")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pause"
        subprocess.run(["gcc", "-Os", "-static", "-o", str(out), str(pause_c)], check=True)
        subprocess.run(["strip", str(out)], check=True)
        binary = out.read_bytes()
    return docker_archive(PAUSE_IMAGE, layer({"pause": binary}, {}, []), ["/pause"])


def build_busybox(busybox: Path = Path("/bin/busybox")) -> bytes:
    if not busybox.exists():
        raise SystemExit(f"{busybox} missing: apt-get install busybox-static")
    applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    dirs = sorted({"bin", "sbin", "usr", "usr/bin", "usr/sbin", "tmp", "etc", "www"})
    links = {a: "/bin/busybox" for a in applets if a != "bin/busybox"}
    files = {"bin/busybox": busybox.read_bytes()}
    return docker_archive(BUSYBOX_IMAGE, layer(files, links, dirs), ["/bin/sh"])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, required=True, help="Kubernetes source tree")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for ref, build in ((PAUSE_IMAGE, lambda: build_pause(args.src)),
                       (BUSYBOX_IMAGE, build_busybox)):
        dest = args.out / archive_name(ref)
        if dest.exists():
            print(f"[images] {ref}: cached in {dest}", file=sys.stderr)
            continue
        tmp = dest.with_suffix(".tmp")
        tmp.write_bytes(build())
        tmp.rename(dest)
        print(f"[images] {ref}: built {dest} ({dest.stat().st_size // 1024} KiB)",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
