"""The ``bmsctl`` entry point: one sub-command per module, registered here.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to the callable that runs it; ``main`` only parses and dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from worker.errors import SettingsError

#: Modules of this package that register a sub-command, in ``--help`` order.
COMMAND_MODULES = ("up", "demo", "operate", "db", "sim")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bmsctl",
        description="Provision Huawei Cloud bare metal servers in bulk.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"bmsctl.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except SettingsError as exc:
        print(f"bmsctl: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
