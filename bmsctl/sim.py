"""``bmsctl sim``: serve the BMS cloud simulator in the foreground (being built, issue 3)."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("sim", help="serve the BMS cloud simulator")
    parser.set_defaults(func=run)


def run(args) -> int:
    print("bmsctl sim: the simulator is not built yet", file=sys.stderr)
    return 1
