"""The intake HTTP API (FastAPI): submit batches, read status, cancel and retry."""
