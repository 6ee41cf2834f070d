"""Root of the test suite: loads the shared fixture plugins."""

pytest_plugins = ["tests.fixtures.database"]
