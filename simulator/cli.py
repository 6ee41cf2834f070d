"""Command-line options of ``bmsctl sim`` and ``python -m simulator``, and the foreground
serve loop (until SIGINT or SIGTERM)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import TYPE_CHECKING

from simulator import catalog
from simulator.config import DEFAULT_QUOTAS, FaultSettings, IamUser, SimulatorConfig

if TYPE_CHECKING:
    from simulator.server import SimulatorServer

# The server, its state file and its quotas (``limits``) are imported where used: ``bmsctl``
# adds these options to its parser for every command, ``bmsctl --help`` included.

DESCRIPTION = "Serve a local Huawei Cloud BMS simulator: BMS v1, Nova v2.1 subset and IAM."

EPILOG = (
    "One base URL serves /v1/{project} (BMS), /v2.1/{project} (Nova, no keep-alive),\n"
    "/v3/auth/tokens (IAM) and /_sim/ (introspection, loopback only).\n\n"
    "Default catalog (the ids examples/batch.yaml uses):\n" + catalog.__doc__.split("\n", 2)[2]
)


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description, parser.epilog = DESCRIPTION, EPILOG
    _add_cloud_options(parser.add_argument_group("cloud"))
    _add_fault_options(parser.add_argument_group("faults"))
    _add_auth_options(parser.add_argument_group("authentication"))


def _add_cloud_options(group) -> None:
    group.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    group.add_argument(
        "--port", type=int, default=8500, help="0 picks a free port (default %(default)s)"
    )
    group.add_argument("--project-id", default=SimulatorConfig.project_id)
    group.add_argument(
        "--job-seconds",
        type=seconds_range,
        default=(0.2, 0.6),
        metavar="LOW-HIGH",
        help="duration range of each job, e.g. 0.2-0.6 or 0 (default 0.2-0.6)",
    )
    group.add_argument(
        "--deleted-visible-seconds",
        type=float,
        default=30.0,
        help="how long a deleted server answers status DELETED before 404 (default %(default)s)",
    )
    group.add_argument(
        "--state-file",
        metavar="PATH",
        help="keep the cloud (servers, volumes, jobs) in this JSON file: loaded at start, "
        "saved while running and at stop (default: memory only)",
    )
    group.add_argument(
        "--quota",
        type=quota_spec,
        default=DEFAULT_QUOTAS,
        metavar="SPEC",
        help="per-class quotas, e.g. 'create=50/minute;show=1000/minute'; "
        "classes left out keep the seed's table",
    )
    for flag, key in LIMIT_OPTIONS.items():
        group.add_argument(
            flag,
            type=int,
            default=None,
            metavar="N",
            help=f"account limit {key} (default {catalog.DEFAULT_LIMITS[key]})",
        )


#: Options of the account's limits (``GET .../limits``), by the limit they set.
LIMIT_OPTIONS = {
    "--max-instances": "maxTotalInstances",
    "--max-cores": "maxTotalCores",
    "--max-ram-mb": "maxTotalRAMSize",
}


#: Fault options that take a share between 0 and 1.
SHARE_OPTIONS = (
    "create_fail_share",
    "count_fail_share",
    "attach_fail_share",
    "http_500_share",
    "http_503_share",
    "drop_share",
)


def _add_fault_options(group) -> None:
    for name in SHARE_OPTIONS:
        group.add_argument(
            "--" + name.replace("_", "-"),
            type=share,
            default=getattr(FaultSettings(), name),
            metavar="X",
            help="share 0..1 (default 0)",
        )
    group.add_argument(
        "--latency-ms", type=int, default=0, metavar="N", help="delay added to every cloud call"
    )
    group.add_argument(
        "--seed", type=int, default=0, help="seed of every fault decision (default 0)"
    )
    group.add_argument(
        "--fail-create-codes",
        default="BMS.3037,BMS.3004",
        metavar="CODES",
        help="comma-separated codes failed create sub_jobs carry",
    )


def _add_auth_options(group) -> None:
    group.add_argument(
        "--credential",
        action="append",
        type=credential,
        metavar="AK:SK",
        help="accepted AK/SK pair (repeatable; default: the demo pair)",
    )
    group.add_argument(
        "--iam-user",
        action="append",
        type=iam_user,
        metavar="NAME:PASSWORD:DOMAIN",
        help="IAM user that may get tokens (repeatable; default demo:demo-password:demo)",
    )
    group.add_argument(
        "--no-auth", action="store_true", help="accept calls without a token or signature"
    )


def seconds_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    try:
        values = (float(low), float(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SECONDS or LOW-HIGH, got {text!r}") from None
    if values[0] < 0 or values[1] < values[0]:
        raise argparse.ArgumentTypeError(f"need 0 <= LOW <= HIGH, got {text!r}")
    return values


def quota_spec(text: str) -> str:
    from simulator.quota import parse_quotas

    try:
        parse_quotas(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a share is between 0 and 1, got {text}")
    return value


def credential(text: str) -> tuple[str, str]:
    ak, sep, sk = text.partition(":")
    if not sep or not ak or not sk:
        raise argparse.ArgumentTypeError("expected AK:SK")
    return ak, sk


def iam_user(text: str) -> IamUser:
    parts = text.split(":")
    if len(parts) != 3 or not all(parts):
        raise argparse.ArgumentTypeError("expected NAME:PASSWORD:DOMAIN")
    return IamUser(*parts)


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    faults = FaultSettings(
        create_fail_share=args.create_fail_share,
        count_fail_share=args.count_fail_share,
        attach_fail_share=args.attach_fail_share,
        http_500_share=args.http_500_share,
        http_503_share=args.http_503_share,
        latency_ms=args.latency_ms,
        drop_share=args.drop_share,
        seed=args.seed,
    )
    config = SimulatorConfig(
        host=args.host,
        port=args.port,
        project_id=args.project_id,
        auth=not args.no_auth,
        job_seconds=args.job_seconds,
        deleted_visible_seconds=args.deleted_visible_seconds,
        quotas=args.quota,
        faults=faults,
        fail_create_codes=[c.strip() for c in args.fail_create_codes.split(",") if c.strip()],
        limits={
            key: getattr(args, flag[2:].replace("-", "_"))
            for flag, key in LIMIT_OPTIONS.items()
            if getattr(args, flag[2:].replace("-", "_")) is not None
        },
        state_file=args.state_file,
    )
    if args.credential:
        config.credentials = list(args.credential)
    if args.iam_user:
        config.users = list(args.iam_user)
    return config


def banner(server: SimulatorServer) -> str:
    """What the operator needs to point a client here (demo credentials are meant to show)."""
    base, config = server.base_url, server.config
    lines = [
        f"BMS simulator serving at {base}",
        f"  project id   {config.project_id}",
        f"  BMS v1       {base}/v1/{config.project_id}",
        f"  Nova v2.1    {base}/v2.1/{config.project_id}",
        f"  IAM          {base}/v3/auth/tokens",
        f"  introspect   {base}/_sim/",
    ]
    if not config.auth:
        lines.append("  auth         off (--no-auth)")
    if config.state_file:
        how = "loaded from" if server.loaded_state else "new cloud, saved to"
        lines.append(f"  state        {how} {config.state_file}")
    lines += [f"  AK/SK        {ak} {sk}" for ak, sk in config.credentials]
    lines += [f"  IAM user     {u.name} / {u.password} (domain {u.domain})" for u in config.users]
    return "\n".join(lines)


def serve(config: SimulatorConfig) -> int:
    """Serve in the foreground until SIGINT or SIGTERM."""
    from simulator.persist import StateFileError
    from simulator.server import SimulatorServer

    server = SimulatorServer(config)
    try:
        server.start()
    except StateFileError as exc:
        print(f"simulator: {exc}", file=sys.stderr, flush=True)
        return 2
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    print(banner(server), flush=True)
    while not stopping.wait(0.5):
        pass
    server.stop()
    print("BMS simulator stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulator")
    add_options(parser)
    return serve(config_from_args(parser.parse_args(argv)))
