"""Celery tasks of the chain (create, poll, attach, tag, finalize), dispatch, reconciler."""
