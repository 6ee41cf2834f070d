"""The preflight's cost for a large batch: cloud reads and wall time, and the create calls the
batch would take one by one and with ``count`` grouping.

The simulator runs in this process (default quotas, AK/SK auth, instant jobs); the batch has
``--named`` servers with two volumes each and ``--groups`` count entries of 100 servers. Three
runs; nothing is created.

    BMS_REDIS_URL=redis://127.0.0.1:1/0 .venv/bin/python -m bench.bench_preflight

(``BMS_REDIS_URL`` only satisfies the import of the Celery app; no Redis is used.)
"""

from __future__ import annotations

import argparse
import platform
import time

from api.dryrun import items_of
from bms.auth import AkSkAuth
from bms.client import BmsClient
from models.spec import parse_batch
from simulator import SimulatorConfig, SimulatorServer
from tasks.preflight import run_preflight

SERVER = {
    "imageRef": "a3e5c3e0-0000-4000-8000-000000000001",
    "flavorRef": "physical.o2.medium",
    "vpcid": "c1d0e0f0-0000-4000-8000-0000000000a1",
    "nics": [{"subnet_id": "c1d0e0f0-0000-4000-8000-0000000000b1"}],
    "availability_zone": "cn-north-4a",
    "key_name": "demo-key",
    "metadata": {"op_svc_userid": "bench"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--named", type=int, default=490, help="servers with 2 volumes each")
    parser.add_argument("--groups", type=int, default=5, help="count entries of 100 servers")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with SimulatorServer(SimulatorConfig(port=0, job_seconds=(0.0, 0.0))) as sim:
        sim.control.add_volumes(count=max(0, 2 * args.named - 200))
        volumes = [v["id"] for v in sim.control.volumes()]
        servers = [
            {**SERVER, "name": f"db{n:04d}",
             "attach_volumes": [{"volume_id": volumes[2 * n]}, {"volume_id": volumes[2 * n + 1]}]}
            for n in range(args.named)
        ] + [{**SERVER, "name": f"web{k}", "count": 100} for k in range(args.groups)]  # fmt: skip
        items = items_of(parse_batch({"name": "bench", "servers": servers}))
        auth = AkSkAuth(sim.ak, sim.sk, sim.project_id)
        with BmsClient(sim.base_url, sim.project_id, auth) as client:
            for run in range(1, args.runs + 1):
                started = time.perf_counter()
                report = run_preflight(client, items)
                seconds = time.perf_counter() - started
                print(
                    f"run {run}: servers {report.servers}, volumes {2 * args.named}, "
                    f"ok {report.ok}, cloud reads {report.reads}, "
                    f"create calls {report.create_calls.one_by_one} one by one / "
                    f"{report.create_calls.grouped} grouped, {seconds:.3f} s"
                )
    print(f"python {platform.python_version()}, {platform.machine()}")


if __name__ == "__main__":
    main()
