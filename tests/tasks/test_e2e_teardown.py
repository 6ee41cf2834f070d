"""Teardown end to end: real worker processes, real Redis, the simulator over HTTP.

A batch is provisioned, and another whose request FAILED at attach (its server kept), then all
are torn down: no live server is left in the cloud and every volume is ``available`` again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.records import AttachmentState
from models.states import RequestState, Step
from tasks.teardown import start_teardown
from tests.factories import server
from tests.fixtures.apiserver import serving_api

pytestmark = pytest.mark.e2e
S = RequestState
BMSCTL = Path(sys.executable).with_name("bmsctl")


def volume(n: int) -> str:
    return f"e5e5e5e5-0000-4000-8000-{n:012d}"


def batch() -> dict:
    return {
        "name": "to-tear-down",
        "servers": [
            server(name="db", attach_volumes=[{"volume_id": volume(1)},
                                              {"volume_id": volume(2)}]),
            server(name="web", attach_volumes=[{"volume_id": volume(3)}]),
        ],
    }  # fmt: skip


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_teardown_leaves_no_live_server_and_every_volume_available(stack_factory, backend):
    stack = stack_factory(backend)
    stack.start_worker("all", concurrency=4)
    submitted = stack.submit(batch())
    provisioned = stack.wait_until_finished(submitted.batch_id, timeout=180)
    assert [r.state for r in provisioned] == [S.ACTIVE, S.ACTIVE]
    # A leftover: every attach job fails, so this request is FAILED at attach with its server.
    stack.simulator.control.set_faults(attach_fail_share=1.0)
    leftover = stack.submit({"name": "leftover",
                             "servers": [server(name="bad", attach_volumes=[
                                 {"volume_id": volume(4)}])]})  # fmt: skip
    [failed] = stack.wait_until_finished(leftover.batch_id, timeout=180)
    assert failed.state is S.FAILED and failed.failed_step is Step.ATTACH and failed.server_id
    stack.simulator.control.set_faults(attach_fail_share=0.0)
    volumes = {v["id"]: v for v in stack.simulator.control.volumes()}
    assert {volumes[volume(n)]["status"] for n in (1, 2, 3)} == {"in-use"}
    every_request = submitted.request_ids + leftover.request_ids

    started = start_teardown(stack.sessions, every_request)

    assert started.started == every_request
    torn = stack.wait_until_finished(submitted.batch_id, timeout=180)
    torn += stack.wait_until_finished(leftover.batch_id, timeout=180)
    assert [r.state for r in torn] == [S.TORN_DOWN] * 3
    cloud = stack.simulator.control.servers()
    assert len(cloud) == 3  # one server per request was ever made
    assert all(s["deleted"] or s["status"] == "DELETED" for s in cloud), cloud
    volumes = {v["id"]: v for v in stack.simulator.control.volumes()}
    for n in (1, 2, 3, 4):
        assert volumes[volume(n)]["status"] == "available", volumes[volume(n)]
    assert [a.state for r in torn for a in r.attachments] == [AttachmentState.DETACHED] * 4
    detach_calls = stack.simulator.control.counters()["detach"]
    # Three detaches, one refused for the volume whose attach failed; no quota overrun.
    assert (detach_calls["calls"], detach_calls["throttled"]) == (4, 0), detach_calls


def test_bmsctl_teardown_watch_follows_it_to_the_end(stack_factory):
    stack = stack_factory("sqlite")
    stack.start_worker("all", concurrency=4)
    submitted = stack.submit({"name": "cli-teardown", "servers": [server(name="a", count=2)]})
    stack.wait_until_finished(submitted.batch_id, timeout=180)

    with serving_api(stack.database_url, stack.redis_url, stack.sessions) as url:
        result = subprocess.run(
            [str(BMSCTL), "teardown", str(submitted.batch_id), "--watch", "--api", url],
            capture_output=True,
            text=True,
            timeout=180,
            env={k: v for k, v in os.environ.items() if not k.startswith("BMS_")},
        )

    assert result.returncode == 0, (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert lines[0] == f"batch {submitted.batch_id}: tearing down 2 request(s)"
    assert "cli-teardown: 2/2  TORN_DOWN 2" in lines  # the progress, as plain lines
    assert [line.split("\t")[1] for line in lines if line.startswith("a-")] == ["TORN_DOWN"] * 2
    assert all(s["deleted"] or s["status"] == "DELETED" for s in stack.simulator.control.servers())
