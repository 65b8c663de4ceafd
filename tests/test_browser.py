"""The served dashboard in a real browser: `sbg serve` in a subprocess, Playwright driving Debian's Chromium.

Screenshots land in ``artifacts/`` for a person to look at.
"""

import json
import time
import urllib.error
from pathlib import Path

import pytest

from tests.conftest import Tab, get, sbg_served, status
from tests.served import ALERTS_TABLE

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with sbg_served(tmp_path_factory.mktemp("serve") / "serve.log", "--speed", "100x") as base:
        yield base


def test_page_loads_without_console_errors(server, browser):
    tab = Tab(browser, server)
    tab.page.wait_for_timeout(1500)
    assert tab.state() == "idle"
    assert "Press" in tab.page.locator(".sbg-empty").first.inner_text()
    tab.shot("idle_1366")
    wide = Tab(browser, server, 1920, 1080)
    wide.shot("idle_1920")
    assert tab.errors == [] and wide.errors == []
    tab.close()
    wide.close()


def test_start_pause_resume_reset(server, browser):
    tab = Tab(browser, server)
    tab.click("Start")
    tab.wait_for(lambda: tab.kpi("rows_in") > 0, what="rows to arrive")
    tab.wait_for(lambda: tab.points() > 100, what="points on the plots")
    assert tab.state() == "running"
    tab.page.wait_for_timeout(1500)
    tab.shot("running")

    tab.click("Pause")
    tab.wait_for(lambda: tab.state() == "paused", what="paused state")
    tab.page.wait_for_timeout(800)
    frozen_rows, frozen_points = tab.kpi("rows_in"), tab.points()
    tab.page.wait_for_timeout(2000)
    assert tab.kpi("rows_in") == frozen_rows
    assert tab.points() == frozen_points
    tab.shot("paused")

    tab.click("Resume")
    tab.wait_for(lambda: tab.kpi("rows_in") > frozen_rows, what="rows after resume")
    assert tab.state() == "running"

    tab.click("Reset")
    tab.wait_for(lambda: tab.state() == "idle", what="idle after reset")
    tab.wait_for(lambda: tab.kpi("rows_in") == 0, what="zero rows after reset")
    assert status(server)["metrics"]["rows_in"] == 0
    assert tab.errors == []
    tab.close()


def test_closing_tabs_frees_their_sessions(server, browser):
    # Tabs of earlier tests are freed a few seconds after they close: start from a settled count.
    deadline = time.monotonic() + 30
    while status(server)["sessions"] and time.monotonic() < deadline:
        time.sleep(0.5)
    before = status(server)
    tabs = [Tab(browser, server) for _ in range(3)]
    during = status(server)
    assert during["sessions"] >= before["sessions"] + 3
    assert during["subscribers"] >= before["subscribers"] + 3
    for tab in tabs:
        tab.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = status(server)
        if after["sessions"] <= before["sessions"] and after["subscribers"] <= before["subscribers"]:
            break
        time.sleep(0.5)
    assert after["sessions"] <= before["sessions"], after
    assert after["subscribers"] <= before["subscribers"], after


def test_status_endpoints_agree(server):
    st = status(server)
    m = st["metrics"]
    assert m["rows_in"] == m["rows_ok"] + m["rows_quarantined"]
    assert st["replay"]["state"] in ("idle", "running", "paused", "stopped", "finished")
    assert st["source"] == "battery_fleet" and st["started_at"]
    code, text = get(server + "/metrics")
    assert code == 200
    line = next(ln for ln in text.splitlines() if ln.startswith("sbg_rows_in_total{"))
    assert float(line.rsplit(" ", 1)[1]) >= m["rows_in"]
    # How far the sessions' updates are slowed to keep the loop on time, in both (sbg.serve.pacing).
    pace = st["display"]
    assert 1.0 <= pace["stretch"] <= 10 and pace["lag_p50_ms"] <= pace["lag_p95_ms"] <= pace["lag_max_ms"]
    assert 0 <= pace["update_share"] and pace["updates_deferred"] >= 0
    gauges = dict(ln.split(" ") for ln in text.splitlines() if ln.startswith(("sbg_display", "sbg_loop_lag")))
    assert set(gauges) == {"sbg_display_stretch", "sbg_display_update_share", "sbg_loop_lag_p95_seconds"}
    assert float(gauges["sbg_display_stretch"]) >= 1.0 and float(gauges["sbg_display_update_share"]) >= 0
    code, body = get(server + "/api/alerts?limit=3")
    alerts = json.loads(body)
    assert code == 200 and alerts["count"] == len(alerts["alerts"]) <= 3
    with pytest.raises(urllib.error.HTTPError) as bad:
        get(server + "/api/alerts?limit=nope")
    assert bad.value.code == 400
    bad.value.close()


def test_fleet_faults_reach_the_alerts_table(server, browser):
    tab = Tab(browser, server)
    tab.click("Reset")
    tab.wait_for(lambda: tab.state() == "idle", what="idle after reset")
    tab.page.get_by_role("button", name="max", exact=True).click()
    tab.click("Start")
    tab.wait_for(lambda: status(server)["replay"]["state"] == "finished", timeout=120, what="the replay to finish")
    alerts = json.loads(get(server + "/api/alerts?limit=100")[1])["alerts"]
    entities = {a["entity"] for a in alerts}
    assert {"B02", "B03", "B04", "B05", "B06", "B07", "B08"} <= entities
    table = tab.page.locator(ALERTS_TABLE).first
    # The table shows 10 alerts a page, newest first (the API's order): the newest five are on page one.
    newest = {a["entity"] for a in alerts[:5]}
    assert len(newest) >= 3, alerts
    # The table refreshes on the page's slower tick: wait for it (a loaded machine just takes longer).
    tab.wait_for(lambda: all(e in table.inner_text() for e in newest), timeout=120,
                 what="the finished run's alerts in the table")
    text = table.inner_text()
    for entity in newest:
        assert entity in text
    assert "limit breached" in text and "critical" in text
    with tab.page.expect_download() as download:
        tab.page.get_by_role("button", name="Alerts CSV").click()
    csv_text = Path(download.value.path()).read_text()
    assert csv_text.count("\n") == len(alerts) + 1
    tab.shot("finished")
    assert tab.errors == []
    # Reset hid the filled health grid: no view may fail doing so (it once did, inside Panel).
    assert status(server)["metrics"]["errors"] == 0, status(server)["metrics"]["last_error"]
    tab.close()


def test_tabs_share_state_and_a_late_tab_shows_history(server, browser):
    first = Tab(browser, server)
    first.click("Reset")
    first.page.get_by_role("button", name="100x", exact=True).click()
    first.click("Start")
    first.wait_for(lambda: first.kpi("rows_in") > 2000, what="a few thousand rows")
    late = Tab(browser, server)
    # History first: the late tab's plots are drawn from retained rows at once.
    late.wait_for(lambda: late.points() > 500, timeout=15, what="history in the late tab")
    late.shot("late_tab")
    first.click("Pause")
    late.wait_for(lambda: late.state() == "paused", what="the pause to reach the other tab")
    # Both tabs settle on the server's count (each renders its own messages, at its own pace).
    rows = status(server)["metrics"]["rows_in"]
    late.wait_for(lambda: late.kpi("rows_in") == first.kpi("rows_in") == rows, timeout=20,
                  what=f"both tabs to show the server's {rows} rows")
    assert first.errors == [] and late.errors == []
    first.close()
    late.close()


#: The page's HTML with that of every shadow root in it (where Panel draws its panes).
EVERY_HTML = """() => {
  const parts = [document.documentElement.outerHTML];
  const walk = root => {
    for (const e of root.querySelectorAll("*"))
      if (e.shadowRoot) { parts.push(e.shadowRoot.innerHTML); walk(e.shadowRoot); }
  };
  walk(document);
  return parts.join(" ");
}"""


def test_a_data_file_deleted_while_served_is_shown_and_logged_once(browser, tmp_path):
    """The served file goes while the page runs: the page says which file and that the replay stopped,
    without the server's paths, and the server's log has one line for it, not a traceback."""
    import shutil

    from sbg.io.datasets import DATA_DIR

    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "machine_monitor.csv"
    shutil.copy(DATA_DIR / "machine_monitor.csv", path)
    log = tmp_path / "serve.log"
    # On the way out the server's log must hold no traceback through sbg (tests/served.py).
    with sbg_served(log, "--speed", "1000x", "--data-dir", str(folder), str(path)) as base:
        tab = Tab(browser, base)
        tab.click("Start")
        tab.wait_for(lambda: tab.kpi("rows_in") > 0, what="rows to arrive")
        path.unlink()
        tab.click("Reset")
        tab.wait_for(lambda: tab.state() == "idle", what="idle after reset")
        tab.click("Start")
        tab.wait_for(lambda: tab.state() == "stopped", timeout=120, what="the replay to stop on the missing file")
        said = "machine_monitor.csv: No such file or directory; the replay has stopped"
        banner, feed = tab.page.locator(".sbg-banner").first, tab.page.locator(".sbg-feed").first
        tab.wait_for(lambda: said in banner.inner_text(), timeout=60, what="the error banner")
        assert "goes on" not in banner.inner_text()
        tab.wait_for(lambda: f"cannot read the data: {said}" in feed.inner_text(), timeout=60, what="the event")
        late = Tab(browser, base)  # a tab opened afterwards tells the same
        late.wait_for(lambda: "machine_monitor.csv: No such file" in late.page.locator(".sbg-banner").first.inner_text(),
                      timeout=60, what="the error in a tab opened later")
        for page in (tab.page, late.page):
            shown = page.evaluate(EVERY_HTML)
            assert "machine_monitor.csv: No such file" in shown and str(tmp_path) not in shown
        tab.shot("deleted_file")
        assert tab.errors == [] and late.errors == []
        tab.close()
        late.close()
    lines = [ln for ln in log.read_text().splitlines() if "machine_monitor.csv" in ln]
    assert len(lines) == 1 and "cannot read the data" in lines[0], lines
