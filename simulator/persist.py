"""The simulated cloud on disk (``--state-file``): loaded at start, saved while it runs and at stop.

What is saved: servers (deleted and purged ones too), the catalog (volumes, subnets and their
used addresses, flavors, images, key pairs) and jobs. Quota windows and counters are not.

A job's pending steps are code, not data, so they cannot be saved. A graceful stop first waits
(bounded by the longest job) for running jobs to end. A job still running when the simulator
was stopped anyway (SIGKILL, or a job longer than the wait) is settled at the next load as a
cloud that lost the job would leave it: a server being built is ERROR and its job FAILED with
``SIM.0001``; a delete or a detach completes; an attach is undone (the volume is available).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import asdict, fields
from pathlib import Path

from simulator.catalog import Catalog, Subnet, Volume
from simulator.clock import job_time, server_time
from simulator.jobs import FAIL, SUCCESS, Job
from simulator.state import NOSTATE, CloudState, Port, Server

FORMAT_VERSION = 1
#: The error code of a job the simulator lost by stopping while it ran.
LOST_JOB_CODE = "SIM.0001"
LOST_JOB_REASON = "The simulator stopped while this job ran."
#: Sub-job types whose effect completes when the job is lost (the cloud finishes them).
COMPLETED_WHEN_LOST = ("baremetalSingleDelete", "baremetalDetachSingleVolume")


class StateFileError(RuntimeError):
    """The state file cannot be read; the message names it."""


# -- to and from JSON ----------------------------------------------------------------------


def snapshot(state: CloudState) -> dict:
    """The state as JSON-able data; the caller holds ``state.lock`` and has advanced it."""
    top_jobs = [job for job in state.jobs.values() if job.top]
    return {
        "version": FORMAT_VERSION,
        "mac_counter": state._mac_counter,
        "servers": [asdict(server) for server in state.servers.values()],
        "jobs": [asdict(job) for job in top_jobs],
        "catalog": _catalog_data(state.catalog),
    }


def _catalog_data(catalog: Catalog) -> dict:
    """Every field of the catalog; subnets and volumes as lists, sets as sorted lists."""
    data = {}
    for item in fields(catalog):
        value = getattr(catalog, item.name)
        if item.name == "subnets":
            value = [{**asdict(s), "used": sorted(s.used)} for s in value.values()]
        elif item.name == "volumes":
            value = [asdict(volume) for volume in value.values()]
        elif isinstance(value, set):
            value = sorted(value)
        data[item.name] = value
    return data


def _catalog(raw: dict) -> Catalog:
    """The catalog of ``raw``; a field the file lacks (an older simulator's) keeps its default."""
    values = dict(raw)
    values["subnets"] = {s["id"]: Subnet(**{**s, "used": set(s["used"])}) for s in raw["subnets"]}
    values["volumes"] = {v["id"]: Volume(**v) for v in raw["volumes"]}
    values["vpcs"] = set(raw["vpcs"])
    known = {item.name for item in fields(Catalog)}
    return Catalog(**{name: value for name, value in values.items() if name in known})


def restore(state: CloudState, data: dict) -> None:
    """Replace ``state``'s content with ``data`` and settle the jobs it lost."""
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        found = data.get("version") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"not a simulator state of format {FORMAT_VERSION} (found {found!r})")
    with state.lock:
        state.reset()
        state.catalog = _catalog(data["catalog"])
        # Limits given on the command line win over the saved ones, as over the defaults.
        state.catalog.limits.update(getattr(state.config, "limits", {}))
        for item in data["servers"]:
            server = Server(**{**item, "ports": [Port(**p) for p in item["ports"]]})
            state.servers[server.id] = server
        for item in data["jobs"]:
            job = _job(item)
            for one in (job, *job.sub_jobs):
                state.jobs[one.job_id] = one
        state._mac_counter = data["mac_counter"]
        _settle(state)


def _job(item: dict) -> Job:
    return Job(**{**item, "sub_jobs": [_job(sub) for sub in item["sub_jobs"]]})


def _settle(state: CloudState) -> None:
    """Finish what the last run left half-done, as described in the module's docstring."""
    now = state.clock.now()
    for job in [j for j in state.jobs.values() if j.top]:
        if job.status in (SUCCESS, FAIL, "PENDING_PAYMENT"):
            continue
        for sub in job.sub_jobs:
            if sub.status in (SUCCESS, FAIL):
                continue
            if sub.job_type in COMPLETED_WHEN_LOST:
                sub.finish(job_time(now), None, None)
            else:
                sub.finish(job_time(now), LOST_JOB_CODE, LOST_JOB_REASON)
        if not job.sub_jobs:
            job.finish(job_time(now), LOST_JOB_CODE, LOST_JOB_REASON)
        job.finish_if_done(job_time(now))
    for server in state.servers.values():
        if server.deleted:
            if not server.purged:
                # why: the purge was a pending event; the deleted server shows a while longer
                state.schedule.at(
                    state.clock.monotonic() + state.config.deleted_visible_seconds,
                    lambda due, server=server: setattr(server, "purged", True),
                )
            continue
        if server.task_state == "deleting":
            state._mark_deleted(server)
        elif server.status == "BUILD":
            server.fault = {
                "code": 500,
                "message": f"{LOST_JOB_CODE}: {LOST_JOB_REASON}",
                "details": "",
                "created": server_time(now),
            }
            state.set_status(server, "ERROR", None, "error", NOSTATE)
        elif server.task_state is not None:
            state.set_status(
                server, server.status, None, server.vm_state, server.power_state
            )  # a power action that was lost: the server stays as it was
    for volume in state.catalog.volumes.values():
        if volume.status in ("attaching", "detaching"):
            server = state.servers.get(volume.server_id or "")
            if server is not None:
                server.volumes.pop(volume.id, None)
            volume.status, volume.server_id, volume.device = "available", None, None


# -- the file ------------------------------------------------------------------------------


def load(state: CloudState, path: Path) -> bool:
    """Load ``path`` into ``state`` if it exists; returns whether it did.

    :raises StateFileError: the file exists but is not a state this simulator wrote.
    """
    if not path.exists():
        return False
    try:
        restore(state, json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StateFileError(
            f"cannot load the simulator's state from {path}: {exc!r} "
            "(move the file away to start with an empty cloud)"
        ) from None
    return True


def write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically: a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    temporary.replace(path)


class Persister:
    """Saves ``state`` to ``path`` every ``interval`` seconds when it changed, and at stop."""

    def __init__(self, state: CloudState, path: Path, interval: float = 0.5) -> None:
        self.state = state
        self.path = path
        self.interval = interval
        self._last = ""
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bms-sim-persist", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait_for_jobs: float) -> None:
        """Let running jobs end (at most ``wait_for_jobs`` seconds), then save a last time."""
        self._stopping.set()
        self._thread.join(timeout=5)
        deadline = time.monotonic() + wait_for_jobs
        while self.running_jobs() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.save()

    def running_jobs(self) -> int:
        with self.state.lock:
            self.state.advance()
            return sum(
                1 for j in self.state.jobs.values() if j.top and j.status in ("INIT", "RUNNING")
            )

    def save(self) -> None:
        with self.state.lock:
            self.state.advance()
            text = json.dumps(snapshot(self.state), separators=(",", ":"))
        if text != self._last:
            write(self.path, text)
            self._last = text

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            with contextlib.suppress(OSError):  # a full disk must not stop the simulator
                self.save()
