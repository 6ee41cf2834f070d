"""Settings: defaults, the rate-limit format, and errors that name the variable."""

from __future__ import annotations

import pytest

from worker.settings import (
    API_CLASSES,
    DEFAULT_RATE_LIMITS,
    SettingsError,
    load_settings,
    parse_rate_limits,
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("BMS_"):
            monkeypatch.delenv(name)


def test_defaults_are_the_seed_quotas():
    settings = load_settings()
    assert settings.database_url == "sqlite:///./bms.db"
    assert settings.redis_url is None
    assert settings.max_attempts == 3
    assert settings.rate_limits == DEFAULT_RATE_LIMITS
    limits = settings.rate_limit_items
    assert set(limits) == set(API_CLASSES)
    assert (limits["create"].amount, limits["create"].get_expiry()) == (50, 60)
    assert (limits["job"].amount, limits["job"].get_expiry()) == (2000, 60)


def test_partial_rate_limits_keep_the_other_defaults():
    limits = parse_rate_limits("create=20/second")
    assert (limits["create"].amount, limits["create"].get_expiry()) == (20, 1)
    assert limits["show"].amount == 1000


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BMS_RATE_LIMITS", "create=fifty/minute"),
        ("BMS_RATE_LIMITS", "reboot=5/minute"),
        ("BMS_RATE_LIMITS", "create50/minute"),
        ("BMS_MAX_ATTEMPTS", "three"),
        ("BMS_MAX_ATTEMPTS", "0"),
    ],
)
def test_malformed_value_names_its_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()


def test_half_a_credential_pair_is_refused(monkeypatch):
    monkeypatch.setenv("BMS_AK", "AK")
    with pytest.raises(SettingsError, match="BMS_AK and BMS_SK"):
        load_settings()


def test_secrets_never_print(monkeypatch):
    monkeypatch.setenv("BMS_AK", "AKVISIBLE")
    monkeypatch.setenv("BMS_SK", "SK-SECRET-VALUE")
    monkeypatch.setenv("BMS_DATABASE_URL", "postgresql://bms:db-password@db/bms")
    settings = load_settings()
    assert "SK-SECRET-VALUE" not in repr(settings)
    assert "SK-SECRET-VALUE" not in str(settings.model_dump())
    assert "db-password" not in settings.redacted_database_url
    assert settings.sk.get_secret_value() == "SK-SECRET-VALUE"
