"""Beat task: fold the rows of ``batch_state_counts`` (``models.counts``) of every batch.

A read folds a batch's rows when they have piled up, but the first read after a bulk change
then pays for all of them (180,000 rows after one ``UPDATE`` of 90,000 states: 0.4-2 s). This
task folds them in the background, ``BMS_COUNTS_FOLD_CHUNK`` rows per transaction, so that no
transaction of it holds many rows or runs long; a run stops after :data:`MAX_CHUNKS_PER_RUN`
transactions and the next run goes on.
"""

from __future__ import annotations

import logging

from celery import shared_task

from models.counts import fold_piled
from worker.runtime import runtime

log = logging.getLogger("bms.tasks.counts")
#: Transactions one run makes at most (5,000 rows each by default: a million rows a run).
MAX_CHUNKS_PER_RUN = 200


@shared_task(name="bms.fold_counts", ignore_result=True, acks_late=True)
def fold_counts() -> int:
    """Fold every batch's counter rows into one per state; returns the rows folded."""
    current = runtime()
    folded = fold_piled(current.sessions, current.settings.counts_fold_chunk, MAX_CHUNKS_PER_RUN)
    if folded:
        log.info("folded %d counter row(s)", folded)
    return folded
