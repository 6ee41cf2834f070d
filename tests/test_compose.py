"""docker-compose.yml parses, and what it runs exists in the code: commands, queues, settings;
no secret is written in it, each service gets only what it uses, and the README's commands set
every variable it requires. Where a Docker engine with compose is available, ``docker compose
config`` validates it and the stack runs for real; elsewhere those tests are skipped, saying why.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from bmsctl.cli import build_parser
from worker.queues import ALL_QUEUES
from worker.settings import Settings

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"
EXAMPLE = COMPOSE.parent / "examples" / "batch.yaml"


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
            assert command[1] == "-m" and command[2] in ("api", "simulator", "worker.flower"), name
            module = COMPOSE.parent / command[2].replace(".", "/")
            assert (module / "__main__.py").exists() or module.with_suffix(".py").exists()


def required_variables() -> set[str]:
    """Variables compose refuses to run without (``${NAME:?message}``)."""
    return set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))


def test_no_password_is_written_in_the_file():
    postgres = services()["postgres"]["environment"]
    assert postgres["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    for name, service in services().items():
        url = (service.get("environment") or {}).get("BMS_DATABASE_URL")
        if url:
            assert "${POSTGRES_PASSWORD:?" in url, name
    assert {"POSTGRES_PASSWORD", "BMS_API_TOKEN", "BMS_FLOWER_BASIC_AUTH"} <= required_variables()


def test_the_cloud_endpoint_has_no_default():
    """A stack pointed at no cloud must not start; the sim profile's value is in the message."""
    assert "BMS_ENDPOINT" in required_variables()
    for name in ("worker-create", "worker-poll", "worker-volumes", "worker-control"):
        endpoint = services()[name]["environment"]["BMS_ENDPOINT"]
        assert endpoint.startswith("${BMS_ENDPOINT:?") and "http://simulator:8500" in endpoint


def test_every_long_running_service_comes_back_when_its_process_dies():
    for name, service in services().items():
        if name == "migrate":
            continue  # one-shot
        assert service.get("restart") in ("unless-stopped", "always"), name


def test_each_service_gets_only_the_secrets_it_uses():
    cloud = {"BMS_AK", "BMS_SK", "BMS_ENDPOINT"}

    def env(name: str) -> set[str]:
        return set(services()[name].get("environment") or {})

    for name in ("beat", "flower"):
        assert env(name) & (cloud | {"BMS_DATABASE_URL", "BMS_API_TOKEN"}) == set(), name
    assert env("api") & cloud == set()
    assert env("migrate") == {"BMS_DATABASE_URL"}
    assert env("redis") == env("simulator") == set()


def readme_compose_commands() -> list[tuple[str, set[str]]]:
    """Each ``docker compose ... up`` of the README, with the variables set for it (exported
    earlier in its code block, or assigned on the command itself)."""
    readme = (COMPOSE.parent / "README.md").read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", readme, flags=re.S):
        exported: set[str] = set()
        for line in block.replace("\\\n", " ").splitlines():
            code = line.split("#", 1)[0]
            assigned = set(re.findall(r"(?:^|\s)([A-Z_][A-Z0-9_]*)=", code))
            if code.strip().startswith("export "):
                exported |= assigned
            elif "docker compose" in code and " up" in code:
                commands.append((code.strip(), exported | assigned))
    return commands


def test_the_readme_compose_commands_set_what_compose_requires():
    commands = readme_compose_commands()
    assert commands, "the README shows how to run compose"
    for command, assigned in commands:
        missing = required_variables() - assigned
        assert missing == set(), f"{command!r} leaves {sorted(missing)} unset"
        if "--profile sim" in command:
            assert "BMS_ENDPOINT=http://simulator:8500" in command, command


# -- with Docker ---------------------------------------------------------------------------

#: Values for every required variable, for ``config`` and the real run.
COMPOSE_ENV = {
    "POSTGRES_PASSWORD": "composetest1",
    "BMS_API_TOKEN": "compose-test-token",
    "BMS_FLOWER_BASIC_AUTH": "admin:compose-test",
    "BMS_ENDPOINT": "http://simulator:8500",
}


def docker_compose(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**{k: v for k, v in os.environ.items() if k not in COMPOSE_ENV}, **(env or {})},
    )


def need_compose_plugin() -> None:
    if shutil.which("docker") is None:
        pytest.skip("no docker command on this machine: compose not validated")
    try:
        version = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        pytest.skip("docker compose version did not answer")
    if version.returncode != 0:
        pytest.skip(f"no docker compose plugin: {version.stderr.strip()[:200]}")


def need_docker_engine() -> None:
    need_compose_plugin()
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        pytest.skip(f"no Docker engine answers: {info.stderr.strip()[:200]}")


def test_compose_config_validates_and_refuses_missing_secrets():
    need_compose_plugin()
    valid = docker_compose("--profile", "sim", "config", "--quiet", env=COMPOSE_ENV)
    assert valid.returncode == 0, valid.stderr
    for name in COMPOSE_ENV:
        missing = docker_compose("config", "--quiet", env=COMPOSE_ENV | {name: ""})
        assert missing.returncode != 0, name
        assert name in missing.stderr, missing.stderr


@pytest.mark.e2e
@pytest.mark.timeout(1500)
def test_compose_runs_the_example_batch_for_real_and_a_dead_worker_comes_back():
    need_docker_engine()
    project = f"bmstest{os.getpid()}"
    env = COMPOSE_ENV | {"COMPOSE_PROJECT_NAME": project}
    try:
        up = docker_compose("--profile", "sim", "up", "-d", "--build", "--wait", env=env,
                            timeout=1200)  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {COMPOSE_ENV['BMS_API_TOKEN']}"
        body = yaml.safe_load(EXAMPLE.read_text())
        submitted = http.post("http://127.0.0.1:8000/v1/batches", json=body, timeout=30)
        assert submitted.status_code == 202, submitted.text
        batch = submitted.json()["batch_id"]
        deadline = time.monotonic() + 300
        while True:
            view = http.get(f"http://127.0.0.1:8000/v1/batches/{batch}", timeout=30).json()
            if view["counts"].get("ACTIVE") == len(body["servers"]):
                break
            assert time.monotonic() < deadline, view
            time.sleep(2)

        # The worker's main process ends (as when Redis restarts under it): it comes back.
        stop = "import os, signal; os.kill(1, signal.SIGTERM)"
        docker_compose("exec", "-T", "worker-poll", "python", "-c", stop, env=env)
        deadline = time.monotonic() + 120
        while True:
            ids = docker_compose("ps", "-q", "worker-poll", env=env).stdout.split()
            inspect = subprocess.run(
                ["docker", "inspect", "-f", "{{.RestartCount}} {{.State.Running}}", *ids],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            restarts, running = inspect.stdout.split()[:2]
            if int(restarts) >= 1 and running == "true":
                break
            assert time.monotonic() < deadline, inspect.stdout + inspect.stderr
            time.sleep(2)
    finally:
        docker_compose("--profile", "sim", "down", "-v", env=env, timeout=300)


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
