"""The preflight against the simulator over HTTP: every reason to refuse a batch, each naming
its field, with nothing created in the cloud; and the hook that FAILs a stored batch.

No worker runs here: ``preflight_batch`` is called directly, with a runtime whose client talks
to the simulator through a real limiter on the session's Redis.
"""

from __future__ import annotations

import uuid

import pytest
import redis

from bms.auth import AkSkAuth
from bms.client import BmsClient
from bms.exceptions import ServerError
from models.db import session_scope
from models.records import BatchSource, ServerRequest
from models.spec import parse_batch
from models.states import RequestState, Step
from tasks.intake import store_batch
from tasks.preflight import (
    PREFLIGHT_CODE,
    Item,
    preflight_batch,
    run_preflight,
)
from tests.factories import batch, server
from worker.limiter import GlobalLimiter
from worker.runtime import Runtime, use_runtime
from worker.settings import Settings

S = RequestState
VOLUME = "e5e5e5e5-0000-4000-8000-{:012d}".format


@pytest.fixture
def sim(simulator_factory):
    return simulator_factory()


@pytest.fixture
def client(sim):
    auth = AkSkAuth(sim.ak, sim.sk, sim.project_id)
    with BmsClient(sim.base_url, sim.project_id, auth, retry_backoff=0.001) as made:
        yield made


def items_of(*servers: dict) -> list[Item]:
    """The servers of a batch, expanded, as the dry run builds them."""
    spec = parse_batch(batch(*servers))
    return [
        Item(s.name, s.create_body, [v["volume_id"] for v in s.attach_volumes])
        for s in spec.expand()
    ]


def nothing_created(sim) -> bool:
    return sim.control.servers() == [] and sim.control.counters()["create"]["calls"] == 0


def fields(report) -> dict[str, str]:
    return {problem.field: problem.message for problem in report.problems}


def test_a_batch_that_fits_passes_with_a_handful_of_reads(sim, client):
    servers = [server(name=f"db-{n}", attach_volumes=[{"volume_id": VOLUME(n)}]) for n in (1, 2)]
    report = run_preflight(client, items_of(*servers, server(name="web", count=30)))

    assert report.ok, report.problems
    assert report.servers == 32
    assert (report.create_calls.one_by_one, report.create_calls.grouped) == (32, 3)
    # one zone, one image, one VPC, one subnet, one volume call, one key pair, the limits
    assert report.reads == 7
    assert sim.control.counters()["list"]["calls"] + sim.control.counters()["nova"]["calls"] == 7
    assert {q.name: q.needed for q in report.quotas} == {
        "maxTotalInstances": 32,
        "maxTotalCores": 32 * 32,
        "maxTotalRAMSize": 32 * 193047,
    }
    assert nothing_created(sim)


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"flavorRef": "physical.nope"}, "flavorRef", "does not exist"),
        ({"imageRef": "no-such-image"}, "imageRef", "does not exist"),
        ({"vpcid": "no-such-vpc"}, "vpcid", "does not exist"),
        ({"nics": [{"subnet_id": "no-such-subnet"}]}, "nics[0].subnet_id", "does not exist"),
        ({"key_name": "no-such-key"}, "key_name", "does not exist"),
        (
            {"attach_volumes": [{"volume_id": VOLUME(1)}, {"volume_id": "no-such-volume"}]},
            "attach_volumes[1].volume_id",
            "does not exist",
        ),
    ],
)
def test_what_does_not_exist_is_refused_naming_its_field(sim, client, changes, field, words):
    report = run_preflight(client, items_of(server(name="ok"), server(name="bad", **changes)))

    assert not report.ok
    assert list(fields(report)) == [field]
    assert words in fields(report)[field]
    assert report.problems[0].positions == [1]
    assert report.reasons(0) == [] and report.reasons(1)
    assert nothing_created(sim)


def test_a_flavor_not_on_sale_in_its_zone_is_refused(sim, client):
    sim.control.set_flavor(
        "physical.h2.large", az_status={"cn-north-4a": "sellout", "cn-north-4b": "abandon"}
    )
    report = run_preflight(
        client,
        items_of(
            server(name="a", flavorRef="physical.h2.large"),
            server(name="b", flavorRef="physical.h2.large", availability_zone="cn-north-4b"),
            server(name="c", flavorRef="physical.h2.large", availability_zone="cn-north-9x"),
        ),
    )

    messages = sorted(p.message for p in report.problems)
    assert messages == [
        "physical.h2.large is not offered in cn-north-4b",
        "physical.h2.large is not offered in cn-north-9x",
        "physical.h2.large is sellout in cn-north-4a",
    ]
    assert {p.field for p in report.problems} == {"flavorRef"}
    assert nothing_created(sim)


def test_an_image_not_active_or_not_bare_metal_is_refused(sim, client):
    sim.control.add_image("img-queued", "Half uploaded", status="queued")
    sim.control.add_image("img-vm", "A VM image", virtual_env_type="FusionCompute")

    report = run_preflight(
        client,
        items_of(server(name="q", imageRef="img-queued"), server(name="v", imageRef="img-vm")),
    )

    assert [p.message for p in report.problems] == [
        "image img-queued is queued, not active",
        "image img-vm is not a bare metal image (virtual_env_type FusionCompute)",
    ]
    assert nothing_created(sim)


def test_a_subnet_of_another_vpc_or_not_active_is_refused(sim, client):
    sim.control.add_subnet("sub-other", "10.1.0.0/24", vpc_id="vpc-other")
    sim.control.add_subnet("sub-broken", "192.168.9.0/24", status="ERROR")
    default_subnet = {"subnet_id": "c1d0e0f0-0000-4000-8000-0000000000b1"}

    report = run_preflight(
        client,
        items_of(
            server(name="o", nics=[default_subnet, {"subnet_id": "sub-other"}]),
            server(name="b", nics=[{"subnet_id": "sub-broken"}]),
        ),
    )

    assert fields(report) == {
        "nics[1].subnet_id": "subnet sub-other is in VPC vpc-other, "
        "not in vpcid c1d0e0f0-0000-4000-8000-0000000000a1",
        "nics[0].subnet_id": "subnet sub-broken is ERROR, not ACTIVE",
    }
    assert nothing_created(sim)


def test_a_volume_in_use_or_broken_is_refused_a_shareable_one_is_not(sim, client):
    sim.control.set_volume(VOLUME(1), status="in-use")
    sim.control.set_volume(VOLUME(2), status="error")
    sim.control.set_volume(VOLUME(3), status="in-use", multiattach=True)

    report = run_preflight(
        client,
        items_of(
            *(server(name=f"s{n}", attach_volumes=[{"volume_id": VOLUME(n)}]) for n in (1, 2, 3))
        ),
    )

    assert [(p.field, p.message, p.positions) for p in report.problems] == [
        ("attach_volumes[0].volume_id", f"volume {VOLUME(1)} is in-use, not available", [0]),
        ("attach_volumes[0].volume_id", f"volume {VOLUME(2)} is error, not available", [1]),
    ]
    assert nothing_created(sim)


def test_volumes_are_read_sixty_to_a_call(sim, client):
    sim.control.add_volumes(count=70)
    volumes = [v["id"] for v in sim.control.volumes()][:130]
    servers = [
        server(name=f"s{n}", attach_volumes=[{"volume_id": v}]) for n, v in enumerate(volumes)
    ]

    report = run_preflight(client, items_of(*servers))

    assert report.ok
    assert report.reads == 6 + 3  # 130 disks: three calls


@pytest.mark.parametrize(
    ("limits", "name"),
    [
        ({"maxTotalInstances": 3}, "maxTotalInstances"),
        ({"maxTotalCores": 100}, "maxTotalCores"),
        ({"maxTotalRAMSize": 500_000}, "maxTotalRAMSize"),
    ],
)
def test_a_batch_beyond_the_accounts_limits_is_refused_as_a_whole(sim, client, limits, name):
    sim.control.set_limits(**limits)

    report = run_preflight(client, items_of(server(name="web", count=4)))

    assert [p.field for p in report.problems] == [f"limits.{name}"]
    assert "the batch needs" in report.problems[0].message
    assert all(report.reasons(position) for position in range(4))  # every request is blamed
    assert nothing_created(sim)


def test_servers_already_in_use_count_against_the_limits(sim, client):
    sim.control.set_limits(maxTotalInstances=5)
    first = run_preflight(client, items_of(server(name="web", count=5)))
    assert first.ok
    assert client.create_servers(items_of(server(name="x"))[0].body).job_id

    second = run_preflight(client, items_of(server(name="web", count=5)))

    assert "4 left (limit 5, 1 in use)" in second.problems[0].message


def test_a_read_refused_for_good_is_a_warning_not_a_refusal(sim):
    auth = AkSkAuth(sim.ak, sim.sk, sim.project_id)
    evs = sim.base_url + "/no-evs-here"  # the gateway answers 404 APIGW.0101: no such API
    with BmsClient(sim.base_url, sim.project_id, auth, evs_endpoint=evs) as client:
        report = run_preflight(client, items_of(server(attach_volumes=[{"volume_id": VOLUME(1)}])))

    assert report.ok
    assert len(report.warnings) == 1 and "APIGW.0101" in report.warnings[0]


def test_a_transient_failure_propagates_for_a_later_try(sim, client):
    sim.control.set_faults(http_503_share=1.0)

    with pytest.raises(ServerError):
        run_preflight(client, items_of(server()))


# -- the hook on a stored batch ---------------------------------------------------------------


@pytest.fixture
def stored(database, redis_url, sim):
    """Store batches in ``database``; ``preflight_batch`` runs with a runtime on ``sim``."""
    redis.Redis.from_url(redis_url).flushall()
    settings = Settings(
        database_url=database.url,
        redis_url=redis_url,
        endpoint=sim.base_url,
        project_id=sim.project_id,
        ak=sim.ak,
        sk=sim.sk,
    )
    limiter = GlobalLimiter(redis_url, settings.rate_limit_items)
    auth = AkSkAuth(sim.ak, sim.sk, sim.project_id)
    client = BmsClient(sim.base_url, sim.project_id, auth, before_call=limiter.acquire)
    use_runtime(Runtime(settings, database.sessions, limiter, client))

    def store(body: dict) -> uuid.UUID:
        with session_scope(database.sessions) as session:
            return store_batch(session, parse_batch(body), BatchSource.API).batch_id

    yield store
    use_runtime(None)
    client.close()


def requests_of(database, batch_id) -> list[ServerRequest]:
    with database.sessions() as session:
        query = session.query(ServerRequest).filter_by(batch_id=batch_id)
        return query.order_by(ServerRequest.position).all()


def test_a_refused_batch_is_failed_whole_with_a_reason_per_request(database, sim, stored):
    batch_id = stored(
        batch(
            server(name="good"),
            server(name="bad-flavor", flavorRef="physical.nope"),
            server(name="bad-volume", attach_volumes=[{"volume_id": "no-such-volume"}]),
        )
    )

    assert preflight_batch(batch_id) is False

    requests = requests_of(database, batch_id)
    assert [r.state for r in requests] == [S.FAILED] * 3
    assert {r.failed_step for r in requests} == {Step.CREATE}
    assert {r.last_error_code for r in requests} == {PREFLIGHT_CODE}
    good, flavor, volume = (r.last_error_message for r in requests)
    assert good.startswith("the batch failed preflight (2 problem(s) in other requests")
    assert flavor == "flavorRef: flavor physical.nope does not exist"
    assert volume == "attach_volumes[0].volume_id: volume no-such-volume does not exist"
    assert nothing_created(sim)


def test_a_batch_that_passes_goes_on_and_a_dispatched_one_is_not_checked_again(
    database, sim, stored
):
    batch_id = stored(batch(server(name="web", count=3)))

    assert preflight_batch(batch_id) is True
    reads = sim.control.counters()["list"]["calls"]
    with session_scope(database.sessions) as session:
        for request in session.query(ServerRequest).filter_by(batch_id=batch_id):
            request.fence = 1  # as dispatch leaves it

    assert preflight_batch(batch_id) is True
    assert sim.control.counters()["list"]["calls"] == reads
    assert [r.state for r in requests_of(database, batch_id)] == [S.PENDING] * 3


def test_a_refused_request_can_be_retried_once_the_cloud_is_fixed(database, sim, stored):
    from tasks.control import retry

    batch_id = stored(batch(server(name="late", attach_volumes=[{"volume_id": "vol-late"}])))
    assert preflight_batch(batch_id) is False
    sim.control.add_volumes(id="vol-late", name="late")

    [request] = requests_of(database, batch_id)
    assert retry(database.sessions, [request.id]) == [request.id]
    assert requests_of(database, batch_id)[0].state is S.CREATING
