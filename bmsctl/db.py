"""``bmsctl db upgrade|downgrade``: apply the schema migrations to the settings' database."""

from __future__ import annotations

from models import migrate
from worker.settings import get_settings


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
    settings = get_settings()
    migrate.upgrade(settings.database_url, args.revision)
    print(f"database {settings.redacted_database_url} at {args.revision}")
    return 0


def downgrade(args) -> int:
    settings = get_settings()
    migrate.downgrade(settings.database_url, args.revision)
    print(f"database {settings.redacted_database_url} at {args.revision}")
    return 0
