"""``python -m simulator`` / ``bmsctl sim``: options, banner, and a clean stop on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from bmsctl.cli import build_parser
from simulator.cli import config_from_args


def test_bmsctl_sim_options_build_the_config():
    args = build_parser().parse_args(
        [
            "sim",
            "--port",
            "0",
            "--job-seconds",
            "1-3",
            "--quota",
            "create=20/second",
            "--create-fail-share",
            "0.5",
            "--latency-ms",
            "5",
            "--seed",
            "9",
            "--credential",
            "AK1:SK1",
            "--credential",
            "AK2:SK2",
            "--no-auth",
        ]
    )

    config = config_from_args(args)

    assert config.job_seconds == (1.0, 3.0)
    assert config.quotas == "create=20/second"
    assert (config.faults.create_fail_share, config.faults.latency_ms) == (0.5, 5)
    assert config.faults.seed == 9
    assert config.credentials == [("AK1", "SK1"), ("AK2", "SK2")]
    assert config.auth is False


def test_count_failures_and_account_limits_are_options():
    args = build_parser().parse_args(
        ["sim", "--count-fail-share", "0.25", "--max-instances", "40", "--max-ram-mb", "9000"]
    )

    config = config_from_args(args)

    assert config.faults.count_fail_share == 0.25
    assert config.limits == {"maxTotalInstances": 40, "maxTotalRAMSize": 9000}


@pytest.mark.parametrize(
    "option",
    [
        ["--job-seconds", "3-1"],
        ["--quota", "create=lots"],
        ["--drop-share", "2"],
        ["--count-fail-share", "-0.1"],
        ["--max-cores", "many"],
    ],
)
def test_bad_options_are_refused(option):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sim", *option])


def test_the_module_serves_prints_its_banner_and_stops_on_sigterm(http):
    process = subprocess.Popen(
        [sys.executable, "-m", "simulator", "--port", "0", "--job-seconds", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        first_line = process.stdout.readline()
        base_url = first_line.rsplit(" ", 1)[-1].strip()
        banner = [process.stdout.readline() for _ in range(7)]

        config = http.get(f"{base_url}/_sim/config", timeout=10).json()

        assert first_line.startswith("BMS simulator serving at http://127.0.0.1:")
        assert "  AK/SK        BMSSIMDEMOAK0000000 " in "".join(banner)
        assert config["job_seconds"] == [0.0, 0.0]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()
