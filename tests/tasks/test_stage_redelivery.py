"""A worker killed while its run does the tagging stage at once (``tasks.finish.at_once``): the
broker delivers the run's message again, and that message must take the stage up, not stop as
stale and leave the request to the reconciler (``BMS_RECONCILE_AFTER_SECONDS``, 10 minutes)."""

from __future__ import annotations

import pytest

from models.states import RequestState
from tasks.attach import attach_volume
from tasks.base import Chain, StaleChain, hand_on
from tasks.poll import poll_create_job
from tests.tasks.stepkit import job, next_task
from tests.tasks.test_at_once import ACTIVE_SERVER, building, carrying_job

S = RequestState


class Killed(BaseException):
    """The worker process dies here (nothing after it runs, nothing catches it)."""


def redelivery(chain: Chain) -> Chain:
    """The message as the broker hands it back (the run's chain follows the row's token)."""
    return Chain(chain.request_id, chain.fence, chain.job_id)


def test_a_poll_killed_during_the_stage_is_taken_up_by_its_redelivery(bench):
    request_id = building(bench)
    message = carrying_job(bench, request_id)
    again = redelivery(message)
    bench.client.on("show_job", job("SUCCESS", "srv-1"))
    bench.client.on("replace_tags", Killed())
    with pytest.raises(Killed):
        hand_on(poll_create_job(message))
    assert bench.get(request_id).state is S.TAGGING

    outcome = poll_create_job(again)  # before: StaleChain, the request idle until the reconciler

    assert next_task(outcome) == "bms.apply_tags"
    assert outcome.signature.kwargs["fence"] == bench.get(request_id).fence


def test_an_attach_killed_during_the_stage_is_taken_up_by_its_redelivery(bench):
    bench.client.on("show_job", job("SUCCESS"))
    request_id = bench.add(S.ATTACHING, server_id="srv-1", volumes=1)
    message = bench.chain(request_id)
    again = redelivery(message)
    bench.client.on("attach_volume", "job-1")
    bench.client.on("replace_tags", Killed())
    with pytest.raises(Killed):
        hand_on(attach_volume(message))
    assert bench.get(request_id).state is S.TAGGING

    outcome = attach_volume(again)

    assert next_task(outcome) == "bms.apply_tags"
    assert bench.client.count("attach_volume") == 1


def test_a_stage_done_at_once_then_redelivered_hands_on_nothing(bench):
    request_id = building(bench)
    message = carrying_job(bench, request_id)
    again = redelivery(message)
    bench.client.on("show_job", job("SUCCESS", "srv-1"))
    bench.client.on("replace_tags", None)
    bench.client.on("show_server", ACTIVE_SERVER)
    hand_on(poll_create_job(message))
    assert bench.get(request_id).state is S.ACTIVE

    try:
        handed_on = next_task(poll_create_job(again))
    except StaleChain:
        handed_on = None
    assert handed_on is None  # the stage is not done again
    assert bench.client.count("replace_tags") == 1
