"""End to end, count creates: real workers, Redis, the database and the simulator over HTTP."""

from __future__ import annotations

import math

import pytest
import redis
from sqlalchemy import select

from models.db import session_scope
from models.records import CreateGroup, GroupState
from models.spec import MARKER_METADATA_KEY
from models.states import RequestState
from tasks.control import cancel
from tasks.group_create import reconcile_groups
from tests.factories import server
from worker.fault_hooks import KILL_AFTER_CREATE_POST

pytestmark = pytest.mark.e2e
S = RequestState
BAREMETAL = "__type_baremetal"


def volume(n: int) -> str:
    return f"e5e5e5e5-0000-4000-8000-{n:012d}"  # the default catalog's disks


def live(stack) -> list[dict]:
    return [
        s
        for s in stack.simulator.control.servers()
        if not s["deleted"] and s["status"] != "DELETED"
    ]


def calls(stack, api_class: str) -> int:
    return stack.simulator.control.counters().get(api_class, {}).get("calls", 0)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_count_batch_takes_one_create_call_per_group_and_ends_active(stack_factory, backend):
    stack = stack_factory(backend)
    stack.start_worker("all", concurrency=4)
    # A count entry, and entries named as a count names them, each with a volume of its own.
    with_volumes = [
        server(name=f"disk-{i:04d}", attach_volumes=[{"volume_id": volume(i + 1)}], tags=["d"])
        for i in range(6)
    ]
    batch = {"name": "counted", "servers": [server(name="web", count=7, tags=["w"]), *with_volumes]}
    submitted = stack.submit(batch)

    requests = stack.wait_until_finished(submitted.batch_id, timeout=180)

    assert [r.state for r in requests] == [S.ACTIVE] * 13
    assert calls(stack, "create") <= math.ceil(7 / 100) + math.ceil(6 / 100)
    assert calls(stack, "update") == 0  # every server was made under its final name
    cloud = {s["id"]: s for s in live(stack)}
    assert len(cloud) == 13
    for request in requests:
        made = cloud[request.server_id]
        assert made["name"] == request.name and made["status"] == "ACTIVE"
        assert sorted(made["tags"]) == sorted([*request.spec["tags"], BAREMETAL])
        wanted = {a["volume_id"] for a in request.spec["attach_volumes"]}
        assert {v["id"] for v in made["volumes"]} == wanted


def recorded_creates(stack) -> list[tuple[str, int, str]]:
    """Every create the simulator accepts from now on, as its body asked: ``(name, count,
    the marker in its metadata)``."""
    made: list[tuple[str, int, str]] = []
    state = stack.simulator.app.state
    accept = state.create_servers

    def recording(template, names, nics, at_once=False):
        count = len(names)
        name = names[0] if count == 1 else names[0].removesuffix("-0000")
        made.append((name, count, template["metadata"].get(MARKER_METADATA_KEY)))
        return accept(template, names, nics, at_once)

    state.create_servers = recording
    return made


def test_the_create_bodies_the_simulator_receives_follow_the_grouping_rules(stack_factory):
    stack = stack_factory()
    creates = recorded_creates(stack)
    stack.start_worker("all", concurrency=4)
    subnet = "c1d0e0f0-0000-4000-8000-0000000000b1"  # the catalog's 192.168.1.0/24

    def fixed(host: int) -> dict:
        return {"subnet_id": subnet, "ip_address": f"192.168.1.{host}"}

    other_tags = [{"key": "role", "value": "other"}]
    servers = [
        server(name="web", count=3),  # one call of 3, under its own base name
        # Named as a count names them, but a fixed IP each: one call each.
        *(server(name=f"fix-{i:04d}", nics=[fixed(50 + i)]) for i in range(2)),
        server(name="solo"),  # a name of its own
        server(name="mix-0000"),  # count names, but the bodies differ beyond the name
        server(name="mix-0001", tags=None, server_tags=other_tags),
        server(name="app-0000"),  # entries named as a count names them, identical bodies
        server(name="app-0001"),
    ]
    submitted = stack.submit({"name": "rules", "servers": servers})

    requests = stack.wait_until_finished(submitted.batch_id, timeout=180)

    assert [r.state for r in requests] == [S.ACTIVE] * 10
    sent = sorted((name, count) for name, count, _marker in creates)
    assert sent == [
        ("app", 2),
        ("fix-0000", 1),
        ("fix-0001", 1),
        ("mix-0000", 1),
        ("mix-0001", 1),
        ("solo", 1),
        ("web", 3),
    ]
    assert len({marker for _name, _count, marker in creates}) == len(creates)  # one each
    assert calls(stack, "update") == 0  # every server made under its final name
    assert sorted(s["name"] for s in live(stack)) == sorted(r.name for r in requests)


def test_failed_sub_jobs_are_retried_together_and_the_built_servers_go_on(stack_factory):
    stack = stack_factory(count_fail_share=0.4)
    creates = recorded_creates(stack)
    stack.start_worker("all", concurrency=4)
    submitted = stack.submit({"name": "partial", "servers": [server(name="part", count=5)]})

    requests = stack.wait_until_finished(submitted.batch_id, timeout=180)

    assert [r.state for r in requests] == [S.ACTIVE] * 5
    assert sum(1 for r in requests if r.attempt > 1) == 2  # 40% of 5 sub_jobs failed
    made = live(stack)
    assert sorted(s["name"] for s in made) == [f"part-{i:04d}" for i in range(5)]  # no orphan
    assert {s["id"] for s in made} == {r.server_id for r in requests}
    # The two failed members were created again together: one count call of 2, under a
    # marker of its own (their names are not part-0000, part-0001), then renamed.
    # The two failed members were created again together: one count call of 2, under a
    # marker of its own (their names are not part-0000, part-0001), the built one renamed.
    # The simulator fails a sub_job of every count call: that one's third try is on its own.
    first, again, alone = creates
    assert first[:2] == ("part", 5)
    assert again[1] == 2 and again[2] != first[2] and again[0] == again[2]
    last = next(r for r in requests if r.attempt == 3)
    assert alone[:2] == (last.name, 1)
    assert sorted(r.attempt for r in requests) == [1, 1, 1, 2, 3]
    assert calls(stack, "update") == 1


def test_a_worker_killed_right_after_the_group_post_adopts_the_group(stack_factory, tmp_path):
    token = tmp_path / "kill-token"
    token.write_text("armed")
    stack = stack_factory()
    stack.start_worker("all", concurrency=2, **{KILL_AFTER_CREATE_POST: str(token)})
    submitted = stack.submit({"name": "crash", "servers": [server(name="crash", count=5)]})

    requests = stack.wait_until_finished(submitted.batch_id, timeout=120)

    assert not token.exists(), "the crash hook never fired"
    assert [r.state for r in requests] == [S.ACTIVE] * 5
    assert calls(stack, "create") == 1  # adopted by its marker, never created again
    cloud = stack.simulator.control.servers()
    assert sorted(s["name"] for s in cloud) == [f"crash-{i:04d}" for i in range(5)]


def test_a_cancelled_member_has_only_its_server_deleted(stack_factory):
    stack = stack_factory(job_seconds=(1.5, 2.0))
    stack.start_worker("all", concurrency=4)
    submitted = stack.submit({"name": "cancel", "servers": [server(name="cut", count=4)]})

    def posted() -> bool:
        return all(r.state is S.BUILDING for r in stack.requests(submitted.batch_id))

    stack.wait_for(posted, 60, "the group's create to be accepted")
    victim = stack.requests(submitted.batch_id)[1]
    assert cancel(stack.sessions, [victim.id]) == [victim.id]

    requests = stack.wait_until_finished(submitted.batch_id, timeout=120)

    assert [r.state for r in requests] == [S.ACTIVE, S.CANCELLED, S.ACTIVE, S.ACTIVE]
    assert calls(stack, "create") == 1
    made = live(stack)
    assert sorted(s["name"] for s in made) == ["cut-0000", "cut-0002", "cut-0003"]


def test_a_group_cancelled_whole_after_its_post_with_its_poll_lost_has_its_servers_deleted(
    stack_factory,
):
    stack = stack_factory(job_seconds=(1.0, 1.5))
    worker = stack.start_worker("first", concurrency=2)
    submitted = stack.submit({"name": "leak", "servers": [server(name="gone", count=3)]})

    def posted() -> bool:
        return all(r.state is S.BUILDING for r in stack.requests(submitted.batch_id))

    stack.wait_for(posted, 60, "the group's create to be accepted")
    worker.stop()
    worker.expected_dead = True
    redis.Redis.from_url(stack.redis_url).flushall()  # the group's poll message is lost
    requests = stack.requests(submitted.batch_id)
    assert cancel(stack.sessions, [r.id for r in requests]) == [r.id for r in requests]
    stack.start_worker("second", concurrency=2)

    assert reconcile_groups(stack.sessions, idle_seconds=0) == 1  # as the beat task runs it

    def group_done() -> bool:
        with session_scope(stack.sessions) as session:
            return session.scalar(select(CreateGroup.state)) is GroupState.DONE

    stack.wait_for(group_done, 60, "the group's job to be watched to its end")
    requests = stack.wait_until_finished(submitted.batch_id, timeout=120)
    assert [r.state for r in requests] == [S.CANCELLED] * 3
    assert calls(stack, "create") == 1
    assert live(stack) == []  # every server the group's job made is deleted
