"""How long the dashboard takes to answer for a batch of 10,000 requests, and ``/metrics``.

A migrated database (a SQLite file, or a schema of its own on the PostgreSQL server of
``--database-url``, dropped afterwards) gets one batch of ``--requests``
requests, 80% of them settled with their final event, written in bulk; then each view is asked
for ``--rounds`` times through the ASGI app in this process (no network), and the median and
worst times are printed. Redis is not needed: the quota panel and the Redis metrics report it
missing, which is what is left out of the figures.

    .venv/bin/python -m bench.bench_dashboard --requests 10000 --rounds 20
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager
from datetime import timedelta

os.environ.setdefault("BMS_REDIS_URL", "redis://127.0.0.1:1/0")  # never reached

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from api.app import create_app  # noqa: E402
from models import migrate  # noqa: E402
from models.base import utcnow  # noqa: E402
from models.db import make_engine, make_session_factory  # noqa: E402
from models.records import Batch, BatchSource, Event, ServerRequest  # noqa: E402
from models.states import RequestState  # noqa: E402
from tests.fixtures.database import postgres_schema  # noqa: E402
from worker.settings import Settings  # noqa: E402

STATES = [RequestState.ACTIVE] * 6 + [RequestState.FAILED, RequestState.BUILDING] * 2


def fill(sessions, size: int) -> uuid.UUID:
    batch_id, start = uuid.uuid4(), utcnow() - timedelta(hours=1)
    requests, events = [], []
    for position in range(size):
        state, request_id = STATES[position % len(STATES)], uuid.uuid4()
        failed = state is RequestState.FAILED
        requests.append(
            {
                "id": request_id,
                "batch_id": batch_id,
                "position": position,
                "name": f"bench-{position:05d}",
                "spec": {"name": f"bench-{position:05d}", "flavorRef": "physical.o2.medium"},
                "state": state,
                "attempt": 1,
                "fence": 0,
                "last_error_code": f"BMS.{position % 5:04d}" if failed else None,
                "last_error_message": "insufficient capacity" if failed else None,
                "created_at": start,
                "updated_at": start,
            }
        )
        if state is not RequestState.BUILDING:
            at = start + timedelta(seconds=position * 0.3)
            events.append(
                {"request_id": request_id, "from_state": "TAGGING", "to_state": state, "at": at}
            )
    with sessions() as session:
        session.add(Batch(id=batch_id, name="bench", source=BatchSource.API, created_at=start))
        session.flush()
        session.execute(insert(ServerRequest), requests)
        session.execute(insert(Event), events)
        session.commit()
    return batch_id


def timed(client: TestClient, path: str, rounds: int) -> tuple[float, float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        answer = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, (path, answer.status_code)
    return statistics.median(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory, ExitStack() as cleanup:
        url = f"sqlite:///{directory}/bench.db"
        if args.database_url:
            # A schema of its own on that server, dropped at the end.
            url = cleanup.enter_context(contextmanager(postgres_schema)(args.database_url))
        migrate.upgrade(url)
        engine = make_engine(url)
        sessions = make_session_factory(engine)
        started = time.perf_counter()
        batch_id = fill(sessions, args.requests)
        print(f"filled {args.requests} requests in {time.perf_counter() - started:.1f}s")
        settings = Settings(database_url=url, redis_url=None, api_token=None)
        client = TestClient(create_app(settings, sessions))
        views = {
            "batch page (/ui/batches/{id})": f"/ui/batches/{batch_id}",
            "live fragment (every 2 s)": f"/ui/batches/{batch_id}/live",
            "requests, last page": f"/ui/batches/{batch_id}/requests?offset=9900",
            "batches list (/ui)": "/ui",
            "/metrics (SQL part)": "/metrics",
        }
        print(f"| view | median ms | worst ms | ({args.rounds} rounds, {url.split(':')[0]})")
        for name, path in views.items():
            median, worst = timed(client, path, args.rounds)
            print(f"| {name} | {median:.1f} | {worst:.1f} |")
        engine.dispose()
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}")


if __name__ == "__main__":
    main()
