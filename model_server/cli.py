"""The `bertmesh` command line."""

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the bertmesh CLI."""
    del argv
    print("bertmesh: not implemented yet", file=sys.stderr)
    return 2
