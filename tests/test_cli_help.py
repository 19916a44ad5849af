"""Every console script's ``--help`` (and each subcommand's) shows the default of every
option that takes a value: run as a user would, from the installed scripts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cni_plugin.agent import main as agent_main

BIN = Path(sys.executable).parent
COMMANDS = [
    ["eniway-agent"],
    ["eniway-operator"],
    ["eniway-operator", "uninstall"],
    ["eniway-operator", "max-pods"],
    ["eniway-cloudsim"],
    ["eniway", "install-cni"],
]
# "  --name VALUE, -n VALUE   help..." : an option entry of the "options:" section.
ENTRY = re.compile(r"^  (-{1,2}\S+.*?)(?:\s{2,}|$)")


def _help(cmd: list[str]) -> str:
    out = subprocess.run([str(BIN / cmd[0]), *cmd[1:], "--help"], capture_output=True,
                         text=True, timeout=120, check=True)
    return out.stdout


def _options(text: str) -> dict[str, tuple[bool, str]]:
    """Option name -> (takes a value, its whole help text) from the options section."""
    section = text.split("\noptions:\n", 1)[1]
    section = section.split("\n\n", 1)[0]
    entries: dict[str, tuple[bool, str]] = {}
    current = ""
    for line in section.splitlines():
        m = ENTRY.match(line)
        if m and not line.startswith("   "):
            names = m.group(1)
            current = names.split(",")[0].split()[0]
            takes_value = any(len(part.split()) > 1 for part in names.split(","))
            entries[current] = (takes_value, line[m.end():])
        elif current:
            takes, help_text = entries[current]
            entries[current] = (takes, help_text + " " + line.strip())
    return entries


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_help_shows_every_default(cmd: list[str]) -> None:
    opts = _options(_help(cmd))
    assert len(opts) > 3, opts
    missing = [name for name, (takes, text) in opts.items()
               if takes and "default" not in " ".join(text.split())]
    assert not missing, f"{' '.join(cmd)} --help: no default shown for {missing}"


def test_agent_help_shows_the_workers_default() -> None:
    default = agent_main.build_parser().get_default("workers")
    text = " ".join(_options(_help(["eniway-agent"]))["--workers"][1].split())
    assert f"default {default}" in text, text
