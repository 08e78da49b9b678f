"""Config validation: bad config fails at start with one precise line per problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, dedent, run_cli

from offloader.config import ConfigError, parse_duration, parse_size
from offloader.config_loader import load_config

GOOD = dedent(
    """
    [source]
    dsn = "http://offloader@clickhouse:8123/k2"
    safety_lag = "5m"
    max_window = "1h"
    [catalog]
    name = "cold"
    type = "sql"
    uri = "postgresql://offloader@postgres/offloader"
    warehouse = "s3://cold/warehouse"
    [state]
    dsn = "postgresql://offloader@postgres/offloader"
    [[tables]]
    name = "bronze_trades_binance"
    source = "k2.bronze_trades_binance"
    target = "cold.bronze_trades_binance"
    layer = "bronze"
    cursor = ["ingestion_timestamp", "sequence_number"]
    partition_by = ["day(exchange_timestamp)"]
    depends_on = []
    mode = "append"
    """
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "offloader.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env=env or {})
    return info.value.problems


def test_good_config_loads_with_the_public_names(tmp_path: Path) -> None:
    """The documented example loads, durations parsed to seconds and names kept."""
    config = load_config(write(tmp_path, GOOD), env={})
    assert config.source.safety_lag == 300 and config.source.max_window == 3600
    assert config.source.max_window_rows == 10_000_000 and config.tables[0].max_window_rows is None
    (table,) = config.tables
    assert table.cursor == ("ingestion_timestamp", "sequence_number")
    assert table.partition_by == ("day(exchange_timestamp)",)
    assert config.catalog.properties["uri"] == "postgresql://offloader@postgres/offloader"


def test_every_problem_is_reported_at_once_naming_key_and_value(tmp_path: Path) -> None:
    """Several mistakes give one line each, naming the key, the bad value and what is accepted."""
    bad = GOOD.replace('safety_lag = "5m"', 'safety_lag = "five minutes"').replace('mode = "append"', 'mode = "upsert"')
    bad = bad.replace('layer = "bronze"', 'layer = "platinum"')
    found = problems(tmp_path, bad)
    assert len(found) == 3
    assert any("source.safety_lag" in p and "five minutes" in p and '"5m"' in p for p in found)
    assert any("tables.bronze_trades_binance.mode" in p and "upsert" in p and "'replace'" in p for p in found)
    assert any("tables.bronze_trades_binance.layer" in p and "platinum" in p for p in found)


@pytest.mark.parametrize(
    "key, value",
    [
        ("source", "k2.trades; DROP TABLE k2.trades"),
        ("source", "k2.`trades`"),
        ("source", "k2.trades' OR '1'='1"),
        ("target", 'cold."x"'),
        ("name", "a b"),
    ],
)
def test_hostile_table_names_are_rejected(tmp_path: Path, key: str, value: str) -> None:
    """Names with semicolons, quotes, backticks or spaces are rejected with the offending value."""
    text = GOOD.replace(f'{key} = "', f'{key} = "__X__', 1)
    text = text.replace(text.split(f'{key} = "__X__', 1)[1].split('"', 1)[0], "", 1)
    text = text.replace("__X__", value.replace('"', '\\"'))
    found = problems(tmp_path, text)
    assert any(value in p for p in found), found


def test_hostile_cursor_column_is_rejected(tmp_path: Path) -> None:
    """A cursor column carrying SQL is rejected, never sent to ClickHouse."""
    text = GOOD.replace('"sequence_number"]', '"sequence_number`) OR 1=1 --"]')
    found = problems(tmp_path, text)
    assert any("cursor" in p and "OR 1=1" in p for p in found)


def test_password_in_file_is_refused_but_env_and_file_work(tmp_path: Path) -> None:
    """Passwords come only from the environment or a *_file key, never the config file."""
    found = problems(tmp_path, GOOD.replace('max_window = "1h"', 'max_window = "1h"\npassword = "hunter2"'))
    assert any("source.password" in p and "OFFLOADER__SOURCE__PASSWORD" in p for p in found)
    assert not any("hunter2" in p for p in found)
    config = load_config(write(tmp_path, GOOD), env={"OFFLOADER__SOURCE__PASSWORD": "hunter2"})
    assert config.source.password is not None and config.source.password.reveal() == "hunter2"
    assert "hunter2" not in repr(config)
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    config = load_config(write(tmp_path, GOOD.replace("[state]", f'[state]\npassword_file = "{secret}"')), env={})
    assert config.state.password is not None and config.state.password.reveal() == "s3cret"


def test_password_inside_a_dsn_is_refused(tmp_path: Path) -> None:
    """A DSN that carries a password is refused, and the password is not echoed."""
    found = problems(tmp_path, GOOD.replace("http://offloader@clickhouse", "http://offloader:hunter2@clickhouse"))
    assert any("source.dsn" in p for p in found) and not any("hunter2" in p for p in found)


def test_environment_overrides_any_key(tmp_path: Path) -> None:
    """OFFLOADER__SECTION__KEY and OFFLOADER__TABLES__NAME__KEY override single keys."""
    env = {
        "OFFLOADER__SOURCE__SAFETY_LAG": "0s",
        "OFFLOADER__SCHEDULE__MAX_PARALLEL": "4",
        "OFFLOADER__TABLES__BRONZE_TRADES_BINANCE__MAX_WINDOW": "10m",
    }
    config = load_config(write(tmp_path, GOOD), env=env)
    assert config.source.safety_lag == 0
    assert config.schedule.max_parallel == 4
    assert config.tables[0].max_window == 600


def test_max_window_rows_is_a_positive_integer_per_source_and_per_table(tmp_path: Path) -> None:
    """max_window_rows caps a window's rows beside max_window; a bad value is named where it is."""
    env = {"OFFLOADER__SOURCE__MAX_WINDOW_ROWS": "500000", "OFFLOADER__TABLES__BRONZE_TRADES_BINANCE__MAX_WINDOW_ROWS": "2000"}
    config = load_config(write(tmp_path, GOOD), env=env)
    assert config.source.max_window_rows == 500_000 and config.tables[0].max_window_rows == 2000
    found = problems(tmp_path, GOOD.replace('max_window = "1h"', 'max_window = "1h"\nmax_window_rows = 0'))
    assert any("source.max_window_rows = 0" in p and "expected an integer from 1" in p for p in found), found
    found = problems(tmp_path, GOOD + 'max_window_rows = "many"\n')
    assert any("tables.bronze_trades_binance.max_window_rows = 'many'" in p for p in found), found


def test_environment_override_of_a_table_not_configured_is_an_error(tmp_path: Path) -> None:
    """OFFLOADER__TABLES__<NAME>__KEY naming no configured table is a config error naming the variable, not silently ignored."""
    two = GOOD + GOOD[GOOD.index("[[tables]]") :].replace("bronze_trades_binance", "bronze_trades_kraken")
    env = {"OFFLOADER__TABLES__NOSUCH__MAX_WINDOW": "10m", "OFFLOADER__TABLES__BRONZE_TRADES_KRAKEN__MAX_WINDOW": "10m"}
    assert problems(tmp_path, two, env) == [
        "OFFLOADER__TABLES__NOSUCH__MAX_WINDOW: no table named 'nosuch' is configured; "
        "configured: bronze_trades_binance, bronze_trades_kraken"
    ]
    assert problems(tmp_path, GOOD, {"OFFLOADER__TABLES__MAX_WINDOW": "10m"}) == [
        "OFFLOADER__TABLES__MAX_WINDOW: environment overrides take the form OFFLOADER__SECTION__KEY or OFFLOADER__TABLES__NAME__KEY"
    ]


def test_a_bad_value_from_the_environment_names_its_variable(tmp_path: Path) -> None:
    """A bad value set by an environment variable is reported naming the key, the value and the variable it came from."""
    env = {
        "OFFLOADER__SOURCE__SAFETY_LAG": "abc",
        "OFFLOADER__TABLES__BRONZE_TRADES_BINANCE__MODE": "upsert",
        "OFFLOADER__SCHEDULE__NOSUCH": "1",
    }
    found = problems(tmp_path, GOOD.replace('max_window = "1h"', 'max_window = "an hour"'), env)
    assert sorted(found) == sorted(
        [
            "source.safety_lag = 'abc' (from OFFLOADER__SOURCE__SAFETY_LAG): "
            'expected a duration such as "0s", "90s", "5m", "1h30m", "2d"',
            "tables.bronze_trades_binance.mode = 'upsert' (from OFFLOADER__TABLES__BRONZE_TRADES_BINANCE__MODE): "
            "accepted: 'append', 'replace'",
            "schedule.nosuch = 1 (from OFFLOADER__SCHEDULE__NOSUCH): unknown key; accepted: "
            "cron, interval, maintenance_cron, max_parallel, retry_attempts, retry_backoff, retry_backoff_max, run_at_start, "
            "shutdown_timeout",
            'source.max_window = \'an hour\': expected a duration such as "0s", "90s", "5m", "1h30m", "2d"',
        ]
    )
    (section,) = problems(tmp_path, GOOD, {"OFFLOADER__SOURCES__DSN": "http://x@y/z"})
    assert section.startswith("sources = {'dsn': 'http://x@y/z'} (from OFFLOADER__SOURCES__DSN): unknown section"), section


def test_dependencies_must_exist_and_not_cycle(tmp_path: Path) -> None:
    """An unknown upstream and a dependency cycle are both reported."""
    text = GOOD.replace("depends_on = []", 'depends_on = ["nope"]')
    assert any("nope" in p and "not a configured table" in p for p in problems(tmp_path, text))
    two = GOOD.replace("depends_on = []", 'depends_on = ["b"]') + dedent(
        """
        [[tables]]
        name = "b"
        source = "k2.b"
        target = "cold.b"
        layer = "silver"
        cursor = ["ts"]
        depends_on = ["bronze_trades_binance"]
        """
    )
    assert any("cycle" in p for p in problems(tmp_path, two))


def test_replace_mode_needs_one_time_column_and_a_lookback(tmp_path: Path) -> None:
    """mode = "replace" without replace_lookback, or with a tuple cursor, is refused."""
    found = problems(tmp_path, GOOD.replace('mode = "append"', 'mode = "replace"'))
    assert any("replace_lookback" in p for p in found)
    assert any(".cursor" in p and "exactly one" in p for p in found)


def test_durations_and_sizes() -> None:
    """Durations and sizes parse the documented forms and refuse others."""
    assert parse_duration("0s") == 0 and parse_duration("1h30m") == 5400 and parse_duration("250ms") == 0.25
    assert parse_size("128MiB") == 128 * 2**20 and parse_size("64MB") == 64_000_000
    for bad in ("", "5", "5 minutes", "-1s", "1h 30m"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError):
        parse_size("0")


def test_cli_bad_config_exits_2_with_a_precise_message(tmp_path: Path) -> None:
    """The CLI turns a bad config into one line per problem on stderr and exit code 2, no traceback."""
    path = write(tmp_path, GOOD.replace('max_window = "1h"', 'max_window = "forever"'))
    result = run_cli("once", config=path)
    assert result.returncode == 2
    assert "source.max_window = 'forever'" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_missing_config_file(tmp_path: Path) -> None:
    """A config path that does not exist is named in the error."""
    result = run_cli("status", config=tmp_path / "nope.toml")
    assert result.returncode == 2 and "nope.toml" in result.stderr and "Traceback" not in result.stderr


def test_cli_dead_state_store_exits_1_naming_it(tmp_path: Path) -> None:
    """A state store that is down gives exit code 1 and a message naming it, no traceback."""
    text = GOOD.replace(
        '[state]\ndsn = "postgresql://offloader@postgres/offloader"', '[state]\ndsn = "postgresql://nobody@127.0.0.1:1/none"'
    )
    text = text.replace('uri = "postgresql://offloader@postgres/offloader"', f'uri = "sqlite:///{tmp_path}/cat.db"')
    path = write(tmp_path, text)
    result = run_cli("once", config=path, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "state store" in result.stderr and "127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr


S3_CATALOG = GOOD.replace(
    'warehouse = "s3://cold/warehouse"',
    'warehouse = "s3://cold/warehouse"\n"s3.endpoint" = "http://seaweedfs:8333"\n"s3.access-key-id" = "offloader"',
)


def test_catalog_secrets_come_from_the_environment_a_file_or_the_aws_variables(tmp_path: Path) -> None:
    """The S3 secret key is taken from OFFLOADER__CATALOG__S3_SECRET_ACCESS_KEY, a *_file key, or AWS_SECRET_ACCESS_KEY."""
    from_ours = load_config(write(tmp_path, S3_CATALOG), env={"OFFLOADER__CATALOG__S3_SECRET_ACCESS_KEY": "k1"}).catalog
    assert from_ours.secrets["s3.secret-access-key"].reveal() == "k1"
    assert "s3.secret-access-key" not in from_ours.properties and "k1" not in repr(from_ours)
    from_aws = load_config(write(tmp_path, S3_CATALOG), env={"AWS_SECRET_ACCESS_KEY": "k2", "AWS_SESSION_TOKEN": "t2"})
    assert from_aws.catalog.secrets["s3.secret-access-key"].reveal() == "k2"
    assert from_aws.catalog.secrets["s3.session-token"].reveal() == "t2"
    secret = tmp_path / "s3-secret"
    secret.write_text("k3\n")
    (tmp_path / "rest-credential").write_text("id:s3cr3t")
    text = S3_CATALOG.replace(
        '"s3.access-key-id" = "offloader"',
        f'"s3.access-key-id" = "offloader"\ns3_secret_access_key_file = "{secret}"\ncredential_file = "{tmp_path / "rest-credential"}"',
    )
    from_file = load_config(write(tmp_path, text), env={"AWS_SECRET_ACCESS_KEY": "not this one"}).catalog
    assert from_file.secrets["s3.secret-access-key"].reveal() == "k3"
    assert from_file.secrets["credential"].reveal() == "id:s3cr3t"
    assert not any(k.endswith("_file") for k in from_file.properties)


def test_a_secret_in_the_config_file_or_a_half_given_s3_key_is_refused_at_start(tmp_path: Path) -> None:
    """A secret written in the file, or an S3 key id without its secret, is a config error naming how to give it."""
    inline = S3_CATALOG.replace(
        '"s3.access-key-id" = "offloader"', '"s3.access-key-id" = "offloader"\n"s3.secret-access-key" = "x"'
    )
    found = problems(tmp_path, inline, env={"OFFLOADER__CATALOG__S3_SECRET_ACCESS_KEY": "k"})
    assert any(
        p.startswith("catalog.s3.secret-access-key: secrets are not accepted in the config file")
        and "OFFLOADER__CATALOG__S3_SECRET_ACCESS_KEY" in p
        and "AWS_SECRET_ACCESS_KEY" in p
        for p in found
    ), found
    assert all("'x'" not in p for p in found), "the secret itself is never echoed"
    token = GOOD.replace('type = "sql"', 'type = "rest"\ntoken = "tok"')
    assert any(p.startswith("catalog.token: secrets are not accepted") for p in problems(tmp_path, token))
    (missing,) = problems(tmp_path, S3_CATALOG)
    assert missing.startswith("catalog.s3.access-key-id: is set but no secret key is")
    assert "AWS_SECRET_ACCESS_KEY" in missing and "catalog.s3_secret_access_key_file" in missing
    unreadable = problems(tmp_path, S3_CATALOG.replace("[state]", 's3_secret_access_key_file = "/nonexistent"\n[state]'))
    assert unreadable[0].startswith("catalog.s3_secret_access_key_file = '/nonexistent': cannot be read"), unreadable


def test_s3_region_defaults_for_a_custom_endpoint_and_follows_aws_region(tmp_path: Path) -> None:
    """Without s3.region, a custom endpoint gets us-east-1 (no region lookup at every start); AWS_REGION wins."""
    env = {"OFFLOADER__CATALOG__S3_SECRET_ACCESS_KEY": "k"}
    assert load_config(write(tmp_path, S3_CATALOG), env=env).catalog.properties["s3.region"] == "us-east-1"
    assert load_config(write(tmp_path, S3_CATALOG), env={**env, "AWS_REGION": "eu-west-3"}).catalog.properties["s3.region"] == (
        "eu-west-3"
    )
    given = S3_CATALOG.replace('"s3.access-key-id"', '"s3.region" = "ap-south-1"\n"s3.access-key-id"')
    assert load_config(write(tmp_path, given), env=env).catalog.properties["s3.region"] == "ap-south-1"
    assert "s3.region" not in load_config(write(tmp_path, GOOD), env={}).catalog.properties, "AWS itself: looked up"


def test_sigv4_without_boto3_names_the_extra(tmp_path: Path) -> None:
    """rest.sigv4-enabled without boto3 installed is a config error that names offloader[aws]."""
    path = write(
        tmp_path,
        GOOD.replace('type = "sql"', 'type = "rest"\nuri = "https://glue.example/iceberg"\n"rest.sigv4-enabled" = true').replace(
            'uri = "postgresql://offloader@postgres/offloader"\nwarehouse', "warehouse"
        ),
    )
    script = (
        "import sys; sys.modules['boto3'] = None\n"  # as if boto3 were not installed
        "import importlib.util as u; f = u.find_spec; u.find_spec = lambda n, *a: None if n == 'boto3' else f(n, *a)\n"
        "from offloader.cli import main; sys.exit(main(['--config', sys.argv[1], 'status']))"
    )
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert "catalog.rest.sigv4-enabled = 'true': SigV4 signing needs boto3" in result.stderr
    assert "pip install 'offloader[aws]'" in result.stderr


def test_a_problem_line_never_echoes_the_value_of_a_secret_key(tmp_path: Path) -> None:
    """An unknown or misplaced key that names a secret is reported by name, its value hidden."""
    found = problems(
        tmp_path,
        GOOD,
        env={"OFFLOADER__NOSECTION__PASSWORD": "hunter2", "OFFLOADER__TABLES__BRONZE_TRADES_BINANCE__TOKEN": "hunter2"},
    )
    assert any("nosection" in p for p in found) and any("bronze_trades_binance.token" in p for p in found), found
    assert all("hunter2" not in p for p in found), found
