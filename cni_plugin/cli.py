"""``eniway``: the admin CLI (install-cni, ...)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from cni_plugin import contract

SHIM_MODULES = ("__init__.py", "contract.py", "shim.py")


def _atomic_write(path: Path, data: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def conflist(mtu: int | None = None, socket: str = contract.DEFAULT_SOCKET,
             chain: list[dict[str, object]] | None = None,
             state_dir: str | None = None) -> dict[str, object]:
    plugin: dict[str, object] = {"type": contract.CNI_BINARY_NAME, "socket": socket}
    if state_dir and state_dir != contract.DEFAULT_STATE_DIR:
        plugin["stateDir"] = state_dir  # where DEL finds allocations when the agent is down
    if mtu:
        plugin["mtu"] = mtu
    plugins: list[dict[str, object]] = [plugin]
    plugins += chain if chain is not None else [
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}]
    return {"cniVersion": contract.CNI_CONFLIST_VERSION, "name": contract.CNI_NETWORK_NAME,
            "plugins": plugins}


def install_cni(bin_dir: Path, conf_dir: Path, lib_dir: Path, python: str,
                mtu: int | None, socket: str, chain: list[dict[str, object]] | None,
                state_dir: str | None = None) -> None:
    """Install the shim's modules under ``lib_dir`` and a launcher named ``eniway``
    in ``bin_dir`` that runs them with ``python -IS`` (isolated, no site: fast)."""
    pkg = lib_dir / "lib" / "cni_plugin"
    src = Path(__file__).resolve().parent
    for name in SHIM_MODULES:
        _atomic_write(pkg / name, (src / name).read_text(), 0o644)
    launcher = (
        f"#!{python} -IS\n"  # one shebang argument: -I -S combined
        "import sys\n"
        f"sys.path.insert(0, {str(lib_dir / 'lib')!r})\n"
        "from cni_plugin.shim import main\n"
        "sys.exit(main())\n"
    )
    _atomic_write(bin_dir / contract.CNI_BINARY_NAME, launcher, 0o755)
    _atomic_write(conf_dir / contract.CNI_CONFLIST_NAME,
                  json.dumps(conflist(mtu, socket, chain, state_dir), indent=2) + "\n", 0o644)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eniway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("install-cni", help="install the CNI binary and conflist on a host")
    p.add_argument("--bin-dir", type=Path, default=Path(contract.DEFAULT_CNI_BIN_DIR),
                   help="where the CNI binary goes (default %(default)s)")
    p.add_argument("--conf-dir", type=Path, default=Path(contract.DEFAULT_CNI_CONF_DIR),
                   help="where the conflist goes (default %(default)s)")
    p.add_argument("--lib-dir", type=Path, default=Path(contract.DEFAULT_LIB_DIR),
                   help="where the shim's modules go (default %(default)s)")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter the binary runs with, as seen from the host "
                        "(default: this one, %(default)s)")
    p.add_argument("--mtu", type=int, default=None, help="pod MTU (default: the ENI's)")
    p.add_argument("--socket", default=contract.DEFAULT_SOCKET,
                   help="agent socket (default %(default)s)")
    p.add_argument("--state-dir", default=contract.DEFAULT_STATE_DIR,
                   help="the agent's --state-dir (DEL reads it when the agent is down; "
                        "default %(default)s)")
    p.add_argument("--chain", default=None,
                   help="JSON list of plugins chained after eniway (default: portmap)")
    args = parser.parse_args(argv)
    if args.command == "install-cni":
        py = shutil.which(args.python) or args.python
        chain = json.loads(args.chain) if args.chain else None
        install_cni(args.bin_dir, args.conf_dir, args.lib_dir, py, args.mtu, args.socket, chain,
                    args.state_dir)
        print(f"installed {args.bin_dir / contract.CNI_BINARY_NAME} and "
              f"{args.conf_dir / contract.CNI_CONFLIST_NAME}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
