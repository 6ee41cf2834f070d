"""Queues: one per cloud API class, ``bms.control`` for dispatch and the reconciler, and
``bms.webhook`` for webhook deliveries.

A queue per class isolates the classes (a backlog of creates never delays job polls); the
quota itself is enforced by the global limiter, not by the queue.
"""

from __future__ import annotations

from kombu import Queue
from kombu.utils.scheduling import round_robin_cycle

from worker.settings import API_CLASSES

CONTROL_QUEUE = "bms.control"
#: Webhook deliveries, consumed by workers of their own: a slow receiver never holds a step.
WEBHOOK_QUEUE = "bms.webhook"


def queue_of(api_class: str) -> str:
    """The queue of an API class: ``create`` -> ``bms.create``."""
    if api_class not in API_CLASSES:
        raise ValueError(f"unknown API class {api_class!r}")
    return f"bms.{api_class}"


#: Taken before any other queue whenever they hold a message (see :class:`CreatesFirst`).
FIRST_QUEUES = (queue_of("create"), CONTROL_QUEUE)

#: Every queue, the first ones first.
ALL_QUEUES = (
    (queue_of("create"), CONTROL_QUEUE)
    + tuple(queue_of(c) for c in API_CLASSES if c != "create")
    + (WEBHOOK_QUEUE,)
)


class CreatesFirst(round_robin_cycle):
    """The order a worker takes its queues in (kombu's Redis ``queue_order_strategy``): a free
    pool child takes a create, then a control message (the feeder), before any other work, and
    the other queues in turn (round robin).

    Creates and the feeder are bounded by the create quota (a create is sent only with a slot of
    its own, the feeder only while slots free). Without them first, a create booked for an
    instant waited in the broker behind the polls and steps of earlier servers, its slot idling
    (issue 11: 37% of the quota at 20/s). A fixed order for all queues ("priority") starved the
    rest behind any backlog: 2,000 attaches waiting for quota held job polls and tags back for
    over a minute. A quota above what the workers can do (500 creates/s on 2 cores) still has
    creates go first until the backlog is created, the later steps waiting meanwhile.
    """

    def update(self, it) -> None:
        names = list(it)
        rank = {name: FIRST_QUEUES.index(name) for name in names if name in FIRST_QUEUES}
        super().update(sorted(names, key=lambda name: rank.get(name, len(FIRST_QUEUES))))

    def rotate(self, last_used):
        if last_used in FIRST_QUEUES:
            return last_used  # stays in front
        return super().rotate(last_used)


def declare_queues() -> tuple[Queue, ...]:
    return tuple(Queue(name, routing_key=name) for name in ALL_QUEUES)


#: Every task by its stable name, with the API class whose queue (and quota) it uses.
TASK_API_CLASSES = {
    "bms.create_server": "create",
    "bms.create_group": "create",  # the create of a count group's member (tasks.group_create)
    "bms.poll_create_job": "job",
    "bms.poll_group_job": "job",
    "bms.wait_server_built": "show",
    "bms.attach_volume": "attach",
    "bms.poll_attach_job": "job",
    "bms.apply_tags": "nova",
    "bms.rename_server": "update",
    "bms.finalize": "show",
    "bms.delete_server": "list",  # POST /baremetalservers/delete counts with the other v1 calls
    "bms.poll_delete_job": "job",
    "bms.detach_volume": "detach",
    "bms.poll_detach_job": "job",
    "bms.teardown_server": "list",  # the same batch delete call as bms.delete_server
    "bms.poll_teardown_job": "job",
}

#: Celery's ``task_routes``: senders that know only a task's name still reach the right queue.
TASK_ROUTES = {name: {"queue": queue_of(api)} for name, api in TASK_API_CLASSES.items()} | {
    "bms.reconcile": {"queue": CONTROL_QUEUE},
    "bms.submit_batch": {"queue": CONTROL_QUEUE},
    "bms.deliver_webhook": {"queue": WEBHOOK_QUEUE},
    "bms.start_batch": {"queue": CONTROL_QUEUE},
    # The scan only reads the database and sends messages: never stuck behind a slow receiver.
    "bms.webhook_scan": {"queue": CONTROL_QUEUE},
    "bms.dispatch_batch": {"queue": CONTROL_QUEUE},
    "bms.reconcile_batches": {"queue": CONTROL_QUEUE},
    "bms.fold_counts": {"queue": CONTROL_QUEUE},
}
