"""Untrusted text stays text in the served dashboard: real `sbg serve` of a hostile CSV, real Chromium.

Headers, entity ids and a cell hold ``<img onerror>``, ``<script>`` and
``javascript:`` strings; the file raises a limit alert on a hostile entity
and quarantines a hostile cell. After the replay, the alerts table, event
feed, legends, entity filter and health grid have rendered them: no dialog
opens, no script runs, no injected element exists, and the text is shown,
also in the plots' hover tooltips.
"""

import time

import pytest

from tests.conftest import ARTIFACTS, sbg_served, status
from tests.served import ALERTS_TABLE
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
        table = page.locator(ALERTS_TABLE).first
        assert IMG in table.inner_text()
        # The entity filter (choices.js renders labels as HTML) shows the ids as text too.
        chosen = page.locator(".choices__item").all_inner_texts()
        assert any(IMG in t for t in chosen) and any(JS_URL in t or CLOSE_SCRIPT in t for t in chosen), chosen
        # Plot hover tooltips name the entity: sweep the pointer over every plot until they have shown the ids.
        tips = hover_texts(page)
        assert any(IMG in t for t in tips), tips[:10]
        assert page.locator('img[src="x"]').count() == 0 and dialogs == [] and errors == []
        assert page.evaluate("window.__sbg_xss === undefined"), page.evaluate("window.__sbg_xss")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard_hostile.png"))
    finally:
        ctx.close()


def hover_texts(page, steps=7) -> list[str]:
    """The text of every hover tooltip shown while the pointer sweeps a grid over each plot canvas."""
    texts = set()
    for canvas in page.locator("canvas").all():
        box = canvas.bounding_box()
        if not box or box["width"] < 100 or box["height"] < 60:
            continue
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        for i in range(1, steps + 1):
            for j in range(1, steps + 1):
                page.mouse.move(box["x"] + box["width"] * i / (steps + 1), box["y"] + box["height"] * j / (steps + 1))
                page.wait_for_timeout(15)
                for tip in page.locator(".bk-Tooltip").all():
                    if tip.is_visible():  # the tooltip draws its rows in its own shadow root
                        texts.add(tip.evaluate("e => (e.shadowRoot ? e.shadowRoot.textContent : '') + e.textContent"))
    return sorted(texts)
