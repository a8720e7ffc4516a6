from __future__ import annotations

import pytest

from shared.settings import SettingsError, load_settings


def test_defaults_use_embedded_services() -> None:
    settings = load_settings({})

    assert settings.db_driver == "sqlite"
    assert settings.broker_url == "memory://"
    assert settings.port == 8080


def test_standard_variables_are_read_without_prefix() -> None:
    settings = load_settings({"PORT": "9000", "WEB_CONCURRENCY": "4"})

    assert settings.port == 9000
    assert settings.web_concurrency == 4


def test_turso_is_refused_with_migration_advice() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"FOXCTL_DB_DRIVER": "turso"})

    message = str(caught.value)
    assert "FOXCTL_DB_DRIVER='turso'" in message
    assert "legacy" in message
    assert "FOXCTL_DB_DRIVER=postgres" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("FOXCTL_DB_DRIVER", "mysql", "'sqlite' or 'postgres'"),
        ("PORT", "eighty", "valid integer"),
        ("FOXCTL_POSTGRES_MAX_CONNS", "0", "greater than or equal to 1"),
        ("FOXCTL_BROKER_URL", "kafka://x", "redis://"),
        ("FOXCTL_AUTH", "maybe", "'on' or 'off'"),
        ("FOXCTL_CHAT_UPDATE_RETENTION", "12h", "at least 24h"),
        ("FOXCTL_CHAT_UPDATE_RETENTION", "soon", "invalid duration"),
    ],
)
def test_invalid_value_names_variable_and_accepted_values(
    variable: str, value: str, expected: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({variable: value})

    assert f"invalid {variable}={value!r}" in str(caught.value)
    assert expected in str(caught.value)


def test_postgres_without_dsn_says_what_is_missing() -> None:
    settings = load_settings({"FOXCTL_DB_DRIVER": "postgres"})

    with pytest.raises(SettingsError, match="FOXCTL_POSTGRES_DSN is missing"):
        _ = settings.database_url


def test_postgres_dsn_uses_psycopg_driver() -> None:
    settings = load_settings(
        {"FOXCTL_DB_DRIVER": "postgres", "FOXCTL_POSTGRES_DSN": "postgresql://u:pw@db/fox"}
    )

    assert settings.database_url == "postgresql+psycopg://u:pw@db/fox"
    assert "pw" not in repr(settings)


def test_legacy_cas_keys_warn(caplog: pytest.LogCaptureFixture) -> None:
    load_settings({"FOXCTL_CAS_BACKEND": "s3"})

    assert "FOXCTL_CAS_BACKEND is deprecated; use FOXCTL_CAS_DRIVER" in caplog.text


def test_invalid_broker_url_hides_password() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"FOXCTL_BROKER_URL": "http://user:hunter2@cache:6379/0"})

    assert "hunter2" not in str(caught.value)
    assert "user:***@cache" in str(caught.value)


def test_every_setting_is_documented() -> None:
    from pathlib import Path

    from shared.settings import Settings

    text = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    missing = [
        f"FOXCTL_{name.upper()}"
        for name, info in Settings.model_fields.items()
        if info.validation_alias is None and f"`FOXCTL_{name.upper()}`" not in text
    ]

    assert missing == []
