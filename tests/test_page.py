"""The page at / of a running service, loaded in a real browser (Debian's chromium, headless).

What the page shows must equal /status; its run history filters by outcome through its own
form; it carries no script and no secret; a screenshot is kept in the test's output
(``test-output/page.png``, or ``$OFFLOADER_TEST_OUTPUT``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import Workspace, daemon, http_get, service_ws, trades_table, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OUTPUT = Path(os.environ.get("OFFLOADER_TEST_OUTPUT", Path(__file__).resolve().parent.parent / "test-output"))


@pytest.fixture
def browser() -> Any:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: apt-get install chromium (tests/run.sh installs it as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def failed_runs(ws: Workspace, table: str) -> int:
    import sqlalchemy

    engine = sqlalchemy.create_engine(sqlalchemy.engine.make_url(ws.pg_dsn).set(drivername="postgresql+psycopg2"))
    try:
        with engine.connect() as conn:
            query = "SELECT count(*) FROM offloader_runs WHERE table_name = :t AND outcome = 'failed'"
            return int(conn.execute(sqlalchemy.text(query), {"t": table}).scalar_one())
    finally:
        engine.dispose()


def cells(row: Any) -> dict[str, Any]:
    """The raw values (``data-value``) of a table row's cells, by field."""
    out = {}
    for cell in row.locator("td[data-field]").all():
        raw = cell.get_attribute("data-value")
        out[str(cell.get_attribute("data-field"))] = None if raw is None else json.loads(raw)
    return out


def test_the_page_shows_what_status_says_in_a_real_browser(ws: Workspace, browser: Any) -> None:
    """Two tables, one failing; after a check and a maintenance: every table row of the page
    equals /status, the history filter shows only failed runs, and nothing secret is shown."""
    port = service_ws(ws, interval="1h")  # one cycle at start, then nothing moves while the page is read
    ws.schedule.update(run_at_start=True)
    ws.tables = [trades_table(), trades_table("broken", source="k2.missing", target="cold.broken")]
    ws.create_trades()
    ws.insert_trades(3000, start="2026-01-01 00:00:00")
    assert ws.run_once().returncode == 1  # trades committed, broken failed
    assert ws.cli("check", "--table", "trades").returncode == 0
    assert ws.cli("maintain", "--table", "trades").returncode == 0
    before = {t["table"]: t["last_run"]["run_id"] for t in json.loads(ws.cli("status", "--json").stdout)}
    with daemon(ws):
        status = wait_for(
            lambda: (
                (r := http_get(port, "/status"))[0] == 200
                and (s := json.loads(r[1]))
                and all(
                    t["last_run"]["run_id"] != before[t["table"]] and t["last_run"]["outcome"] != "running" for t in s["tables"]
                )
                and s
            ),
            what="the service's first cycle",
        )
        page = browser.new_page()
        response = page.goto(f"http://127.0.0.1:{port}/")
        assert response is not None and response.status == 200
        html = page.content()
        OUTPUT.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(OUTPUT / "page.png"), full_page=True)
        again = json.loads(http_get(port, "/status")[1])

        by_table = {t["table"]: t for t in again["tables"]}
        assert [t["last_run"]["run_id"] for t in again["tables"]] == [t["last_run"]["run_id"] for t in status["tables"]]
        rows = page.locator("tr[data-table]").all()
        assert [r.get_attribute("data-table") for r in rows] == [t["table"] for t in again["tables"]]
        for row in rows:
            shown, want = cells(row), by_table[str(row.get_attribute("data-table"))]
            assert shown["table"] == want["table"] and shown["layer"] == want["layer"]
            assert shown["cursor"] == want["cursor"]
            assert shown["lag"] == want["lag_seconds"]
            assert shown["rows"] == want["iceberg_rows"] and shown["files"] == want["iceberg_files"]
            assert shown["ttl"] == want["ttl_headroom_seconds"]
            assert shown["last_run"] == want["last_run"]["outcome"]
            assert shown["last_rows"] == want["last_run"]["rows"]
            assert shown["problem"] == (want["problem"] or want["last_run"]["error"])
        trades = page.locator('tr[data-table="trades"] td[data-field="rows"]').inner_text()
        assert trades == "3,000" and by_table["trades"]["iceberg_files"] >= 1
        assert "k2.missing" in page.locator('tr[data-table="broken"] td[data-field="problem"]').inner_text()
        assert page.locator("#checks ~ table").first.locator("td[data-field=action]").first.inner_text() == "check"
        assert "compact" in page.locator("#audit + table").inner_text() or "expire" in page.locator("#audit + table").inner_text()
        assert page.locator('meta[http-equiv="refresh"]').count() == 1 and page.locator("script").count() == 0
        for secret in (ws.pg_dsn, str(ws.warehouse), "cold.trades", "cold.broken"):
            assert secret not in html

        page.select_option('select[name="outcome"]', "failed")
        page.click('button[type="submit"]')
        page.wait_for_load_state()
        runs = page.locator("tr[data-run]").all()
        assert runs and all(cells(r)["outcome"] == "failed" and cells(r)["table"] == "broken" for r in runs)
        assert len(runs) == failed_runs(ws, "broken") >= 2  # the one-shot cycle's and the service's
        bad = page.goto(f"http://127.0.0.1:{port}/?limit=-1")
        assert bad is not None and bad.status == 400 and "limit" in page.content()
