"""Crash hooks that make a dangerous moment reproducible in tests; inert unless configured.

``BMS_TEST_KILL_AFTER_CREATE_POST=/path/token``: the first worker process that completes a
create POST while the token file exists removes it and kills itself with SIGKILL, after the
cloud accepted the create and before the job id is stored: the case the create marker is for.

``BMS_TEST_KILL_AFTER_DISPATCH_CHUNK=/path/token``: likewise, the first process that has sent a
chunk of a batch's chains and moved the batch's watermark kills itself before it sends the
task for the next chunk: the case the batch reconciler is for.
"""

from __future__ import annotations

import os
import signal

KILL_AFTER_CREATE_POST = "BMS_TEST_KILL_AFTER_CREATE_POST"
KILL_AFTER_DISPATCH_CHUNK = "BMS_TEST_KILL_AFTER_DISPATCH_CHUNK"


def after_create_post() -> None:
    _kill_if_armed(KILL_AFTER_CREATE_POST)


def after_dispatch_chunk() -> None:
    _kill_if_armed(KILL_AFTER_DISPATCH_CHUNK)


def _kill_if_armed(variable: str) -> None:
    token = os.environ.get(variable)
    if not token:
        return
    try:
        os.remove(token)  # atomic: exactly one process wins the token
    except FileNotFoundError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
