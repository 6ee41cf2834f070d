"""Fixtures of the step unit tests."""

from tests.tasks.stubs import stub_cloud  # noqa: F401  (a fixture)
