"""Run a CNI conflist the way a container runtime does (libcni semantics), for the
demo and the end-to-end tests.

ADD runs the plugins in order, feeding each the previous result as ``prevResult``;
DEL runs them in reverse with the cached ADD result; CHECK runs them in order with
the cached result. Results are cached per (network, container, ifname) like
libcni's ``/var/lib/cni/results``. Plugins run inside ``node_netns`` (a named
network namespace standing in for a node's host network) when one is given.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class CNIError(Exception):
    def __init__(self, plugin: str, command: str, code: int, msg: str, details: str = "") -> None:
        super().__init__(f"{plugin} {command} failed (code {code}): {msg} {details}".strip())
        self.plugin = plugin
        self.code = code
        self.msg = msg


@dataclass
class CNIRuntime:
    conflist: Path
    cni_path: list[Path]
    cache_dir: Path
    node_netns: str | None = None
    timeout: float = 60.0
    env_extra: dict[str, str] = field(default_factory=dict)

    def _conf(self) -> dict[str, Any]:
        conf: dict[str, Any] = json.loads(self.conflist.read_text())
        return conf

    def _binary(self, plugin_type: str) -> Path:
        for d in self.cni_path:
            candidate = d / plugin_type
            if candidate.exists():
                return candidate
        raise FileNotFoundError(f"CNI plugin {plugin_type!r} not found in {self.cni_path}")

    def _cache_file(self, network: str, container_id: str, ifname: str) -> Path:
        return self.cache_dir / f"{network}-{container_id}-{ifname}.json"

    def _exec(self, plugin: dict[str, Any], conf: dict[str, Any], command: str,
              container_id: str, netns: str, ifname: str, args: dict[str, str],
              prev: dict[str, Any] | None) -> dict[str, Any]:
        stdin = dict(plugin)
        stdin["name"] = conf["name"]
        stdin["cniVersion"] = conf["cniVersion"]
        if prev is not None:
            stdin["prevResult"] = prev
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_PATH": ":".join(str(p) for p in self.cni_path),
            "CNI_ARGS": ";".join(f"{k}={v}" for k, v in args.items()),
            **self.env_extra,
        }
        binary = str(self._binary(plugin["type"]))
        argv = ["ip", "netns", "exec", self.node_netns, binary] if self.node_netns else [binary]
        proc = subprocess.run(argv, input=json.dumps(stdin), capture_output=True, text=True,
                              env=env, timeout=self.timeout)
        out = proc.stdout.strip()
        if proc.returncode != 0:
            try:
                err = json.loads(out)
            except json.JSONDecodeError:
                err = {"code": 999, "msg": out or proc.stderr.strip()}
            raise CNIError(plugin["type"], command, int(err.get("code", 999)),
                           str(err.get("msg", "")), str(err.get("details", "")))
        return json.loads(out) if out else {}

    def add(self, container_id: str, netns: str, ifname: str = "eth0",
            args: dict[str, str] | None = None) -> dict[str, Any]:
        conf = self._conf()
        result: dict[str, Any] | None = None
        for plugin in conf["plugins"]:
            result = self._exec(plugin, conf, "ADD", container_id, netns, ifname,
                                args or {}, result)
        assert result is not None
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._cache_file(conf["name"], container_id, ifname).write_text(json.dumps(result))
        return result

    def check(self, container_id: str, netns: str, ifname: str = "eth0",
              args: dict[str, str] | None = None) -> None:
        conf = self._conf()
        cached = json.loads(self._cache_file(conf["name"], container_id, ifname).read_text())
        for plugin in conf["plugins"]:
            self._exec(plugin, conf, "CHECK", container_id, netns, ifname, args or {}, cached)

    def delete(self, container_id: str, netns: str, ifname: str = "eth0",
               args: dict[str, str] | None = None) -> None:
        conf = self._conf()
        cache = self._cache_file(conf["name"], container_id, ifname)
        cached = json.loads(cache.read_text()) if cache.exists() else None
        for plugin in reversed(conf["plugins"]):
            self._exec(plugin, conf, "DEL", container_id, netns, ifname, args or {}, cached)
        cache.unlink(missing_ok=True)


def pod_ip(result: dict[str, Any]) -> str:
    """The first IPv4 address of a CNI result (any of the versions we ask for)."""
    for ip in result.get("ips", []):
        addr = str(ip.get("address", ""))
        if "." in addr:
            return addr.split("/")[0]
    raise ValueError(f"no IPv4 address in CNI result {result}")
