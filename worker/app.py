"""The Celery application, built from the settings.

``celery -A worker.app worker -Q bms.create,...`` loads this module; it reads the settings once.
Choices, each against a pitfall of ``shared/reference/celery-orchestration-notes.md``:
JSON only; late acks with redelivery when a worker dies (every task is idempotent); prefetch of
one; a visibility timeout, set everywhere Redis needs it, longer than any countdown we use; a
bound on countdown messages held per worker; task events only when asked for
(``BMS_TASK_EVENTS``, or Flower turning them on while it runs); kombu's Redis transport with
one client per channel (:mod:`worker.broker`).
"""

from __future__ import annotations

from celery import Celery

from worker.broker import transport_for
from worker.queues import CONTROL_QUEUE, TASK_ROUTES, declare_queues
from worker.settings import Settings, get_settings

#: Longest countdown any task asks for (poll ceilings and throttle waits stay under it).
MAX_COUNTDOWN_SECONDS = 600
#: Redis redelivers a message not acked within this; it must exceed every countdown and task.
VISIBILITY_TIMEOUT_SECONDS = 4 * 3600
#: Countdown/ETA messages a worker holds in memory before it stops fetching more.
ETA_TASK_LIMIT = 2000

TASK_MODULES = [
    "tasks.create",
    "tasks.group_create",
    "tasks.poll",
    "tasks.attach",
    "tasks.finish",
    "tasks.cleanup",
    "tasks.teardown",
    "tasks.control",
    "tasks.intake",
    "tasks.webhooks",
    "tasks.preflight",
    "tasks.strays",
    "tasks.batch_dispatch",
    "tasks.counts",
]


def make_celery(settings: Settings) -> Celery:
    if not settings.redis_url:
        raise RuntimeError("BMS_REDIS_URL is not set: workers need a Redis (bmsctl up starts one)")
    app = Celery("bms", broker=settings.redis_url, include=TASK_MODULES)
    transport = {"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS}
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        # Only bms.submit_batch keeps a result, for send_task callers; kept one day.
        result_backend=settings.redis_url,
        result_expires=24 * 3600,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_eta_task_limit=ETA_TASK_LIMIT,
        # Creates and the feeder first, the other queues in turn (worker.queues.CreatesFirst).
        broker_transport_options=transport | {"queue_order_strategy": "worker.queues:CreatesFirst"},
        result_backend_transport_options=transport,
        visibility_timeout=VISIBILITY_TIMEOUT_SECONDS,
        broker_connection_retry_on_startup=True,
        # kombu's Redis transport, keeping its Redis client per channel (worker.broker).
        broker_transport=transport_for(settings.redis_url),
        task_queues=declare_queues(),
        task_routes=TASK_ROUTES,
        task_default_queue=CONTROL_QUEUE,
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        worker_hijack_root_logger=False,
        beat_schedule={
            "reconcile": {
                "task": "bms.reconcile",
                "schedule": settings.reconcile_interval_seconds,
                "options": {"queue": CONTROL_QUEUE},
            },
            "webhook-scan": {
                "task": "bms.webhook_scan",
                "schedule": settings.webhook_scan_seconds,
                "options": {"queue": CONTROL_QUEUE},
            },
            "sweep-strays": {
                "task": "bms.sweep_strays",
                "schedule": settings.reconcile_interval_seconds,
                "options": {"queue": CONTROL_QUEUE},
            },
            "reconcile-batches": {
                "task": "bms.reconcile_batches",
                "schedule": settings.reconcile_interval_seconds,
                "options": {"queue": CONTROL_QUEUE},
            },
            "fold-counts": {
                "task": "bms.fold_counts",
                "schedule": settings.counts_fold_seconds,
                "options": {"queue": CONTROL_QUEUE},
            },
        },
        timezone="UTC",
    )
    return app


app = make_celery(get_settings())
