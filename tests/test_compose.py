"""docker-compose.yml parses, and what it runs exists in the code: commands, queues, settings."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bmsctl.cli import build_parser
from worker.queues import ALL_QUEUES
from worker.settings import Settings

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"


def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_compose_has_the_layout_of_the_design():
    names = set(services())
    assert {"postgres", "redis", "migrate", "api", "beat", "flower", "simulator"} <= names
    workers = {n for n in names if n.startswith("worker-")}
    queues = set()
    for name in workers:
        command = services()[name]["command"]
        queues |= set(command[command.index("--queues") + 1].split(","))
    assert queues == set(ALL_QUEUES)  # every queue has a worker service
    assert services()["simulator"]["profiles"] == ["sim"]
    assert "--appendonly" in services()["redis"]["command"]


def test_every_setting_named_exists():
    fields = {f"BMS_{name.upper()}" for name in Settings.model_fields}
    named = set(re.findall(r"\bBMS_[A-Z_]+", COMPOSE.read_text()))
    assert named - fields == set(), "variables in compose that no setting reads"


def test_every_command_exists():
    parser = build_parser()
    for name, service in services().items():
        command = service.get("command")
        if not command or "image" in service and "postgres" in service["image"]:
            continue
        if command[0] == "bmsctl":
            parser.parse_args(command[1:])  # exits on an unknown command
        elif command[0] == "celery":
            assert command[1:3] == ["-A", "worker.app"], name
        elif command[0] == "python":
            assert command[1] == "-m" and command[2] in ("api", "simulator"), name
            assert (COMPOSE.parent / command[2] / "__main__.py").exists()


def test_prometheus_scrapes_the_api_with_the_token_from_a_file():
    prometheus = services()["prometheus"]
    assert prometheus["profiles"] == ["metrics"]
    config = yaml.safe_load((COMPOSE.parent / "prometheus" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["api:8000"]}]
    token_file = job["authorization"]["credentials_file"]
    # The token reaches Prometheus through its environment and a file, never its config.
    assert token_file in " ".join(prometheus["entrypoint"])
    assert "BMS_API_TOKEN" in prometheus["environment"]


def test_webhooks_have_workers_of_their_own():
    command = services()["worker-webhooks"]["command"]
    assert command[command.index("--queues") + 1] == "bms.webhook"
