"""Simulator tests use the shared fixtures (listed in ``pytest_plugins`` at the root later)."""

from tests.fixtures.simulator import simulator, simulator_factory  # noqa: F401
