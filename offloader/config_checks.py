"""The checks of single config values, and the ``OFFLOADER__…`` overrides they may come from.

:class:`Checks` collects every problem (a key, the value shown without secrets, what would
be accepted, and the environment variable that set it, if one did) instead of failing on
the first, so one start-up reports everything wrong at once. ``config_loader`` builds the
sections on top of these checks.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from offloader.config import ENV_PREFIX, IDENTIFIER, TRANSFORM, Secret, parse_duration, parse_size
from offloader.scheduler import cron_problem


def _coerce_env_value(text: str) -> Any:
    """Environment values are strings; TOML syntax is accepted for lists, numbers and booleans."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Put the ``OFFLOADER__...`` overrides in; each section and table keeps in ``_from_env``
    which of its keys came from which variable, so that a problem can name the variable."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    raw["tables"] = [dict(t) for t in raw.get("tables", [])] if isinstance(raw.get("tables", []), list) else raw["tables"]
    tables = [t for t in raw["tables"] if isinstance(t, dict)] if isinstance(raw["tables"], list) else []
    problems: list[str] = []
    for key, text in sorted(env.items()):
        if not key.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in key[len(ENV_PREFIX) :].split("__")]
        if len(parts) != (3 if parts[0] == "tables" else 2) or not all(parts):
            problems.append(f"{key}: environment overrides take the form OFFLOADER__SECTION__KEY or OFFLOADER__TABLES__NAME__KEY")
            continue
        if parts[0] == "tables":
            matched = [t for t in tables if str(t.get("name", "")).lower() == parts[1]]
            if not matched:
                configured = ", ".join(str(t.get("name")) for t in tables) or "none"
                problems.append(f"{key}: no table named {parts[1]!r} is configured; configured: {configured}")
            for table in matched:
                table[parts[2]] = _coerce_env_value(text)
                table.setdefault("_from_env", {})[parts[2]] = key
            continue
        section, name = parts
        value: Any = text if name == "password" else _coerce_env_value(text)
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            problems.append(f"{key}: {section} is not a section ([{section}]) whose keys can be overridden")
            continue
        target[name] = value
        target.setdefault("_from_env", {})[name] = key
    if problems:
        raw["_env_problems"] = problems
    return raw


class Checks:
    """Typed checks of raw config values, collecting every problem before failing."""

    def __init__(self, raw: dict[str, Any], env: Mapping[str, str], origin: str) -> None:
        self.raw = raw
        self.env = env
        self.origin = origin
        self.problems: list[str] = list(raw.pop("_env_problems", []))
        self.env_keys: dict[str, str] = {}  # "source.safety_lag" -> the variable that set it

    def problem(self, key: str, value: Any, accepted: str) -> None:
        """One problem line: the key, the bad value, the variable it came from if it did, what is accepted."""
        variables = [self.env_keys[key]] if key in self.env_keys else []
        if isinstance(value, dict) and "_from_env" in value:  # a whole section set by variables
            variables += sorted(value["_from_env"].values())
            value = {k: v for k, v in value.items() if k != "_from_env"}
        origin = f" (from {', '.join(variables)})" if variables else ""
        shown = " is missing" if value is None else f" = {_shown(key, value)}"
        self.problems.append(f"{key}{shown}{origin}: {accepted}")

    def from_env(self, label: str, values: dict[str, Any]) -> None:
        """Remember which keys of the section or table ``label`` came from which variable."""
        for key, variable in values.get("_from_env", {}).items():
            self.env_keys[f"{label}.{key}"] = variable

    def section(self, name: str, required: bool = True) -> dict[str, Any]:
        value = self.raw.get(name)
        if value is None:
            if required:
                self.problems.append(f"[{name}]: section is missing")
            return {}
        if not isinstance(value, dict):
            self.problem(name, value, "must be a table ([section])")
            return {}
        self.from_env(name, value)
        return value

    def unknown_keys(self, section: str, values: dict[str, Any], allowed: set[str]) -> None:
        for key in values:
            if key not in allowed and key != "_from_env":
                self.problem(f"{section}.{key}", values[key], f"unknown key; accepted: {', '.join(sorted(allowed))}")

    def duration(self, key: str, value: Any, default: float, minimum: float = 0.0) -> float:
        if value is None:
            return default
        try:
            seconds = parse_duration(value)
        except ValueError:
            self.problem(key, value, 'expected a duration such as "0s", "90s", "5m", "1h30m", "2d"')
            return default
        if seconds < minimum:
            self.problem(key, value, f"must be at least {minimum:g}s")
        return seconds

    def size(self, key: str, value: Any, default: int | None) -> int | None:
        if value is None:
            return default
        try:
            return parse_size(value)
        except ValueError:
            self.problem(key, value, 'expected a positive size such as "128MiB", "64MB" or a byte count')
            return default

    def integer(self, key: str, value: Any, default: int, minimum: int, maximum: int = 2**31) -> int:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            self.problem(key, value, f"expected an integer from {minimum} to {maximum}")
            return default
        return value

    def boolean(self, key: str, value: Any, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problem(key, value, "expected true or false")
            return default
        return value

    def choice(self, key: str, value: Any, default: str, choices: tuple[str, ...]) -> str:
        if value is None:
            return default
        if value not in choices:
            self.problem(key, value, f"accepted: {', '.join(repr(c) for c in choices)}")
            return default
        return str(value)

    def password(self, section: str, values: dict[str, Any]) -> Secret | None:
        """A password from the environment or a file; never from the config file itself."""
        if "password" in values and "password" not in values.get("_from_env", set()):
            self.problems.append(
                f"{section}.password: passwords are not accepted in the config file; "
                f"set OFFLOADER__{section.upper()}__PASSWORD or {section}.password_file"
            )
            return None
        if "password" in values:
            return Secret(str(values["password"]))
        file = values.get("password_file")
        if file is None:
            return None
        try:
            return Secret(Path(str(file)).read_text().strip())
        except OSError as exc:
            self.problem(f"{section}.password_file", file, f"cannot be read ({exc.strerror})")
            return None

    def dsn_without_password(self, key: str, dsn: str) -> None:
        try:
            has_password = urlsplit(dsn).password is not None
        except ValueError:
            has_password = False
        if has_password:
            self.problems.append(
                f"{key}: the DSN carries a password; remove it and set OFFLOADER__{key.split('.')[0].upper()}__PASSWORD "
                f"or {key.split('.')[0]}.password_file"
            )

    def cron(self, key: str, value: Any) -> str | None:
        if value is None:
            return None
        why = cron_problem(str(value))
        if why is not None:
            self.problem(key, value, f'expected a 5-field cron expression such as "*/15 * * * *" ({why})')
            return None
        return str(value)

    def replica_id(self, key: str, value: Any) -> str | None:
        """A replica id: printable, no surrounding space, 1 to 128 characters (it is a label value and a log field)."""
        if value is None:
            return None
        if not isinstance(value, str) or not value or len(value) > 128 or not value.isprintable() or value != value.strip():
            self.problem(key, value, "expected 1 to 128 printable characters without surrounding space, e.g. a pod name")
            return None
        return value

    def names(self, key: str, value: Any, required: bool = False, pattern: re.Pattern[str] = IDENTIFIER) -> tuple[str, ...]:
        if value is None:
            value = []
        if not isinstance(value, list) or not all(isinstance(v, str) and pattern.match(v) for v in value):
            what = (
                "Iceberg transforms such as day(col), month(col), bucket(16, col) or col"
                if pattern is TRANSFORM
                else "identifiers (letters, digits, _)"
            )
            self.problem(key, value, f"expected a list of {what}")
            return ()
        if required and not value:
            self.problem(key, value, "at least one column is required; the first must be a DateTime/DateTime64 column")
        if len(set(value)) != len(value):
            self.problem(key, value, "names must not repeat")
        return tuple(value)


_SECRET_WORDS = re.compile(r"password|secret|credential|token|account[-_]key", re.IGNORECASE)


def _shown(key: str, value: Any) -> str:
    """A value as a problem line shows it: never the value of a key that names a secret."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_shown(str(k), v)}" for k, v in value.items()) + "}"
    return "'***'" if _SECRET_WORDS.search(key) and not key.endswith("_file") else repr(value)


def positive_number(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def importable(module: str) -> bool:

    return importlib.util.find_spec(module) is not None


def is_dotted(value: Any, parts: int, max_parts: int | None = None) -> bool:
    if not isinstance(value, str):
        return False
    split = value.split(".")
    return parts <= len(split) <= (max_parts or parts) and all(IDENTIFIER.match(p) for p in split)
