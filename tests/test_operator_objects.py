"""The operator's object cache: the newer version wins whichever way it came (watch or
write answer), a deleted object never comes back, and copies are handed out."""

from __future__ import annotations

from typing import Any

from eniway_operator.objects import ObjectCache


def obj(name: str, rv: int, uid: str = "u1", node: str = "n1", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": uid, "resourceVersion": str(rv)},
            "spec": {"nodeName": node, **spec}}


def test_newer_version_wins_in_any_order() -> None:
    c = ObjectCache()
    c.seen("enipools", obj("n1", 20, x=2))  # our write's answer
    c.seen("enipools", obj("n1", 10, x=1))  # a late watch event of an older version
    got = c.get("enipools", "n1")
    assert got is not None and got["spec"]["x"] == 2
    c.seen("enipools", obj("n1", 30, x=3))
    got = c.get("enipools", "n1")
    assert got is not None and got["spec"]["x"] == 3


def test_deleted_objects_stay_gone_and_recreated_ones_come_in() -> None:
    c = ObjectCache()
    c.seen("enis", obj("eni-a", 5))
    c.forget("enis", obj("eni-a", 6))
    c.seen("enis", obj("eni-a", 5))  # a late event of the deleted object
    assert c.get("enis", "eni-a") is None
    c.seen("enis", obj("eni-a", 2, uid="u2"))  # same name, a new object
    assert c.get("enis", "eni-a") is not None


def test_enis_by_node_and_copies() -> None:
    c = ObjectCache()
    c.seen("enis", obj("eni-a", 1, uid="a", node="n1"))
    c.seen("enis", obj("eni-b", 1, uid="b", node="n2"))
    mine = c.enis_of("n1")
    assert [o["metadata"]["name"] for o in mine] == ["eni-a"]
    mine[0]["spec"]["nodeName"] = "changed"
    assert c.enis_of("n1")[0]["spec"]["nodeName"] == "n1"
