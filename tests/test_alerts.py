"""Alert rules, their promtool unit tests, the dashboard, the runbooks' links and docs/metrics.md.

The rules and the Prometheus config are checked by the real ``promtool`` (Debian package
``prometheus``; tests/run.sh installs it). Without promtool these tests are skipped, except in
CI (``OFFLOADER_REQUIRE_PG`` set), where its absence fails them. The metric names the rules, the
dashboard and the docs use are compared with the ones offloader.metrics really exports.
tests/test_prometheus_e2e.py runs the rules and the dashboard's queries in a real Prometheus.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # a test dependency (pyproject.toml)
from helpers import ROOT, anchors, require_binary

RULES = ROOT / "alerts/offloader.rules.yml"
RULE_TESTS = ROOT / "alerts/offloader.tests.yml"
DASHBOARD = ROOT / "dashboards/offloader.json"
METRICS_DOC = ROOT / "docs/metrics.md"
RUNBOOKS = ROOT / "docs/runbooks"

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
    "offloader_cycle_last_duration_seconds": ("gauge", set()),
    "offloader_cycle_started_timestamp_seconds": ("gauge", set()),
    "offloader_maintenance_actions_total": ("counter", {"table", "action", "outcome"}),
    "offloader_maintenance_duration_seconds": ("histogram", {"table", "action"}),
    "offloader_maintenance_files_removed_total": ("counter", {"table", "action"}),
    "offloader_maintenance_files_added_total": ("counter", {"table"}),
    "offloader_maintenance_bytes_removed_total": ("counter", {"table", "action"}),
    "offloader_maintenance_snapshots_expired_total": ("counter", {"table"}),
    "offloader_maintenance_last_success_timestamp_seconds": ("gauge", {"table"}),
    "offloader_data_files": ("gauge", {"table"}),
    "offloader_consistency_mismatch_ratio": ("gauge", {"table"}),
    "offloader_consistency_missing_rows": ("gauge", {"table"}),
    "offloader_consistency_extra_rows": ("gauge", {"table"}),
    "offloader_consistency_last_check_timestamp_seconds": ("gauge", {"table"}),
    "offloader_ttl_headroom_seconds": ("gauge", {"table"}),
    "offloader_source_replica_delay_seconds": ("gauge", {"table"}),
    "offloader_build_info": ("gauge", {"version"}),
    "offloader_replica_info": ("gauge", {"replica", "host"}),
    "offloader_replicas_live": ("gauge", set()),
    "offloader_table_owned": ("gauge", {"table"}),
    "offloader_table_held_elsewhere_total": ("counter", {"table"}),
    "offloader_federate_view_failures_total": ("counter", {"table"}),
    "offloader_federate_view_stale": ("gauge", {"table"}),
}
# Every alert -> the runbook (docs/runbooks/<file>) of its family.
ALERT_RUNBOOKS = {
    "OffloadFailure": "offload-failure.md",
    "CommitConflictsFrequent": "offload-failure.md",
    "OffloadLagHigh": "high-lag.md",
    "CycleTooSlow": "slow-cycle.md",
    "MaintenanceFailed": "slow-cycle.md",
    "WatermarkStale": "watermark.md",
    "OffloaderDown": "scheduler-down.md",
    "OffloaderNoCycles": "scheduler-down.md",
    "DataMismatch": "data-mismatch.md",
    "TTLRisk": "ttl-risk.md",
    "ReplicaDelayHigh": "high-lag.md",
}
ALERTS = set(ALERT_RUNBOOKS)
# The issue's alerts (OffloaderNoCycles is an extra one of ours).
REQUIRED_ALERTS = {
    "OffloadFailure", "OffloadLagHigh", "WatermarkStale", "DataMismatch", "OffloaderDown", "CycleTooSlow",
    "MaintenanceFailed", "TTLRisk", "CommitConflictsFrequent",
}  # fmt: skip
PREDECESSOR = {
    "offload_rows_total": "offloader_rows_total",
    "offload_duration_seconds": "offloader_run_duration_seconds",
    "offload_errors_total": "offloader_errors_total",
    "offload_lag_minutes": "offloader_lag_seconds",
    "watermark_timestamp": "offloader_watermark_timestamp_seconds",
    "OffloadLag": "OffloadLagHigh",
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
    return require_binary("promtool")


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
    assert "OffloadFailure" in result.stdout + result.stderr


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
    """Each alert exists once with a severity, summary and description naming the table, and a runbook_url."""
    rules = _rules()
    names = [rule["alert"] for rule in rules]
    assert sorted(names) == sorted(ALERTS) and REQUIRED_ALERTS <= ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, rule["alert"]
        assert annotations["runbook_url"] == f"docs/runbooks/{ALERT_RUNBOOKS[rule['alert']]}#{rule['alert'].lower()}"
        if "offloader_" in rule["expr"] and rule["alert"] not in {"OffloaderNoCycles", "CycleTooSlow"}:
            # per-table alerts: the table is named where the alert is read
            assert "{{ $labels.table }}" in annotations["summary"], rule["alert"]
            assert "{{ $labels.table }}" in annotations["description"], rule["alert"]
    by_name = {rule["alert"]: rule for rule in rules}
    assert by_name["OffloaderDown"]["for"] == "2m" and 'up{job="offloader"} == 0' in by_name["OffloaderDown"]["expr"]
    assert by_name["OffloadLagHigh"]["for"] == "5m" and "offloader_lag_seconds > 1800" in by_name["OffloadLagHigh"]["expr"]
    assert "offloader_consecutive_failures >= 3" in by_name["OffloadFailure"]["expr"]
    assert "changes(offloader_watermark_timestamp_seconds[1h]) == 0" in by_name["WatermarkStale"]["expr"]
    assert "min_over_time(offloader_lag_seconds[1h]) > 0" in by_name["WatermarkStale"]["expr"]
    mismatch = by_name["DataMismatch"]["expr"]
    assert "increase(offloader_window_mismatch_total[15m]) > 0" in mismatch
    assert "offloader_consistency_mismatch_ratio > 0.01" in mismatch
    slow = by_name["CycleTooSlow"]["expr"]
    assert "offloader_cycle_last_duration_seconds > 600" in slow
    assert "time() - (offloader_cycle_started_timestamp_seconds > 0) > 600" in slow
    assert 'offloader_maintenance_actions_total{outcome="failed"}[1d]' in by_name["MaintenanceFailed"]["expr"]
    assert "offloader_ttl_headroom_seconds < 86400" in by_name["TTLRisk"]["expr"]
    assert by_name["ReplicaDelayHigh"]["for"] == "10m"
    assert "offloader_source_replica_delay_seconds > 600" in by_name["ReplicaDelayHigh"]["expr"]
    assert "offloader_commit_conflicts_total" in by_name["CommitConflictsFrequent"]["expr"]
    assert "offloader_cycle_duration_seconds_count[1h]" in by_name["OffloaderNoCycles"]["expr"]


def test_every_runbook_url_points_at_a_runbook_heading() -> None:
    """Each alert's runbook_url names an existing docs/runbooks/*.md file and a heading in it."""
    for rule in _rules():
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        file = ROOT / path
        assert file.parent == RUNBOOKS and file.is_file(), f"{rule['alert']}: {path} does not exist"
        assert anchor in anchors(file), f"{rule['alert']}: no heading #{anchor} in {path}"


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
        "Rows/s per layer",
        "Lag per table",
        "Run duration p95 per table",
        "Errors by type",
        "Watermark age per table",
        "Consistency mismatch ratio",
        "Missing & extra rows",
        "Maintenance actions by outcome (1d)",
        "Files removed & added (1d)",
        "Data files per table",
        "Commit conflicts",
        "Window mismatches",
        "Cycle time vs 15-minute budget",
        "TTL headroom per table",
        "Consecutive failures",
        "Files written per table",
        "Bytes written/s per table",
    ):
        assert required in titles
    exprs = " ".join(t["expr"] for p in _dashboard_panels() for t in p.get("targets", []))
    assert "histogram_quantile(0.95, sum by (table, le) (rate(offloader_run_duration_seconds_bucket" in exprs
    assert 'up{job="offloader"}' in exprs


def test_dashboard_cycle_time_is_drawn_against_the_15_minute_budget() -> None:
    """The cycle-time panel shows the last and the in-flight cycle with the 900 s budget and the 600 s alert line."""
    (panel,) = [p for p in _dashboard_panels() if p["title"] == "Cycle time vs 15-minute budget"]
    exprs = [t["expr"] for t in panel["targets"]]
    assert "vector(900)" in exprs
    assert any("offloader_cycle_last_duration_seconds" in e for e in exprs)
    assert any("time() - (offloader_cycle_started_timestamp_seconds > 0)" in e for e in exprs)
    steps = {s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]}
    assert {600, 900} <= steps and panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line"


def test_dashboard_alert_panels_select_exactly_the_rules_alerts() -> None:
    """The panels over Prometheus' ALERTS list every alert name of the rules, and only those."""
    selectors = [
        t["expr"] for p in _dashboard_panels() for t in p.get("targets", []) if "ALERTS{" in t["expr"]
    ]  # fmt: skip
    assert len(selectors) >= 2
    for expr in selectors:
        match = re.search(r'alertname=~"([^"]+)"', expr)
        assert match, expr
        assert set(match.group(1).split("|")) == ALERTS, expr


# -- docs/metrics.md -------------------------------------------------------------------------------


def _metrics_doc_table() -> dict[str, tuple[str, set[str]]]:
    """The rows of the table under "## The metrics": name -> (type, labels)."""
    text = METRICS_DOC.read_text().split("## The metrics", 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in text.splitlines():
        if not line.startswith("| `offloader_"):
            continue
        name, kind, labels = (cell.strip() for cell in line.strip("|").split("|")[:3])
        out[name.strip("`")] = (kind.split()[0], set(re.findall(r"`([a-z_]+)`", labels)))
    return out


def test_metrics_doc_table_lists_exactly_the_exported_metrics() -> None:
    """The table of docs/metrics.md names every exported metric once, with its type and labels, and nothing else."""
    assert _metrics_doc_table() == EXPECTED_METRICS


def test_metrics_doc_covers_alerts_runbooks_and_the_predecessor() -> None:
    """docs/metrics.md documents every alert with its runbook and maps each predecessor name to ours."""
    text = METRICS_DOC.read_text()
    for alert, runbook in ALERT_RUNBOOKS.items():
        rows = [line for line in text.splitlines() if line.startswith(f"| `{alert}` |")]
        assert len(rows) == 1, alert
        assert f"(runbooks/{runbook}#{alert.lower()})" in rows[0], alert
    for old, new in PREDECESSOR.items():
        rows = [line for line in text.splitlines() if re.search(rf"`{re.escape(old)}[`{{]", line) and f"`{new}" in line]
        assert rows, f"no line maps {old} to {new}"
    for same in ("OffloadFailure", "WatermarkStale", "DataMismatch"):  # the predecessor's names, kept
        assert re.search(rf"\| `{same}` \|.*\| `{same}` \(", text), same
    assert "seconds, not minutes" in text
    assert "**any** window" in text and "1 %" in text, "window mismatches fire on any, the check above 1 %"
    operations = (ROOT / "docs/operations.md").read_text()
    assert "runbooks/index.md" in operations and "### Offloader" not in operations, "runbooks live in docs/runbooks/"
