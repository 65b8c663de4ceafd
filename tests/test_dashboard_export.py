"""The dashboard's report download and upload limit, on the served app: `sbg serve` in a subprocess over a
temporary data directory, Playwright driving Debian's Chromium.

The downloaded report is held against the one ``sbg report`` writes for the same file. Screenshots of
the sidebar and of the downloaded report land in ``artifacts/``.
"""

import asyncio
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from sbg.errors import SbgError
from sbg.io.datasets import DATA_DIR
from sbg.report.style import STATE_COLORS, fmt_bytes
from sbg.stream.monitor import Monitor
from sbg.ui import export
from sbg.ui.dashboard import Dashboard
from tests.conftest import ARTIFACTS, ROOT, Tab, sbg_served, status
from tests.test_report import Opened

DATA = "machine_monitor.csv"
#: With the baseline the bearing drift raises an alert and the report has its baseline section.
BASELINE = "machine_baseline.csv"
#: Small enough that a few thousand rows of the machine monitor are over it.
UPLOAD_LIMIT_MB = 0.1
REPORT_NAME = re.compile(r"sbg_report_machine_monitor_\d{8}T\d{6}Z\.html")
#: Report sections that depend on the run only, not on when or how the report was made.
SECTIONS = ("summary", "signals", "alerts", "baseline", "quality", "settings")
#: Bokeh's ColumnDataSource.from_df (under the alerts Tabulator) still passes inplace= to pandas.
BOKEH_PANDAS_WARNING = pytest.mark.filterwarnings("ignore:The inplace keyword in DataFrame.reset_index")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for name in (DATA, BASELINE):
        shutil.copy(DATA_DIR / name, root / name)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, data_dir):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with sbg_served(log, data_dir / DATA, "--baseline", data_dir / BASELINE, "--data-dir", data_dir, "--speed", "10x",
                    env={"SBG_MAX_UPLOAD_MB": str(UPLOAD_LIMIT_MB)}) as base:
        yield base


def restart(tab, server, speed):
    """Reset the shared replay and start it again at ``speed``."""
    tab.click("Reset")
    tab.wait_for(lambda: status(server)["replay"]["state"] == "idle", what="idle after reset")
    tab.page.get_by_role("button", name=speed, exact=True).click()
    tab.wait_for(lambda: status(server)["replay"]["speed"] == speed, what=f"speed {speed}")
    tab.click("Start")


def download_report(tab, path):
    with tab.page.expect_download(timeout=60_000) as download:
        tab.page.get_by_role("button", name="Download report").click()
    name = download.value.suggested_filename
    assert REPORT_NAME.fullmatch(name), name
    download.value.save_as(path)
    # The sidebar names what was made.
    tab.page.get_by_text(name).wait_for(timeout=10_000)
    return path


def report_content(browser, path, shot=None):
    """What a report says about its run, read in Chromium; and the errors and requests it caused."""
    tab = Opened(browser, path)
    try:
        page = tab.page
        rows = page.locator("tr[data-alert-id]")
        content = {
            "alert_rows": {rows.nth(i).get_attribute("data-alert-id"): rows.nth(i).inner_text()
                       for i in range(rows.count())},
            "header": page.locator("dl.meta").inner_text(),
            "plots": int(page.get_attribute("body", "data-plots")),
            **{name: page.locator(f"section#{name}").inner_text() for name in SECTIONS},
        }
        if shot:
            tab.shot(shot)
        return content, tab.errors + tab.requests + tab.dialogs
    finally:
        tab.close()


def sidebar_shot(tab, name):
    ARTIFACTS.mkdir(exist_ok=True)
    tab.page.mouse.move(800, 400)  # the sidebar at rest, not the button under the pointer
    tab.page.wait_for_timeout(300)
    tab.page.locator("#sidebar").screenshot(path=str(ARTIFACTS / f"dashboard_{name}.png"))


@pytest.mark.browser
@pytest.mark.slow
def test_report_mid_run_says_so_and_the_replay_goes_on(server, browser, tmp_path):
    tab = Tab(browser, server)
    restart(tab, server, "10x")
    tab.wait_for(lambda: status(server)["metrics"]["rows_in"] > 0, what="rows to arrive")
    before = status(server)["metrics"]["rows_in"]
    report = download_report(tab, tmp_path / "mid.html")
    after = status(server)
    assert after["replay"]["state"] == "running"
    tab.wait_for(lambda: status(server)["metrics"]["rows_in"] > after["metrics"]["rows_in"] > before,
                 what="rows to keep arriving after the download")
    sidebar_shot(tab, "sidebar_report_mid_run")
    text = report.read_text(encoding="utf-8")
    assert "Run in progress (running," in text
    rows_in = int(re.search(r"<dt>Rows in</dt><dd>([\d,]+)</dd>", text).group(1).replace(",", ""))
    assert before <= rows_in <= after["metrics"]["rows_in"]
    assert tab.errors == [], tab.errors
    # A tab opened while the replay runs and then reset can hit stale plot references (a known dashboard
    # issue, not this feature's): leave the shared replay stopped for the next test.
    tab.click("Stop")
    tab.wait_for(lambda: status(server)["replay"]["state"] == "stopped", what="the replay to stop")
    tab.close()


@pytest.mark.browser
@pytest.mark.slow
def test_downloaded_report_matches_the_cli_report(server, browser, data_dir, tmp_path):
    tab = Tab(browser, server)
    restart(tab, server, "max")
    tab.wait_for(lambda: status(server)["replay"]["state"] == "finished", timeout=120, what="the replay to finish")
    served = download_report(tab, tmp_path / "served.html")
    sidebar_shot(tab, "sidebar_report")
    tab.shot("report_downloaded")
    assert tab.errors == [], tab.errors
    tab.close()

    cli = tmp_path / "cli.html"
    proc = subprocess.run([sys.executable, "-m", "sbg.cli", "report", data_dir / DATA, "--baseline", data_dir / BASELINE,
                           "-o", cli],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr

    got, problems = report_content(browser, served, shot="downloaded")
    assert problems == []
    want, _ = report_content(browser, cli)
    assert got["alert_rows"] and got["plots"] > 0 and "Baseline comparison" in got["baseline"]
    assert got == want
    text = served.read_text(encoding="utf-8")
    assert "Run in progress" not in text and "<title>sbg report: machine_monitor</title>" in text


@pytest.mark.browser
@pytest.mark.slow
def test_an_upload_over_the_limit_is_refused_and_nothing_is_written(server, browser, data_dir):
    before = sorted(p.relative_to(data_dir) for p in data_dir.rglob("*"))
    lines = (DATA_DIR / DATA).read_text().splitlines(keepends=True)
    big = "".join(lines[:4000]).encode()
    assert len(big) > UPLOAD_LIMIT_MB * 1e6
    tab = Tab(browser, server)
    upload = tab.page.locator("input[type=file]")
    tab.page.get_by_text(f"up to {UPLOAD_LIMIT_MB:g} MB").wait_for(timeout=10_000)
    upload.set_input_files(files=[{"name": "big run.csv", "mimeType": "text/csv", "buffer": big}])
    message = tab.page.get_by_text("over the upload limit")
    message.wait_for(timeout=20_000)
    assert re.fullmatch(rf"big_run\.csv is {re.escape(fmt_bytes(len(big)))}, over the upload limit of {UPLOAD_LIMIT_MB:g} MB; "
                        r"it was not saved\.", message.inner_text())
    sidebar_shot(tab, "sidebar_upload_refused")
    assert sorted(p.relative_to(data_dir) for p in data_dir.rglob("*")) == before

    # Under the limit, the same file's head is saved and offered.
    upload.set_input_files(files=[{"name": "small run.csv", "mimeType": "text/csv",
                                   "buffer": "".join(lines[:300]).encode()}])
    tab.page.get_by_text("Uploaded uploads/small_run.csv.").wait_for(timeout=20_000)
    assert (data_dir / "uploads" / "small_run.csv").is_file()
    assert tab.errors == [], tab.errors
    tab.close()


@BOKEH_PANDAS_WARNING
def test_a_failed_report_shows_an_error_and_keeps_the_button(monkeypatch, tmp_path):
    monitor = Monitor([DATA_DIR / DATA], speed="max")
    dashboard = Dashboard(monitor, data_dir=str(tmp_path))

    def fail(snap, options=None):
        raise RuntimeError("disk <full>")

    monkeypatch.setattr(export, "render", fail)
    try:
        # On a thread of its own: Playwright's sync API may hold an event loop on this one.
        with ThreadPoolExecutor(1) as pool, pytest.raises(RuntimeError, match="disk <full>"):
            pool.submit(lambda: asyncio.run(dashboard.export.report())).result()
        shown = dashboard.export.report_status.object
        assert "The report could not be made: RuntimeError: disk &lt;full&gt;" in shown
        assert STATE_COLORS["critical"] in shown
        assert not dashboard.export.report_button.loading and dashboard.export.report_button.data is None
    finally:
        dashboard.close()
        monitor.close()


@BOKEH_PANDAS_WARNING
def test_the_upload_limit_comes_from_the_environment(monkeypatch, tmp_path):
    monitor = Monitor([DATA_DIR / DATA], speed="max")
    monkeypatch.setenv("SBG_MAX_UPLOAD_MB", "2.5")
    dashboards = [Dashboard(monitor, data_dir=str(tmp_path)), Dashboard(monitor, data_dir=str(tmp_path), max_upload_mb=7)]
    try:
        assert [d.max_upload_mb for d in dashboards] == [2.5, 7]
        assert "up to 2.5 MB" in dashboards[0].sources.upload_status.object
        monkeypatch.setenv("SBG_MAX_UPLOAD_MB", "lots")
        with pytest.raises(SbgError, match="SBG_MAX_UPLOAD_MB='lots'"):
            Dashboard(monitor, data_dir=str(tmp_path))
    finally:
        for d in dashboards:
            d.close()
        monitor.close()
