"""A worker's runtime: its database engine does not ping before each checkout, and a process
without cloud settings runs (webhooks) until something asks it for the cloud."""

from __future__ import annotations

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
