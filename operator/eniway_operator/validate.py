"""Configured cloud ids checked against what the cloud has. Pure: the reconciler describes,
this decides. A configured vSwitch or security group that does not exist, or is in another
zone or VPC, is reported (naming its id and the source that set it) and left out; the node
goes on with the rest, or with its own vSwitch and its primary ENI's groups when nothing
valid is left, as when none is configured."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from eniway_operator.cloud.base import SecurityGroup, VSwitch
from eniway_operator.config import PoolConfig


def check_cloud_ids(cfg: PoolConfig, origin: Mapping[str, str], zone: str, vpc: str,
                    vswitches: Mapping[str, VSwitch], groups: Mapping[str, SecurityGroup]
                    ) -> tuple[PoolConfig, list[str]]:
    """``vswitches``/``groups``: the described ones by id (a configured id absent: the cloud
    has none). Returns the configuration to act on and the problems found."""
    problems: list[str] = []
    where = origin.get("vswitches", "configuration")
    good_vsw = []
    for vid in cfg.vswitches_for(zone):
        v = vswitches.get(vid)
        if v is None:
            problems.append(f"{where}: vswitches.{zone}: {vid} does not exist "
                            "(InvalidVSwitchId.NotFound)")
        elif v.zone_id and zone and v.zone_id != zone:
            problems.append(f"{where}: vswitches.{zone}: {vid} is in zone {v.zone_id}")
        elif v.vpc_id and vpc and v.vpc_id != vpc:
            problems.append(f"{where}: vswitches.{zone}: {vid} is in {v.vpc_id}, not in the "
                            f"node's {vpc}")
        else:
            good_vsw.append(vid)
    if cfg.vswitches_for(zone) and not good_vsw:
        problems.append(f"no valid vSwitch left for zone {zone}: the node's own vSwitch is used")
    where = origin.get("security_group_ids", "configuration")
    good_sg = []
    for sg in cfg.security_group_ids:
        g = groups.get(sg)
        if g is None:
            problems.append(f"{where}: security_group_ids: {sg} does not exist "
                            "(InvalidSecurityGroupId.NotFound)")
        elif g.vpc_id and vpc and g.vpc_id != vpc:
            problems.append(f"{where}: security_group_ids: {sg} is in {g.vpc_id}, not in the "
                            f"node's {vpc}")
        else:
            good_sg.append(sg)
    if cfg.security_group_ids and not good_sg:
        problems.append("no valid security group left: the primary ENI's groups are used")
    if not problems:
        return cfg, []
    vsw = {z: ids for z, ids in cfg.vswitches.items() if z != zone}
    if good_vsw:
        vsw[zone] = tuple(good_vsw)
    return replace(cfg, vswitches=vsw, security_group_ids=tuple(good_sg)), problems
