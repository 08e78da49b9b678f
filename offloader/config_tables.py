"""Validation of the ``[[tables]]`` entries: each table's keys, and the checks across tables.

:class:`TableChecks` adds to :class:`~offloader.config_checks.Checks` the reading of one
``[[tables]]`` entry into a :class:`~offloader.config.TableConfig` (every key checked and
named in its message) and the checks of the list as a whole: unique names and targets,
known upstreams, no dependency cycle. The loader (``config_loader``) calls it at start-up.
"""

from __future__ import annotations

from typing import Any

from offloader.config import CORRECTIONS, IDENTIFIER, LAYERS, MODES, TRANSFORM, OffloadConfig, TableConfig
from offloader.config_checks import Checks, is_dotted


class TableChecks(Checks):
    """The checks of ``[[tables]]``, mixed into the loader's validator."""

    def tables(self, raw: Any, offload: OffloadConfig) -> list[TableConfig]:
        if not isinstance(raw, list) or not raw:
            self.problems.append("[[tables]]: at least one table is required")
            return []
        tables = [t for i, item in enumerate(raw) if (t := self.table(i, item)) is not None]
        names = [t.name for t in tables]
        for name in sorted({n for n in names if names.count(n) > 1}):
            self.problem("tables.name", name, "table names must be unique")
        targets = [t.target for t in tables]
        for target in sorted({n for n in targets if targets.count(n) > 1}):
            self.problem("tables.target", target, "two tables cannot write the same Iceberg table")
        by_name = {t.name: t for t in tables}
        for t in tables:
            for dep in t.depends_on:
                if dep not in by_name:
                    self.problem(f"tables.{t.name}.depends_on", dep, f"not a configured table; known: {', '.join(names)}")
        self._check_cycles(by_name)
        return tables

    def _check_cycles(self, by_name: dict[str, TableConfig]) -> None:
        state: dict[str, int] = {}

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == 2 or name not in by_name:
                return
            if state.get(name) == 1:
                cycle = path[path.index(name) :] + [name]
                self.problem(f"tables.{name}.depends_on", " -> ".join(cycle), "dependencies must not form a cycle")
                return
            state[name] = 1
            for dep in by_name[name].depends_on:
                visit(dep, path + [name])
            state[name] = 2

        for name in by_name:
            visit(name, [])

    def table(self, index: int, t: Any) -> TableConfig | None:
        if not isinstance(t, dict):
            self.problem(f"tables[{index}]", t, "each [[tables]] entry must be a table")
            return None
        name = t.get("name")
        label = f"tables.{name}" if isinstance(name, str) and IDENTIFIER.match(name) else f"tables[{index}]"
        self.from_env(label, t)
        before = len(self.problems)
        allowed = {
            "name", "source", "target", "layer", "cursor", "partition_by", "depends_on", "mode", "replace_lookback",
            "uint64", "bigint", "truncate_datetime64", "target_file_size", "safety_lag", "max_window", "cron",
            "check_columns", "max_window_rows", "max_replica_delay", "sort_by",
            "corrections", "version_column", "deleted_column",
        }  # fmt: skip
        self.unknown_keys(label, t, allowed)
        if not isinstance(name, str) or not IDENTIFIER.match(name):
            self.problem(f"{label}.name", name, "expected an identifier: a letter or _, then letters, digits or _")
        source, target = t.get("source"), t.get("target")
        if not is_dotted(source, 2):
            self.problem(f"{label}.source", source, 'expected "database.table" of identifiers (letters, digits, _)')
        if not is_dotted(target, 2, max_parts=4):
            self.problem(f"{label}.target", target, 'expected "namespace.table" of identifiers (letters, digits, _)')
        layer = self.choice(f"{label}.layer", t.get("layer"), "bronze", LAYERS)
        mode = self.choice(f"{label}.mode", t.get("mode"), "append", MODES)
        cursor = self.names(f"{label}.cursor", t.get("cursor"), required=True)
        corrections = self.choice(f"{label}.corrections", t.get("corrections"), "none", CORRECTIONS)
        if mode == "replace" and corrections != "none":
            self.problem(
                f"{label}.corrections", corrections, 'mode = "replace" re-reads its lookback; corrections are for mode = "append"'
            )
        if mode == "replace" and len(cursor) != 1:
            self.problem(f"{label}.cursor", t.get("cursor"), 'mode = "replace" takes exactly one time column')
        partition_by = self.names(f"{label}.partition_by", t.get("partition_by", []), pattern=TRANSFORM)
        depends_on = self.names(f"{label}.depends_on", t.get("depends_on", []))
        if isinstance(name, str) and name in depends_on:
            self.problem(f"{label}.depends_on", name, "a table cannot depend on itself")
        lookback = self.duration(f"{label}.replace_lookback", t.get("replace_lookback"), 0.0)
        if mode == "replace" and lookback <= 0:
            self.problem(
                f"{label}.replace_lookback", t.get("replace_lookback"), 'mode = "replace" needs a positive duration, e.g. "2h"'
            )
        version, deleted = self._replacing(label, t, corrections)
        table = TableConfig(
            name=str(name),
            source=str(source),
            target=str(target),
            layer=layer,
            cursor=cursor,
            partition_by=partition_by,
            depends_on=depends_on,
            mode=mode,
            replace_lookback=lookback,
            uint64=self.choice(f"{label}.uint64", t.get("uint64"), "long", ("long", "decimal")),
            bigint=self.choice(f"{label}.bigint", t.get("bigint"), "decimal", ("decimal", "string")),
            truncate_datetime64=self.boolean(f"{label}.truncate_datetime64", t.get("truncate_datetime64"), False),
            target_file_size=self.size(f"{label}.target_file_size", t.get("target_file_size"), None),
            safety_lag=None if t.get("safety_lag") is None else self.duration(f"{label}.safety_lag", t["safety_lag"], 0),
            max_window=None if t.get("max_window") is None else self.duration(f"{label}.max_window", t["max_window"], 0, 0.001),
            max_window_rows=None
            if t.get("max_window_rows") is None
            else self.integer(f"{label}.max_window_rows", t["max_window_rows"], 0, 1, 2**62),
            cron=self.cron(f"{label}.cron", t.get("cron")),
            check_columns=self.names(f"{label}.check_columns", t.get("check_columns", [])),
            max_replica_delay=None if (d := t.get("max_replica_delay")) is None else self.duration(f"{label}.max_replica_delay", d, 0),
            sort_by=self.names(f"{label}.sort_by", t.get("sort_by", [])),
            corrections=corrections,
            version_column=version,
            deleted_column=deleted,
        )  # fmt: skip
        return table if len(self.problems) == before else None

    def _replacing(self, label: str, t: dict[str, Any], corrections: str) -> tuple[str | None, str | None]:
        """``version_column`` (required) and ``deleted_column`` of ``corrections = "replacing"``."""
        version, deleted = t.get("version_column"), t.get("deleted_column")
        if corrections != "replacing":
            for key in ("version_column", "deleted_column"):
                if t.get(key) is not None:
                    self.problem(f"{label}.{key}", t[key], 'only used with corrections = "replacing"')
            return None, None
        for key, value, required in (("version_column", version, True), ("deleted_column", deleted, False)):
            if (value is not None or required) and not (isinstance(value, str) and IDENTIFIER.match(value)):
                self.problem(f"{label}.{key}", value, "expected the column's name: a letter or _, then letters, digits or _")
        return (str(version) if version else None), (str(deleted) if deleted else None)
