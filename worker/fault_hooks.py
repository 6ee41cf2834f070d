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


KILL_SUBMITTING = "BMS_TEST_KILL_SUBMITTING"
KILL_AFTER_SUBMIT = "BMS_TEST_KILL_AFTER_SUBMIT"


def before_submit(batch: object) -> None:
    """``BMS_TEST_KILL_SUBMITTING=NAME``: every worker process that starts ``bms.submit_batch``
    for a batch named NAME kills itself with SIGKILL (a message no worker survives)."""
    name = os.environ.get(KILL_SUBMITTING)
    if name and isinstance(batch, dict) and batch.get("name") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def after_submit() -> None:
    """``BMS_TEST_KILL_AFTER_SUBMIT=/path/token``: the first worker process that has stored a
    batch sent through the broker, while the token file exists, removes it and kills itself
    before the message is acked (its redelivery follows)."""
    token = os.environ.get(KILL_AFTER_SUBMIT)
    if not token:
        return
    try:
        os.remove(token)
    except FileNotFoundError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
