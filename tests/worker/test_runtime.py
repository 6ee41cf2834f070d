"""A worker's runtime: its database engine does not ping before each checkout, and a process
without cloud settings runs (webhooks) until something asks it for the cloud."""

from __future__ import annotations

import logging
import threading

import pytest

from worker.runtime import CloudNotConfigured, build_runtime
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


def test_a_process_without_cloud_settings_runs_and_names_what_is_missing_on_use():
    # The webhook workers are started without the cloud's keys: they never call the cloud.
    settings = Settings(
        database_url="sqlite://", redis_url="redis://127.0.0.1:1/0", endpoint="http://127.0.0.1:1"
    )

    runtime = build_runtime(settings)

    assert runtime.sessions is not None
    with pytest.raises(CloudNotConfigured, match="BMS_PROJECT_ID|credentials"):
        runtime.client.show_server("srv-1")
    runtime.sessions.kw["bind"].dispose()


def test_warm_up_leaves_a_database_and_a_redis_connection_pooled(tmp_path, redis_url):
    # A pool child opens them before its first task: the first creates of a batch do not
    # each wait for their child's connections (the quota's first window spread out by them).
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'warm.db'}", redis_url=redis_url)
    warmed = build_runtime(settings)
    engine = warmed.sessions.kw["bind"]
    redis_pool = warmed.limiter._redis.connection_pool

    warmed.warm_up()

    assert engine.pool.checkedin() == 1
    assert len(redis_pool._available_connections) == 1
    engine.dispose()


def test_the_process_start_does_not_wait_for_the_warm_up(monkeypatch, caplog):
    # Celery replaces a child that does not report alive within seconds: a database slow to
    # answer must not hold the start. The warm-up runs beside it and a failure is only logged.
    from worker import runtime as runtime_module

    started, release = threading.Event(), threading.Event()

    class SlowRuntime:
        def warm_up(self):
            started.set()
            release.wait(timeout=30)
            raise ConnectionError("database not answering")

    monkeypatch.setattr(runtime_module, "runtime", SlowRuntime)
    caplog.set_level(logging.INFO, logger="bms.worker.runtime")

    runtime_module._warm_up_in_background()  # returns while the warm-up still waits

    assert started.wait(timeout=30)
    assert "warm-up" not in caplog.text
    release.set()
    warmers = [t for t in threading.enumerate() if t.name == "bms-warm-up"]
    for warmer in warmers:
        warmer.join(timeout=30)
    assert warmers and "warm-up of this worker process failed" in caplog.text
