"""Exception types of the worker package that light callers catch without loading it.

``bmsctl`` catches ``SettingsError`` around every command; importing it from here instead of
``worker.settings`` keeps pydantic-settings, ``limits`` and SQLAlchemy out of a client command's
start-up.
"""

from __future__ import annotations


class SettingsError(ValueError):
    """A ``BMS_*`` variable is malformed; the message names it."""
