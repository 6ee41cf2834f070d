"""Count creates with a scripted cloud: one POST per group, whatever interleaves."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from unittest.mock import patch

import pytest
from celery.canvas import Signature
from sqlalchemy import select

from bms.client import CreateResult, ServerPage
from bms.exceptions import CloudConnectionError, Throttled
from bms.jobs import Job
from models.base import utcnow
from models.db import session_scope
from models.records import (
    Batch,
    BatchSource,
    CreateGroup,
    GroupState,
    ServerRequest,
    record_creation,
    watched_clause,
)
from models.spec import MARKER_METADATA_KEY
from models.states import RequestState, Step
from tasks import control, group_create
from tasks.base import Chain, StaleChain, Wait
from tasks.control import cancel, retry
from tasks.finish import rename_server
from tasks.group_create import create_group, poll_group_job
from tasks.plan import next_task_name
from tests.tasks.stepkit import next_task

S = RequestState
BODY = {"name": "web", "metadata": {"op_svc_userid": "u"}, "flavorRef": "f", "count": 1}


@pytest.fixture
def sent(monkeypatch) -> list:
    """The other members' next steps, as the group's transactions send them."""
    signatures: list = []
    monkeypatch.setattr(group_create, "_send", signatures.extend)
    return signatures


def add_group(bench, size: int = 3, base: str = "web") -> list[uuid.UUID]:
    """A batch of ``size`` requests named ``base-0000`` ..., planned into one group."""
    with session_scope(bench.sessions) as session:
        batch = Batch(name="grouped", source=BatchSource.CLI, request_count=size)
        session.add(batch)
        session.flush()
        ids = []
        for index in range(size):
            name = f"{base}-{index:04d}"
            request = ServerRequest(
                batch_id=batch.id,
                position=index,
                name=name,
                spec={"create_body": {**BODY, "name": name}, "tags": []},
                state=S.PENDING,
            )
            session.add(request)
            session.flush()
            record_creation(session, request)
            ids.append(request.id)
        batch_id = batch.id
    assert group_create.plan_batch(bench.sessions, batch_id, 100) == [ids[0]]
    return ids


def group_of(bench, request_id) -> CreateGroup:
    with session_scope(bench.sessions) as session:
        group_id = session.get(ServerRequest, request_id).group_id
        return session.get(CreateGroup, group_id)


def servers(marker: str, *names_ids: tuple[str, str]) -> ServerPage:
    found = [
        {"id": sid, "name": name, "status": "BUILD", "metadata": {MARKER_METADATA_KEY: marker}}
        for name, sid in names_ids
    ]
    return ServerPage(found, len(found))


def group_job(*subs: tuple[str, str | None, str | None], job_id: str = "job-g") -> Job:
    """A count create's job: ``(status, server id, error code)`` per sub_job."""
    sub_jobs = [
        {"status": status, "entities": {"server_id": sid} if sid else {}, "error_code": code}
        for status, sid, code in subs
    ]
    failed = next((code for status, _sid, code in subs if status == "FAIL"), None)
    top = "FAIL" if failed else subs[0][0]
    return Job.from_api(
        {"status": top, "job_id": job_id, "error_code": failed, "entities": {"sub_jobs": sub_jobs}}
    )


def posted_bodies(bench) -> list[dict]:
    return [args[0] for name, args in bench.client.calls if name == "create_servers"]


def test_a_group_is_created_by_one_call_and_each_member_goes_on_from_the_one_poll(bench, sent):
    ids = add_group(bench, 3)
    messages = [bench.chain(request_id) for request_id in ids]
    bench.client.on("create_servers", CreateResult("job-g"))

    outcome = create_group(messages[1])

    (body,) = posted_bodies(bench)
    group = group_of(bench, ids[0])
    assert (body["name"], body["count"]) == ("web", 3)
    assert body["metadata"][MARKER_METADATA_KEY] == group.marker
    assert (group.state, group.job_id) == (GroupState.POSTED, "job-g")
    assert [bench.get(i).state for i in ids] == [S.BUILDING] * 3
    assert next_task(outcome) == "bms.poll_group_job"
    for message in (messages[0], messages[2]):  # the others' create messages: no-ops
        with pytest.raises(StaleChain):
            create_group(message)
    assert bench.client.count("create_servers") == 1

    bench.client.on("show_job", group_job(*[("SUCCESS", f"srv-{i}", None) for i in range(3)]))
    named = [(f"web-{i:04d}", f"srv-{i}") for i in range(3)]
    bench.client.on("list_servers", servers(group.marker, *reversed(named)))
    done = poll_group_job(messages[1])

    assert [bench.get(i).server_id for i in ids] == ["srv-0", "srv-1", "srv-2"]
    assert [bench.get(i).state for i in ids] == [S.TAGGING] * 3
    assert next_task(done) == "bms.apply_tags"
    assert sorted(s.kwargs["request_id"] for s in sent) == sorted(str(ids[i]) for i in (0, 2))
    assert bench.client.count("show_job") == 1


def test_two_member_messages_running_at_once_send_one_post(bench, sent):
    ids = add_group(bench, 4)
    messages = [bench.chain(request_id) for request_id in ids]
    others_done = []

    def the_other_member_runs_meanwhile(_body):
        try:
            create_group(messages[3])
        except StaleChain:
            others_done.append("stale")
        return CreateResult("job-g")

    bench.client.on("create_servers", the_other_member_runs_meanwhile)
    create_group(messages[0])

    assert others_done == ["stale"]
    assert bench.client.count("create_servers") == 1


def test_two_member_messages_in_two_threads_send_one_post(bench, sent):
    ids = add_group(bench, 5)
    messages = [bench.chain(request_id) for request_id in ids]
    bench.client.on("create_servers", CreateResult("job-g"))
    start = threading.Barrier(2)
    outcomes = []

    def run(message):
        start.wait(10)
        try:
            outcomes.append(next_task(create_group(message)))
        except StaleChain:
            outcomes.append("stale")

    threads = [threading.Thread(target=run, args=(m,)) for m in (messages[0], messages[4])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(outcomes) == ["bms.poll_group_job", "stale"]
    assert bench.client.count("create_servers") == 1


def test_a_lost_create_answer_adopts_the_whole_group_by_its_marker(bench, sent):
    ids = add_group(bench, 3)
    bench.client.on("create_servers", CloudConnectionError("dropped", "POST", "/x"))
    with pytest.raises(CloudConnectionError):
        create_group(bench.chain(ids[0]))
    group = group_of(bench, ids[0])
    assert group.intent_at is not None and group.state is GroupState.PLANNED
    named = [(f"web-{i:04d}", f"srv-{i}") for i in range(3)]
    extra = ("web-0001", "srv-dup")
    bench.client.on("list_servers", servers(group.marker, *named, extra))

    outcome = create_group(bench.chain(ids[0]))

    assert bench.client.count("create_servers") == 1
    assert [bench.get(i).server_id for i in ids] == ["srv-0", "srv-1", "srv-2"]
    assert [bench.get(i).state for i in ids] == [S.BUILDING] * 3
    assert next_task(outcome) == "bms.wait_server_built"
    assert {s.task for s in sent} == {"bms.wait_server_built"}
    assert [s.server_id for s in bench.strays(ids[0])] == ["srv-dup"]
    assert group_of(bench, ids[0]).state is GroupState.DONE


def test_a_lost_answer_with_nothing_listed_after_the_grace_posts_again_with_the_same_marker(
    bench, sent
):
    ids = add_group(bench, 2)
    bench.client.on(
        "create_servers", CloudConnectionError("dropped", "POST", "/x"), CreateResult("job-g")
    )
    with pytest.raises(CloudConnectionError):
        create_group(bench.chain(ids[0]))
    bench.client.on("list_servers", servers("unused"))

    create_group(bench.chain(ids[1]))  # the reconciler's restart of another member

    first, second = posted_bodies(bench)
    assert first == second  # same names, same marker: a look-up finds either
    assert group_of(bench, ids[0]).job_id == "job-g"


def test_a_quota_wait_spends_no_attempt_and_keeps_the_group_unmade(bench, sent):
    ids = add_group(bench, 2)
    bench.client.on("create_servers", Throttled(429, "APIGW.0308", "quota"))
    with pytest.raises(Throttled):
        create_group(bench.chain(ids[0]))
    group = group_of(bench, ids[0])
    assert (group.intent_at, group.state) == (None, GroupState.PLANNED)
    assert [bench.get(i).attempt for i in ids] == [0, 0]

    bench.client.on("create_servers", CreateResult("job-g"))
    create_group(bench.chain(ids[0]))  # the same message, re-run by the wrapper
    assert [bench.get(i).attempt for i in ids] == [1, 1]
    assert group_of(bench, ids[0]).job_id == "job-g"


def test_a_partly_failed_job_sends_the_built_on_and_retries_the_failed(bench, sent):
    ids = add_group(bench, 3)
    bench.client.on("create_servers", CreateResult("job-g"))
    create_group(bench.chain(ids[0]))
    marker = group_of(bench, ids[0]).marker
    subs = [("SUCCESS", "srv-0", None), ("FAIL", "srv-1", "BMS.3037"), ("FAIL", None, "BMS.3037")]
    bench.client.on("show_job", group_job(*subs))
    bench.client.on("list_servers", servers(marker, ("web-0000", "srv-0"), ("web-0001", "srv-1")))

    poll_group_job(bench.chain(ids[0]))

    built, broken, unmade = (bench.get(i) for i in ids)
    assert (built.state, built.server_id) == (S.TAGGING, "srv-0")
    assert (broken.state, broken.cleanup_server_id, broken.cloud_name) == (
        S.CREATING,
        "srv-1",
        None,
    )
    assert (unmade.state, unmade.cleanup_server_id, unmade.last_error_code) == (
        S.CREATING,
        None,
        "BMS.3037",
    )
    assert sorted(s.task for s in sent) == ["bms.create_group", "bms.delete_server"]

    # Its peer still deletes its failed server: the member waits for it (up to the delete
    # deadline), then its next attempt is its own create, under its final name.
    with pytest.raises(Wait):
        create_group(bench.chain(ids[2]))
    assert bench.client.count("create_servers") == 1
    bench.set(ids[2], wait_deadline_at=utcnow() - timedelta(seconds=1))
    bench.client.on("create_servers", CreateResult("job-2"))
    create_group(bench.chain(ids[2]))
    body = posted_bodies(bench)[-1]
    assert (body["name"], body["count"]) == ("web-0002", 1)
    assert bench.get(ids[2]).attempt == 2  # the group's attempt counts in its budget
    assert bench.get(ids[2]).wait_deadline_at is None


def fail_in_the_group(bench, ids, failed: set[int]) -> str:
    """The group's call made every member; the members ``failed`` failed without a server
    (nothing to delete), the others were built. Returns the group's marker."""
    bench.client.on("create_servers", CreateResult("job-g"))
    create_group(bench.chain(ids[0]))
    marker = group_of(bench, ids[0]).marker
    subs = [
        ("FAIL", None, "BMS.3037") if i in failed else ("SUCCESS", f"srv-{i}", None)
        for i in range(len(ids))
    ]
    bench.client.on("show_job", group_job(*subs))
    built = [(f"web-{i:04d}", f"srv-{i}") for i in range(len(ids)) if i not in failed]
    bench.client.on("list_servers", servers(marker, *built))
    poll_group_job(bench.chain(ids[0]))
    return marker


def test_failed_members_are_created_again_by_one_count_call_with_their_own_names(bench, sent):
    ids = add_group(bench, 4)
    first = fail_in_the_group(bench, ids, failed={0, 1})
    retries = {s.kwargs["request_id"]: s for s in sent if s.task == "bms.create_group"}
    assert set(retries) == {str(ids[1])}  # ids[0] polled: its own retry is the poll's outcome
    assert [bench.get(i).state for i in ids] == [S.CREATING, S.CREATING, S.TAGGING, S.TAGGING]

    bench.client.on("create_servers", CreateResult("job-r"))
    outcome = create_group(bench.chain(ids[0]))

    body = posted_bodies(bench)[-1]
    group = group_of(bench, ids[0])
    assert (body["name"], body["count"]) == ("web", 2)  # web-0000, web-0001: their names
    assert body["metadata"][MARKER_METADATA_KEY] == group.marker != first
    assert group_of(bench, ids[1]).id == group.id and group_of(bench, ids[2]).marker == first
    assert [bench.get(i).state for i in ids[:2]] == [S.BUILDING, S.BUILDING]
    assert [bench.get(i).attempt for i in ids[:2]] == [2, 2]
    assert next_task(outcome) == "bms.poll_group_job"
    with pytest.raises(StaleChain):  # the peer's own retry message is now a no-op
        create_group(Chain(str(ids[1]), retries[str(ids[1])].kwargs["fence"]))
    assert bench.client.count("create_servers") == 2

    bench.client.on("show_job", group_job(("SUCCESS", "srv-a", None), ("SUCCESS", "srv-b", None),
                                          job_id="job-r"))  # fmt: skip
    again = servers(group.marker, ("web-0000", "srv-a"), ("web-0001", "srv-b"))
    bench.client.on("list_servers", again)
    poll_group_job(bench.chain(ids[0]))
    assert [bench.get(i).server_id for i in ids[:2]] == ["srv-a", "srv-b"]
    assert [bench.get(i).state for i in ids[:2]] == [S.TAGGING, S.TAGGING]


def test_failed_members_with_a_gap_are_created_under_a_marker_and_renamed(bench, sent):
    ids = add_group(bench, 3)
    fail_in_the_group(bench, ids, failed={0, 2})
    bench.client.on("create_servers", CreateResult("job-r"))

    create_group(bench.chain(ids[2]))

    body = posted_bodies(bench)[-1]
    marker = group_of(bench, ids[2]).marker
    assert (body["name"], body["count"]) == (marker, 2)
    assert [bench.get(i).cloud_name for i in (ids[0], ids[2])] == [f"{marker}-0000",
                                                                   f"{marker}-0001"]  # fmt: skip


def test_an_operators_retry_of_failed_members_creates_them_together(bench, sent):
    ids = add_group(bench, 3)
    fail_in_the_group(bench, ids, failed={1, 2})
    for request_id in ids[1:]:
        bench.set(request_id, state=S.FAILED, failed_step=Step.CREATE, attempt=3)
    with patch.object(control, "dispatch"):
        assert retry(bench.sessions, ids[1:]) == ids[1:]
    bench.client.on("create_servers", CreateResult("job-r"))

    assert next_task_name(bench.get(ids[1])) == "bms.create_group"
    create_group(bench.chain(ids[1]))

    body = posted_bodies(bench)[-1]
    assert body["count"] == 2 and bench.client.count("create_servers") == 2
    assert [bench.get(i).attempt for i in ids[1:]] == [1, 1]  # a fresh budget each


def test_a_member_retried_alone_is_created_on_its_own(bench, sent):
    ids = add_group(bench, 3)
    fail_in_the_group(bench, ids, failed={1})
    bench.client.on("create_servers", CreateResult("job-r"))

    create_group(bench.chain(ids[1]))

    body = posted_bodies(bench)[-1]
    assert (body["name"], body["count"]) == ("web-0001", 1)
    assert bench.get(ids[1]).create_marker  # its own create, with its own marker


def test_a_member_cancelled_before_the_post_is_left_out_of_the_count(bench, sent):
    ids = add_group(bench, 3)
    cancel(bench.sessions, [ids[2]])
    bench.client.on("create_servers", CreateResult("job-g"))

    create_group(bench.chain(ids[0]))

    (body,) = posted_bodies(bench)
    assert (body["name"], body["count"]) == ("web", 2)
    assert bench.get(ids[2]).state is S.CANCELLED and bench.get(ids[2]).cloud_name is None


def test_a_gap_in_the_group_is_created_under_the_marker_and_renamed(bench, sent):
    ids = add_group(bench, 3)
    cancel(bench.sessions, [ids[1]])
    bench.client.on("create_servers", CreateResult("job-g"))
    create_group(bench.chain(ids[0]))
    marker = group_of(bench, ids[0]).marker

    (body,) = posted_bodies(bench)
    assert (body["name"], body["count"]) == (marker, 2)
    assert bench.get(ids[2]).cloud_name == f"{marker}-0001"

    bench.client.on("show_job", group_job(("SUCCESS", "srv-0", None), ("SUCCESS", "srv-2", None)))
    listed = servers(marker, (f"{marker}-0000", "srv-0"), (f"{marker}-0001", "srv-2"))
    bench.client.on("list_servers", listed)
    poll_group_job(bench.chain(ids[0]))
    bench.set(ids[2], step_done="tag")
    bench.client.on("rename_server", {})
    rename_server(bench.chain(ids[2]))
    assert bench.client.calls[-1] == ("rename_server", ("srv-2", "web-0002"))


def test_a_member_cancelled_after_the_post_has_only_its_server_deleted(bench, sent):
    ids = add_group(bench, 3)
    bench.client.on("create_servers", CreateResult("job-g"))
    create_group(bench.chain(ids[0]))
    cancel(bench.sessions, [ids[1]])
    marker = group_of(bench, ids[0]).marker
    bench.client.on("show_job", group_job(*[("SUCCESS", f"srv-{i}", None) for i in range(3)]))
    named = [(f"web-{i:04d}", f"srv-{i}") for i in range(3)]
    bench.client.on("list_servers", servers(marker, *named))

    poll_group_job(bench.chain(ids[0]))

    cancelled = bench.get(ids[1])
    assert (cancelled.state, cancelled.cleanup_server_id) == (S.CANCELLED, "srv-1")
    assert [bench.get(i).state for i in (ids[0], ids[2])] == [S.TAGGING, S.TAGGING]
    tasks = {s.kwargs["request_id"]: s.task for s in sent}
    assert tasks == {str(ids[1]): "bms.delete_server", str(ids[2]): "bms.apply_tags"}


def test_the_poller_cancelled_still_polls_for_the_group(bench, sent):
    ids = add_group(bench, 2)
    bench.client.on("create_servers", CreateResult("job-g"))
    poller = bench.chain(ids[0])
    create_group(poller)
    cancel(bench.sessions, [ids[0]])
    marker = group_of(bench, ids[0]).marker
    bench.client.on("show_job", group_job(("SUCCESS", "srv-0", None), ("SUCCESS", "srv-1", None)))
    bench.client.on("list_servers", servers(marker, ("web-0000", "srv-0"), ("web-0001", "srv-1")))

    outcome = poll_group_job(poller)

    assert next_task(outcome) == "bms.delete_server"
    assert bench.get(ids[1]).state is S.TAGGING


def test_a_message_delivered_twice_does_nothing_the_second_time(bench, sent):
    ids = add_group(bench, 2)
    create_message = bench.chain(ids[0])
    copy = bench.chain(ids[0])
    bench.client.on("create_servers", CreateResult("job-g"))
    create_group(create_message)
    with pytest.raises(StaleChain):
        create_group(copy)

    poll_message = bench.chain(ids[0])
    poll_copy = bench.chain(ids[0])
    bench.client.on("show_job", group_job(("RUNNING", None, None)))
    with pytest.raises(Wait):
        poll_group_job(poll_message)
    with pytest.raises(StaleChain):
        poll_group_job(poll_copy)
    assert (bench.client.count("create_servers"), bench.client.count("show_job")) == (1, 1)


def test_another_member_does_not_poll_while_the_poller_holds_the_lease(bench, sent):
    ids = add_group(bench, 2)
    bench.client.on("create_servers", CreateResult("job-g"))
    create_group(bench.chain(ids[0]))

    assert poll_group_job(bench.chain(ids[1])) is None  # e.g. a restart by the reconciler
    assert bench.client.count("show_job") == 0


def test_a_running_poll_keeps_every_member_moving(bench, sent):
    ids = add_group(bench, 2)
    bench.client.on("create_servers", CreateResult("job-g"))
    create_group(bench.chain(ids[0]))
    before = bench.get(ids[1]).updated_at
    bench.client.on("show_job", group_job(("RUNNING", None, None)))
    with pytest.raises(Wait):
        poll_group_job(bench.chain(ids[0]))
    assert bench.get(ids[1]).updated_at > before


def test_a_batch_is_planned_once_and_never_after_a_dispatch(bench):
    ids = add_group(bench, 2)
    with session_scope(bench.sessions) as session:
        batch_id = session.get(ServerRequest, ids[0]).batch_id
        assert len(list(session.scalars(select(CreateGroup)))) == 1
    assert group_create.plan_batch(bench.sessions, batch_id, 100) == []


def test_the_plan_names_the_group_create_only_while_the_group_makes_the_member(bench, sent):
    ids = add_group(bench, 2)
    assert next_task_name(bench.get(ids[0])) == "bms.create_group"
    bench.client.on("create_servers", CreateResult("job-g"))
    create_group(bench.chain(ids[0]))
    assert next_task_name(bench.get(ids[1])) == "bms.poll_group_job"
    bench.set(ids[1], state=S.CREATING, cloud_name=None)  # failed in the group, retried
    assert next_task_name(bench.get(ids[1])) == "bms.create_group"  # with its peers, if any
    bench.set(ids[1], create_intent_at=utcnow())  # its own create is under way: its own step
    assert next_task_name(bench.get(ids[1])) == "bms.create_server"


def silent(bench, request_id, **fields) -> None:
    """The group's rows as an hour without news leaves them."""
    with session_scope(bench.sessions) as session:
        group = session.get(CreateGroup, session.get(ServerRequest, request_id).group_id)
        for name, value in fields.items():
            setattr(group, name, value)


def test_a_group_whose_members_are_all_cancelled_after_its_post_and_its_poll_lost_is_watched(
    bench, sent
):
    ids = add_group(bench, 2)
    bench.client.on("create_servers", CreateResult("job-g"))
    create_group(bench.chain(ids[0]))  # the poll it names is lost: never run
    assert cancel(bench.sessions, ids) == ids
    marker = group_of(bench, ids[0]).marker
    # Nothing of its own left for the request reconciler: no job, no intent, no server.
    assert [next_task_name(bench.get(i)) for i in ids] == [None, None]
    with session_scope(bench.sessions) as session:
        assert session.scalars(select(ServerRequest.id).where(watched_clause())).all() == []
    assert group_create.reconcile_groups(bench.sessions, idle_seconds=600) == 0  # not silent yet

    silent(bench, ids[0], polled_at=utcnow() - timedelta(hours=1))
    with patch.object(Signature, "apply_async") as sends:
        assert group_create.reconcile_groups(bench.sessions, idle_seconds=600) == 1
    assert sends.call_count == 1
    assert group_of(bench, ids[0]).poller_id == ids[0]  # the lease given to the one restarted
    poll = Chain(str(ids[0]), bench.get(ids[0]).fence)  # the message it sent
    bench.client.on("show_job", group_job(("SUCCESS", "srv-0", None), ("SUCCESS", "srv-1", None)))
    bench.client.on("list_servers", servers(marker, ("web-0000", "srv-0"), ("web-0001", "srv-1")))

    outcome = poll_group_job(poll)

    assert next_task(outcome) == "bms.delete_server"
    assert [bench.get(i).cleanup_server_id for i in ids] == ["srv-0", "srv-1"]
    assert [s.task for s in sent] == ["bms.delete_server"]
    assert group_of(bench, ids[0]).state is GroupState.DONE
    assert group_create.reconcile_groups(bench.sessions, idle_seconds=0) == 0


def test_the_group_reconciler_leaves_a_group_a_member_chain_watches(bench, sent):
    ids = add_group(bench, 2)
    bench.client.on("create_servers", CreateResult("job-g"))
    create_group(bench.chain(ids[0]))
    cancel(bench.sessions, [ids[1]])  # ids[0] is BUILDING: the request reconciler has it
    silent(bench, ids[0], polled_at=utcnow() - timedelta(hours=1))

    assert group_create.restart_group(bench.sessions, group_of(bench, ids[0]).id, 600) is None


def test_a_silent_intent_of_cancelled_members_is_looked_up_by_marker(bench, sent):
    ids = add_group(bench, 2)
    bench.client.on("create_servers", CloudConnectionError("dropped", "POST", "/x"))
    with pytest.raises(CloudConnectionError):
        create_group(bench.chain(ids[0]))  # the answer is lost; its retry is lost too
    cancel(bench.sessions, ids)
    marker = group_of(bench, ids[0]).marker
    silent(bench, ids[0], intent_at=utcnow() - timedelta(hours=1))

    signature = group_create.restart_group(bench.sessions, group_of(bench, ids[0]).id, 600)

    assert signature.task == "bms.create_group"
    bench.client.on("list_servers", servers(marker, ("web-0000", "srv-0"), ("web-0001", "srv-1")))
    create_group(Chain(str(ids[0]), signature.kwargs["fence"]))
    assert [bench.get(i).cleanup_server_id for i in ids] == ["srv-0", "srv-1"]
    assert bench.client.count("create_servers") == 1  # looked up, never posted again


def test_a_member_built_while_the_job_runs_goes_on_at_once_and_only_once(bench, sent):
    ids = add_group(bench, 3)
    bench.client.on("create_servers", CreateResult("job-g"))
    create_group(bench.chain(ids[0]))
    marker = group_of(bench, ids[0]).marker
    named = [(f"web-{i:04d}", f"srv-{i}") for i in range(3)]
    bench.client.on("list_servers", servers(marker, *named))
    running = group_job(
        ("RUNNING", "srv-0", None), ("SUCCESS", "srv-1", None), ("RUNNING", "srv-2", None)
    )
    bench.client.on("show_job", running)

    with pytest.raises(Wait):
        poll_group_job(bench.chain(ids[0]))

    assert [bench.get(i).state for i in ids] == [S.BUILDING, S.TAGGING, S.BUILDING]
    assert bench.get(ids[1]).server_id == "srv-1"
    assert [(s.task, s.kwargs["request_id"]) for s in sent] == [("bms.apply_tags", str(ids[1]))]

    bench.client.on("show_job", group_job(*[("SUCCESS", f"srv-{i}", None) for i in range(3)]))
    poll_group_job(bench.chain(ids[0]))

    assert [bench.get(i).state for i in ids] == [S.TAGGING] * 3
    assert [s.kwargs["request_id"] for s in sent] == [str(ids[1]), str(ids[2])]  # not twice
    assert bench.strays(ids[0]) == []
