"""What git and the Docker build leave out: SQLite's side files, the venv, the stack's state."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def patterns(name: str) -> set[str]:
    lines = (ROOT / name).read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def test_git_ignores_sqlite_write_ahead_files():
    assert {"*.db", "*.db-wal", "*.db-shm"} <= patterns(".gitignore")


def test_the_image_leaves_out_the_venv_the_stack_state_and_databases():
    ignored = patterns(".dockerignore")
    assert {".venv/", "var/", "*.db"} <= ignored
    assert {"*.db-wal", "*.db-shm"} <= ignored
