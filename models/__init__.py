"""Persistence and validation: SQLAlchemy models, the state machine, sessions, request spec."""
