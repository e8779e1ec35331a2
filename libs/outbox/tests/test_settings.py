"""Settings from the environment: one default per field (the dataclass's), every field settable, bad values
named. Pure parsing: no infrastructure involved."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest

from outbox import ConsumerSettings, RelaySettings
from outbox.env_settings import SettingError


def test_unset_variables_leave_the_dataclass_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for field in dataclasses.fields(RelaySettings):
        monkeypatch.delenv(f"OUTBOX_RELAY_{field.name.upper()}", raising=False)
    monkeypatch.delenv("OUTBOX_NOTIFY_CHANNEL", raising=False)
    monkeypatch.delenv("OUTBOX_RETENTION_HOURS", raising=False)
    loaded, built = RelaySettings.from_env(), RelaySettings()
    assert loaded == built


def test_every_field_reads_its_variable_with_its_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_RELAY_BATCH_SIZE", "250")
    monkeypatch.setenv("OUTBOX_RELAY_ROW_BACKOFF_MAX_S", "7.5")  # never had a hand-written reader
    monkeypatch.setenv("OUTBOX_RELAY_BLOCK_ON_DEAD", "yes")
    monkeypatch.setenv("OUTBOX_NOTIFY_CHANNEL", "")  # empty: polling only
    monkeypatch.setenv("OUTBOX_RETENTION_HOURS", "36")
    monkeypatch.setenv("OUTBOX_CONSUMER_MAX_BATCH", "50")
    monkeypatch.setenv("OUTBOX_INBOX_RETENTION_HOURS", "1.5")
    relay, consumer = RelaySettings.from_env(), ConsumerSettings.from_env()
    assert (relay.batch_size, relay.row_backoff_max_s, relay.block_on_dead) == (250, 7.5, True)
    assert relay.notify_channel is None and relay.retention == timedelta(hours=36)
    assert consumer.max_batch == 50 and consumer.inbox_retention == timedelta(minutes=90)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OUTBOX_RELAY_BATCH_SIZE", "lots"),
        ("OUTBOX_RELAY_BLOCK_ON_DEAD", "maybe"),
        ("OUTBOX_RELAY_ACK_TIMEOUT_S", "soon"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingError, match=name):
        RelaySettings.from_env()
    assert issubclass(SettingError, ValueError)


def test_the_retention_settings_of_heads_versions_and_parked_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_HEADS_RETENTION_HOURS", "48")
    monkeypatch.setenv("OUTBOX_CONSUMER_VERSION_RETENTION_HOURS", "1000")
    monkeypatch.setenv("OUTBOX_CONSUMER_PARK_RETENTION_HOURS", "12")
    relay, consumer = RelaySettings.from_env(), ConsumerSettings.from_env()
    assert relay.heads_retention == timedelta(hours=48)
    assert consumer.version_retention == timedelta(hours=1000)
    assert consumer.park_retention == timedelta(hours=12)


def test_the_cli_takes_its_database_url_and_password_from_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from outbox.ops.cli import _database_url

    (tmp_path / "url").write_text("postgresql://auth_app@db:5432/auth\n")
    (tmp_path / "password").write_text("s3cret\n")
    monkeypatch.setenv("OUTBOX_DATABASE_URL_FILE", str(tmp_path / "url"))
    monkeypatch.setenv("OUTBOX_DATABASE_PASSWORD_FILE", str(tmp_path / "password"))
    assert _database_url(None) == "postgresql+psycopg://auth_app:s3cret@db:5432/auth"
    assert _database_url("postgresql://other@db/x") == "postgresql+psycopg://other:s3cret@db/x"
    monkeypatch.setenv("OUTBOX_DATABASE_PASSWORD", "again")
    with pytest.raises(SettingError, match="OUTBOX_DATABASE_PASSWORD and OUTBOX_DATABASE_PASSWORD_FILE"):
        _database_url(None)
