"""DSNs as shown (redact, display_dsn) and as a driver connects (connection_url)."""

from __future__ import annotations

import pytest

from offloader.config import Secret, SourceConfig, StateConfig, connection_url, redact


@pytest.mark.parametrize(
    "dsn, shown",
    [
        ("postgresql://offloader:hunter2@db:5432/state", "postgresql://offloader:***@db:5432/state"),
        ("http://reader:s3cr%40t@clickhouse:8123/k2?secure=0", "http://reader:***@clickhouse:8123/k2?secure=0"),
        ("https://:tok@ch.example/k2", "https://:***@ch.example/k2"),
        ("postgresql+psycopg2://u:p:q@h/db", "postgresql+psycopg2://u:***@h/db"),
    ],
)
def test_redact_replaces_the_password_and_keeps_the_rest(dsn: str, shown: str) -> None:
    """The password of a DSN, however encoded, becomes *** and user, host, port, path and query stay."""
    assert redact(dsn) == shown


@pytest.mark.parametrize(
    "dsn", ["postgresql://offloader@db/state", "http://clickhouse:8123/k2", "sqlite:////var/lib/state.db", "chdb:///data/ch"]
)
def test_redact_leaves_a_dsn_without_password_as_it_is(dsn: str) -> None:
    """A DSN that carries no password is shown unchanged."""
    assert redact(dsn) == dsn


def test_display_dsn_of_source_and_state_never_shows_the_password() -> None:
    """display_dsn is the redacted DSN, and the Secret held beside it stays hidden in the repr."""
    source = SourceConfig(dsn="http://reader:hunter2@clickhouse:8123/k2", password=Secret("hunter2"))
    state = StateConfig(dsn="postgresql://offloader:hunter2@db/state")
    assert source.display_dsn == "http://reader:***@clickhouse:8123/k2"
    assert state.display_dsn == "postgresql://offloader:***@db/state"
    assert "hunter2" not in repr(source.password) and "hunter2" not in str(source.password)


def test_connection_url_puts_the_password_in_quoted_and_picks_psycopg2() -> None:
    """The driver URL carries the password percent-encoded, PostgreSQL through psycopg2; SQLite is left alone."""
    url = connection_url("postgresql://off loader@db:5432/state", Secret("p@ss:w/rd"))
    assert url == "postgresql+psycopg2://off%20loader:p%40ss%3Aw%2Frd@db:5432/state"
    assert connection_url("postgresql://offloader@db/state", None) == "postgresql+psycopg2://offloader@db/state"
    assert connection_url("sqlite:///state.db", Secret("x")) == "sqlite:///state.db"
    assert redact(url) == "postgresql+psycopg2://off%20loader:***@db:5432/state"
