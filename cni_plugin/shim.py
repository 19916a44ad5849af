"""The CNI binary: a thin, stdlib-only shim that forwards CNI calls to the node agent.

It runs once per pod operation, started by the runtime with ``python -IS``, so it
imports only the standard library and ``cni_plugin.contract``: the agent does the
netlink work. CNI spec 1.1.0 (ADD, DEL, CHECK, VERSION, GC, STATUS); results are
written in the version the runtime asked for.

When the agent is down: ADD fails at once with code 11 (try again later); DEL
cleans up by itself from the allocation store on disk (it takes the store lock the
agent holds while alive, removes the host veth and rules with the ``ip`` command,
and drops the record), because a DEL must not fail on a node whose agent crashed.
"""

from __future__ import annotations

import posix  # not ``os``: importing os costs ~1.5 ms of every pod start under -S
import sys

from cni_plugin import contract

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

try:  # The C halves of ``json``: importing ``json`` itself pulls in ``re`` and ``enum``
    # (about 10 ms per pod start); these take well under one.
    import _json
    import _socket as socket
except ImportError:  # pragma: no cover - not CPython
    _json = None  # type: ignore[assignment]
    import socket  # type: ignore[no-redef]

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
DEFAULT_TIMEOUT = 60.0
SOURCE_AGENT_DOWN = (FileNotFoundError, ConnectionRefusedError)


class _Ctx:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float
    memo: dict[str, object] = {}


def loads(data: bytes | str) -> Any:
    """``json.loads`` without importing ``json``."""
    text = data.decode() if isinstance(data, bytes) else data
    if _json is None:
        import json
        return json.loads(text)
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        obj, end = _json.make_scanner(_Ctx())(text, start)  # type: ignore[arg-type]
        if not text[end:].strip(" \t\n\r"):
            return obj
    except (StopIteration, ValueError, SystemError):
        pass
    import json  # bad input only: let the full parser say precisely what is wrong

    return json.loads(text)


def dumps(obj: Any) -> str:
    """``json.dumps`` (compact) for the plain values the shim sends and prints."""
    if _json is None:
        import json
        return json.dumps(obj, separators=(",", ":"))
    if isinstance(obj, str):
        return str(_json.encode_basestring_ascii(obj))
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, int | float):
        return repr(obj)
    if isinstance(obj, dict):
        return "{" + ",".join(f"{dumps(str(k))}:{dumps(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, list | tuple):
        return "[" + ",".join(dumps(v) for v in obj) + "]"
    raise TypeError(f"cannot encode {type(obj).__name__}")


class ShimError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def _vtuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in v.split("."))
    except ValueError:
        return (0,)


def parse_cni_args(raw: str) -> dict[str, str]:
    """``K8S_POD_NAMESPACE=ns;K8S_POD_NAME=n;...`` -> dict."""
    out: dict[str, str] = {}
    for part in raw.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


# -- results ------------------------------------------------------------------------------

def format_result(version: str, res: dict[str, Any], dns: Any = None) -> dict[str, Any]:
    """A CNI result of ``version`` from the agent's neutral answer."""
    host_if: dict[str, Any] = {"name": res["hostVeth"], "mac": res.get("hostMac", "")}
    pod_if: dict[str, Any] = {"name": res["ifname"], "sandbox": res["netns"]}
    if res.get("podMac"):
        pod_if["mac"] = res["podMac"]
    if _vtuple(version) >= (1, 1, 0) and res.get("mtu"):
        host_if["mtu"] = pod_if["mtu"] = int(res["mtu"])
    # An exclusive ENI is the pod's interface itself: no host side, the vSwitch's prefix.
    interfaces = [host_if, pod_if] if res["hostVeth"] else [pod_if]
    ip: dict[str, Any] = {"address": f"{res['ip']}/{int(res.get('prefixLength') or 32)}",
                          "gateway": res["gateway"], "interface": len(interfaces) - 1}
    if _vtuple(version) < (1, 0, 0):
        ip["version"] = "4"
    out: dict[str, Any] = {
        "cniVersion": version,
        "interfaces": interfaces,
        "ips": [ip],
        "routes": [{"dst": "0.0.0.0/0", "gw": res["gateway"]}],
    }
    out["dns"] = dns if isinstance(dns, dict) else {}
    return out


# -- talking to the agent -----------------------------------------------------------------

def call_agent(path: str, req: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One request; raises OSError subclasses when the agent cannot be reached."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(dumps(req).encode())
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    finally:
        s.close()
    if not chunks:
        raise ConnectionResetError("eniway-agent closed the connection without an answer")
    answer: dict[str, Any] = loads(b"".join(chunks))
    return answer


def _agent_down(sock_path: str, e: BaseException) -> str:
    return (f"eniway-agent is not reachable on {sock_path} ({type(e).__name__}: {e}); "
            "check the eniway-agent pod on this node (kubectl -n kube-system get pods "
            "-l app.kubernetes.io/component=agent -o wide) and its log")


# -- slow path: DEL without the agent -----------------------------------------------------

def _exists(path: str) -> bool:
    try:
        posix.stat(path)
    except (OSError, ValueError):
        return False
    return True


def _ip_cmd(args: list[str]) -> int:
    import os
    import subprocess
    for cand in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"):
        if os.path.exists(cand):
            return subprocess.run([cand, *args], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, check=False).returncode
    raise ShimError(contract.ERR_TRY_AGAIN, "eniway-agent is down and the 'ip' command "
                    "(iproute2) is missing on this host: cannot clean up without the agent")


def _nsenter_ip(netns_path: str, args: list[str]) -> int:
    """``ip ARGS`` inside the netns at a path (``ip -n`` takes only names)."""
    import os
    import shutil
    import subprocess
    nsenter = shutil.which("nsenter", path="/usr/bin:/bin:/usr/sbin:/sbin")
    ip = next((c for c in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip")
               if os.path.exists(c)), None)
    if nsenter is None or ip is None:
        raise ShimError(contract.ERR_TRY_AGAIN, "eniway-agent is down and nsenter or ip is "
                        "missing on this host: cannot move the pod's ENI back without the agent")
    return subprocess.run([nsenter, f"--net={netns_path}", ip, *args],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          check=False).returncode


def _exclusive_back(rec: dict[str, Any]) -> None:
    """An exclusive ENI's link from the pod back to the node, down and bare, under its
    parked name (as the agent's DEL does); the link already gone from the pod is fine.
    A link that does not move raises "try again later": the runtime retries the DEL."""
    mac = str(rec["mac"]).lower()
    park = contract.EXCLUSIVE_PARK_PREFIX + mac.replace(":", "")
    netns, ifname = str(rec.get("netns") or ""), str(rec.get("ifname") or "")
    if not netns or not _exists(netns) or not ifname:
        return  # the netns is gone: the kernel returned the NIC to the node
    if _nsenter_ip(netns, ["link", "show", "dev", ifname]) != 0:
        return  # not in the pod any more
    _nsenter_ip(netns, ["link", "set", "dev", ifname, "down"])
    _nsenter_ip(netns, ["addr", "flush", "dev", ifname])
    target = str(rec.get("hostNetns") or "") or "1"  # a named node netns, or PID 1's
    if (_nsenter_ip(netns, ["link", "set", "dev", ifname, "name", park]) != 0
            or _nsenter_ip(netns, ["link", "set", "dev", park, "netns", target]) != 0):
        raise ShimError(contract.ERR_TRY_AGAIN, f"eniway-agent is down and the ENI {mac} "
                        f"could not be moved out of {netns}; DEL will be retried")


def slow_delete(state_dir: str, container_id: str, ifname: str) -> list[str]:
    """Remove the host side of an allocation from the store on disk; returns its IPs."""
    import fcntl
    import os
    import time

    adir = os.path.join(state_dir, contract.STORE_ALLOC_DIR)
    if not os.path.isdir(adir):
        return []
    fd = os.open(os.path.join(state_dir, contract.STORE_LOCK_FILE), os.O_RDWR | os.O_CREAT,
                 0o600)
    try:
        deadline = time.monotonic() + 3.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ShimError(
                        contract.ERR_TRY_AGAIN,
                        "eniway-agent holds the allocation store but does not answer on its "
                        "socket (starting up?); DEL will be retried") from None
                time.sleep(0.05)
        released = []
        for name in os.listdir(adir):
            if name.startswith("."):
                continue
            path = os.path.join(adir, name)
            try:
                with open(path) as f:
                    rec = loads(f.read())
            except (OSError, ValueError):
                continue
            if rec.get("containerId") != container_id or rec.get("ifname") != ifname:
                continue
            ip, ns = rec["ip"], rec.get("hostNetns") or ""
            pre = ["-n", ns] if ns else []
            if rec.get("mac"):  # an exclusive ENI: no veth, no route, no rules
                _exclusive_back(rec)
            elif rec.get("veth"):
                _ip_cmd([*pre, "link", "del", rec["veth"]])
            _ip_cmd([*pre, "route", "del", f"{ip}/32", "table", "main"])
            for _ in range(4):  # a rule may be doubled after a crash: delete until gone
                if _ip_cmd([*pre, "rule", "del", "pref", str(contract.RULE_PRIORITY_TO_POD),
                            "to", f"{ip}/32"]) != 0:
                    break
            for _ in range(4):
                if _ip_cmd([*pre, "rule", "del", "pref", str(contract.RULE_PRIORITY_FROM_POD),
                            "from", f"{ip}/32"]) != 0:
                    break
            os.unlink(path)
            dfd = os.open(adir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            released.append(ip)
        return released
    finally:
        os.close(fd)


# -- main ---------------------------------------------------------------------------------

def run(env: dict[str, str], stdin: bytes) -> tuple[int, Any]:
    """Serve one CNI call: (exit code, JSON to print or None)."""
    version = contract.CNI_SPEC_VERSION
    command = env.get("CNI_COMMAND", "")
    try:
        if command == "VERSION":
            return 0, {"cniVersion": version,
                       "supportedVersions": list(contract.CNI_SUPPORTED_VERSIONS)}
        if command not in COMMANDS:
            raise ShimError(contract.ERR_INVALID_ENV,
                            f"CNI_COMMAND={command!r} is not one of {', '.join(COMMANDS)}")
        try:
            conf = loads(stdin)
        except ValueError as e:
            raise ShimError(contract.ERR_DECODE,
                            f"cannot decode the network configuration on stdin: {e}") from None
        if not isinstance(conf, dict):
            raise ShimError(contract.ERR_DECODE, "the network configuration must be a JSON object")
        asked = conf.get("cniVersion")
        if not isinstance(asked, str) or asked not in contract.CNI_SUPPORTED_VERSIONS:
            raise ShimError(contract.ERR_INCOMPATIBLE_VERSION,
                            f"unsupported cniVersion {asked!r}: eniway supports "
                            f"{', '.join(contract.CNI_SUPPORTED_VERSIONS)}")
        version = asked
        return _dispatch(command, version, env, conf)
    except ShimError as e:
        err = {"cniVersion": version, "code": e.code, "msg": f"eniway: {e.msg}"}
        if e.details:
            err["details"] = e.details
        return 1, err


def _require(env: Any, *names: str) -> dict[str, str]:
    missing = [n for n in names if not env.get(n)]
    if missing:
        raise ShimError(contract.ERR_INVALID_ENV,
                        f"{', '.join(missing)} not set: the container runtime must pass "
                        f"{', '.join(names)} for {env.get('CNI_COMMAND')}")
    return {n: env[n] for n in names}


def _dispatch(command: str, version: str, env: Any, conf: dict[str, Any]) -> tuple[int, Any]:
    sock_path = str(conf.get("socket") or contract.DEFAULT_SOCKET)
    timeout = float(conf.get("timeout") or DEFAULT_TIMEOUT)
    vt = _vtuple(version)
    if command == "CHECK" and vt < (0, 4, 0):
        raise ShimError(contract.ERR_INCOMPATIBLE_VERSION,
                        f"CHECK needs cniVersion 0.4.0 or later (got {version})")
    if command in ("GC", "STATUS") and vt < (1, 1, 0):
        raise ShimError(contract.ERR_INCOMPATIBLE_VERSION,
                        f"{command} needs cniVersion 1.1.0 (got {version})")
    req: dict[str, Any] = {"command": command}
    if command in ("ADD", "DEL", "CHECK"):
        need = ["CNI_CONTAINERID", "CNI_IFNAME"] + (["CNI_NETNS"] if command != "DEL" else [])
        got = _require(env, *need)
        bad = contract.cni_args_error(env.get("CNI_ARGS", ""))
        if bad:
            raise ShimError(contract.ERR_INVALID_ENV, bad)
        args = parse_cni_args(env.get("CNI_ARGS", ""))
        req.update(containerId=got["CNI_CONTAINERID"], ifname=got["CNI_IFNAME"],
                   netns=env.get("CNI_NETNS", ""), podNamespace=args.get("K8S_POD_NAMESPACE", ""),
                   podName=args.get("K8S_POD_NAME", ""), podUID=args.get("K8S_POD_UID", ""))
        bad = contract.request_error(command, req)
        if bad:
            raise ShimError(contract.ERR_INVALID_ENV, bad,
                            "the container runtime passed a value the CNI spec forbids")
        req["mtu"] = conf.get("mtu")
        if command == "ADD" and not _exists(req["netns"]):
            raise ShimError(contract.ERR_INVALID_ENV,
                            f"network namespace {req['netns']} does not exist",
                            "CNI_NETNS must name the pod's network namespace (a path)")
        if command == "CHECK":
            prev = conf.get("prevResult") or {}
            ips = prev.get("ips") or [] if isinstance(prev, dict) else []
            if ips:
                req["prevIP"] = str(ips[0].get("address", "")).split("/")[0]
    elif command == "GC":
        req["validAttachments"] = conf.get("cni.dev/valid-attachments") or []
    try:
        answer = call_agent(sock_path, req, timeout)
    except SOURCE_AGENT_DOWN as e:
        if command == "DEL":
            slow_delete(str(conf.get("stateDir") or contract.DEFAULT_STATE_DIR),
                        req["containerId"], req["ifname"])
            return 0, None
        code = contract.ERR_PLUGIN_NOT_AVAILABLE if command == "STATUS" else contract.ERR_TRY_AGAIN
        raise ShimError(code, _agent_down(sock_path, e)) from None
    except (OSError, ValueError) as e:
        raise ShimError(contract.ERR_TRY_AGAIN,
                        f"eniway-agent on {sock_path} failed to answer: {e}",
                        "the agent may have restarted; the runtime retries") from None
    if not answer.get("ok"):
        raise ShimError(int(answer.get("code") or contract.ERR_INTERNAL),
                        str(answer.get("msg") or "eniway-agent error"),
                        str(answer.get("details") or ""))
    if command == "ADD":
        return 0, format_result(version, answer["result"], conf.get("dns"))
    return 0, None


def main() -> int:
    env = {k.decode(errors="replace"): v.decode(errors="replace")
           for k, v in posix.environ.items()}
    code, out = run(env, sys.stdin.buffer.read())
    if out is not None:
        sys.stdout.write(dumps(out))
        sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
