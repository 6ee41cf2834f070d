"""Persistence and validation: SQLAlchemy models, the state machine, sessions, request spec."""

# Loaded with the package whichever model module is imported first: every table module, so
# that ``Base.metadata`` is complete (Alembic, the drift test), and the listener that adds a
# webhook delivery to each final transition, so that none is made without it.
from models import counts as counts  # noqa: E402
from models import dead_letters as dead_letters  # noqa: E402
from models import outbox as outbox  # noqa: E402
from models import webhooks as webhooks  # noqa: E402
