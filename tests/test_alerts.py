"""Alert rules, their promtool unit tests, the dashboard and docs/metrics.md against the real metrics.

The rules and the Prometheus config are checked by the real ``promtool`` (Debian package
``prometheus``; tests/run.sh installs it). Without promtool these tests are skipped, except in
CI (``OFFLOADER_REQUIRE_PG`` set), where its absence fails them. The metric names the rules, the
dashboard and the docs use are compared with the ones offloader.metrics really exports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # a test dependency (pyproject.toml)

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts/offloader.rules.yml"
RULE_TESTS = ROOT / "alerts/offloader.tests.yml"
DASHBOARD = ROOT / "dashboards/offloader.json"
METRICS_DOC = ROOT / "docs/metrics.md"

# The metrics the service exports: exposition name -> (type, label names).
EXPECTED_METRICS = {
    "offloader_rows_total": ("counter", {"table", "layer"}),
    "offloader_bytes_written_total": ("counter", {"table"}),
    "offloader_files_written_total": ("counter", {"table"}),
    "offloader_run_duration_seconds": ("histogram", {"table"}),
    "offloader_cycle_duration_seconds": ("histogram", set()),
    "offloader_errors_total": ("counter", {"table", "error_type"}),
    "offloader_lag_seconds": ("gauge", {"table"}),
    "offloader_watermark_timestamp_seconds": ("gauge", {"table"}),
    "offloader_last_success_timestamp_seconds": ("gauge", {"table"}),
    "offloader_consecutive_failures": ("gauge", {"table"}),
    "offloader_window_mismatch_total": ("counter", {"table"}),
    "offloader_commit_conflicts_total": ("counter", {"table"}),
    "offloader_build_info": ("gauge", {"version"}),
}
ALERTS = {
    "OffloaderDown",
    "OffloaderNoCycles",
    "OffloaderTableFailing",
    "OffloaderLagHigh",
    "OffloaderWatermarkStale",
    "OffloaderWindowMismatch",
    "OffloaderCommitConflicts",
}
PREDECESSOR = {
    "offload_rows_total": "offloader_rows_total",
    "offload_duration_seconds": "offloader_run_duration_seconds",
    "offload_errors_total": "offloader_errors_total",
    "offload_lag_minutes": "offloader_lag_seconds",
    "watermark_timestamp": "offloader_watermark_timestamp_seconds",
    "OffloadFailure": "OffloaderTableFailing",
    "OffloadLag": "OffloaderLagHigh",
    "WatermarkStale": "OffloaderWatermarkStale",
    "DataMismatch": "OffloaderWindowMismatch",
}
METRIC_NAME = re.compile(r"\boffloader_[a-z_]+")


def _series_names() -> set[str]:
    """Every series name a Prometheus query may use: counters' _total, histograms' _bucket/_sum/_count."""
    names = set()
    for name, (kind, _labels) in EXPECTED_METRICS.items():
        names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
    return names


def _exprs_of_rules() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def _dashboard_panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("OFFLOADER_REQUIRE_PG"):
            pytest.fail("promtool is required in CI: apt-get install prometheus (tests/run.sh tries)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return path


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=120)


# -- promtool --------------------------------------------------------------------------------------


def test_promtool_checks_the_rules(promtool: str) -> None:
    """promtool check rules accepts alerts/offloader.rules.yml and finds every rule."""
    result = _run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    """promtool test rules runs alerts/offloader.tests.yml without a failure."""
    result = _run(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "FAILED" not in result.stdout + result.stderr


def test_promtool_unit_tests_catch_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    """With the failure threshold changed from 3 to 2 the unit tests fail: they really check the rules."""
    broken = RULES.read_text().replace("offloader_consecutive_failures >= 3", "offloader_consecutive_failures >= 2")
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    result = _run(promtool, "test", "rules", str(tmp_path / RULE_TESTS.name))
    assert result.returncode != 0
    assert "OffloaderTableFailing" in result.stdout + result.stderr


def test_promtool_checks_the_prometheus_config(promtool: str, tmp_path: Path) -> None:
    """promtool check config accepts deploy/prometheus/prometheus.yml with its rule files at their repository paths."""
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    mounted = "/etc/prometheus/alerts/"
    assert all(f.startswith(mounted) for f in config["rule_files"])
    config["rule_files"] = [str(ROOT / "alerts" / f[len(mounted) :]) for f in config["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = _run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


# -- the rules -------------------------------------------------------------------------------------


def test_rules_define_the_alerts_with_severity_and_annotations() -> None:
    """Each of the seven alerts exists once with a severity and summary, description and runbook_url annotations."""
    rules = _rules()
    names = [rule["alert"] for rule in rules]
    assert sorted(names) == sorted(ALERTS)
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, rule["alert"]
        assert annotations["runbook_url"] == f"docs/operations.md#{rule['alert'].lower()}"
    by_name = {rule["alert"]: rule for rule in rules}
    assert by_name["OffloaderDown"]["for"] == "2m" and 'up{job="offloader"} == 0' in by_name["OffloaderDown"]["expr"]
    assert by_name["OffloaderLagHigh"]["for"] == "5m" and "> 1800" in by_name["OffloaderLagHigh"]["expr"]
    assert ">= 3" in by_name["OffloaderTableFailing"]["expr"]
    assert "> 3600" in by_name["OffloaderWatermarkStale"]["expr"]
    assert "offloader_cycle_duration_seconds_count[1h]" in by_name["OffloaderNoCycles"]["expr"]


def test_rules_use_only_exported_metrics() -> None:
    """Every offloader_* series an alert expression names is one the service exports."""
    allowed = _series_names()
    used = set()
    for alert, expr in _exprs_of_rules().items():
        for name in METRIC_NAME.findall(expr):
            assert name in allowed, f"{alert}: {name} is not exported"
            used.add(name)
    assert len(used) >= 6


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """alerts/offloader.tests.yml shows every alert firing at some time and not firing at another."""
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    fired, quiet = set(), set()
    for test in tests["tests"]:
        for case in test.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert fired == ALERTS
    assert quiet == ALERTS


# -- the service's metrics -------------------------------------------------------------------------


def test_service_exports_exactly_the_documented_metrics() -> None:
    """offloader.metrics.Metrics registers exactly the metric names, types and labels the rules and docs use."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    from offloader.metrics import Metrics

    metrics = Metrics(CollectorRegistry())
    exported = {}
    for wrapper in vars(metrics).values():
        if not isinstance(wrapper, MetricWrapperBase):
            continue
        (family,) = wrapper.describe()
        name = f"{family.name}_total" if family.type == "counter" else family.name
        exported[name] = (family.type, set(wrapper._labelnames))
    assert exported == EXPECTED_METRICS


# -- the dashboard ---------------------------------------------------------------------------------


def test_dashboard_is_a_provisionable_grafana_dashboard() -> None:
    """dashboards/offloader.json is a Grafana dashboard with a uid, unique panel ids and a Prometheus datasource variable."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "offloader" and dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert "id" not in dashboard or dashboard["id"] is None, "a provisioned dashboard carries no database id"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == "prometheus", "defaults to the provisioned datasource uid"
    panels = _dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["expr"].strip()


def test_dashboard_layout_fits_the_grid() -> None:
    """Panels sit inside Grafana's 24-column grid without overlapping."""
    boxes = []
    for panel in _dashboard_panels():
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, panel["title"]
        for other_title, o in boxes:
            overlap = (
                g["x"] < o["x"] + o["w"] and o["x"] < g["x"] + g["w"] and g["y"] < o["y"] + o["h"] and o["y"] < g["y"] + g["h"]
            )
            assert not overlap, f"{panel['title']} overlaps {other_title}"
        boxes.append((panel["title"], g))


def test_dashboard_shows_every_metric_and_the_required_panels() -> None:
    """The dashboard queries only exported series, uses every metric, and has the required panels."""
    allowed = _series_names()
    used = set()
    for panel in _dashboard_panels():
        for target in panel.get("targets", []):
            for name in METRIC_NAME.findall(target["expr"]):
                assert name in allowed, f"{panel['title']}: {name} is not exported"
                used.add(re.sub(r"_(bucket|sum|count)$", "", name) if name not in EXPECTED_METRICS else name)
    assert used == set(EXPECTED_METRICS)
    titles = {p["title"] for p in _dashboard_panels()}
    for required in (
        "Rows/s per table",
        "Lag per table",
        "Watermark age per table",
        "Consecutive failures",
        "Errors by type",
        "Run duration p95 per table",
        "Cycle duration",
        "Files written per table",
        "Bytes written/s per table",
        "Window mismatches & commit conflicts",
    ):
        assert required in titles
    exprs = " ".join(t["expr"] for p in _dashboard_panels() for t in p.get("targets", []))
    assert "histogram_quantile(0.95, sum by (table, le) (rate(offloader_run_duration_seconds_bucket" in exprs
    assert 'up{job="offloader"}' in exprs


# -- docs/metrics.md -------------------------------------------------------------------------------


def test_metrics_doc_covers_metrics_alerts_and_the_predecessor() -> None:
    """docs/metrics.md documents every metric and alert (runbooks in operations.md) and maps each predecessor name to ours."""
    text = METRICS_DOC.read_text()
    runbooks = (ROOT / "docs" / "operations.md").read_text()
    for name in EXPECTED_METRICS:
        assert f"`{name}`" in text, name
    for alert in ALERTS:
        assert f"`{alert}`" in text, alert
        assert f"### {alert}" in runbooks, alert
    text += runbooks
    for old, new in PREDECESSOR.items():
        rows = [line for line in text.splitlines() if f"`{old}" in line and f"`{new}" in line]
        assert rows, f"no line maps {old} to {new}"
    assert "seconds, not minutes" in text
    assert "any" in text and "1 %" in text, "the mismatch alert is exact, unlike DataMismatch's 1 %"


def test_every_runbook_url_points_at_a_heading_of_operations_md() -> None:
    """Each alert's runbook_url anchor exists as a heading in docs/operations.md."""
    import yaml

    rules = yaml.safe_load((ROOT / "alerts" / "offloader.rules.yml").read_text())
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in (ROOT / "docs" / "operations.md").read_text().splitlines()
        if line.startswith("#")
    }
    for group in rules["groups"]:
        for rule in group["rules"]:
            anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
            assert anchor in headings, f"{rule['alert']}: no heading #{anchor} in docs/operations.md"
