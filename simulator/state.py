"""The simulated cloud's in-memory state: servers, volumes, jobs, and the catalog.

One ``RLock`` guards it all; every public method expects the caller to hold ``state.lock`` and to
have called ``advance()`` first, so pending lifecycle events are applied before anything is read.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from simulator.catalog import Catalog, Volume, default_catalog
from simulator.clock import SystemClock, server_time
from simulator.config import SimulatorConfig
from simulator.faults import FaultInjector
from simulator.jobs import Job, Schedule, Step

#: The system tag every bare metal server carries (``__type_virtual`` marks ECS).
BAREMETAL_TAG = "__type_baremetal"

#: Power states (reference section 6).
NOSTATE, RUNNING, SHUTDOWN = 0, 1, 4


@dataclass
class Port:
    port_id: str
    subnet_id: str
    vpc_id: str
    ip_address: str
    mac_address: str


@dataclass
class Server:
    """One bare metal server and everything that happened to it."""

    id: str
    name: str
    flavor_id: str
    image_id: str
    availability_zone: str
    vpc_id: str
    created: str
    metadata: dict[str, str] = field(default_factory=dict)
    key_name: str | None = None
    tags: list[str] = field(default_factory=lambda: [BAREMETAL_TAG])
    kv_tags: dict[str, str] = field(default_factory=dict)
    ports: list[Port] = field(default_factory=list)
    #: volume id -> device, in attach order.
    volumes: dict[str, str] = field(default_factory=dict)
    status: str = "BUILD"
    task_state: str | None = "scheduling"
    vm_state: str = "building"
    power_state: int = NOSTATE
    fault: dict | None = None
    updated: str = ""
    history: list[dict] = field(default_factory=list)
    deleted: bool = False
    #: Gone for good: GET answers 404 (the record stays for ``/_sim/servers``).
    purged: bool = False

    def all_tags(self) -> list[str]:
        """Tags as the detail view lists them: one-dimension tags then ``key=value`` tags."""
        return self.tags + [f"{key}={value}" for key, value in self.kv_tags.items()]


class CloudState:
    """Servers, jobs and catalog of one simulated account."""

    def __init__(self, config: SimulatorConfig, clock: SystemClock, faults: FaultInjector) -> None:
        self.config = config
        self.clock = clock
        self.faults = faults
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.catalog: Catalog = default_catalog()
            self.catalog.limits.update(self.config.limits)
            self.servers: dict[str, Server] = {}
            self.jobs: dict[str, Job] = {}
            self.schedule = Schedule(self.clock)
            self._mac_counter = 0

    def advance(self) -> None:
        """Apply every lifecycle event that is due."""
        with self.lock:
            self.schedule.run_due()

    # -- lookups ---------------------------------------------------------------------------

    def server(self, server_id: str) -> Server | None:
        """A server that still answers GET (including DELETED ones not yet purged)."""
        server = self.servers.get(server_id)
        return None if server is None or server.purged else server

    def live_servers(self) -> list[Server]:
        return [s for s in self.servers.values() if not s.deleted and not s.purged]

    def job(self, job_id: str) -> Job | None:
        """A job or a sub_job by id."""
        return self.jobs.get(job_id)

    # -- status changes --------------------------------------------------------------------

    def set_status(
        self, server: Server, status: str, task_state: str | None, vm_state: str, power_state: int
    ) -> None:
        """Move a server and append the change to its history, stamped when it happened."""
        moment = self.moment()
        server.status, server.task_state = status, task_state
        server.vm_state, server.power_state = vm_state, power_state
        server.updated = server_time(moment)
        server.history.append(
            {"status": status, "task_state": task_state, "at": moment.isoformat()}
        )

    def moment(self) -> datetime:
        """Now, or the due time of the lifecycle event being applied."""
        due = self.schedule.current
        return self.clock.wall(due) if due is not None else self.clock.now()

    def _durations(self, count: int) -> list[float]:
        low, high = self.config.job_seconds
        return [self.faults.duration(low, high) for _ in range(count)]

    def _start(
        self, job_type: str, sub_type: str, steps: list[Step], begin_share: float = 0.1
    ) -> Job:
        durations = self._durations(len(steps))
        job = self.schedule.start_job(job_type, sub_type, steps, durations, begin_share)
        for item in [job, *job.sub_jobs]:
            self.jobs[item.job_id] = item
        return job

    def new_mac(self) -> str:
        self._mac_counter += 1
        tail = self._mac_counter.to_bytes(3, "big")
        return "fa:16:3e:" + ":".join(f"{octet:02x}" for octet in tail)

    def pending_payment_job(self, job_type: str) -> Job:
        """A prePaid order without auto-pay: its job waits for a payment that never comes."""
        job = Job(job_type, self.schedule.stamp(self.clock.monotonic()), status="PENDING_PAYMENT")
        self.jobs[job.job_id] = job
        return job

    # -- creation --------------------------------------------------------------------------

    def create_servers(
        self,
        template: dict,
        names: list[str],
        nics: list[tuple[str, str | None]],
        at_once: bool = False,
    ) -> Job:
        """Start a ``baremetalBatchCreate`` job; each server appears when its sub_job starts.

        ``template`` holds the Server fields common to every server of the batch; ``nics`` is
        (subnet id, fixed IP or None) per port; ``at_once`` makes the servers exist before this
        returns (Nova answers with the new id).
        """
        steps = []
        count_failures = self.faults.count_failures(len(names))
        for index, name in enumerate(names):
            failure = self.faults.create_failure()
            if index in count_failures:
                failure = self.faults.pick_create_code()
            code, reason = failure or (None, None)
            step = Step(
                begin=self._create_beginner(template, name, nics),
                end=self._create_ender(),
                error_code=code,
                fail_reason=reason,
            )
            steps.append(step)
        job = self._start(
            "baremetalBatchCreate", "baremetalSingleCreate", steps, 0.0 if at_once else 0.1
        )
        if at_once:
            self.advance()
        return job

    def _create_beginner(self, template: dict, name: str, nics: list[tuple[str, str | None]]):
        def begin(sub: Job) -> str | None:
            server = Server(
                id=str(uuid.uuid4()),
                name=name,
                created=server_time(self.moment()),
                **template,
            )
            server.metadata = dict(template["metadata"])
            self.servers[server.id] = server
            sub.entities["server_id"] = server.id
            self.set_status(server, "BUILD", "scheduling", "building", NOSTATE)
            for subnet_id, address in nics:
                if not self._add_port(server, subnet_id, address):
                    return "BMS.3005"
            return None

        return begin

    def _add_port(self, server: Server, subnet_id: str, wanted: str | None) -> bool:
        subnet = self.catalog.subnets[subnet_id]
        address = subnet.allocate(wanted)
        if address is None:
            return False
        port = Port(str(uuid.uuid4()), subnet_id, subnet.vpc_id, address, self.new_mac())
        server.ports.append(port)
        server.metadata["baremetalPortIDList"] = str([p.port_id for p in server.ports])
        return True

    def _create_ender(self):
        def end(sub: Job, error_code: str | None) -> tuple[str | None, str | None]:
            server = self.servers[sub.entities["server_id"]]
            if server.deleted or server.task_state == "deleting":
                return error_code, None  # why: deleted while building; never resurrect it
            if error_code:
                server.fault = {
                    "code": 500,
                    "message": f"{error_code}: provisioning failed",
                    "details": "",
                    "created": server_time(self.moment()),
                }
                self.set_status(server, "ERROR", None, "error", NOSTATE)
            else:
                self.set_status(server, "ACTIVE", None, "active", RUNNING)
            return error_code, None

        return end

    # -- power and deletion ----------------------------------------------------------------

    #: action -> (transient status, task_state, final status, vm_state, power_state)
    POWER_ACTIONS = {
        "os-start": ("SHUTOFF", "powering-on", "ACTIVE", "active", RUNNING),
        "os-stop": ("ACTIVE", "powering-off", "SHUTOFF", "stopped", SHUTDOWN),
        "reboot": ("HARD_REBOOT", "reboot_started_hard", "ACTIVE", "active", RUNNING),
    }

    def power_action(self, action: str, servers: list[Server]) -> Job:
        """A ``baremetalBatchOperate`` job: one ``baremetalSingleOperate`` per server."""
        transient, task, final, vm_state, power = self.POWER_ACTIONS[action]
        steps = []
        for server in servers:

            def begin(sub: Job, server=server) -> None:
                sub.entities["server_id"] = server.id
                self.set_status(server, transient, task, server.vm_state, server.power_state)

            def end(sub: Job, code, server=server) -> tuple[None, None]:
                if not server.deleted and server.task_state != "deleting":
                    self.set_status(server, final, None, vm_state, power)
                return None, None

            steps.append(Step(begin, end))
        return self._start("baremetalBatchOperate", "baremetalSingleOperate", steps)

    def delete_servers(self, servers: list[Server]) -> Job:
        """Delete: ``deleting`` task, then DELETED (still visible), then purged (404)."""
        steps = []
        for server in servers:

            def begin(sub: Job, server=server) -> None:
                sub.entities["server_id"] = server.id
                # why: ACTIVE, SHUTOFF and ERROR show while deleting; anything else shows ACTIVE
                status = (
                    server.status if server.status in ("ACTIVE", "SHUTOFF", "ERROR") else "ACTIVE"
                )
                self.set_status(server, status, "deleting", server.vm_state, server.power_state)

            def end(sub: Job, code, server=server) -> tuple[None, None]:
                self._mark_deleted(server)
                return None, None

            steps.append(Step(begin, end))
        return self._start("baremetalBatchDelete", "baremetalSingleDelete", steps)

    def _mark_deleted(self, server: Server) -> None:
        self.set_status(server, "DELETED", None, "deleted", NOSTATE)
        server.deleted = True
        for volume_id in list(server.volumes):
            self._release_volume(server, volume_id)
        for port in server.ports:
            self.catalog.subnets[port.subnet_id].release(port.ip_address)
        deleted_at = self.schedule.current
        if deleted_at is None:
            deleted_at = self.clock.monotonic()
        purge_at = deleted_at + self.config.deleted_visible_seconds

        def purge(due: float) -> None:
            server.purged = True

        self.schedule.at(purge_at, purge)

    # -- volumes ---------------------------------------------------------------------------

    def next_device(self, server: Server) -> str:
        """The first free ``/dev/sdX`` after the system disk ``/dev/sda``."""
        used = set(server.volumes.values())
        for letter in "bcdefghijklmnopqrstuvwxyz":
            if f"/dev/sd{letter}" not in used:
                return f"/dev/sd{letter}"
        raise ValueError("no free device name")

    def attach_volume(self, server: Server, volume: Volume, device: str | None) -> Job:
        """``baremetalAttachVolume``: available → attaching → in-use (or back, on failure)."""
        device = device or self.next_device(server)
        volume.status, volume.server_id, volume.device = "attaching", server.id, device
        server.volumes[volume.id] = device
        failure = self.faults.attach_failure()
        code, reason = failure or (None, None)

        def begin(sub: Job) -> None:
            sub.entities.update({"server_id": server.id, "volume_id": volume.id})

        def end(sub: Job, error_code: str | None) -> tuple[str | None, None]:
            if server.deleted and not error_code:
                # why: the server went away while the disk was attaching
                self._release_volume(server, volume.id)
                return "BMS.1004", "The server was deleted during the attach."
            if error_code:
                self._release_volume(server, volume.id)
            else:
                volume.status = "in-use"
            return error_code, None

        job = self._start(
            "baremetalAttachVolume", "baremetalAttachSingleVolume", [Step(begin, end, code, reason)]
        )
        job.entities["server_id"] = server.id
        return job

    def detach_volume(self, server: Server, volume: Volume) -> Job:
        """``baremetalDetachVolume``: in-use → detaching → available."""
        volume.status = "detaching"

        def begin(sub: Job) -> None:
            sub.entities.update({"server_id": server.id, "volume_id": volume.id})

        def end(sub: Job, error_code: str | None) -> tuple[None, None]:
            self._release_volume(server, volume.id)
            return None, None

        job = self._start(
            "baremetalDetachVolume", "baremetalDetachSingleVolume", [Step(begin, end)]
        )
        job.entities["server_id"] = server.id
        return job

    def _release_volume(self, server: Server, volume_id: str) -> None:
        server.volumes.pop(volume_id, None)
        volume = self.catalog.volumes.get(volume_id)
        if volume is not None and volume.server_id == server.id:
            volume.status, volume.server_id, volume.device = "available", None, None
