"""``bmsctl db upgrade|downgrade``: apply the schema migrations to the settings' database."""

from __future__ import annotations

# Imported where used (``_migrate``): ``bmsctl`` registers this command for every command it
# runs, and a client command must not pay for Alembic, SQLAlchemy or the settings.


def register(subparsers) -> None:
    parser = subparsers.add_parser("db", help="database schema migrations")
    actions = parser.add_subparsers(dest="db_action", metavar="ACTION", required=True)
    up = actions.add_parser("upgrade", help="migrate to a revision (default: head)")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=upgrade)
    down = actions.add_parser("downgrade", help="migrate down to a revision (e.g. base)")
    down.add_argument("revision")
    down.set_defaults(func=downgrade)


def upgrade(args) -> int:
    return _migrate("upgrade", args.revision)


def downgrade(args) -> int:
    return _migrate("downgrade", args.revision)


def _migrate(direction: str, revision: str) -> int:
    from models import migrate
    from worker.settings import get_settings

    settings = get_settings()
    getattr(migrate, direction)(settings.database_url, revision)
    print(f"database {settings.redacted_database_url} at {revision}")
    return 0
