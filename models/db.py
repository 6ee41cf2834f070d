"""Engine and session helpers: one engine per process, short transactions via ``session_scope``.

Row locks must be real on every backend, because steps, cancel and the reconciler change one
request concurrently. PostgreSQL gives them with ``SELECT ... FOR UPDATE``. The pysqlite driver
gives none by default: it opens a transaction only at the first write and ignores ``FOR
UPDATE``, so a read-then-write could interleave with another process's. SQLAlchemy's documented
recipe fixes that: the driver's own transaction handling is turned off and every transaction
starts with ``BEGIN IMMEDIATE``, which takes SQLite's write lock at once; a second writer waits
(busy timeout) instead of reading a row that is about to change.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

#: Seconds a SQLite connection waits for another's write lock before giving up.
SQLITE_BUSY_TIMEOUT_SECONDS = 60


def make_engine(url: str, *, pre_ping: bool = True, **kwargs) -> Engine:
    """Create an engine for ``url`` with the settings this project needs on each backend.

    :param pre_ping: test a pooled connection before each use (server backends only). Long-lived
        processes facing a database that may restart want it; it costs one round trip per
        transaction.
    """
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", pre_ping)
    return create_engine(url, **kwargs)


def _sqlite_connect(dbapi_connection, _record) -> None:
    # The driver must not issue BEGIN itself (it would do so lazily, before the first write);
    # _sqlite_begin issues it, at the start of every transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets readers (API, watch) run while a worker writes; foreign keys are off by default.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
    cursor.close()


def _sqlite_begin(connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: values read in one short transaction stay usable after it.
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit on success, roll back on error, always close."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
