"""The agent liveness rule the ENIPool's AgentUnresponsive condition shows (pure)."""

from __future__ import annotations

import pytest

from eniway_operator.liveness import agent_problem


@pytest.mark.parametrize(("beat", "still_for", "ready", "expect"), [
    ("2026-01-01T00:00:00Z", 10.0, True, ""),
    ("2026-01-01T00:00:00Z", 89.9, True, ""),
    ("2026-01-01T00:00:00Z", 90.0, True, "has not moved for 90 s"),
    ("", 30.0, True, ""),  # a new node: its agent has time to start
    ("", 120.0, True, "no eniway-agent has reported"),
    ("2026-01-01T00:00:00Z", 5.0, False, "not ready"),
    ("", 5.0, False, ""),  # readiness of an agent that never reported means nothing
])
def test_agent_problem(beat: str, still_for: float, ready: bool, expect: str) -> None:
    got = agent_problem(beat, still_for, 90.0, ready)
    assert (expect in got) if expect else got == ""
    if expect:
        assert got
