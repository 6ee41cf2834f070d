"""Crash hooks that make a dangerous moment reproducible in tests; inert unless configured.

``BMS_TEST_KILL_AFTER_CREATE_POST=/path/token``: the first worker process that completes a
create POST while the token file exists removes it and kills itself with SIGKILL, after the
cloud accepted the create and before the job id is stored: the case the create marker is for.
"""

from __future__ import annotations

import os
import signal

KILL_AFTER_CREATE_POST = "BMS_TEST_KILL_AFTER_CREATE_POST"


def after_create_post() -> None:
    token = os.environ.get(KILL_AFTER_CREATE_POST)
    if not token:
        return
    try:
        os.remove(token)  # atomic: exactly one process wins the token
    except FileNotFoundError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
