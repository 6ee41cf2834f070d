"""Two copies of an attach step running at once, the second one's claim waiting for the first's
row lock: what it reads once the lock is its own must be what the first committed.

On PostgreSQL (READ COMMITTED) a statement reads from the snapshot taken when it started; a
``SELECT ... FOR UPDATE OF server_requests`` that waited for the lock returns the request row as
committed, but rows joined to it (the attachments) as they were before the wait. A claim that
loads the attachments in its locking statement without locking them too would act on
attachments the other copy has already changed (the claim locks them: ``tasks.base.claim``).
On SQLite, ``BEGIN IMMEDIATE`` takes the lock before any read: the test runs there too, and
must pass the same way.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import event, text

from models.base import utcnow
from models.records import AttachmentState, CloudJob, JobKind, VolumeAttachment
from models.states import RequestState
from tasks import attach as attach_module
from tasks import poll as poll_module
from tasks.attach import attach_volume
from tasks.base import StaleChain, Wait
from tasks.poll import poll_attach_job
from tests.tasks.stepkit import job, volume

S = RequestState
A = AttachmentState


@pytest.fixture
def backends(bench) -> Iterator[dict[threading.Thread, int]]:
    """The PostgreSQL backend each thread's last connection runs on (empty on SQLite)."""
    engine = bench.sessions.kw["bind"]
    pids: dict[threading.Thread, int] = {}

    def checked_out(dbapi_connection, _record, _proxy) -> None:
        if engine.dialect.name == "postgresql":
            pids[threading.current_thread()] = dbapi_connection.info.backend_pid

    event.listen(engine, "checkout", checked_out)
    yield pids
    event.remove(engine, "checkout", checked_out)


def let_the_other_copy_queue(bench, backends: dict[threading.Thread, int]) -> None:
    """Called in the first copy's claim: return once the other copy's statement waits for the
    lock this one holds (PostgreSQL). On SQLite, ``BEGIN IMMEDIATE`` makes the other copy wait
    before it reads anything, wherever it is: nothing to wait for."""
    main = threading.current_thread()
    if main not in backends:
        return
    holder = backends[main]  # the claim's connection (the look-ups below check out others)
    query = text("SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))")
    for _poll in range(3000):  # a condition, not a duration: up to 30 s for the thread to start
        with bench.sessions() as session:
            if session.scalar(query, {"pid": holder}):
                return
        time.sleep(0.01)
    raise AssertionError("the second copy never waited for the first copy's lock")


def test_a_copy_whose_claim_waited_sees_the_other_copys_new_intent(bench, monkeypatch, backends):
    # An attach whose answer was lost long ago; the disk is free. Two copies of the step look at
    # the disk: the first writes a new intent and POSTs; the second, whose claim waited for the
    # first's, must see that intent (recent: the POST may be on its way) and wait.
    bench.settings.create_lookup_grace_seconds = 60
    request_id = bench.add(S.ATTACHING, server_id="srv-1", volumes=1)
    with bench.sessions() as session:
        row = session.query(VolumeAttachment).filter_by(request_id=request_id, position=0).one()
        row.state, row.intent_at = A.ATTACHING, utcnow() - timedelta(seconds=120)
        session.commit()
    first, second = bench.chain(request_id), bench.chain(request_id)
    main = threading.current_thread()
    outcomes: list[object] = []
    second_looked, first_deciding = threading.Event(), threading.Event()
    real_recent = attach_module._recent

    def second_copy() -> None:
        try:
            outcomes.append(attach_volume(second))
        except (Wait, StaleChain) as exc:
            outcomes.append(exc)

    def show_volume(_volume_id):
        if threading.current_thread() is not main:
            second_looked.set()
            first_deciding.wait(30)  # its claim comes while the first copy holds the row
        return volume("available")

    def recent_then_let_the_second_copy_claim(intent_at):
        if threading.current_thread() is main and not first_deciding.is_set():
            first_deciding.set()
            let_the_other_copy_queue(bench, backends)
        return real_recent(intent_at)

    monkeypatch.setattr(attach_module, "_recent", recent_then_let_the_second_copy_claim)
    bench.client.on("show_volume", show_volume)
    bench.client.on(
        "attach_volume", lambda *_: "job-1" if threading.current_thread() is main else "job-2"
    )
    bench.client.on("show_job", job("RUNNING"))
    other = threading.Thread(target=second_copy)
    other.start()
    second_looked.wait(30)

    attach_volume(first)
    other.join(30)

    assert not other.is_alive()
    # Before, on PostgreSQL: the second copy read the old intent, wrote one of its own and sent
    # a second attach of the volume.
    assert bench.client.count("attach_volume") == 1
    assert isinstance(outcomes[0], Wait | StaleChain)


def test_a_poll_copy_whose_claim_waited_attaches_no_volume_twice(bench, monkeypatch, backends):
    # Two copies of the attach poll of volume 1, both told the job is done. The first records it
    # and writes volume 2's intent (no hand-off: the same token goes on); the second's claim
    # waited for that transaction and must see volume 1 attached, not attach volume 2 beside
    # the first copy.
    request_id = bench.add(S.ATTACHING, server_id="srv-1", volumes=2)
    with bench.sessions() as session:
        row = session.query(VolumeAttachment).filter_by(request_id=request_id, position=0).one()
        row.state, row.job_id, row.attempt = A.ATTACHING, "job-1", 1
        session.add(CloudJob(job_id="job-1", request_id=request_id, kind=JobKind.ATTACH))
        session.commit()
    first, second = bench.chain(request_id), bench.chain(request_id)
    main = threading.current_thread()
    outcomes: list[object] = []
    second_polled, first_deciding = threading.Event(), threading.Event()
    real_attach_done = poll_module.attach_done

    def second_copy() -> None:
        try:
            outcomes.append(poll_attach_job(second))
        except (Wait, StaleChain) as exc:
            outcomes.append(exc)

    def show_job(job_id):
        if threading.current_thread() is not main:
            second_polled.set()  # its first claim is behind it
            first_deciding.wait(30)  # its second claim comes while the first copy holds the row
        return job("SUCCESS", job_id=job_id)

    def attach_done_then_let_the_second_copy_claim(session, request, attachment, slot):
        outcome = real_attach_done(session, request, attachment, slot)
        if threading.current_thread() is main and not first_deciding.is_set():
            first_deciding.set()
            let_the_other_copy_queue(bench, backends)
        return outcome

    monkeypatch.setattr(poll_module, "attach_done", attach_done_then_let_the_second_copy_claim)
    bench.client.on("show_job", show_job)
    bench.client.on(
        "attach_volume", lambda *_: "job-2" if threading.current_thread() is main else "job-3"
    )
    bench.client.on("show_volume", volume("attaching"))
    other = threading.Thread(target=second_copy)
    other.start()
    second_polled.wait(30)

    with contextlib.suppress(Wait, StaleChain):
        poll_attach_job(first)
    other.join(30)

    assert not other.is_alive()
    attached = [args[1] for name, args in bench.client.calls if name == "attach_volume"]
    assert attached == ["vol-2"]  # before, on PostgreSQL: ["vol-2", "vol-2"]
