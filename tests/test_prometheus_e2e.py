"""End to end: a real Prometheus scrapes a real `offloader run` and evaluates the real alert rules.

The service offloads two tables every second; one of them always fails (its source table does
not exist). Prometheus (Debian's ``prometheus`` binary, on loopback, scraping and evaluating every
second, with alerts/offloader.rules.yml) must bring OffloadFailure to ``firing`` for that table
and no other. Then every rule must evaluate without error, and every query of the dashboard and of
the runbooks must run through Prometheus' query API with no error. Without the binary the tests
are skipped, except in CI (``OFFLOADER_REQUIRE_PG`` set), where its absence fails them.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import PG_DSN, ROOT, Workspace, fresh_pg_database, require_binary, trades_table, wait_for
from storage import free_port

RULES = ROOT / "alerts/offloader.rules.yml"
DASHBOARD = ROOT / "dashboards/offloader.json"
RUNBOOKS = ROOT / "docs/runbooks"
BROKEN = "broken"  # the table that always fails
FENCE = re.compile(r"^[ \t]*```promql\n(.*?)^[ \t]*```", re.S | re.M)

# Values for the dashboard's variables and Grafana's built-ins, as Grafana would put them in.
GRAFANA_VARIABLES = {
    "${datasource}": "prometheus",
    "$datasource": "prometheus",
    "$table": ".*",  # the `table` variable's "All" (allValue)
    "$window": "1m",
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
}


@dataclass
class Stack:
    prometheus: int  # the port of Prometheus' HTTP API on 127.0.0.1
    metrics_port: int
    service: subprocess.Popen[str]
    server: subprocess.Popen[str]
    root: Path  # logs: service.err, prometheus.log

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{(self.root / name).read_text()[-3000:]}" for name in ("service.err", "prometheus.log"))


def _api(port: int, path: str, **params: str) -> dict[str, Any]:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}{query}", timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # a bad query answers 400 with a JSON error body
        return json.loads(exc.read())


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    return require_binary("prometheus")


@pytest.fixture(scope="module")
def module_database(pg_available: bool) -> Iterator[str]:
    """A fresh PostgreSQL database for this module (catalog and state of the service)."""
    if not pg_available:
        pytest.skip(f"PostgreSQL not reachable at {PG_DSN}")
    with fresh_pg_database() as dsn:
        yield dsn


@pytest.fixture(scope="module")
def stack(prometheus_binary: str, module_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`offloader run` with a healthy and an always-failing table, and Prometheus scraping it."""
    root = tmp_path_factory.mktemp("e2e")
    ws = Workspace(root=root, pg_dsn=module_database)
    metrics_port, prometheus_port = free_port(), free_port()
    ws.schedule.update(interval="1s", retry_attempts=1, shutdown_timeout="20s")
    ws.server.update(port=metrics_port)
    ws.tables = [trades_table(), trades_table(BROKEN, source="k2.missing", target=f"cold.{BROKEN}")]
    ws.create_trades()
    ws.insert_trades(2000, start="2026-01-01 00:00:00")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "offloader", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    with (root / "service.err").open("w") as service_err, (root / "prometheus.log").open("w") as prometheus_log:
        service = ws.start("run", stdout=subprocess.DEVNULL, stderr=service_err)
        server = subprocess.Popen(
            [
                prometheus_binary, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
            cwd=root, text=True, stdout=subprocess.DEVNULL, stderr=prometheus_log,
        )  # fmt: skip
        stack = Stack(prometheus_port, metrics_port, service, server, root)
        try:
            try:
                wait_for(lambda: _ready(prometheus_port), timeout=60, what="Prometheus ready")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{stack.logs()}") from None
            yield stack
        finally:
            _stop(server)
            _stop(service)
            ws.release()


def _ready(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=5) as response:
        return response.status == 200


def _firing(stack: Stack, alertname: str) -> list[dict[str, Any]]:
    alerts = _api(stack.prometheus, "/api/v1/alerts")["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == alertname and a["state"] == "firing"]


@pytest.fixture(scope="module")
def failing(stack: Stack) -> list[dict[str, Any]]:
    """The OffloadFailure alerts once one fires (within 90 s)."""
    assert stack.service.poll() is None, f"the service exited\n{stack.logs()}"
    try:
        return wait_for(lambda: _firing(stack, "OffloadFailure"), timeout=90, what="OffloadFailure firing")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.logs()}") from None


def _substitute(expr: str) -> str:
    for variable in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(variable, GRAFANA_VARIABLES[variable])
    assert "$" not in expr, f"an unknown Grafana variable in {expr!r}"
    return expr


def _dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for top in dashboard["panels"] for p in [top, *top.get("panels", [])]]
    return [(f"{p['title']} [{t['refId']}]", t["expr"]) for p in panels for t in p.get("targets", [])]


def _runbook_queries() -> list[tuple[str, str]]:
    out = []
    for path in sorted(RUNBOOKS.glob("*.md")):
        for block in FENCE.findall(path.read_text()):
            for line in block.splitlines():
                if line.strip() and not line.strip().startswith("#"):
                    out.append((f"{path.name}: {line.strip()}", line.strip().replace("<table>", BROKEN)))
    return out


def _query(stack: Stack, expr: str) -> dict[str, Any]:
    return _api(stack.prometheus, "/api/v1/query", query=expr)


# -- the alert -------------------------------------------------------------------------------------


def test_offload_failure_fires_for_the_failing_table_only(stack: Stack, failing: list[dict[str, Any]]) -> None:
    """OffloadFailure reaches `firing` for the table that always fails, with its labels and annotations."""
    assert [a["labels"]["table"] for a in failing] == [BROKEN]
    (alert,) = failing
    assert alert["labels"]["severity"] == "critical" and alert["labels"]["job"] == "offloader"
    assert BROKEN in alert["annotations"]["summary"] and BROKEN in alert["annotations"]["description"]
    assert (ROOT / alert["annotations"]["runbook_url"].split("#")[0]).is_file()
    value = _query(stack, f'offloader_consecutive_failures{{table="{BROKEN}"}}')["data"]["result"]
    assert float(value[0]["value"][1]) >= 3
    healthy = _query(stack, 'offloader_consecutive_failures{table="trades"}')["data"]["result"]
    assert float(healthy[0]["value"][1]) == 0
    assert not [a for a in _firing(stack, "OffloaderDown")], "the service is scraped"


def test_every_rule_is_loaded_and_evaluates_without_error(stack: Stack, failing: list[dict[str, Any]]) -> None:
    """Prometheus loaded every rule of alerts/offloader.rules.yml and evaluates each with health "ok"."""
    expected = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    rules = [r for g in _api(stack.prometheus, "/api/v1/rules")["data"]["groups"] for r in g["rules"]]
    assert {r["name"] for r in rules} == expected
    wait_for(
        lambda: all(r["health"] == "ok" for g in _api(stack.prometheus, "/api/v1/rules")["data"]["groups"] for r in g["rules"]),
        timeout=30, what="every rule evaluated",
    )  # fmt: skip
    for group in _api(stack.prometheus, "/api/v1/rules")["data"]["groups"]:
        for rule in group["rules"]:
            assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"


# -- the dashboard and the runbooks ----------------------------------------------------------------


@pytest.mark.parametrize(("where", "expr"), _dashboard_queries(), ids=[w for w, _ in _dashboard_queries()])
def test_dashboard_query_evaluates(stack: Stack, failing: list[dict[str, Any]], where: str, expr: str) -> None:
    """The panel's query, with Grafana's variables filled in, runs in Prometheus without an error."""
    answer = _query(stack, _substitute(expr))
    assert answer["status"] == "success", f"{where}: {answer.get('error')}"


def test_dashboard_shows_the_failing_table(stack: Stack, failing: list[dict[str, Any]]) -> None:
    """The dashboard's table variable lists both tables, and its failure panels show the failing one."""
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "table"]
    metric = re.fullmatch(r"label_values\((\w+), table\)", variable["definition"]).group(1)
    values = _api(stack.prometheus, "/api/v1/label/table/values", **{"match[]": metric})["data"]
    assert {"trades", BROKEN} <= set(values)
    queries = dict(_dashboard_queries())

    def value(title: str) -> float | None:
        result = _query(stack, _substitute(queries[title]))["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def errors() -> set[tuple[str, str]]:
        result = _query(stack, _substitute(queries["Errors by type [A]"]))["data"]["result"]
        return {(r["metric"]["table"], r["metric"]["error_type"]) for r in result}

    # rates need two samples of a series: wait for the second scrape of the new ones
    wait_for(lambda: (value("Tables failing [A]") or 0) >= 1, timeout=30, what="Tables failing")
    wait_for(lambda: (value("Firing alerts [A]") or 0) >= 1, timeout=30, what="Firing alerts")
    wait_for(lambda: value("Up [A]") == 1, timeout=30, what="Up")
    wait_for(lambda: (BROKEN, "schema_error") in errors(), timeout=30, what="Errors by type")


@pytest.mark.parametrize(("where", "expr"), _runbook_queries(), ids=[w for w, _ in _runbook_queries()])
def test_runbook_query_evaluates(stack: Stack, failing: list[dict[str, Any]], where: str, expr: str) -> None:
    """Every PromQL line of the runbooks (with <table> filled in) runs in Prometheus without an error."""
    answer = _query(stack, expr)
    assert answer["status"] == "success", f"{where}: {answer.get('error')}"
