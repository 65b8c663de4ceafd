"""Untrusted text stays text in the served dashboard: real `sbg serve` of a hostile CSV, real Chromium.

Headers, entity ids and a cell hold ``<img onerror>``, ``<script>`` and
``javascript:`` strings; the file raises a limit alert on a hostile entity
and quarantines a hostile cell. After the replay, the alerts table, event
feed, legends, entity filter and health grid have rendered them: no dialog
opens, no script runs, no injected element exists, and the text is shown.
"""

import time

import pytest

from tests.conftest import ARTIFACTS, sbg_served, status
from tests.test_report import CLOSE_SCRIPT, IMG, JS_URL, hostile_csv

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("xss")
    data, config = hostile_csv(root)
    with sbg_served(root / "serve.log", data, "--config", config, "--data-dir", root, "--speed", "max",
                    "--autostart") as base:
        yield base


def test_hostile_text_renders_as_text_in_the_dashboard(browser, hostile_server):
    ctx = browser.new_context(viewport={"width": 1366, "height": 900})
    page = ctx.new_page()
    dialogs, errors = [], []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    # A script that ran would set this flag instead of (or besides) opening a dialog.
    page.add_init_script("window.alert = (m) => { window.__sbg_xss = String(m); };")
    try:
        page.goto(hostile_server + "/monitor")
        page.wait_for_selector(".sbg-kpis", timeout=60_000)
        deadline = time.monotonic() + 60
        while status(hostile_server)["replay"]["state"] != "finished" and time.monotonic() < deadline:
            time.sleep(0.5)
        st = status(hostile_server)
        assert st["replay"]["state"] == "finished"
        assert st["metrics"]["alerts_total"] >= 1 and st["metrics"]["rows_quarantined"] >= 1
        page.wait_for_timeout(2500)  # the slow update (table, feed, grid) runs once a second
        assert page.evaluate("window.__sbg_xss === undefined"), page.evaluate("window.__sbg_xss")
        assert dialogs == [] and errors == []
        # No injected element anywhere, shadow roots included (Playwright's CSS pierces them).
        assert page.locator('img[src="x"]').count() == 0
        assert page.locator('a[href^="javascript:"]').count() == 0
        # The hostile entity raised the alert: its id is shown, as text, in the alerts table.
        table = page.locator(".tabulator").first
        assert IMG in table.inner_text()
        # The entity filter (choices.js renders labels as HTML) shows the ids as text too.
        chosen = page.locator(".choices__item").all_inner_texts()
        assert any(IMG in t for t in chosen) and any(JS_URL in t or CLOSE_SCRIPT in t for t in chosen), chosen
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard_hostile.png"))
    finally:
        ctx.close()
