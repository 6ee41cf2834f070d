"""Less work per server (issue 11): a poll that claims its row once, and the tagging stage done
in the run of the poll that ends the create, with every guarantee of the steps it replaces."""

from __future__ import annotations

import pytest
from celery.canvas import Signature
from sqlalchemy import event

from bms.exceptions import CloudAPIError, Throttled
from models.db import session_scope
from models.records import AttachmentState, CloudJob, JobKind
from models.spec import MARKER_METADATA_KEY
from models.states import RequestState, Step
from tasks.attach import attach_volume
from tasks.base import Chain, StaleChain, hand_on
from tasks.plan import step_signature
from tasks.poll import poll_create_job
from tests.tasks.stepkit import job, next_task

S = RequestState
ACTIVE_SERVER = {"id": "srv-1", "status": "ACTIVE", "addresses": {"net": []}}


def building(bench, volumes: int = 0, **fields):
    spec = {"create_body": {"name": "web", "metadata": {}}, "tags": ["t1"], "attach_volumes": []}
    spec["attach_volumes"] = [{"volume_id": f"vol-{i + 1}"} for i in range(volumes)]
    fields = {"attempt": 1, "create_serial": 1, **fields}
    request_id = bench.add(S.BUILDING, volumes=volumes, job_id="job-1", **fields)
    bench.set(request_id, spec=spec)  # as intake stores it: the volumes listed
    with session_scope(bench.sessions) as session:
        session.add(CloudJob(job_id="job-1", request_id=request_id, kind=JobKind.CREATE))
    return request_id


def carrying_job(bench, request_id) -> Chain:
    """The chain as the poll's message carries it (see ``tasks.plan.step_signature``)."""
    return Chain(str(request_id), bench.get(request_id).fence, bench.get(request_id).job_id)


@pytest.fixture
def statements(database):
    """The SQL statements sent while the test runs (first words only)."""
    seen: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(database.engine, "before_cursor_execute", record)
    yield seen
    event.remove(database.engine, "before_cursor_execute", record)


@pytest.fixture
def commits(database):
    """The transactions committed while the test runs."""
    seen: list[None] = []

    def record(_conn) -> None:
        seen.append(None)

    event.listen(database.engine, "commit", record)
    yield seen
    event.remove(database.engine, "commit", record)


@pytest.fixture
def sent(monkeypatch):
    """Signatures sent, instead of going to a broker."""
    sent: list[Signature] = []
    monkeypatch.setattr(Signature, "apply_async", lambda self, *a, **k: sent.append(self))
    return sent


def test_the_poll_message_carries_its_job(bench):
    request_id = building(bench)
    with session_scope(bench.sessions) as session:
        from models.records import ServerRequest

        request = session.get(ServerRequest, request_id)
        signature = step_signature("bms.poll_create_job", request)
    assert signature.kwargs["job_id"] == "job-1"


def test_a_poll_carrying_its_job_ends_the_create_without_loading_a_row(bench, statements):
    # The usual end of a create: one conditional UPDATE of the request (no volume row, checked
    # in it), one of the job's row, the event; nothing read (issue 11).
    request_id = building(bench)
    bench.client.on("show_job", job("SUCCESS", "srv-1"))
    chain = carrying_job(bench, request_id)
    statements.clear()

    outcome = poll_create_job(chain)

    assert next_task(outcome) == "bms.apply_tags"
    assert outcome.then is not None  # the stage goes on in this run
    written = [
        s.split(" (")[0].split(" SET")[0]
        for s in statements
        if not s.startswith(("BEGIN", "COMMIT"))
    ]
    assert written == ["UPDATE server_requests", "UPDATE cloud_jobs", "INSERT INTO events"]
    stored = bench.get(request_id)
    assert (stored.state, stored.server_id, stored.job_id) == (S.TAGGING, "srv-1", None)
    with session_scope(bench.sessions) as session:
        assert (session.get(CloudJob, "job-1").status, session.get(CloudJob, "job-1").polls) == (
            "SUCCESS",
            1,
        )


def test_a_poll_carrying_a_job_the_row_no_longer_waits_on_records_nothing(bench):
    request_id = building(bench)
    chain = carrying_job(bench, request_id)
    bench.set(request_id, job_id="job-2")  # the create was looked up and posted again
    bench.client.on("show_job", job("SUCCESS", "srv-1"))

    outcome = poll_create_job(chain)

    assert next_task(outcome) == "bms.poll_create_job"
    assert outcome.signature.kwargs["job_id"] == "job-2"
    assert bench.get(request_id).state is S.BUILDING
    with session_scope(bench.sessions) as session:
        assert session.get(CloudJob, "job-1").polls == 0


def test_a_poll_carrying_its_job_of_a_failed_request_hands_on_nothing(bench):
    # FAILED with its job id kept: the row says so at the one claim, after the call.
    request_id = building(bench)
    chain = carrying_job(bench, request_id)
    bench.set(request_id, state=S.FAILED, failed_step=Step.POLL_CREATE)
    bench.client.on("show_job", job("SUCCESS", "srv-1"))

    outcome = poll_create_job(chain)

    assert next_task(outcome) is None
    assert bench.get(request_id).state is S.FAILED


def test_a_running_job_is_polled_again_with_the_job_in_the_message(bench):
    from tasks.base import Wait

    request_id = building(bench)
    bench.client.on("show_job", job("RUNNING"))
    chain = carrying_job(bench, request_id)

    with pytest.raises(Wait):
        poll_create_job(chain)

    assert chain.job_id == "job-1" and chain.fence == bench.get(request_id).fence
    with session_scope(bench.sessions) as session:
        assert session.get(CloudJob, "job-1").polls == 1


def test_a_job_without_its_row_is_recorded_by_the_poll(bench):
    request_id = bench.add(S.BUILDING, job_id="job-9", attempt=1, create_serial=1)
    bench.client.on("show_job", job("RUNNING", job_id="job-9"))

    from tasks.base import Wait

    with pytest.raises(Wait):
        poll_create_job(bench.chain(request_id))

    with session_scope(bench.sessions) as session:
        stored = session.get(CloudJob, "job-9")
        assert (stored.kind, stored.polls, stored.status) == (JobKind.CREATE, 1, "RUNNING")


def test_a_server_with_volumes_goes_to_attaching_as_its_spec_says(bench, sent):
    request_id = building(bench, volumes=2)
    bench.client.on("show_job", job("SUCCESS", "srv-1"))

    outcome = poll_create_job(carrying_job(bench, request_id))

    assert bench.get(request_id).state is S.ATTACHING
    assert next_task(outcome) == "bms.attach_volume" and outcome.then is None


def test_a_server_with_volumes_is_handed_to_its_attach_without_reading_them(bench, statements):
    # Before: the hand-off read the attachments to name the next step (a SELECT per server).
    request_id = building(bench, volumes=2)
    bench.client.on("show_job", job("SUCCESS", "srv-1"))
    chain = carrying_job(bench, request_id)
    statements.clear()

    outcome = poll_create_job(chain)

    reads = [s for s in statements if s.startswith("SELECT") and "FROM volume_attachments" in s]
    assert not reads  # (the no-volume UPDATE's NOT EXISTS names the table, and finds one)
    assert next_task(outcome) == "bms.attach_volume"
    assert outcome.signature.kwargs["fence"] == bench.get(request_id).fence  # it owns the row


def test_an_attach_under_way_when_the_server_is_built_is_found_by_the_attach_step(bench, sent):
    # Not on the usual path (a server just built has no attach begun): the attach step named
    # without reading the attachments hands the request to the job's poll.
    request_id = building(bench, volumes=2)
    with session_scope(bench.sessions) as session:
        from models.records import ServerRequest

        first = session.get(ServerRequest, request_id).attachments[0]
        first.state, first.job_id = AttachmentState.ATTACHING, "job-a"
    bench.client.on("show_job", job("SUCCESS", "srv-1"))
    outcome = poll_create_job(carrying_job(bench, request_id))
    assert next_task(outcome) == "bms.attach_volume"

    handed = attach_volume(bench.chain(request_id))

    assert next_task(handed) == "bms.poll_attach_job"
    assert bench.client.count("attach_volume") == 0


def test_the_create_done_finishes_the_server_in_the_same_run(bench, sent):
    request_id = building(bench)
    bench.client.on("show_job", job("SUCCESS", "srv-1"))
    bench.client.on("replace_tags", None)
    bench.client.on("show_server", ACTIVE_SERVER)

    hand_on(poll_create_job(carrying_job(bench, request_id)))

    assert sent == []  # no message: tags, name and read-back were done at once
    stored = bench.get(request_id)
    assert (stored.state, stored.step_done, stored.addresses) == (
        S.ACTIVE,
        Step.FINALIZE,
        {"net": []},
    )
    assert [name for name, _args in bench.client.calls] == [
        "show_job",
        "replace_tags",
        "show_server",
    ]
    assert bench.client.calls[1][1] == ("srv-1", ["t1", "__type_baremetal"])
    states = [(before, after) for before, after, _detail in bench.events(request_id)]
    assert states[-2:] == [("BUILDING", "TAGGING"), ("TAGGING", "ACTIVE")]


def test_a_server_named_otherwise_is_renamed_in_the_same_run(bench, sent):
    request_id = building(bench, create_serial=0)  # created under a marker name
    bench.client.on("show_job", job("SUCCESS", "srv-1"))
    bench.client.on("replace_tags", None)
    bench.client.on("rename_server", {})
    bench.client.on("show_server", ACTIVE_SERVER)

    hand_on(poll_create_job(carrying_job(bench, request_id)))

    assert bench.client.count("rename_server") == 1
    assert bench.get(request_id).state is S.ACTIVE and sent == []


def test_a_cancel_during_the_stage_done_at_once_deletes_the_server(bench, sent):
    request_id = building(bench)
    bench.client.on("show_job", job("SUCCESS", "srv-1"))
    bench.client.on("replace_tags", None)
    bench.client.on("show_server", bench.cancel_during(request_id, ACTIVE_SERVER))

    hand_on(poll_create_job(carrying_job(bench, request_id)))

    stored = bench.get(request_id)
    assert stored.state is S.CANCELLED and stored.cleanup_server_id == "srv-1"
    assert [signature.task for signature in sent] == ["bms.delete_server"]


def test_a_server_not_active_at_the_read_back_fails_at_finalize(bench, sent):
    request_id = building(bench)
    bench.client.on("show_job", job("SUCCESS", "srv-1"))
    bench.client.on("replace_tags", None)
    bench.client.on("show_server", {"id": "srv-1", "status": "ERROR"})

    hand_on(poll_create_job(carrying_job(bench, request_id)))

    stored = bench.get(request_id)
    assert (stored.state, stored.failed_step, stored.step_done) == (
        S.FAILED,
        Step.FINALIZE,
        Step.RENAME,
    )
    assert sent == []


def throttled_nova() -> Throttled:
    error = Throttled(429, "APIGW.0308", "quota", retry_after=3.0)
    error.api_class = "nova"
    return error


@pytest.mark.parametrize(
    "error",
    [
        CloudAPIError(500, "BMS.9999", "boom"),
        throttled_nova(),
        CloudAPIError(400, "BMS.0001", "bad tags"),
    ],
    ids=["transient", "throttled", "refused"],
)
def test_a_call_of_the_stage_that_fails_sends_the_stage_s_first_step(bench, sent, error):
    # The row is as the poll committed it: the step's own run meets the error with its own
    # budget and failure step (a failure here is never charged to the poll).
    request_id = building(bench)
    bench.client.on("show_job", job("SUCCESS", "srv-1"))
    bench.client.on("replace_tags", error)

    hand_on(poll_create_job(carrying_job(bench, request_id)))

    stored = bench.get(request_id)
    assert (stored.state, stored.step_done, stored.failed_step) == (S.TAGGING, None, None)
    assert [signature.task for signature in sent] == ["bms.apply_tags"]
    assert sent[0].kwargs["fence"] == stored.fence
    if isinstance(error, Throttled):
        assert bench.limiter.backed_off == [("nova", 3.0)]


def test_the_stage_done_at_once_stops_when_another_message_owns_the_request(bench, sent):
    request_id = building(bench)
    bench.client.on("show_job", job("SUCCESS", "srv-1"))
    bench.client.on("replace_tags", None)

    def taken_over(*_args):
        # The reconciler rebuilt the chain meanwhile: its message owns the request now.
        bench.set(request_id, fence=bench.get(request_id).fence + 1)
        return ACTIVE_SERVER

    bench.client.on("show_server", taken_over)

    hand_on(poll_create_job(carrying_job(bench, request_id)))

    assert bench.get(request_id).state is S.TAGGING
    assert sent == []


def test_a_stale_poll_is_stopped_before_anything_is_done_at_once(bench, sent):
    request_id = building(bench)
    chain = carrying_job(bench, request_id)
    bench.set(request_id, fence=chain.fence + 1)
    bench.client.on("show_job", job("SUCCESS", "srv-1"))

    with pytest.raises(StaleChain):
        poll_create_job(chain)
    assert bench.get(request_id).state is S.BUILDING


def test_a_batch_without_a_webhook_target_is_looked_up_once(bench, statements):
    from models.records import ServerRequest, transition

    first, second = bench.add(S.TAGGING), bench.add(S.TAGGING)
    with session_scope(bench.sessions) as session:  # both in the first one's batch
        session.get(ServerRequest, second).batch_id = session.get(ServerRequest, first).batch_id
    statements.clear()

    for request_id in (first, second):
        with session_scope(bench.sessions) as session:
            transition(session, session.get(ServerRequest, request_id), S.ACTIVE)

    assert len([s for s in statements if "FROM webhook_targets" in s]) == 1
    assert (bench.get(first).state, bench.get(second).state) == (S.ACTIVE, S.ACTIVE)


def test_a_first_create_writes_its_intent_in_one_update_before_the_post(bench, statements):
    from types import SimpleNamespace

    from tasks.create import create_server, marker_for

    request_id = bench.add(S.PENDING, fence=1)
    before_post: list[list[str]] = []

    def answer(body):
        before_post.append(list(statements))
        stored = bench.get(request_id)  # committed before the call
        assert (stored.state, stored.attempt, stored.create_serial) == (S.CREATING, 1, 1)
        assert stored.create_intent_at is not None
        assert body["metadata"][MARKER_METADATA_KEY] == stored.create_marker == marker_for(stored)
        assert body["name"] == "web"
        return SimpleNamespace(job_id="job-1")

    bench.client.on("create_servers", answer)
    statements.clear()

    outcome = create_server(Chain(str(request_id), 1))

    assert next_task(outcome) == "bms.poll_create_job"
    sent = [s for s in before_post[0] if not s.startswith(("BEGIN", "SELECT server_requests.id"))]
    locked = [s for s in before_post[0] if s.startswith("SELECT") and "server_requests" in s]
    assert not locked, "no locked read before the POST"
    assert [s.split()[0] for s in sent if s.split()[0] in ("UPDATE", "INSERT")] == [
        "UPDATE",
        "INSERT",
    ]
    stored = bench.get(request_id)
    assert (stored.state, stored.job_id, stored.create_intent_at) == (S.BUILDING, "job-1", None)
    assert [e[:3] for e in bench.events(request_id)][1] == ("PENDING", "CREATING", "dispatched")


def test_a_stale_first_create_posts_nothing(bench):
    from tasks.create import create_server

    request_id = bench.add(S.PENDING, fence=2)

    with pytest.raises(StaleChain):
        create_server(Chain(str(request_id), 1))

    stored = bench.get(request_id)
    assert (stored.state, stored.attempt, stored.create_marker) == (S.PENDING, 0, None)
    assert bench.client.calls == []


def test_a_create_answered_hands_on_to_its_poll_without_a_locked_read(bench, statements):
    from types import SimpleNamespace

    from tasks.create import create_server

    request_id = bench.add(S.PENDING, fence=1)
    bench.client.on("create_servers", SimpleNamespace(job_id="job-7"))
    chain = Chain(str(request_id), 1)
    statements.clear()

    outcome = create_server(chain)

    assert not [s for s in statements if s.startswith("SELECT") and "server_requests" in s]
    stored = bench.get(request_id)
    assert (stored.state, stored.job_id, stored.create_intent_at) == (S.BUILDING, "job-7", None)
    assert outcome.signature.task == "bms.poll_create_job"
    assert outcome.signature.kwargs["job_id"] == "job-7"
    assert outcome.signature.kwargs["fence"] == stored.fence == chain.fence == 2
    assert outcome.signature.options["countdown"] > 0
    with session_scope(bench.sessions) as session:
        assert session.get(CloudJob, "job-7").kind is JobKind.CREATE
    assert [e[:3] for e in bench.events(request_id)][-1] == (
        "CREATING",
        "BUILDING",
        "create job job-7",
    )


def test_a_create_answered_after_a_cancel_is_recorded_by_the_claim(bench):
    from types import SimpleNamespace

    from tasks.create import create_server

    request_id = bench.add(S.PENDING, fence=1)
    bench.client.on(
        "create_servers", bench.cancel_during(request_id, SimpleNamespace(job_id="job-7"))
    )

    outcome = create_server(Chain(str(request_id), 1))

    stored = bench.get(request_id)
    assert (stored.state, stored.job_id) == (S.CANCELLED, "job-7")  # watched to its end
    assert next_task(outcome) == "bms.poll_create_job"
    with session_scope(bench.sessions) as session:
        assert session.get(CloudJob, "job-7") is not None


# -- A plain request (no tag, no rename, no volume): its create done ends it ACTIVE at once ---

PLAIN_SPEC = {"create_body": {"name": "web", "metadata": {}}, "tags": [], "attach_volumes": []}


def plain_building(bench) -> tuple:
    """A plain request BUILDING on job-1, and its poll's chain as the create's hand-off sends it."""
    request_id = building(bench)
    bench.set(request_id, spec=PLAIN_SPEC)
    chain = carrying_job(bench, request_id)
    chain.plain = True
    return request_id, chain


def test_a_create_hands_a_plain_request_to_a_poll_that_says_so(bench):
    from types import SimpleNamespace

    from tasks.create import create_server

    plain, tagged = bench.add(S.PENDING, fence=1), bench.add(S.PENDING, fence=1)
    bench.set(plain, spec=PLAIN_SPEC)
    bench.client.on(
        "create_servers", SimpleNamespace(job_id="job-7"), SimpleNamespace(job_id="job-8")
    )

    sent_plain = create_server(Chain(str(plain), 1)).signature
    sent_tagged = create_server(Chain(str(tagged), 1)).signature

    assert sent_plain.kwargs["plain"] is True
    assert "plain" not in sent_tagged.kwargs
    with session_scope(bench.sessions) as session:  # the reconciler's poll, from the row
        from models.records import ServerRequest

        rebuilt = step_signature("bms.poll_create_job", session.get(ServerRequest, plain))
    assert rebuilt.kwargs["plain"] is True


def test_a_plain_create_done_ends_active_in_one_transaction(bench, sent, statements, commits):
    request_id, chain = plain_building(bench)
    bench.client.on("show_job", job("SUCCESS", "srv-1"))
    bench.client.on("show_server", ACTIVE_SERVER)
    statements.clear()
    commits.clear()

    hand_on(poll_create_job(chain))

    assert sent == []
    assert [name for name, _args in bench.client.calls] == ["show_job", "show_server"]
    # Reads aside (the batch's webhook target, looked up once per batch and process).
    written = [
        s.split(" (")[0].split(" SET")[0]
        for s in statements
        if not s.startswith(("BEGIN", "COMMIT", "SELECT"))
    ]
    assert written == [
        "UPDATE server_requests",
        "UPDATE cloud_jobs",
        "INSERT INTO events",
        "INSERT INTO events",
    ]
    assert len(commits) == 1
    stored = bench.get(request_id)
    assert (stored.state, stored.step_done, stored.server_id, stored.job_id) == (
        S.ACTIVE,
        Step.FINALIZE,
        "srv-1",
        None,
    )
    assert stored.addresses == {"net": []}
    states = [(before, after) for before, after, _detail in bench.events(request_id)]
    assert states[-2:] == [("BUILDING", "TAGGING"), ("TAGGING", "ACTIVE")]
    with session_scope(bench.sessions) as session:
        assert session.get(CloudJob, "job-1").status == "SUCCESS"


def test_a_cancel_during_the_plain_read_back_deletes_the_server(bench, sent):
    request_id, chain = plain_building(bench)
    bench.client.on("show_job", job("SUCCESS", "srv-1"))
    bench.client.on("show_server", bench.cancel_during(request_id, ACTIVE_SERVER))

    hand_on(poll_create_job(chain))

    stored = bench.get(request_id)
    assert stored.state is S.CANCELLED and stored.cleanup_server_id == "srv-1"
    assert [signature.task for signature in sent] == ["bms.delete_server"]
    assert bench.client.count("show_server") == 1


@pytest.mark.parametrize(
    "error",
    [
        CloudAPIError(500, "BMS.9999", "boom"),
        Throttled(429, "APIGW.0308", "quota", retry_after=3.0),
    ],
    ids=["transient", "throttled"],
)
def test_a_plain_read_back_that_fails_goes_the_stage_s_way(bench, sent, error):
    # The server is built: that is committed (TAGGING), and the stage's own step reads it
    # again with its own budget, as for any request.
    if isinstance(error, Throttled):
        error.api_class = "show"
    request_id, chain = plain_building(bench)
    bench.client.on("show_job", job("SUCCESS", "srv-1"))
    bench.client.on("show_server", error)

    hand_on(poll_create_job(chain))

    stored = bench.get(request_id)
    assert (stored.state, stored.server_id, stored.failed_step) == (S.TAGGING, "srv-1", None)
    assert [signature.task for signature in sent] == ["bms.apply_tags"]
    if isinstance(error, Throttled):
        assert bench.limiter.backed_off == [("show", 3.0), ("show", 3.0)]


def test_a_plain_server_not_active_at_the_read_back_fails_at_finalize(bench, sent):
    request_id, chain = plain_building(bench)
    bench.client.on("show_job", job("SUCCESS", "srv-1"))
    bench.client.on("show_server", {"id": "srv-1", "status": "ERROR"})

    hand_on(poll_create_job(chain))

    stored = bench.get(request_id)
    assert (stored.state, stored.failed_step) == (S.FAILED, Step.FINALIZE)


def test_a_poll_that_says_plain_of_a_row_with_tags_applies_them(bench, sent):
    request_id = building(bench)  # its spec has tags: the message is wrong, the row rules
    chain = carrying_job(bench, request_id)
    chain.plain = True
    bench.client.on("show_job", job("SUCCESS", "srv-1"))
    bench.client.on("replace_tags", None)
    bench.client.on("show_server", ACTIVE_SERVER)

    hand_on(poll_create_job(chain))

    assert [name for name, _args in bench.client.calls] == [
        "show_job",
        "show_server",
        "replace_tags",
        "show_server",
    ]
    assert bench.get(request_id).state is S.ACTIVE
    states = [(before, after) for before, after, _detail in bench.events(request_id)]
    assert states.count(("TAGGING", "ACTIVE")) == 1


def test_a_plain_poll_killed_before_its_commit_is_done_by_its_redelivery(bench, sent):
    request_id, chain = plain_building(bench)
    bench.client.on("show_job", job("SUCCESS", "srv-1"))

    class Killed(BaseException):
        """The worker dies between the read-back and the commit."""

    bench.client.on("show_server", Killed(), ACTIVE_SERVER)
    with pytest.raises(Killed):
        poll_create_job(chain)
    assert bench.get(request_id).state is S.BUILDING  # nothing half-written

    hand_on(poll_create_job(chain))  # the same message, delivered again

    assert bench.get(request_id).state is S.ACTIVE and sent == []


def test_a_plain_poll_delivered_twice_ends_the_request_once(bench, sent):
    request_id, chain = plain_building(bench)
    bench.client.on("show_job", job("SUCCESS", "srv-1"))
    bench.client.on("show_server", ACTIVE_SERVER)

    hand_on(poll_create_job(chain))
    hand_on(poll_create_job(chain))

    assert bench.get(request_id).state is S.ACTIVE and sent == []
    states = [(before, after) for before, after, _detail in bench.events(request_id)]
    assert states.count(("TAGGING", "ACTIVE")) == 1
