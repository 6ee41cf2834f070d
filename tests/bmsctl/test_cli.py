"""The command line as a user runs it: a subprocess of the installed ``bmsctl``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, inspect

BMSCTL = Path(sys.executable).with_name("bmsctl")


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BMS_")} | env
    return subprocess.run(
        [str(BMSCTL), *args], capture_output=True, text=True, env=environment, timeout=120
    )


def test_help_lists_the_commands():
    result = _run("--help")
    assert result.returncode == 0
    for command in ("db", "sim"):
        assert command in result.stdout


def test_db_upgrade_creates_the_schema(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    result = _run("db", "upgrade", BMS_DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    assert "at head" in result.stdout
    engine = create_engine(url)
    assert "server_requests" in inspect(engine).get_table_names()
    engine.dispose()


def test_malformed_setting_fails_naming_the_variable(tmp_path):
    result = _run("db", "upgrade", BMS_MAX_ATTEMPTS="many")
    assert result.returncode == 2
    assert "BMS_MAX_ATTEMPTS" in result.stderr
