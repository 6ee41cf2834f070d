"""Loaded into each benchmark worker with ``celery ... worker --include bench.worker_probe``.

Imported by the worker's main process before the prefork pool starts, so the counters are
inherited by every pool child. Production code is left as it is.

``BENCH_CPU_PROFILE=<folder>`` also profiles each pool child in CPU time (``cProfile`` with
``time.process_time``, from its first task to its shutdown) into ``<folder>/child-<pid>.pstats``.
CPU time, not samples: on a loaded machine a sampler counts a thread that is runnable but not
running (a socket read just answered) as busy. The profiler's own cost, two to three times the
run's CPU, weighs most on frames that make many small Python calls.
"""

from __future__ import annotations

import cProfile
import os
import time

from celery.signals import task_prerun, worker_process_shutdown

from bench import counters
from worker.settings import get_settings

counters.install(get_settings().redis_url)

_profile_folder = os.environ.get("BENCH_CPU_PROFILE")
_profile: cProfile.Profile | None = None


def _start_profile(**_kwargs) -> None:
    global _profile
    if _profile is None:
        _profile = cProfile.Profile(time.process_time)
        _profile.enable()


def _dump_profile(**_kwargs) -> None:
    if _profile is not None:
        _profile.disable()
        _profile.dump_stats(os.path.join(_profile_folder, f"child-{os.getpid()}.pstats"))


if _profile_folder:
    task_prerun.connect(_start_profile, weak=False)
    worker_process_shutdown.connect(_dump_profile, weak=False)
