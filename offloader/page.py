"""The service's page at ``GET /``: one HTML document a person can look at, rendered on the server.

It shows, per table, the layer, cursor, lag, rows and files in Iceberg, TTL headroom and the
last run; the run history (filtered by table and outcome with a plain GET form); the
maintenance audit log; each table's last consistency check; and the live replicas. It
refreshes itself with ``<meta http-equiv="refresh">``: no JavaScript, no framework, no build
step. Every value is escaped, and each value cell carries its raw value in ``data-value`` so
a test can compare the page with ``/status``. It shows no config value but table names and
layers, and no secret: run errors are the messages ``/status`` shows, already redacted.

:func:`render` takes plain data (dicts), so this module depends on nothing else of offloader.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

REFRESH_SECONDS = 10
OUTCOMES = ("committed", "nothing_new", "failed", "skipped", "stopped", "running", "abandoned")

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.6em 0 .4em; }
table { border-collapse: collapse; } th, td { padding: .25em .7em; border-bottom: 1px solid #ddd; text-align: left; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.failed, .risk { color: #b00020; font-weight: 600; } .committed, .ok { color: #0a7a2f; }
.muted { color: #777; } form { margin: .3em 0 .6em; } code { font-size: .95em; }
"""


def duration(seconds: float | None) -> str:
    """A duration as a person reads it: ``45s``, ``12m 5s``, ``3h 20m``, ``2d 4h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds == float("inf"):
        return "no limit"
    s = int(round(seconds))
    for unit, size, sub, subsize in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if s >= size:
            head, rest = divmod(s, size)
            return f"{head}{unit} {rest // subsize}{sub}" if rest // subsize else f"{head}{unit}"
    return f"{s}s"


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _cell(text: Any, value: Any = None, field: str = "", css: str = "") -> str:
    raw = "" if value is None else f' data-value="{escape(json.dumps(value, default=str))}"'
    attrs = f' data-field="{field}"' if field else ""
    cls = f' class="{css}"' if css else ""
    return f"<td{attrs}{raw}{cls}>{escape(str(text))}</td>"


def _table(header: Sequence[str], rows: Iterable[str], empty: str) -> str:
    body = "".join(rows)
    if not body:
        return f'<p class="muted">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _tables(statuses: Sequence[Mapping[str, Any]]) -> str:
    header = ("table", "layer", "cursor", "lag", "Iceberg rows", "files", "TTL headroom", "last run", "rows", "took", "problem")
    rows = []
    for s in statuses:
        run = s.get("last_run") or {}
        headroom = s.get("ttl_headroom_seconds")
        headroom_seconds = float("inf") if headroom == "inf" else headroom
        cursor = " / ".join(str(v) for v in s["cursor"]) if s.get("cursor") else "-"
        problem = s.get("problem") or run.get("error") or ""
        rows.append(
            f'<tr data-table="{escape(s["table"])}">'
            + _cell(s["table"], s["table"], "table")
            + _cell(s.get("layer", ""), s.get("layer"), "layer")
            + _cell(cursor, s.get("cursor"), "cursor")
            + _cell(duration(s.get("lag_seconds")), s.get("lag_seconds"), "lag", "num")
            + _cell("?" if s.get("iceberg_rows") is None else f"{s['iceberg_rows']:,}", s.get("iceberg_rows"), "rows", "num")
            + _cell("?" if s.get("iceberg_files") is None else f"{s['iceberg_files']:,}", s.get("iceberg_files"), "files", "num")
            + _cell(duration(headroom_seconds) + (" at risk" if s.get("ttl_risk") else ""), headroom, "ttl", "risk" if s.get("ttl_risk") else "num")
            + _cell(f"{run['outcome']} {run['started_at']}" if run else "never", run.get("outcome"), "last_run", run.get("outcome", "muted"))
            + _cell(f"{run['rows']:,}" if run else "-", run.get("rows"), "last_rows", "num")
            + _cell(duration(run.get("duration_seconds")), run.get("duration_seconds"), "last_took", "num")
            + _cell(problem, problem or None, "problem", "failed" if problem else "")
            + "</tr>"
        )  # fmt: skip
    return _table(header, rows, "no table is configured")


def _runs(runs: Sequence[Mapping[str, Any]]) -> str:
    header = ("started", "table", "outcome", "window from", "window to", "rows", "took", "replica", "error")
    rows = (
        f'<tr data-run="{escape(r["run_id"])}">'
        + _cell(_when(r["started_at"]))
        + _cell(r["table_name"], r["table_name"], "table")
        + _cell(r["outcome"], r["outcome"], "outcome", r["outcome"])
        + _cell(r.get("window_lo") or "-")
        + _cell(r.get("window_hi") or "-")
        + _cell(f"{r['rows_written']:,}", r["rows_written"], "rows", "num")
        + _cell(duration(r.get("duration_seconds")), None, "", "num")
        + _cell(r.get("replica") or "-")
        + _cell(r.get("error_message") or "", None, "", "failed" if r.get("error_message") else "")
        + "</tr>"
        for r in runs
    )
    return _table(header, rows, "no run matches")


def _audits(audits: Sequence[Mapping[str, Any]], empty: str) -> str:
    header = ("started", "table", "action", "outcome", "dry run", "files before", "files after", "took", "detail")
    rows = (
        "<tr>"
        + _cell(_when(a["started_at"]))
        + _cell(a["table_name"], a["table_name"], "table")
        + _cell(a["action"], a["action"], "action")
        + _cell(a["outcome"], a["outcome"], "outcome", a["outcome"])
        + _cell("yes" if a.get("dry_run") else "no")
        + _cell("-" if a.get("files_before") is None else a["files_before"], None, "", "num")
        + _cell("-" if a.get("files_after") is None else a["files_after"], None, "", "num")
        + _cell(duration(a.get("duration_seconds")), None, "", "num")
        + _cell(_detail(a.get("detail")))
        + "</tr>"
        for a in audits
    )
    return _table(header, rows, empty)


def _detail(text: str | None) -> str:
    """An audit entry's detail: a check's JSON shown by its summary line."""
    if text and text.startswith("{"):
        try:
            return str(json.loads(text).get("summary", text))
        except ValueError:
            return text
    return text or ""


def _replicas(replicas: Sequence[Mapping[str, Any]], owners: Mapping[str, str | None], now: float) -> str:
    header = ("replica", "host", "pid", "version", "started", "last heartbeat", "tables owned")
    rows = (
        f'<tr data-replica="{escape(r["replica_id"])}">'
        + _cell(r["replica_id"], r["replica_id"], "replica")
        + _cell(r["host"])
        + _cell(r["pid"], None, "", "num")
        + _cell(r["version"])
        + _cell(_when(r["started_at"]))
        + _cell(f"{duration(max(now - r['heartbeat_at'], 0.0))} ago")
        + _cell(", ".join(sorted(t for t, o in owners.items() if o == r["replica_id"])) or "-")
        + "</tr>"
        for r in replicas
    )
    return _table(header, rows, "no replica is live (no `offloader run` with a heartbeat)")


def _filters(names: Sequence[str], table: str | None, outcome: str | None, limit: int) -> str:
    def options(values: Sequence[str], chosen: str | None, everything: str) -> str:
        first = f'<option value="">{escape(everything)}</option>'
        return first + "".join(
            f'<option value="{escape(v)}"{" selected" if v == chosen else ""}>{escape(v)}</option>' for v in values
        )

    return (
        '<form method="get" action="/#runs">'
        f'<label>table <select name="table">{options(names, table, "all tables")}</select></label> '
        f'<label>outcome <select name="outcome">{options(OUTCOMES, outcome, "all outcomes")}</select></label> '
        f'<label>last <input name="limit" type="number" min="1" max="1000" value="{limit}"></label> '
        '<button type="submit">show</button></form>'
    )


def render(data: Mapping[str, Any]) -> str:
    """The page for ``data``: version, replica, now, tables, runs, filters, audits, checks, replicas, owners, table_names."""
    now = float(data["now"])
    f = data.get("filters", {})
    runs = data["runs"]
    cut = f" (the newest {len(runs)})" if len(runs) >= int(f.get("limit", 50)) else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        f"<title>offloader · {escape(str(data['replica']))}</title><style>{_STYLE}</style></head><body>"
        f"<h1>offloader {escape(str(data['version']))}</h1>"
        f'<p class="muted">replica <code>{escape(str(data["replica"]))}</code> · {escape(_when(now))} UTC · '
        f'refreshes every {REFRESH_SECONDS}s · JSON at <a href="/status">/status</a>, metrics at <a href="/metrics">/metrics</a></p>'
        f'<h2 id="tables">Tables</h2>{_tables(data["tables"])}'
        f'<h2 id="runs">Run history{escape(cut)}</h2>'
        + _filters(data["table_names"], f.get("table"), f.get("outcome"), int(f.get("limit", 50)))
        + _runs(runs)
        + f'<h2 id="checks">Last consistency check</h2>{_audits(data["checks"], "no check has run yet")}'
        + f'<h2 id="audit">Maintenance audit log</h2>{_audits(data["audits"], "no maintenance has run yet")}'
        + f'<h2 id="replicas">Replicas</h2>{_replicas(data["replicas"], data.get("owners", {}), now)}'
        + "</body></html>"
    )
