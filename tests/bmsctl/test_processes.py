"""Child processes: they die with their parent, and a readiness check knows who holds a port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bmsctl.processes import describe_exit, listens_on, port_is_free

PARENT = """
import sys
from pathlib import Path
from bmsctl.processes import ManagedProcess
child = ManagedProcess("sleeper", ["sleep", "300"], {}, Path(sys.argv[1]) / "sleeper.log")
print(child.pid, flush=True)
sys.stdin.read()
"""


def test_a_child_dies_with_its_parent_even_when_the_parent_is_killed(tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    child_pid = int(parent.stdout.readline())
    assert Path(f"/proc/{child_pid}").exists()

    parent.send_signal(signal.SIGKILL)
    parent.wait(10)

    deadline = time.monotonic() + 10
    while _running(child_pid):
        assert time.monotonic() < deadline, f"child {child_pid} outlived its parent"
        time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its reaping is left


def test_listens_on_names_the_process_that_holds_the_port():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert listens_on(os.getpid(), port)
        assert not port_is_free("127.0.0.1", port)
        other = subprocess.Popen(["sleep", "30"])
        try:
            assert not listens_on(other.pid, port)
        finally:
            other.kill()
            other.wait()
    assert port_is_free("127.0.0.1", port)


def test_describe_exit_says_signal_or_code():
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(-15) == "killed by SIGTERM"
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(0) == "exited with code 0"
