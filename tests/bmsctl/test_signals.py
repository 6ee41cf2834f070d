"""``demo``'s Ctrl-C: a stop signal raises ``KeyboardInterrupt`` in the main thread, even when it
arrives while a finalizer runs (where Python drops the exception)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from bmsctl.up import raising_on_signals


class SignalledWhileCollected:
    """Sends ``signum`` to this process from its ``__del__``: the handler runs there."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __del__(self) -> None:
        os.kill(os.getpid(), self.signum)
        time.sleep(0.01)  # the handler runs here, inside __del__, and its exception is dropped


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_dropped_by_a_finalizer_is_raised_again(signum):
    before = signal.getsignal(signum)
    with pytest.raises(KeyboardInterrupt), raising_on_signals():
        SignalledWhileCollected(signum)  # collected at once: "Exception ignored in __del__"
        time.sleep(10)  # before: the block ran to its end, as the demo did to its last server

    assert signal.getsignal(signum) is before  # and the handler before it is back


def test_a_block_left_without_a_signal_raises_nothing():
    with raising_on_signals():
        time.sleep(2 * raising_on_signals.REPEAT_SECONDS)
