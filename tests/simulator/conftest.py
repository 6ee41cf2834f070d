"""Simulator tests use the shared fixtures (listed in ``pytest_plugins`` at the root later)."""

import pytest
import requests

from tests.fixtures.simulator import simulator, simulator_factory  # noqa: F401


@pytest.fixture
def http():
    """One requests session per test (the project bans module-level ``requests.get``)."""
    with requests.Session() as session:
        yield session
