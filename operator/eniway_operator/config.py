"""Pool configuration: Terway's knobs, parsed, merged and validated.

The global configuration lives in a ConfigMap (one key holding JSON or YAML); a node may
override any key through its ENIPool ``spec.config`` or the Node annotation
``contract.ANNOTATION_POOL_OVERRIDE`` (JSON). Precedence: defaults < ConfigMap < Node
annotation < ENIPool spec.config. Invalid input raises ``ConfigError`` naming the key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from cni_plugin import contract

CONFIGMAP_KEYS = ("config.yaml", "config.yml", "config.json", "eni_conf")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SG = re.compile(r"^sg-[0-9a-z]{4,64}$")
_VSW = re.compile(r"^(vsw|subnet)-[0-9a-z]{4,64}$")  # ECS vSwitch, EC2 subnet
POLICIES = ("most_free", "ordered")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and the source."""


@dataclass(frozen=True)
class PoolConfig:
    """One node's pool configuration in effect. Durations are seconds."""

    min_pool_size: int = 0
    max_pool_size: int = 5
    warm_up_size: int = 0
    idle_ip_reclaim_after: float = 0.0  # 0: idle reclaim off
    idle_ip_reclaim_interval: float = 60.0
    idle_ip_reclaim_batch_size: int = 5
    max_eni: int = 0  # secondary ENIs eniway may attach; 0: the instance type's limit
    min_eni: int = 0  # secondary ENIs kept even when empty
    vswitches: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # zone -> ids
    vswitch_selection_policy: str = "most_free"
    vswitch_block_duration: float = 300.0  # an exhausted vSwitch is skipped this long
    security_group_ids: tuple[str, ...] = ()  # empty: the primary ENI's groups
    eni_tags: Mapping[str, str] = field(default_factory=dict)
    delete_on_release: bool = True
    surge_pending: bool = True  # pending pods on the node raise the free target
    ip_cooldown: float = 30.0  # a just-freed IP is neither counted as warm nor released
    empty_eni_reclaim_after: float = 300.0  # an empty ENI above min_eni goes after this
    # IPs per assign/unassign call, 0..50; 0: as many as the cloud takes in one call
    # (InstanceLimits.ips_per_call: 10 on ECS, the ENI's secondary IPs on EC2), which
    # also caps any other setting
    ips_per_call: int = 0
    exclusive_enis: int = 0  # secondary-ENI slots kept for exclusive-ENI pods (0: none)

    def to_status(self) -> dict[str, Any]:
        """JSON form for ENIPool status.config (the agent reads ip_cooldown from it)."""
        out = asdict(self)
        out["vswitches"] = {z: list(v) for z, v in self.vswitches.items()}
        out["security_group_ids"] = list(self.security_group_ids)
        out["eni_tags"] = dict(self.eni_tags)
        return out

    def vswitches_for(self, zone: str) -> tuple[str, ...]:
        return tuple(self.vswitches.get(zone, ()))


def parse_duration(value: Any, key: str) -> float:
    """Seconds from a number or a Go-style string ("30s", "5m", "1h", "250ms")."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ConfigError(f"{key}: expected a duration like 30s, 5m or a number, got {value!r}")
    if seconds < 0:
        raise ConfigError(f"{key}: must not be negative, got {value!r}")
    return seconds


def _int(value: Any, key: str, lo: int = 0, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        else:
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise ConfigError(f"{key}: must be {bound}, got {value}")
    return int(value)


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def _vswitches(value: Any, key: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a map of zone id to a list of vSwitch ids")
    out: dict[str, tuple[str, ...]] = {}
    for zone, ids in value.items():
        if isinstance(ids, str):
            ids = [ids]
        if not isinstance(ids, list) or not ids:
            raise ConfigError(f"{key}.{zone}: expected a non-empty list of vSwitch ids")
        for vsw in ids:
            if not isinstance(vsw, str) or not _VSW.match(vsw):
                raise ConfigError(f"{key}.{zone}: {vsw!r} is not a vSwitch id (vsw-...) "
                                  "nor an EC2 subnet id (subnet-...)")
        out[str(zone)] = tuple(dict.fromkeys(ids))
    return out


def _security_groups(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list of security group ids")
    if len(value) > 5:
        raise ConfigError(f"{key}: an ENI takes 1 to 5 security groups, got {len(value)}")
    for sg in value:
        if not isinstance(sg, str) or not _SG.match(sg):
            raise ConfigError(f"{key}: {sg!r} is not a security group id (sg-...)")
    return tuple(dict.fromkeys(value))


def _tags(value: Any, key: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a map of tag key to value")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k or k.startswith(("aliyun", "acs:")):
            raise ConfigError(f"{key}: tag key {k!r} is empty or reserved")
        if k.startswith("eniway.io/"):
            raise ConfigError(f"{key}: tag key {k!r} is reserved for eniway's own tags")
        out[k] = str(v)
    if len(out) > 15:
        raise ConfigError(f"{key}: at most 15 extra tags, got {len(out)}")
    return out


_PARSERS: dict[str, Any] = {
    "min_pool_size": lambda v, k: _int(v, k),
    "max_pool_size": lambda v, k: _int(v, k),
    "warm_up_size": lambda v, k: _int(v, k),
    "idle_ip_reclaim_after": parse_duration,
    "idle_ip_reclaim_interval": parse_duration,
    "idle_ip_reclaim_batch_size": lambda v, k: _int(v, k, 1),
    "max_eni": lambda v, k: _int(v, k, 0, 64),
    "min_eni": lambda v, k: _int(v, k, 0, 64),
    "vswitches": _vswitches,
    "vswitch_selection_policy": None,
    "vswitch_block_duration": parse_duration,
    "security_group_ids": _security_groups,
    "eni_tags": _tags,
    "delete_on_release": _bool,
    "surge_pending": _bool,
    "ip_cooldown": parse_duration,
    "empty_eni_reclaim_after": parse_duration,
    "ips_per_call": lambda v, k: _int(v, k, 0, 50),
    "exclusive_enis": lambda v, k: _int(v, k, 0, 64),
}
_ALIASES = {"security_groups": "security_group_ids", "security_group": "security_group_ids"}


def _normalise(raw: Mapping[str, Any], source: str) -> tuple[dict[str, Any], list[str]]:
    """Validate one layer: the keys it sets, parsed, and a problem for each bad one (left
    out, so the layers below or the default apply)."""
    out: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in raw.items():
        name = _ALIASES.get(key, key)
        where = f"{source}: {key}"
        try:
            if name not in _PARSERS:
                known = ", ".join(sorted(_PARSERS))
                raise ConfigError(f"{source}: unknown key {key!r} (known keys: {known})")
            if name == "vswitch_selection_policy":
                if value not in POLICIES:
                    raise ConfigError(
                        f"{where}: expected one of {', '.join(POLICIES)}, got {value!r}")
                out[name] = value
            elif name == "security_group_ids" and key == "security_group" and isinstance(
                    value, str):
                out[name] = _security_groups([value], where)
            else:
                out[name] = _PARSERS[name](value, where)
        except ConfigError as e:
            problems.append(str(e))
    return out, problems


def load_text(text: str, source: str) -> dict[str, Any]:
    """A JSON or YAML document holding a map (empty text: empty map)."""
    if not text.strip():
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid JSON or YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a map at the top level, got {type(data).__name__}")
    return data


def from_configmap(data: Mapping[str, str] | None, source: str) -> dict[str, Any]:
    """The global layer from a ConfigMap's data (one of CONFIGMAP_KEYS)."""
    data = data or {}
    present = [k for k in CONFIGMAP_KEYS if k in data]
    if len(present) > 1:
        raise ConfigError(f"{source}: set only one of {', '.join(present)}")
    if not present:
        return {}
    return load_text(data[present[0]], f"{source}[{present[0]}]")


def from_annotation(annotations: Mapping[str, str] | None, source: str) -> dict[str, Any]:
    value = (annotations or {}).get(contract.ANNOTATION_POOL_OVERRIDE, "")
    return load_text(value, f"{source} annotation {contract.ANNOTATION_POOL_OVERRIDE}")


@dataclass(frozen=True)
class Merged:
    """A configuration in effect, what was wrong with the input (each problem names its
    source and key; the bad values are left out), and which source set each key."""

    config: PoolConfig
    problems: tuple[str, ...] = ()
    origin: Mapping[str, str] = field(default_factory=dict)


def _cross_problems(cfg: PoolConfig) -> list[tuple[frozenset[str], str]]:
    out = []
    if cfg.max_pool_size < cfg.min_pool_size:
        out.append((frozenset({"min_pool_size", "max_pool_size"}),
                    f"max_pool_size ({cfg.max_pool_size}) must be >= min_pool_size "
                    f"({cfg.min_pool_size})"))
    if cfg.max_eni and cfg.min_eni > cfg.max_eni:
        out.append((frozenset({"min_eni", "max_eni"}),
                    f"min_eni ({cfg.min_eni}) must be <= max_eni ({cfg.max_eni})"))
    if cfg.idle_ip_reclaim_after and cfg.idle_ip_reclaim_interval <= 0:
        out.append((frozenset({"idle_ip_reclaim_after", "idle_ip_reclaim_interval"}),
                    "idle_ip_reclaim_interval must be > 0 when idle reclaim is on"))
    return out


def merge_report(*layers: tuple[Mapping[str, Any], str]) -> Merged:
    """Defaults overlaid by each (raw map, source name) layer in order, then checked as a
    whole (cross-key rules). Maps (vswitches, eni_tags) are replaced, not deep-merged, so an
    override states the whole set it wants. Every problem is reported at once; a bad value
    is left out, and a cross-key rule broken drops those keys from the highest layer that
    set them, so a node keeps running on what is valid."""
    parsed: list[tuple[dict[str, Any], str]] = []
    problems: list[str] = []
    for raw, source in layers:
        values, bad = _normalise(raw, source)
        parsed.append((values, source))
        problems += bad
    while True:
        values, origin = {}, {}
        for layer, source in parsed:
            values.update(layer)
            origin.update(dict.fromkeys(layer, source))
        cfg = PoolConfig(**values)
        cross = _cross_problems(cfg)
        if not cross:
            return Merged(cfg, tuple(problems), origin)
        keys, message = cross[0]
        top = max(i for i, (layer, _) in enumerate(parsed) if keys & set(layer))
        layer, source = parsed[top]
        dropped = sorted(keys & set(layer))
        problems.append(f"{source}: {message} (its {', '.join(dropped)} ignored)")
        parsed[top] = ({k: v for k, v in layer.items() if k not in keys}, source)


def merge(*layers: tuple[Mapping[str, Any], str]) -> PoolConfig:
    """As merge_report, but any problem raises ConfigError naming them all."""
    merged = merge_report(*layers)
    if merged.problems:
        raise ConfigError("; ".join(merged.problems))
    return merged.config


def dumps(cfg: PoolConfig) -> str:
    return json.dumps(cfg.to_status(), sort_keys=True)
