"""Entry point (not implemented yet)."""

import sys


def main() -> int:
    print("not implemented yet", file=sys.stderr)
    return 1
