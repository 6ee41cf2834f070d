"""Loaded into each benchmark worker with ``celery ... worker --include bench.worker_probe``.

Imported by the worker's main process before the prefork pool starts, so the counters are
inherited by every pool child. Production code is left as it is.
"""

from __future__ import annotations

from bench import counters
from worker.settings import get_settings

counters.install(get_settings().redis_url)
