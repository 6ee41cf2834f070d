"""``POST /v1/batches?dry_run=true``: the preflight of a batch alone, nothing stored, nothing
created, and what the batch would cost in create calls.

The API reads the cloud itself here, through the same global limiter as the workers (its reads
spend the ``list`` and ``nova`` quotas). A wait for capacity is short and bounded: past it, or
when the cloud fails, the answer is 503.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field

from bms.exceptions import CloudError
from models.spec import BatchSpec
from tasks.preflight import Item, run_preflight
from worker.limiter import GlobalLimiter, NoCapacity
from worker.runtime import build_client
from worker.settings import Settings

#: Longest the API waits for read capacity before it answers 503.
CAPACITY_WAIT_SECONDS = 10.0


class DryRunUnavailable(Exception):
    """The dry run could not read the cloud; ``retry_after`` in seconds when known."""

    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class PreflightProblem(BaseModel):
    """What is wrong, the field that says so, and the servers it concerns (none listed: the
    whole batch)."""

    field: str = Field(examples=["servers[1].flavorRef"])
    message: str
    servers: list[str]


class QuotaView(BaseModel):
    """One limit of the account: what the batch needs, the limit (-1: none), in use, left."""

    name: str = Field(examples=["maxTotalInstances"])
    needed: int
    limit: int
    used: int
    left: int | None


class DryRunReport(BaseModel):
    """The preflight's verdict and what the batch would cost; nothing was stored or created."""

    ok: bool
    servers: int
    create_calls: int = Field(description="create calls today: one per server")
    create_calls_grouped: int = Field(
        description="create calls if servers from one count entry shared a call"
    )
    create_group_max: int
    cloud_reads: int
    problems: list[PreflightProblem]
    warnings: list[str]
    quotas: list[QuotaView]


class PatientGate:
    """The limiter's gate, waiting (bounded) for capacity instead of failing at once."""

    def __init__(self, limiter: GlobalLimiter, budget_seconds: float) -> None:
        self.limiter = limiter
        self.deadline = time.monotonic() + budget_seconds

    def acquire(self, api_class: str):
        while True:
            try:
                return self.limiter.acquire(api_class)
            except NoCapacity as exc:
                if time.monotonic() + exc.wait_seconds > self.deadline:
                    raise
                time.sleep(exc.wait_seconds)


def items_of(spec: BatchSpec) -> list[Item]:
    """The batch's servers, ``count`` expanded, each knowing the entry it came from."""
    wheres = [f"servers[{i}]" for i, entry in enumerate(spec.servers) for _ in range(entry.count)]
    items = []
    for server, where in zip(spec.expand(), wheres, strict=True):
        volumes = [v["volume_id"] for v in server.attach_volumes]
        items.append(Item(server.name, server.create_body, volumes, where))
    return items


def dry_run(settings: Settings, spec: BatchSpec) -> dict[str, Any]:
    """The preflight of ``spec`` against the configured cloud, as :class:`DryRunReport` JSON.

    :raises DryRunUnavailable: no cloud configured, no capacity in time, or the cloud failed.
    """
    limiter = None
    if settings.redis_url:
        limiter = PatientGate(
            GlobalLimiter(settings.redis_url, settings.rate_limit_items), CAPACITY_WAIT_SECONDS
        )
    try:
        client = build_client(settings, limiter)
    except RuntimeError as exc:
        raise DryRunUnavailable(f"a dry run needs the cloud: {exc}") from None
    items = items_of(spec)
    try:
        with client:
            report = run_preflight(client, items, settings.create_group_max)
    except NoCapacity as exc:
        raise DryRunUnavailable(
            f"no {exc.api_class} quota left for the preflight's reads now", exc.wait_seconds
        ) from None
    except CloudError as exc:
        raise DryRunUnavailable(f"the cloud did not answer the preflight: {exc}") from None
    return report.to_dict(items)
