"""Memory: the API as a real process (uvicorn) keeps its RSS bounded under hostile bodies.

Oversized bodies (by ``Content-Length`` and streamed in chunks) and bodies that amplify (small
defaults merged into a thousand servers), sent in parallel, without and with the token. The
process's peak RSS (``VmHWM``) may grow by :data:`GROWTH_BOUND_MB` at most over its RSS at rest.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from bmsctl.processes import ManagedProcess, child_env, free_port
from tests.api.helpers import TOKEN
from tests.factories import server

#: What a few requests in flight may cost the process; today's bodies cost gigabytes.
GROWTH_BOUND_MB = 150
MB = 1024 * 1024


def memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise LookupError(field)


@pytest.fixture
def api_process(tmp_path, redis_url, http, migrated_templates):
    """``python -m api`` on a free loopback port, with a token and a migrated SQLite database."""
    database_url = f"sqlite:///{tmp_path / 'api.db'}"
    migrated_templates.copy_into(database_url)
    port = free_port()
    env = child_env(
        BMS_DATABASE_URL=database_url,
        BMS_REDIS_URL=redis_url,
        BMS_API_TOKEN=TOKEN,
        BMS_API_HOST="127.0.0.1",
        BMS_API_PORT=str(port),
    )
    process = ManagedProcess("api", [sys.executable, "-m", "api"], env, tmp_path / "api.log")
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if http.get(f"{base}/healthz", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert process.alive(), process.tail()
        time.sleep(0.2)
    else:
        pytest.fail(f"the API did not answer:\n{process.tail()}")
    yield port, process
    process.stop()


def send_raw(port: int, headers: dict[str, str], body_bytes: int, chunked: bool) -> int:
    """POST ``body_bytes`` of spaces to /v1/batches as fast as the server takes them; the
    status of the answer (0 if the server closed without one)."""
    head = "POST /v1/batches HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head += "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {body_bytes}\r\n"
    chunk = b" " * 65536
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
    with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
        conn.sendall((head + "\r\n").encode())
        try:
            for _ in range(body_bytes // len(chunk)):
                conn.sendall(framed)
            if chunked:
                conn.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed: the rest was never read
        try:
            status_line = conn.recv(4096).split(b"\r\n", 1)[0]
        except OSError:
            return 0
    return int(status_line.split()[1]) if status_line else 0


def amplifying_body() -> bytes:
    """About 40 KB: defaults of many small values, merged into a thousand servers."""
    metadata = {"op_svc_userid": "u", **{f"k{i}": "v" for i in range(2000)}}
    defaults = {**server(name=None), "metadata": metadata}
    servers = [{"name": f"s{i}"} for i in range(1000)]
    return json.dumps({"name": "amp", "defaults": defaults, "servers": servers}).encode()


@pytest.fixture
def http():
    with requests.Session() as session:
        yield session


def test_rss_stays_bounded_under_oversized_and_amplifying_bodies(api_process, http):
    port, process = api_process
    at_rest = memory_kb(process.pid, "VmRSS")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    base = f"http://127.0.0.1:{port}/v1/batches"
    json_auth = {**auth, "Content-Type": "application/json"}

    with ThreadPoolExecutor(max_workers=6) as pool:
        anonymous = [pool.submit(send_raw, port, {}, 64 * MB, False) for _ in range(4)]
        streamed = [pool.submit(send_raw, port, {}, 64 * MB, True) for _ in range(2)]
        statuses = [f.result() for f in anonymous + streamed]
    assert set(statuses) <= {401, 0} and 401 in statuses

    with ThreadPoolExecutor(max_workers=6) as pool:
        sized = [pool.submit(send_raw, port, auth, 64 * MB, False) for _ in range(3)]
        streamed = [pool.submit(send_raw, port, auth, 64 * MB, True) for _ in range(3)]
        statuses = [f.result() for f in sized + streamed]
    assert set(statuses) <= {413, 0} and 413 in statuses

    body = amplifying_body()
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = [
            pool.submit(http.post, base, data=body, headers=json_auth, timeout=120)
            for _ in range(6)
        ]
        assert {f.result().status_code for f in answers} == {422}
    unauthenticated = http.post(base, data=body, headers={"Content-Type": "application/json"})
    assert unauthenticated.status_code == 401

    assert process.alive(), process.tail()
    peak = memory_kb(process.pid, "VmHWM")
    assert peak - at_rest < GROWTH_BOUND_MB * 1024, (
        f"RSS grew from {at_rest // 1024} MB to a peak of {peak // 1024} MB"
    )
