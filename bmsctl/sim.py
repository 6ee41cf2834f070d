"""``bmsctl sim``: serve the BMS cloud simulator in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations


def register(subparsers) -> None:
    from simulator.cli import add_options

    parser = subparsers.add_parser("sim", help="serve the BMS cloud simulator")
    add_options(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from simulator.cli import config_from_args, serve

    return serve(config_from_args(args))
