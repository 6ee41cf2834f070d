"""``bmsctl submit | status | show | watch`` as a user runs them: subprocesses of the installed
``bmsctl`` against a real API (uvicorn on loopback) over a migrated SQLite database.

Rows are written straight into the database where a test needs a state no worker is here to
reach (a FAILED request, a batch named by an attacker before names were checked).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy.orm import Session, sessionmaker

from bmsctl.apiclient import ApiClient
from bmsctl.operate import teardown_progress
from bmsctl.watching import watch
from models.db import make_engine, make_session_factory, session_scope
from models.records import Batch, ServerRequest, record_note, transition
from models.states import RequestState, Step
from models.webhooks import WebhookTarget
from tests.factories import VALID_SERVER, add_request
from tests.fixtures.apiserver import serving_api

BMSCTL = Path(sys.executable).with_name("bmsctl")
S = RequestState
LONG_MESSAGE = "; ".join(["The flavor physical.s4.large is sold out in cn-north-4a"] * 3)


@dataclass
class Api:
    url: str
    sessions: sessionmaker[Session]


@pytest.fixture
def api(tmp_path, redis_url, migrated_templates) -> Iterator[Api]:
    """The REST API over a migrated SQLite database, served on a free loopback port."""
    database_url = f"sqlite:///{tmp_path / 'cli.db'}"
    migrated_templates.copy_into(database_url)
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    with serving_api(database_url, redis_url, sessions) as url:
        yield Api(url, sessions)
    engine.dispose()


def bmsctl(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BMS_")}
    environment = {k: v for k, v in environment.items() if k not in ("FORCE_COLOR", "COLUMNS")}
    return subprocess.run(
        [str(BMSCTL), *args],
        capture_output=True,
        text=True,
        env=environment | env,
        timeout=60,
        cwd=cwd,
    )


def failed_request(api: Api, batch_name: str = "rack-a") -> ServerRequest:
    with session_scope(api.sessions) as session:
        request = add_request(session, S.CREATING, name="db-primary")
        session.get(Batch, request.batch_id).name = batch_name
        request.attempt, request.failed_step = 3, Step.CREATE
        request.last_error_code, request.last_error_message = "BMS.3037", LONG_MESSAGE
        record_note(session, request, "attempt 1: BMS.3037")
        transition(session, request, S.FAILED, detail=f"create: BMS.3037 {LONG_MESSAGE}")
        return request


# -- status, watch, show --------------------------------------------------------------------


def test_status_of_a_batch_piped_shows_each_failure_on_one_plain_line(api):
    request = failed_request(api)

    result = bmsctl("status", str(request.batch_id), "--api", api.url)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    [row] = [line for line in lines if line.startswith("db-primary")]
    assert row.split("\t") == ["db-primary", "FAILED", "3", "", "create",
                               f"BMS.3037: {LONG_MESSAGE}"]  # fmt: skip
    assert len(row) > 80  # not wrapped
    assert not set("│┃━┏") & set(result.stdout)  # no table drawn into a pipe


def test_an_id_the_api_refuses_is_named_on_lines_of_their_own(api):
    # Before: "bmsctl status: HTTP 422:\x0a  batch_id: ..." (the newline escaped with the rest).
    result = bmsctl("status", "not-a-batch", "--api", api.url)

    assert result.returncode == 1
    first, second = result.stderr.splitlines()[:2]
    assert first == "bmsctl status: HTTP 422:"
    assert second.startswith("  batch_id: Input should be a valid UUID")


def test_status_on_a_terminal_shows_the_error_column(api):
    request = failed_request(api)

    result = bmsctl("status", str(request.batch_id), "--api", api.url, FORCE_COLOR="1",
                    COLUMNS="250")  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "error" in result.stdout and "BMS.3037: The flavor" in result.stdout


def test_watch_of_a_finished_batch_ends_with_the_failures(api):
    request = failed_request(api)

    result = bmsctl("watch", str(request.batch_id), "--api", api.url)

    assert result.returncode == 0, result.stderr
    assert "rack-a: 1/1  FAILED 1" in result.stdout
    assert f"BMS.3037: {LONG_MESSAGE}" in result.stdout


def test_show_prints_a_requests_error_and_timeline(api):
    request = failed_request(api)

    result = bmsctl("show", str(request.id), "--api", api.url)

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "state      FAILED  attempts 3" in out
    assert "failed at  create" in out
    assert "error      BMS.3037: The flavor" in out
    timeline = out.split("timeline\n", 1)[1].splitlines()
    assert [line.split("  ", 2)[2] for line in timeline] == [
        "CREATING",
        "CREATING  attempt 1: BMS.3037",
        f"CREATING -> FAILED  create: BMS.3037 {LONG_MESSAGE}",
    ]


def test_show_of_an_unknown_request_says_so(api):
    result = bmsctl("show", str(uuid.uuid4()), "--api", api.url)

    assert result.returncode == 1
    assert "not found" in result.stderr


HOSTILE = "[/bold]\x1b[2J\x1b]0;owned\x07[red]x"


@pytest.mark.parametrize(
    ("command", "terminal"),
    [
        ("status", False),
        ("status", True),
        ("status BATCH", False),
        ("status BATCH", True),
        ("watch BATCH", True),
        ("show REQUEST", False),
    ],
)
def test_markup_and_control_characters_in_names_are_printed_as_text(api, command, terminal):
    request = failed_request(api, batch_name=HOSTILE)
    with session_scope(api.sessions) as session:
        session.get(ServerRequest, request.id).last_error_message = "bad\x1b[31m\rname"
    words = command.replace("BATCH", str(request.batch_id)).replace("REQUEST", str(request.id))
    env = {"FORCE_COLOR": "1", "COLUMNS": "400"} if terminal else {}

    result = bmsctl(*words.split(), "--api", api.url, **env)

    assert result.returncode == 0, result.stderr
    out = result.stdout
    if command != "show REQUEST":
        assert "[/bold]\\x1b[2J\\x1b]0;owned\\x07[red]x" in out
    if command != "status":
        assert "bad\\x1b[31m\\x0dname" in out
    assert "\x1b[2J" not in out and "\x1b]0" not in out and "\x07" not in out and "\r" not in out
    if not terminal:
        assert "\x1b" not in out


# -- submit ---------------------------------------------------------------------------------


def one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr
    return result.stderr


def test_submit_of_a_missing_file_says_there_is_no_such_file(tmp_path):
    one_line_error(bmsctl("submit", str(tmp_path / "nope.yaml")), "nope.yaml", "no such file")


def test_submit_of_a_yaml_syntax_error_names_its_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nservers:\n  - name: [unclosed\n")

    one_line_error(bmsctl("submit", str(path)), "YAML syntax error at line 4")


def test_submit_of_a_json_syntax_error_names_its_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"name": "x",\n "servers": [}')

    one_line_error(bmsctl("submit", str(path)), "JSON syntax error at line 2")


def test_submit_of_a_file_that_is_not_utf8_says_so(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))

    one_line_error(bmsctl("submit", str(path)), "not UTF-8", "0xe9")


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_submit_of_deep_nesting_is_refused_in_one_line(tmp_path, suffix):
    path = tmp_path / f"deep{suffix}"
    path.write_text('{"name": "x", "defaults": ' + "[" * 5000 + "]" * 5000 + "}")

    one_line_error(bmsctl("submit", str(path)), "nested more than 32 levels")


def test_submit_refuses_an_alias_bomb_before_expanding_it(tmp_path):
    lines = ["name: bomb", "defaults:", '  a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 12):
        below = f"*a{level - 1}"
        lines.append(f"  a{level}: &a{level} [{', '.join([below] * 6)}]")
    lines += ["  user_data: *a11", "servers:", "  - name: web", "    user_data: aGk="]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")

    one_line_error(bmsctl("submit", str(path)), "expands to more than")


def batch_yaml(extra_defaults: str = "", server_lines: str = "") -> str:
    body = json.dumps(VALID_SERVER)
    defaults = f"{body[:-1]}{extra_defaults}}}"
    return f"name: dated\ndefaults: {defaults}\nservers:\n  - name: web\n{server_lines}"


def test_submit_sends_the_validated_batch_not_the_file(api, tmp_path):
    # A date in a default that every server overrides: valid, but not JSON as read.
    path = tmp_path / "dated.yaml"
    path.write_text(
        batch_yaml(', "user_data": 2024-01-01', "    user_data: aGk=\n"), encoding="utf-8"
    )

    result = bmsctl("submit", str(path), "--api", api.url)

    assert result.returncode == 0, result.stderr
    assert "1 request(s)" in result.stdout
    with session_scope(api.sessions) as session:
        [request] = session.query(ServerRequest).all()
        assert request.spec["create_body"]["user_data"] == "aGk="


def test_submit_carries_the_files_notify_with_its_secret(api, tmp_path):
    # The webhook target and its signing secret travel; the API stores them apart.
    path = tmp_path / "notified.yaml"
    notify = "notify:\n  url: https://hooks.example/bms\n  secret: sixteen-chars-or-more\n"
    path.write_text(batch_yaml("", "") + notify, encoding="utf-8")

    result = bmsctl("submit", str(path), "--api", api.url)

    assert result.returncode == 0, result.stderr
    with session_scope(api.sessions) as session:
        [target] = session.query(WebhookTarget).all()
        assert (target.url, target.secret) == ("https://hooks.example/bms", "sixteen-chars-or-more")


# -- teardown -------------------------------------------------------------------------------


def test_teardown_says_what_it_started_and_what_it_left(api):
    request = failed_request(api)  # FAILED at create: no server
    with session_scope(api.sessions) as session:
        active = add_request(session, S.ACTIVE, name="web")
        active.batch_id, active.position, active.server_id = request.batch_id, 1, "srv-9"

    result = bmsctl("teardown", str(request.batch_id), "--api", api.url)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"batch {request.batch_id}: tearing down 1 request(s)",
        f"  skipped {request.id}: has no server",
    ]
    with session_scope(api.sessions) as session:
        assert session.get(ServerRequest, active.id).state is S.TEARING_DOWN


def test_teardown_watch_ends_when_no_request_of_a_large_batch_is_tearing_down(api):
    # The watch reads one request per poll: counting the started ones in that page never
    # reached the total, and `teardown --watch` hung after every server was gone.
    with session_scope(api.sessions) as session:
        first = add_request(session, S.TORN_DOWN, name="a-1")
        second = add_request(session, S.TORN_DOWN, name="a-2")
        second.batch_id, second.position = first.batch_id, 1
    started = [str(first.id), str(second.id)]
    client = ApiClient(api.url)

    final = watch(client, str(first.batch_id), Console(file=io.StringIO()), timeout=10,
                  progress_of=teardown_progress(started))  # fmt: skip

    assert [r["state"] for r in final["requests"]] == ["TORN_DOWN", "TORN_DOWN"]
    halfway = {"counts": {"TEARING_DOWN": 1, "TORN_DOWN": 1}, "requests": []}
    assert teardown_progress(started)(halfway) == (1, 2)
