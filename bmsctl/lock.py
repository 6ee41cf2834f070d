"""One stack per directory: ``up.lock``, held with ``flock`` and holding the owner's pid.

The kernel releases the lock when its owner dies, however it dies, so a stale file never
blocks the next ``bmsctl up``; a second ``up`` while the first runs refuses before it touches
anything of the first (``stack.json``, logs, the simulator's state).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_FILE = "up.lock"


class StackLocked(RuntimeError):
    """Another process runs a stack in this directory; the message names its pid."""


class StackLock:
    """``acquire()`` or raise :class:`StackLocked`; ``release()`` when the stack has stopped."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StackLocked(
                f"a stack already runs in {self.path.parent} (pid {owner}); "
                "stop it first, or use another --dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        # The pid goes first, so that a reader never sees a file naming a dead owner as live.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None
