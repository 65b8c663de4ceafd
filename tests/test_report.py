"""The HTML report: built by ``sbg report`` and ``Monitor.report``, opened in a real Chromium with the network cut.

Data is generated here (seeded) except the bundled machine monitor and its
baseline, which exercise the single-entity layout and the baseline section.
Screenshots land in ``artifacts/`` for a person to look at.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sbg.errors import SbgError
from sbg.io.datasets import DATA_DIR
from sbg.io.outputs import write_text_atomic
from sbg.report.build import ReportOptions, Snapshot, _Run, build_report, render
from sbg.report.downsample import minmax_indices, with_breaks
from sbg.stream.monitor import Monitor

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
SBG = [sys.executable, "-m", "sbg.cli"]
ENV = {**os.environ, "NO_COLOR": "1", "PYTHONDONTWRITEBYTECODE": "1"}
ENV.pop("PYTHONWARNINGS", None)

IMG = "<img src=x onerror=alert(1)>"
SCRIPT = "<script>alert(2)</script>"
JS_URL = "javascript:alert(3)"
CLOSE_SCRIPT = "</script><script>alert(4)</script>"

#: Figures Bokeh has drawn (views of type Figure, finished, with a visible size).
DRAWN_FIGURES = """() => {
  const stack = Object.values(Bokeh.index), drawn = [];
  while (stack.length) {
    const v = stack.pop();
    if (v.child_views) stack.push(...v.child_views);
    if (v.model.type === "Figure" && v.has_finished() && v.el.getBoundingClientRect().width > 100) drawn.push(v);
  }
  return drawn.length;
}"""
CANVASES = """() => {
  let n = 0;
  const walk = (root) => { for (const el of root.querySelectorAll("*")) {
    if (el.tagName === "CANVAS" && el.width > 0) n++;
    if (el.shadowRoot) walk(el.shadowRoot);
  } };
  walk(document);
  return n;
}"""
#: Screen position of the first bar of the alert timeline (the Figure with a categorical y axis).
TIMELINE_BAR = """() => {
  const stack = Object.values(Bokeh.index);
  while (stack.length) {
    const v = stack.pop();
    if (v.child_views) stack.push(...v.child_views);
    if (v.model.type === "Figure" && v.model.y_range.type === "FactorRange") {
      const d = v.model.renderers[0].data_source.data, box = v.el.getBoundingClientRect();
      return [box.left + v.frame.x_scale.compute((d.start[0] + d.end[0]) / 2),
              box.top + v.frame.y_scale.compute(d.entity[0]), d.entity[0]];
    }
  }
  return null;
}"""


def run(*args, timeout=300):
    return subprocess.run([*SBG, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def fleet_csv(path, n=1500, seed=3):
    """Three batteries at 1 Hz: an over-temperature run on bat-2, a 5-minute gap on bat-3, one bad row."""
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp("2024-06-03 08:00:00")
    rows = []
    for i in range(n):
        for e in ("bat-1", "bat-2", "bat-3"):
            if e == "bat-3" and 800 <= i < 1100:
                continue
            temp = 25 + 0.2 * np.sin(i / 50) + rng.normal(0, 0.05)
            if e == "bat-2" and 1000 <= i < 1040:
                temp = 58.0
            rows.append(f"{t0 + pd.Timedelta(seconds=i):%Y-%m-%dT%H:%M:%S},{e},{3.7 + rng.normal(0, 0.004):.4f},"
                        f"{temp:.2f}")
    rows.insert(500, "2024-06-03T08:02:47,bat-1,n/a?,25.0")
    path.write_text("timestamp,battery_id,voltage_v,temperature_c\n" + "\n".join(rows) + "\n")
    return path


def hostile_csv(root):
    """Entity ids, headers and a cell that are HTML or script, with a limit breach, a gap and a bad row."""
    rng = np.random.default_rng(0)
    t0 = pd.Timestamp("2024-06-03 08:00:00")
    lines = [f"time,device,{IMG},{SCRIPT}"]
    for i in range(400):
        t = t0 + pd.Timedelta(seconds=i + (300 if i >= 200 else 0))
        for e in (IMG, JS_URL, CLOSE_SCRIPT):
            v = 50.0 if (e == IMG and 250 <= i < 260) else 5 + rng.normal(0, 0.1)
            lines.append(f"{t:%Y-%m-%dT%H:%M:%S},{e},{v:.3f},{rng.normal(1, 0.1):.3f}")
    lines.insert(100, f"2024-06-03T08:00:33,{IMG},<script>alert(5)</script>,1.0")
    data = root / "hostile.csv"
    data.write_text("\n".join(lines) + "\n")
    config = root / "hostile.yaml"
    config.write_text(f'detectors:\n  limits:\n    limits: {{"{IMG}": [0, 10]}}\n')
    return data, config


def log_ids(db) -> dict:
    with sqlite3.connect(db) as conn:
        return {row[0]: row[1:] for row in conn.execute("SELECT id, entity, severity, rule FROM alerts")}


# ----------------------------------------------------------------------------- making reports


@pytest.fixture(scope="module")
def cli_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = fleet_csv(root / "fleet.csv")
    out, db = root / "report.html", root / "alerts.sqlite"
    proc = run("report", data, "-o", out, "--alerts-db", db, "--title", "Bench fleet")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return {"path": out, "db": db, "stdout": proc.stdout, "figures": 2 * 3 + 1}


@pytest.fixture(scope="module")
def api_report(tmp_path_factory):
    # As in a notebook or the served app, Panel's models are loaded; their scripts must not leak in.
    import panel.models.esm  # noqa: F401

    root = tmp_path_factory.mktemp("api")
    db = root / "alerts.sqlite"
    monitor = Monitor([DATA_DIR / "machine_monitor.csv"], baseline=DATA_DIR / "machine_baseline.csv",
                      alerts_db=db, speed="max")
    monitor.run_to_end()
    path = monitor.report(root / "report.html")
    yield {"path": path, "db": db, "monitor": monitor, "figures": 4 + 1 + 4}
    monitor.close()


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    data, config = hostile_csv(root)
    out, db = root / "report.html", root / "alerts.sqlite"
    proc = run("report", data, "-o", out, "--config", config, "--alerts-db", db, "--title", f"Run {SCRIPT}")
    assert proc.returncode == 0, proc.stderr
    return {"path": out, "db": db}


def test_cli_writes_a_self_contained_report(cli_report):
    text = cli_report["path"].read_text(encoding="utf-8")
    assert cli_report["path"].name in cli_report["stdout"] and "alerts" in cli_report["stdout"]
    assert text.startswith("<!DOCTYPE html>") and "<title>Bench fleet</title>" in text
    assert_self_contained(text)
    for section in ("summary", "signals", "alerts", "baseline", "quality", "settings"):
        assert f'id="{section}"' in text
    # Quarantine and gaps are reported with the row's file, line and raw text.
    assert "fleet.csv:502" in text and "n/a?" in text
    assert "bat-3" in text.split('id="quality"')[1]
    assert "No baseline given" in text


def assert_self_contained(text):
    """Nothing is fetched: no script, style, image or frame files, no imports."""
    assert not re.search(r"""<(script|link|img|iframe)\b[^>]*\s(src|href)=""", text, re.I)
    assert "@import" not in text
    assert len(text.encode()) < 5_000_000


def test_api_writes_a_report_and_leaves_the_monitor_unchanged(api_report):
    assert_self_contained(api_report["path"].read_text(encoding="utf-8"))
    monitor = api_report["monitor"]
    before = (monitor.metrics.as_dict()["rows_in"], len(monitor.history), monitor.alerts.to_dict("records"))
    text = build_report(monitor, title="Again")
    assert (monitor.metrics.as_dict()["rows_in"], len(monitor.history), monitor.alerts.to_dict("records")) == before
    assert "<title>Again</title>" in text and "Baseline comparison" in text and "KS distance" in text
    assert api_report["path"].read_text(encoding="utf-8").count('class="signal"') == 4
    with pytest.raises(SbgError, match="max_entity"):
        monitor.report(api_report["path"].with_name("x.html"), max_entity=3)
    with pytest.raises(SbgError, match="at least 1"):
        monitor.report(api_report["path"].with_name("x.html"), max_entities=0)
    assert not api_report["path"].with_name("x.html").exists()


def test_report_mid_run_says_so_and_does_not_disturb_the_replay(tmp_path):
    data = fleet_csv(tmp_path / "fleet.csv", n=1200)
    reference = Monitor([data], speed="max", max_chunk_rows=200)
    reference.run_to_end()
    monitor = Monitor([data], speed="max", max_chunk_rows=200)
    reports = []

    def on_tick():
        if len(reports) < 2 and monitor.replay.rows_emitted > 1000 * (len(reports) + 1):
            reports.append(build_report(monitor))

    monitor.run_to_end(on_tick=on_tick)
    assert len(reports) == 2
    assert all("Run in progress" in r for r in reports)
    assert "Run in progress" not in build_report(monitor)
    pd.testing.assert_frame_equal(monitor.alerts, reference.alerts)


def test_report_while_a_replay_thread_runs(tmp_path):
    data = fleet_csv(tmp_path / "fleet.csv", n=1500)
    monitor = Monitor([data], speed="max", max_chunk_rows=50)
    worker = threading.Thread(target=monitor.run_to_end)
    worker.start()
    built = 0
    while worker.is_alive() or built == 0:
        assert build_report(monitor).rstrip().endswith("</html>")
        built += 1
    worker.join()
    assert monitor.metrics.reconciles and monitor.replay.state == "finished"


def test_cli_report_errors_name_the_path(tmp_path):
    data = fleet_csv(tmp_path / "fleet.csv", n=50)
    proc = run("report", data, "-o", tmp_path / "missing" / "r.html")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("sbg: error: ") and str(tmp_path / "missing") in proc.stderr
    proc = run("report", tmp_path / "nope.csv", "-o", tmp_path / "r.html")
    assert proc.returncode == 3 and "nope.csv" in proc.stderr
    assert not (tmp_path / "r.html").exists()


def test_report_of_an_empty_run_has_designed_empty_sections(tmp_path):
    data = fleet_csv(tmp_path / "fleet.csv", n=50)
    monitor = Monitor([data], speed="max")
    text = build_report(monitor)
    assert "No data yet" in text and "No alerts" in text and 'data-plots="0"' in text


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_report_file_gets_the_permissions_of_the_umask(tmp_path, umask):
    monitor = Monitor([fleet_csv(tmp_path / "fleet.csv", n=50)], speed="max")
    old = os.umask(umask)
    try:
        path = monitor.report(tmp_path / "report.html")
        again = monitor.report(path)  # replacing a report too
        summary = write_text_atomic(tmp_path / "summary.json", "{}")
    finally:
        os.umask(old)
        monitor.close()
    assert again == path
    for p in (path, summary):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, oct(p.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet.csv", "report.html", "summary.json"]


def tied_peak_snapshot(tmp_path, with_mean: bool):
    """A snapshot whose history has one episode on bat-1's temperature: four rows tie at score 1.0 and the
    most extreme value (58.0, 33 above the normal 25) is the third of them, not the first (40.0)."""
    monitor = Monitor([fleet_csv(tmp_path / "fleet.csv", n=50)], speed="max")
    snap = Snapshot.of(monitor)
    monitor.close()
    n = 100
    temp = 25 + 0.05 * np.sin(np.arange(n))
    score = np.zeros(n)
    temp[50:54] = [40.0, 5.0, 58.0, 45.0]  # the first row at 1.0 is not the extreme one
    score[50:54] = 1.0
    temp[54:58], score[54:58] = 35.0, 0.9
    history = pd.DataFrame({
        "timestamp": pd.date_range("2024-06-03 08:00:00", periods=n, freq="s"), "entity": "bat-1",
        "temperature_c": temp, "temperature_c__score": score, "anomaly_score": score, "is_anomaly": score >= 0.5,
        "reason": np.where(score >= 0.5, "zscore:temperature_c", ""), "quality": "",
    })
    if with_mean:
        history["temperature_c__mean"] = 25.0
    return dataclasses.replace(snap, history=history, signals=["temperature_c"])


@pytest.mark.parametrize("with_mean", [True, False], ids=["rolling mean", "median"])
def test_top_anomalies_show_the_most_extreme_value_among_tied_peak_scores(tmp_path, with_mean):
    snap = tied_peak_snapshot(tmp_path, with_mean)
    (episode,) = _Run(snap, ReportOptions()).episodes()
    assert episode["peak_score"] == 1.0 and episode["rows"] == 8
    assert episode["peak"] == 58.0 and episode["peak_time"] == "08:00:52"
    table = re.search(r'<table class="anomalies">.*?</table>', render(snap), re.S).group(0)
    heads = re.findall(r"<th[^>]*>(.*?)</th>", table)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", table)
    row = dict(zip(heads, cells, strict=True))
    assert row["peak score"] == "1.00"
    assert row["most extreme value"] == "58" and row["its time"] == "08:00:52" and row["from"] == "08:00:50"


def test_a_one_row_anomaly_lasts_one_row_in_the_report(tmp_path):
    snap = tied_peak_snapshot(tmp_path, with_mean=True)
    history = snap.history.copy()
    history.loc[51:57, ["temperature_c__score", "anomaly_score"]] = 0.0
    history["is_anomaly"] = history["anomaly_score"] >= 0.5
    table = re.search(r'<table class="anomalies">.*?</table>', render(dataclasses.replace(snap, history=history)),
                      re.S).group(0)
    row = dict(zip(re.findall(r"<th[^>]*>(.*?)</th>", table), re.findall(r"<td[^>]*>(.*?)</td>", table), strict=True))
    assert row["rows flagged"] == "1" and row["lasting"] == "one row"


# ----------------------------------------------------------------------------- downsampling


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3000), buckets=st.integers(1, 200), seed=st.integers(0, 10**6),
       nan_share=st.sampled_from([0.0, 0.1, 0.9]))
def test_minmax_keeps_every_bucket_extreme_and_every_kept_row(n, buckets, seed, nan_share):
    rng = np.random.default_rng(seed)
    x = np.sort(rng.integers(0, 10**6, n)).astype("int64")
    y = rng.normal(0, 1, n)
    y[rng.random(n) < nan_share] = np.nan
    keep = rng.choice(n, size=min(n, 5), replace=False)
    idx = minmax_indices(x, y, buckets, keep=keep)
    assert np.all(np.diff(idx) > 0) and set(keep) <= set(idx.tolist())
    if n <= 2 * buckets:
        assert len(idx) == n
        return
    assert len(idx) <= 2 * buckets + len(keep) + buckets
    edges = np.linspace(x[0], x[-1], buckets + 1)
    # Against the plain computation: every bucket's min and max value appear among the kept rows.
    b = np.clip(((x - x[0]) * (buckets / max(x[-1] - x[0], 1))).astype("int64"), 0, buckets - 1)
    for k in np.unique(b):
        vals = y[b == k]
        if np.isfinite(vals).any():
            kept = y[idx][b[idx] == k]
            assert np.nanmin(vals) in kept and np.nanmax(vals) in kept
    assert len(edges) == buckets + 1


def test_minmax_keeps_a_one_row_spike():
    y = np.zeros(100_000)
    y[12_345] = 9.0
    idx = minmax_indices(np.arange(100_000), y, buckets=500)
    assert 12_345 in idx and len(idx) <= 1000


def test_lines_break_only_across_gaps():
    assert with_breaks(np.array([0, 1, 7, 8]), np.array([7])).tolist() == [2]
    assert with_breaks(np.array([0, 1, 8]), np.array([7])).tolist() == [2]
    # A gap before the first kept row or after the last one breaks nothing.
    assert with_breaks(np.array([3, 4]), np.array([1, 9])).tolist() == []


# ----------------------------------------------------------------------------- in a browser


class Opened:
    """A report in its own browser context, every non-file request refused and recorded."""

    def __init__(self, browser, path, width=1366, media="screen"):
        self.context = browser.new_context(viewport={"width": width, "height": 900}, service_workers="block")
        self.requests, self.errors, self.dialogs = [], [], []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.emulate_media(media=media)
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", self._dialog)
        self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url[:300]} {r.failure}")
                     if r.url.startswith("file:") else None)
        self.page.goto(Path(path).as_uri())
        self.page.wait_for_selector("html[data-rendered]", timeout=60_000)

    def _route(self, route):
        url = route.request.url
        if url.startswith("file:"):
            route.continue_()
        else:
            self.requests.append(url)
            route.abort()

    def _dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def shot(self, name):
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"report_{name}.png"), full_page=True)

    def close(self):
        self.context.close()


def check_alert_table(page, db):
    rows = page.locator("tr[data-alert-id]")
    shown = {rows.nth(i).get_attribute("data-alert-id"): rows.nth(i).inner_text() for i in range(rows.count())}
    logged = log_ids(db)
    assert logged and set(shown) == set(logged)
    for ident, (entity, severity, rule) in logged.items():
        assert entity in shown[ident] and severity in shown[ident] and rule in shown[ident]


@pytest.mark.browser
@pytest.mark.parametrize("which", ["cli_report", "api_report"])
def test_report_renders_offline_with_every_plot(browser, which, request):
    report = request.getfixturevalue(which)
    tab = Opened(browser, report["path"])
    try:
        assert tab.requests == [] and tab.errors == [] and tab.dialogs == []
        assert int(tab.page.get_attribute("body", "data-plots")) == report["figures"]
        assert tab.page.evaluate(DRAWN_FIGURES) == report["figures"]
        assert tab.page.evaluate(CANVASES) >= report["figures"]
        check_alert_table(tab.page, report["db"])
        tab.shot("test_" + which.split("_")[0])
    finally:
        tab.close()


@pytest.mark.browser
def test_hostile_text_stays_text(browser, hostile_report):
    tab = Opened(browser, hostile_report["path"])
    page = tab.page
    try:
        assert page.title() == f"Run {SCRIPT}"
        for text in (IMG, SCRIPT, JS_URL, CLOSE_SCRIPT, "<script>alert(5)</script>"):
            assert page.get_by_text(text).first.is_visible(), text
        assert page.locator("img, iframe, object, embed").count() == 0
        assert page.locator("a[href^='javascript']").count() == 0
        assert page.locator("script").count() == 4  # BokehJS, its log level, the plots, the render marker
        check_alert_table(page, hostile_report["db"])
        # Bokeh's tooltip shows the hostile entity and message as text too.
        page.locator("#alerts").scroll_into_view_if_needed()
        x, y, entity = page.evaluate(TIMELINE_BAR)
        page.mouse.move(x, y)
        tip = page.locator(".bk-tooltip-content").first
        tip.wait_for(state="visible", timeout=5000)
        assert entity in tip.inner_text() and "limit breached" in tip.inner_text()
        assert page.locator("img").count() == 0
        page.wait_for_timeout(300)
        assert tab.dialogs == [] and tab.errors == [] and tab.requests == []
    finally:
        tab.close()


@pytest.mark.browser
def test_report_fits_a4_print_width(browser, cli_report):
    tab = Opened(browser, cli_report["path"], width=720, media="print")
    try:
        page = tab.page
        assert page.evaluate("document.documentElement.scrollWidth") <= 720
        assert page.locator("nav.toc").is_hidden()
        assert page.evaluate(DRAWN_FIGURES) == cli_report["figures"]
        tab.shot("test_print_a4")
    finally:
        tab.close()


def test_a_slow_meter_is_stale_in_the_report_only_after_ten_of_its_intervals(slow_meters):
    """The report judges silence as the live grid does: a 5-minute meter whose last row is 150 s before
    the newest is normal; one silent for over four hours is stale."""
    m = Monitor([slow_meters])
    m.run_to_end()
    try:
        assert _Run(Snapshot.of(m), ReportOptions()).worst_state == {"m1": "normal", "m2": "normal", "m3": "stale"}
        # The legend says so too (it said "no data in the last 60s").
        assert "for 60s or 10 of the entity's usual intervals, whichever is longer" in render(Snapshot.of(m))
    finally:
        m.close()
