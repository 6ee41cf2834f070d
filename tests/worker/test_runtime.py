"""A worker's runtime: its database engine does not ping before each checkout."""

from __future__ import annotations

from worker.runtime import build_runtime
from worker.settings import Settings


def test_worker_engines_do_without_pre_ping():
    settings = Settings(
        # Never connected to: an engine connects on first use only.
        database_url="postgresql+psycopg://bms@127.0.0.1:1/bms",
        redis_url="redis://127.0.0.1:1/0",
        endpoint="http://127.0.0.1:1",
        project_id="p",
        ak="ak",
        sk="sk",
    )

    engine = build_runtime(settings).sessions.kw["bind"]

    # A pre-ping is a round trip per transaction: it doubled a step's transactions.
    assert engine.pool._pre_ping is False
    engine.dispose()
