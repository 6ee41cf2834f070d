"""Root of the test suite: shared fixture plugins, and the Redis address of this run.

``BMS_REDIS_URL`` is fixed before any test module imports the Celery app (which reads the
settings once): a free loopback port, where the session's embedded Redis starts on first use.
"""

import os

from bmsctl.processes import free_port

if not os.environ.get("BMS_REDIS_URL"):
    os.environ["BMS_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    os.environ["BMS_TEST_START_REDIS"] = "1"

pytest_plugins = [
    "tests.fixtures.database",
    "tests.fixtures.receiver",
    "tests.fixtures.simulator",
    "tests.fixtures.stack",
    "tests.tasks.stepkit",
]
