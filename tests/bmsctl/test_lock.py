"""``up.lock``: one stack per directory, released however its owner ends."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bmsctl.lock import StackLock, StackLocked

HOLD = """
import sys, time
from pathlib import Path
from bmsctl.lock import StackLock
StackLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_holder_is_refused_with_the_owners_pid(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            StackLocked, match=f"a stack already runs in {tmp_path} \\(pid {holder.pid}\\)"
        ):
            StackLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    # Its owner killed: the kernel released the lock, the stale file blocks nobody.
    lock = StackLock(tmp_path)
    lock.acquire()
    assert (tmp_path / "up.lock").read_text() == f"{os.getpid()}\n"
    lock.release()
    assert (tmp_path / "up.lock").read_text() == ""
