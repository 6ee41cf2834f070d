"""The preflight: before the first create of a batch, check in the cloud that what the batch
names exists and that the account can hold it; refuse the whole batch otherwise.

Checks, each with the field it blames:

- ``flavorRef``: the flavor exists and is on sale in the server's ``availability_zone``;
- ``imageRef``: the image exists (IMS), is ``active`` and is a bare metal (``Ironic``) image;
- ``vpcid``: the VPC exists; ``nics[i].subnet_id``: the subnet exists, is ``ACTIVE`` and is in
  that VPC;
- ``attach_volumes[i].volume_id``: the disk exists (EVS) and is ``available`` (or shareable);
- ``key_name``: the key pair exists;
- ``limits.*``: the servers, cores and RAM of the batch fit in what the account has left.

:func:`run_preflight` is pure: a client and the servers in, a :class:`Report` out. Each distinct
flavor zone, image, VPC, subnet and key pair is read once, disks 60 to a call, so a batch costs
a handful of reads whatever its size. A read the cloud refuses for good (403, an unknown API)
becomes a warning and that check is skipped; a transient failure or a quota wait propagates,
for the caller to try again later.

:func:`preflight_batch` is the hook of intake: it runs the preflight of a stored batch whose
requests were never dispatched, and FAILs all of them, each with its reasons, when it finds a
problem. ``bms.start_batch`` (control queue) runs it, then hands the dispatch of the requests
on to ``bms.dispatch_batch`` (``tasks.batch_dispatch``: chunks behind the batch's watermark).
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import shared_task
from kombu.exceptions import OperationalError
from sqlalchemy import select

from bms.client import BmsClient
from bms.exceptions import CloudAPIError, CloudError, NotFound, Throttled
from bms.resources import MAX_VOLUME_IDS
from models.db import session_scope
from models.records import ServerRequest, transition
from models.states import RequestState, Step
from tasks import batch_dispatch, group_create
from tasks.grouping import CreateCalls, count_create_calls
from worker.app import app
from worker.limiter import NoCapacity
from worker.runtime import runtime

log = logging.getLogger("bms.tasks.preflight")
S = RequestState

#: Flavor states on sale (``cond:operation:status``, reference section 9).
ON_SALE = ("normal", "obt", "promotion")
#: The error code a request refused by the preflight carries.
PREFLIGHT_CODE = "PREFLIGHT"
#: Transient failures of the preflight's reads tolerated before the batch goes on unchecked.
MAX_TRANSIENT_ERRORS = 5
_SKIPPED = object()


@dataclass(frozen=True)
class Item:
    """One server to check: its name, its create body, the disks to attach to it."""

    name: str
    body: dict[str, Any]
    volumes: Sequence[str] = ()
    #: Path of the spec it came from (``servers[2]``), prefixed to the fields it is blamed for.
    where: str = ""


@dataclass
class Problem:
    """What is wrong, the field that says so, and the servers (positions) it concerns; a
    batch-wide problem (the limits) concerns every server."""

    field: str
    message: str
    positions: list[int] = field(default_factory=list)
    batch_wide: bool = False


@dataclass(frozen=True)
class QuotaUse:
    """One limit of the account against what the batch needs (``limit`` -1: unlimited)."""

    name: str
    needed: int
    limit: int
    used: int

    @property
    def left(self) -> int | None:
        return None if self.limit < 0 else max(self.limit - self.used, 0)

    @property
    def fits(self) -> bool:
        return self.left is None or self.needed <= self.left


@dataclass
class Report:
    """The preflight's verdict, and what the batch would cost."""

    servers: int
    create_calls: CreateCalls
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    quotas: list[QuotaUse] = field(default_factory=list)
    reads: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def reasons(self, position: int) -> list[tuple[str, str]]:
        """``(field, message)`` of every problem of the server at ``position``."""
        return [
            (p.field, p.message) for p in self.problems if p.batch_wide or position in p.positions
        ]

    def reason_text(self, position: int) -> str:
        """One line for a refused request: its own problems, or those of the others."""
        own = self.reasons(position)
        if own:
            return "; ".join(f"{name}: {message}" for name, message in own)
        first = self.problems[0]
        return (
            f"the batch failed preflight ({len(self.problems)} problem(s) in other requests, "
            f"e.g. {first.field}: {first.message})"
        )

    def to_dict(self, items: Sequence[Item]) -> dict[str, Any]:
        """The JSON of a dry run: fields prefixed with their spec path, servers by name."""
        problems = []
        for problem in self.problems:
            if problem.batch_wide:
                problems.append({"field": problem.field, "message": problem.message, "servers": []})
                continue
            by_where: dict[str, list[str]] = {}
            for position in problem.positions:
                item = items[position]
                by_where.setdefault(item.where, []).append(item.name)
            for where, names in by_where.items():
                path = f"{where}.{problem.field}" if where else problem.field
                problems.append({"field": path, "message": problem.message, "servers": names})
        return {
            "ok": self.ok,
            "servers": self.servers,
            "create_calls": self.create_calls.one_by_one,
            "create_calls_grouped": self.create_calls.grouped,
            "create_group_max": self.create_calls.group_max,
            "cloud_reads": self.reads,
            "problems": problems,
            "warnings": list(self.warnings),
            "quotas": [
                {
                    "name": q.name,
                    "needed": q.needed,
                    "limit": q.limit,
                    "used": q.used,
                    "left": q.left,
                }  # fmt: skip
                for q in self.quotas
            ],
        }


def run_preflight(client: BmsClient, items: Sequence[Item], group_max: int = 100) -> Report:
    """Check ``items`` against the cloud through ``client``; nothing is created or changed.

    :raises NoCapacity: the limiter has no ``list``/``nova`` capacity now (try again later).
    :raises CloudError: a transient cloud failure (5xx, 429, timeout): try again later.
    """
    report = Report(len(items), count_create_calls([i.body for i in items], group_max))
    check = _Checks(client, items, report)
    flavors = check.flavors()
    check.images()
    check.network()
    check.volumes()
    check.key_pairs()
    check.limits(flavors)
    return report


class _Checks:
    """The checks of one preflight, sharing the report they fill."""

    def __init__(self, client: BmsClient, items: Sequence[Item], report: Report) -> None:
        self.client, self.items, self.report = client, items, report
        self._problems: dict[tuple[str, str], Problem] = {}

    # -- plumbing ---------------------------------------------------------------------------

    def read(self, what: str, call: Callable[..., Any], *args: Any, missing: Any = _SKIPPED):
        """One cloud read. ``missing`` is returned for a 404 of the service (the thing does
        not exist); a refusal for good becomes a warning and returns ``_SKIPPED``."""
        self.report.reads += 1
        try:
            return call(*args)
        except NotFound as exc:
            if missing is not _SKIPPED and not exc.error_code.startswith("APIGW"):
                return missing
            self._warn(what, exc)
        except CloudAPIError as exc:
            if exc.transient:
                raise
            self._warn(what, exc)
        return _SKIPPED

    def _warn(self, what: str, exc: CloudAPIError) -> None:
        detail = f"HTTP {exc.status_code} {exc.error_code}: {exc.message}".strip()
        self.report.warnings.append(f"{what} not checked ({detail})")

    def blame(self, position: int, field_name: str, message: str) -> None:
        key = (field_name, message)
        problem = self._problems.get(key)
        if problem is None:
            problem = self._problems[key] = Problem(field_name, message)
            self.report.problems.append(problem)
        problem.positions.append(position)

    def by_value(self, value_of: Callable[[Item], Iterable[Any]]) -> dict[Any, list[int]]:
        """Distinct values over the items, each with the positions that name it."""
        found: dict[Any, list[int]] = {}
        for position, item in enumerate(self.items):
            for value in value_of(item):
                if isinstance(value, str) and value:
                    found.setdefault(value, []).append(position)
        return found

    # -- the checks -------------------------------------------------------------------------

    def flavors(self) -> dict[str, dict]:
        """Each server's flavor is on sale in its zone; returns the flavors seen, by id."""
        seen: dict[str, dict] = {}
        zones = self.by_value(lambda i: [i.body.get("availability_zone")])
        absent: list[tuple[int, str, str]] = []
        for zone, positions in zones.items():
            listed = self.read(f"flavors of {zone}", self.client.list_flavors, zone)
            if listed is _SKIPPED:
                continue
            in_zone = {f.get("id"): f for f in listed}
            seen.update(in_zone)
            for position in positions:
                flavor_id = self.items[position].body.get("flavorRef")
                flavor = in_zone.get(flavor_id)
                if flavor is None:
                    absent.append((position, str(flavor_id), zone))
                elif (state := zone_state(flavor, zone)) not in ON_SALE:
                    self.blame(position, "flavorRef", f"{flavor_id} is {state} in {zone}")
        if absent:
            every = self.read("flavors", self.client.list_flavors)
            known = {} if every is _SKIPPED else {f.get("id"): f for f in every}
            seen = {**known, **seen}
            for position, flavor_id, zone in absent:
                if every is not _SKIPPED and flavor_id not in known:
                    self.blame(position, "flavorRef", f"flavor {flavor_id} does not exist")
                else:
                    self.blame(position, "flavorRef", f"{flavor_id} is not offered in {zone}")
        return seen

    def images(self) -> None:
        resources = self.client.resources
        for image_id, positions in self.by_value(lambda i: [i.body.get("imageRef")]).items():
            found = self.read(f"image {image_id}", _by_id(resources.list_images), image_id)
            if found is _SKIPPED:
                continue
            message = image_problem(image_id, found)
            for position in positions if message else ():
                self.blame(position, "imageRef", message)

    def network(self) -> None:
        resources = self.client.resources
        vpcs = self.by_value(lambda i: [i.body.get("vpcid")])
        missing_vpcs = set()
        for vpc_id, positions in vpcs.items():
            if self.read(f"VPC {vpc_id}", resources.show_vpc, vpc_id, missing=None) is None:
                missing_vpcs.add(vpc_id)
                for position in positions:
                    self.blame(position, "vpcid", f"VPC {vpc_id} does not exist")
        subnets = self.by_value(lambda i: [n.get("subnet_id") for n in _nics(i)])
        for subnet_id, positions in subnets.items():
            what = f"subnet {subnet_id}"
            subnet = self.read(what, resources.show_subnet, subnet_id, missing=None)
            if subnet is _SKIPPED:
                continue
            for position in positions:
                item = self.items[position]
                index = next(
                    n for n, nic in enumerate(_nics(item)) if nic.get("subnet_id") == subnet_id
                )
                vpc_id = item.body.get("vpcid")
                if subnet is not None and vpc_id in missing_vpcs:
                    continue  # the VPC is blamed already
                message = subnet_problem(subnet_id, subnet, vpc_id)
                if message:
                    self.blame(position, f"nics[{index}].subnet_id", message)

    def volumes(self) -> None:
        wanted = self.by_value(lambda i: i.volumes)
        ids = list(wanted)
        for start in range(0, len(ids), MAX_VOLUME_IDS):
            chunk = ids[start : start + MAX_VOLUME_IDS]
            listed = self.read(f"{len(chunk)} volume(s)", self.client.resources.list_volumes, chunk)
            if listed is _SKIPPED:
                continue
            found = {v.get("id"): v for v in listed}
            for volume_id in chunk:
                message = volume_problem(volume_id, found.get(volume_id))
                for position in wanted[volume_id] if message else ():
                    index = list(self.items[position].volumes).index(volume_id)
                    self.blame(position, f"attach_volumes[{index}].volume_id", message)

    def key_pairs(self) -> None:
        nova = self.client.nova
        for name, positions in self.by_value(lambda i: [i.body.get("key_name")]).items():
            if self.read(f"key pair {name}", nova.show_keypair, name, missing=None) is None:
                for position in positions:
                    self.blame(position, "key_name", f"key pair {name} does not exist")

    def limits(self, flavors: dict[str, dict]) -> None:
        absolute = self.read("account limits", self.client.show_limits)
        if absolute is _SKIPPED:
            return
        chosen = [flavors.get(i.body.get("flavorRef"), {}) for i in self.items]
        needs = {
            "maxTotalInstances": ("totalInstancesUsed", len(self.items), "servers"),
            "maxTotalCores": ("totalCoresUsed", sum(_int(f.get("vcpus")) for f in chosen), "cores"),
            "maxTotalRAMSize": ("totalRAMUsed", sum(_int(f.get("ram")) for f in chosen), "MB RAM"),
        }
        for limit_name, (used_name, needed, unit) in needs.items():
            if limit_name not in absolute:
                continue
            use = QuotaUse(
                limit_name, needed, _int(absolute[limit_name]), _int(absolute.get(used_name))
            )
            self.report.quotas.append(use)
            if not use.fits:
                message = (
                    f"the batch needs {needed} {unit}, the account has {use.left} left "
                    f"(limit {use.limit}, {use.used} in use)"
                )
                self.report.problems.append(
                    Problem(f"limits.{limit_name}", message, batch_wide=True)
                )


# -- verdicts on what the cloud answered (pure) ----------------------------------------------


def zone_state(flavor: dict, zone: str) -> str:
    """A flavor's state in ``zone``: its ``cond:operation:az`` entry, else its
    ``cond:operation:status``, else ``normal``."""
    specs = flavor.get("os_extra_specs") or {}
    for part in str(specs.get("cond:operation:az") or "").split(","):
        name, _, rest = part.strip().partition("(")
        if name == zone and rest.endswith(")"):
            return rest[:-1]
    return str(specs.get("cond:operation:status") or "normal")


def image_problem(image_id: str, found: dict | None) -> str | None:
    if found is None:
        return f"image {image_id} does not exist"
    status = found.get("status")
    if status and status != "active":
        return f"image {image_id} is {status}, not active"
    kind = found.get("virtual_env_type")
    if kind and kind != "Ironic":
        return f"image {image_id} is not a bare metal image (virtual_env_type {kind})"
    return None


def subnet_problem(subnet_id: str, subnet: dict | None, vpc_id: Any) -> str | None:
    if subnet is None:
        return f"subnet {subnet_id} does not exist"
    if subnet.get("vpc_id") and subnet["vpc_id"] != vpc_id:
        return f"subnet {subnet_id} is in VPC {subnet['vpc_id']}, not in vpcid {vpc_id}"
    status = subnet.get("status")
    if status and status != "ACTIVE":
        return f"subnet {subnet_id} is {status}, not ACTIVE"
    return None


def volume_problem(volume_id: str, volume: dict | None) -> str | None:
    if volume is None:
        return f"volume {volume_id} does not exist"
    status = volume.get("status")
    if status == "available" or (status == "in-use" and volume.get("multiattach")):
        return None
    servers = [a.get("server_id") for a in volume.get("attachments") or [] if a.get("server_id")]
    where = f" (attached to {', '.join(servers)})" if servers else ""
    return f"volume {volume_id} is {status}{where}, not available"


def _by_id(list_images: Callable[..., list[dict]]) -> Callable[[str], dict | None]:
    def find(image_id: str) -> dict | None:
        return next((i for i in list_images(image_id=image_id) if i.get("id") == image_id), None)

    return find


def _nics(item: Item) -> list[dict]:
    return [nic for nic in item.body.get("nics") or [] if isinstance(nic, dict)]


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


# -- the hook of intake ----------------------------------------------------------------------


def preflight_batch(batch_id: uuid.UUID) -> bool:
    """Run the preflight of a stored batch before its first dispatch; returns whether to go
    on and dispatch its PENDING requests.

    Runs only while no request of the batch has been dispatched (fence 0, PENDING or
    CANCELLED): a redelivered or repeated call after that just says to go on. A refused batch
    has every PENDING request FAILED at step ``create`` with code ``PREFLIGHT`` and its reasons.

    :raises NoCapacity: no read capacity now; call again later.
    :raises CloudError: a transient cloud failure; call again later.
    """
    current = runtime()
    with session_scope(current.sessions) as session:
        requests = _batch_requests(session, batch_id)
        pending = [r for r in requests if r.state is S.PENDING]
        if not pending:
            return False
        if any(r.fence or r.state not in (S.PENDING, S.CANCELLED) for r in requests):
            return True
        items = [_item_of(r) for r in pending]
        ids = [r.id for r in pending]
    report = run_preflight(current.client, items, current.settings.create_group_max)
    for warning in report.warnings:
        log.warning("preflight of batch %s: %s", batch_id, warning)
    if report.ok:
        return True
    refuse(current.sessions, ids, report)
    log.warning("batch %s refused by preflight: %d problem(s)", batch_id, len(report.problems))
    return False


def refuse(sessions, request_ids: Sequence[uuid.UUID], report: Report) -> int:
    """FAIL the requests still PENDING and never dispatched, each with its own reasons."""
    refused = 0
    with session_scope(sessions) as session:
        for position, request_id in enumerate(request_ids):
            request = session.scalar(
                select(ServerRequest).where(ServerRequest.id == request_id).with_for_update()
            )
            if request is None or request.state is not S.PENDING or request.fence:
                continue
            message = report.reason_text(position)
            request.failed_step = Step.CREATE
            request.last_error_code = PREFLIGHT_CODE
            request.last_error_message = message[:2000]
            transition(session, request, S.FAILED, detail=f"preflight: {message}"[:2000])
            refused += 1
    return refused


def _batch_requests(session, batch_id: uuid.UUID) -> list[ServerRequest]:
    query = select(ServerRequest).where(ServerRequest.batch_id == batch_id)
    return list(session.scalars(query.order_by(ServerRequest.position)))


def _item_of(request: ServerRequest) -> Item:
    spec = request.spec or {}
    volumes = [v.get("volume_id") for v in spec.get("attach_volumes") or []]
    return Item(request.name, spec.get("create_body") or {}, [v for v in volumes if v])


@shared_task(name="bms.start_batch", bind=True, acks_late=True, ignore_result=True)
def start_batch(self, batch_id: str, transient_errors: int = 0) -> bool:
    """Control task of a new batch: its preflight, then the dispatch of its requests, handed
    on to ``bms.dispatch_batch`` from the batch's watermark.

    Waits for read capacity without counting it as a failure; after
    ``MAX_TRANSIENT_ERRORS`` transient failures the batch goes on unchecked (its creates
    would meet the same cloud). Returns whether the dispatch was handed on.
    """
    current = runtime()
    batch = uuid.UUID(batch_id)
    kwargs = {"batch_id": batch_id, "transient_errors": transient_errors}
    try:
        go_on = preflight_batch(batch)
    except NoCapacity as exc:
        wait = _spread(exc.wait_seconds)
        raise self.retry(kwargs=kwargs, countdown=wait, max_retries=None) from None
    except Throttled as exc:
        wait = _spread(exc.retry_after or 5.0)
        raise self.retry(kwargs=kwargs, countdown=wait, max_retries=None) from None
    except CloudError as exc:
        if transient_errors >= MAX_TRANSIENT_ERRORS:
            log.warning("preflight of batch %s gave up (%s): dispatching unchecked", batch, exc)
            go_on = True
        else:
            kwargs["transient_errors"] = transient_errors + 1
            raise self.retry(
                kwargs=kwargs, countdown=_spread(2.0**transient_errors), max_retries=None
            ) from None
    if not go_on:
        # Refused, or nothing PENDING: nothing of it is left for the batch reconciler.
        batch_dispatch.close(current.sessions, batch)
        return False
    # Before the first dispatch: the servers one count create can make are put in its group.
    group_create.plan_batch(current.sessions, batch, current.settings.create_group_max)
    return batch_dispatch.send(batch, None)


def _spread(seconds: float) -> float:
    """A countdown with jitter, so that waiting tasks do not all return in one instant."""
    return min(max(seconds, 0.05) + random.uniform(0, 0.1 + 0.1 * seconds), 600.0)


def send_start(batch_id: uuid.UUID) -> bool:
    """Send ``bms.start_batch`` for a committed batch. With the broker down the requests stay
    PENDING and the reconciler dispatches them later (without preflight)."""
    # Through the project's app, not the ``current_app`` a shared task resolves to (another
    # Celery app made in this process, e.g. for a ping, would become current).
    signature = app.signature(
        "bms.start_batch", kwargs={"batch_id": str(batch_id)}, immutable=True, ignore_result=True
    )
    try:
        signature.apply_async()
    except OperationalError as exc:
        log.warning("broker unreachable (%s): the reconciler will start batch %s", exc, batch_id)
        return False
    return True
