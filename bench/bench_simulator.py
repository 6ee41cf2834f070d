"""Simulator throughput: a bounded burst of keep-alive GETs (server show and job show).

Starts ``python -m simulator`` as its own process (as the demo and the workers use it, so the
client does not share its interpreter lock) on a free port with quotas lifted and auth off,
creates a batch of servers, then sends ``--requests`` calls from ``--threads`` threads, each with
its own ``requests.Session``, and prints requests per second. Bounded in count and in time.

    .venv/bin/python bench/bench_simulator.py --requests 20000 --threads 8
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import platform
import subprocess
import sys
import threading
import time
import urllib.parse

import requests

LIFTED_QUOTAS = ";".join(
    f"{name}=1000000/minute"
    for name in ("create", "show", "update", "attach", "detach", "job", "list", "nova")
)
SERVER = {
    "imageRef": "a3e5c3e0-0000-4000-8000-000000000001",
    "flavorRef": "physical.o2.medium",
    "name": "bench",
    "metadata": {"op_svc_userid": "bench"},
    "nics": [{"subnet_id": "c1d0e0f0-0000-4000-8000-0000000000b1"}],
    "availability_zone": "cn-north-4a",
    "vpcid": "c1d0e0f0-0000-4000-8000-0000000000a1",
    "key_name": "demo-key",
    "count": 8,
}


def prepare(base: str) -> list[str]:
    """Create a batch; return the URLs to read: each server and the job."""
    with requests.Session() as session:
        job_id = session.post(f"{base}/baremetalservers", json={"server": SERVER}, timeout=10)
        job_id = job_id.json()["job_id"]
        job = session.get(f"{base}/jobs/{job_id}", timeout=10).json()
    server_ids = [sub["entities"]["server_id"] for sub in job["entities"]["sub_jobs"]]
    return [f"{base}/baremetalservers/{s}" for s in server_ids] + [f"{base}/jobs/{job_id}"]


def requests_worker(urls: list[str], count: int, deadline: float, results: list) -> None:
    """The orchestrator's client stack: a ``requests.Session`` per thread."""
    done = errors = 0
    with requests.Session() as session:
        for url in itertools.islice(itertools.cycle(urls), count):
            if time.monotonic() > deadline:
                break
            if session.get(url, timeout=10).status_code != 200:
                errors += 1
            done += 1
    results.append((done, errors))


def raw_worker(urls: list[str], count: int, deadline: float, results: list) -> None:
    """A thin ``http.client`` connection per thread: measures the server, not the client."""
    done = errors = 0
    address = urllib.parse.urlsplit(urls[0])
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    paths = [urllib.parse.urlsplit(url).path for url in urls]
    for path in itertools.islice(itertools.cycle(paths), count):
        if time.monotonic() > deadline:
            break
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        errors += response.status != 200
        done += 1
    connection.close()
    results.append((done, errors))


WORKERS = {"requests": requests_worker, "http.client": raw_worker}


PROJECT_ID = "0123456789abcdef0123456789abcdef"


def start_simulator() -> tuple[subprocess.Popen, str]:
    """``python -m simulator`` on a free port; returns the process and its base URL."""
    command = [sys.executable, "-m", "simulator", "--port", "0", "--no-auth"]
    command += ["--job-seconds", "0", "--quota", LIFTED_QUOTAS, "--project-id", PROJECT_ID]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    first_line = process.stdout.readline()
    if not first_line.startswith("BMS simulator serving at "):
        process.kill()
        raise RuntimeError(f"the simulator did not start: {first_line!r}")
    return process, first_line.rsplit(" ", 1)[-1].strip()


def run(total: int, threads: int, max_seconds: float, client: str = "requests") -> dict:
    process, base_url = start_simulator()
    try:
        urls = prepare(f"{base_url}/v1/{PROJECT_ID}")
        results: list[tuple[int, int]] = []
        started = time.monotonic()
        deadline = started + max_seconds
        pool = [
            threading.Thread(
                target=WORKERS[client], args=(urls, total // threads, deadline, results)
            )
            for _ in range(threads)
        ]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        elapsed = time.monotonic() - started
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()
    done = sum(r[0] for r in results)
    return {
        "requests": done,
        "errors": sum(r[1] for r in results),
        "seconds": elapsed,
        "per_second": done / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--client", choices=sorted(WORKERS), default="requests")
    args = parser.parse_args(argv)
    result = run(args.requests, args.threads, args.max_seconds, args.client)
    print(f"python {platform.python_version()} on {platform.machine()}")
    print(
        f"{result['requests']} requests ({result['errors']} errors) from {args.threads} "
        f"{args.client} threads "
        f"in {result['seconds']:.2f} s: {result['per_second']:.0f} requests/second"
    )
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
