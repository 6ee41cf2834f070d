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


#: What a client command must not load before it runs: the worker's settings and app, the
#: database layer, the batch spec. Each took part of the ~2 s of CPU every command paid at start.
HEAVY_MODULES = ("sqlalchemy", "celery", "limits", "pydantic_settings", "models", "worker.settings")


def test_parsing_a_command_loads_no_worker_or_database_module():
    probe = (
        "import sys\n"
        "from bmsctl.cli import build_parser\n"
        "parser = build_parser()\n"
        "for argv in (['status'], ['show', 'r'], ['submit', 'b.yaml'], ['watch', 'b'],\n"
        "             ['cancel', 'b'], ['retry', 'b', '--request'], ['teardown', 'b'],\n"
        "             ['db', 'upgrade'], ['up'], ['demo']):\n"
        "    parser.parse_args(argv)\n"
        f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
