"""How fast this machine runs Python now: a fixed workload's CPU time, for comparing benchmark
runs made on different machines of the same kind (their speed differed by 1.5 × between two
sessions of issue 11, with the same code and ``model name``).

The workload is what a worker mostly does between its calls: JSON in and out, small dicts and
strings. Best of five: the least disturbed by other processes on a shared machine.
``python -m bench.calibrate`` prints it alone.
"""

from __future__ import annotations

import json
import time

ROUNDS = 5


def _workload() -> None:
    servers = [
        {"id": f"srv-{i:05d}", "name": f"node-{i}", "tags": ["a", "b"], "status": "ACTIVE", "n": i}
        for i in range(200)
    ]
    for _ in range(40):
        decoded = json.loads(json.dumps({"servers": servers}))
        _ = {server["id"]: server["name"].upper() for server in decoded["servers"]}


def reference_ms() -> float:
    """CPU milliseconds of one workload run, best of :data:`ROUNDS`."""
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()
        _workload()
        best = min(best, time.process_time() - started)
    return best * 1000


def describe() -> str:
    return f"reference workload {reference_ms():.0f} ms CPU (`python -m bench.calibrate`)"


if __name__ == "__main__":
    print(describe())
