"""Fault injection: each step of the flow raises in turn, and the run goes on.

Every step is made to fail on every third call, on the real data of the
machine monitor replayed at ``max``. Each time:

* the replay keeps going to the end of the data (a failing reader costs
  the rows of its block, quarantined with the error as the reason);
* the error is counted, named in ``/api/status``'s payload and shown in the
  event feed the dashboard renders;
* the dashboard's live indicator turns red;
* no row goes uncounted: rows in = ok + quarantined = the rows in the file.
"""

import asyncio
import json

import pandas as pd
import pytest

from sbg.alerts.engine import AlertEngine
from sbg.detect import detectors as detect
from sbg.detect import features as stats
from sbg.io.datasets import DATA_DIR
from sbg.io.sources import Source
from sbg.report.build import Snapshot
from sbg.serve.registry import status_payload
from sbg.stream import history
from sbg.stream.monitor import Monitor
from sbg.stream.replay import Replay
from sbg.ui.dashboard import Dashboard
from sbg.ui.plots import LiveBuffers

DATA = DATA_DIR / "machine_monitor.csv"
ROWS = len(DATA.read_text(encoding="utf-8").splitlines()) - 1


class Injected(RuntimeError):
    pass


def flaky(fn, every=3):
    """``fn``, raising :class:`Injected` on every ``every``-th call."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] % every == 0:
            raise Injected(f"injected fault #{calls['n']}")
        return fn(*args, **kwargs)

    wrapper.calls = calls
    return wrapper


STEPS = {
    "stats": (stats.Stats, "compute", "stats"),
    "features": (stats.Features, "chunk", "features"),
    **{f"detector {d.label}": (type(d), "scores", f"detector {d.label}")
       for d in detect.default_detectors() if d.enabled},
    "alerts": (AlertEngine, "update", "alerts"),
    "history": (history.History, "append", "history"),
    "display": (LiveBuffers, "send", "dashboard"),
}


def tick(view):
    """One run of the session's periodic callback, with the plots due."""
    view.session.tick(draw=True)


def check_survived(monitor, where, view):
    m = monitor.metrics
    assert monitor.replay.state == "finished"
    assert m.rows_in == m.rows_ok + m.rows_quarantined == ROWS, (m.rows_in, m.rows_ok, m.rows_quarantined)
    assert m.errors > 0 and m.last_error.startswith(where), m.last_error
    status = status_payload(monitor)
    assert status["metrics"]["errors"] == m.errors and status["metrics"]["last_error"].startswith(where)
    errors = [e for e in monitor.events if e["kind"] == "error"]
    assert errors and any(e["message"].startswith(where) for e in errors), errors[-3:]
    view.refresh_status()
    view.refresh_fleet()
    assert 'class="sbg-live error"' in view.status.live_indicator.object
    assert "injected fault" in view.alerts.feed.object


def replay_survives(where) -> Monitor:
    """Replay the file at ``max`` with a dashboard ticking along, and check the run survived ``where`` failing."""
    monitor = Monitor([DATA], speed="max")
    try:
        view = Dashboard(monitor=monitor)
        monitor.subscribe(lambda chunk: tick(view))
        monitor.run_to_end()
        tick(view)
        check_survived(monitor, where, view)
        view.close()
    finally:
        monitor.close()
    return monitor


@pytest.mark.parametrize("step", list(STEPS))
def test_a_failing_step_is_counted_shown_and_survived(step, monkeypatch):
    cls, method, where = STEPS[step]
    monkeypatch.setattr(cls, method, flaky(getattr(cls, method)))
    replay_survives(where)


def test_a_failing_reader_quarantines_its_block_and_the_replay_goes_on(monkeypatch):
    # The source raises on every third block it parses (blocks of 32 kB: 15 of them).
    monkeypatch.setitem(Source.__init__.__kwdefaults__, "block_bytes", 32 << 10)
    monkeypatch.setattr(Source, "_parse_block", flaky(Source._parse_block))
    monitor = replay_survives("source")
    # Five of fifteen blocks lost, every row of them counted (the kept list is bounded).
    assert ROWS / 4 < monitor.metrics.rows_quarantined < ROWS / 2
    lost = [q for q in monitor.quarantine if q.reason.startswith("not read: the reader failed")]
    assert lost and all(q.line >= 2 and "injected fault" in q.reason for q in lost)
    assert len({q.line for q in monitor.quarantine}) == len(monitor.quarantine)  # each row once


def test_a_failing_reader_is_refused_by_validate_with_its_rows_counted(monkeypatch, tmp_path, capsys):
    from sbg.cli import main

    monkeypatch.setitem(Source.__init__.__kwdefaults__, "block_bytes", 32 << 10)
    monkeypatch.setattr(Source, "_parse_block", flaky(Source._parse_block))
    assert main(["validate", str(DATA), "--json"]) == 3
    out = json.loads(capsys.readouterr().out)
    assert out["rows_in"] == ROWS and out["rows_ok"] + out["rows_quarantined"] == ROWS
    assert out["reader_errors"] and all("injected fault" in e for e in out["reader_errors"])


def test_a_failing_replay_task_stops_visibly(monkeypatch):
    """A bug past the readers stops the background replay, counted and shown, never a silent 'running'."""
    monkeypatch.setattr(Replay, "step", flaky(Replay.step, every=5))
    monitor = Monitor([DATA], speed="max")

    async def run():
        monitor.replay.start()
        while monitor.replay.state == "running":
            await asyncio.sleep(0.01)

    try:
        asyncio.run(asyncio.wait_for(run(), 60))
        assert monitor.replay.state == "stopped"
        assert monitor.metrics.errors == 1 and monitor.metrics.last_error.startswith("replay")
        assert any(e["message"].startswith("replay failed") for e in monitor.events)
        view = Dashboard(monitor=monitor)
        view.refresh_status()
        assert 'class="sbg-live error"' in view.status.live_indicator.object
    finally:
        monitor.close()


def test_a_failing_report_is_shown_and_the_replay_goes_on(monkeypatch):
    monkeypatch.setattr(Snapshot, "of", classmethod(flaky(Snapshot.of.__func__, every=1)))
    monitor = Monitor([DATA], speed="max")
    try:
        view = Dashboard(monitor=monitor)
        monitor.run_to_end()
        with pytest.raises(Injected):  # raised on to the server's log, after it is counted and shown
            asyncio.run(view.export.report())
        check_survived(monitor, "report", view)
        assert "could not be made" in view.export.report_status.object
    finally:
        monitor.close()


def test_without_faults_the_indicator_is_not_red():
    monitor = Monitor([DATA], speed="max")
    try:
        view = Dashboard(monitor=monitor)
        monitor.run_to_end()
        view.refresh_status()
        assert monitor.metrics.errors == 0
        assert "sbg-live error" not in view.status.live_indicator.object
        assert monitor.metrics.rows_in == ROWS
        assert isinstance(monitor.alerts, pd.DataFrame)
    finally:
        monitor.close()


def test_a_source_that_stops_delivering_is_stale_not_normal(tmp_path):
    # Two cells at 1 Hz; b02 goes silent after 5 minutes, and then both stop for 10 minutes.
    t = pd.date_range("2024-06-03 08:00", periods=1800, freq="1s")
    a = pd.DataFrame({"timestamp": t, "entity": "b01", "voltage_v": 3.7, "temperature_c": 25.0})
    b = a.iloc[:300].assign(entity="b02")
    late = a.iloc[-5:].assign(timestamp=a["timestamp"].iloc[-1] + pd.to_timedelta(range(601, 606), unit="s"))
    frame = pd.concat([a, b, late]).sort_values("timestamp", kind="stable")
    frame["voltage_v"] += (frame.index % 7) * 0.001
    path = tmp_path / "silent.csv"
    frame.to_csv(path, index=False)
    monitor = Monitor([path], speed="1000x")
    seen = []

    def look():
        seen.append(monitor.data_state()["state"])
        health = monitor.health()
        if len(health) and seen[-1] != "no data":
            stale = set(health.loc[health["state"] == 3, "entity"])
            assert stale == set(monitor.data_state()["stale_entities"])

    try:
        assert monitor.data_state()["state"] == "no data"
        monitor.run_to_end(on_tick=look)
        assert {"live", "partly stale", "stale"} <= set(seen)
        # Once b02 has been silent long enough it is never shown as normal again.
        first_partly = seen.index("partly stale")
        assert "live" not in seen[first_partly:]
        assert status_payload(monitor)["data"]["stale_entities"] == ["b02"]
        view = Dashboard(monitor=monitor)
        view.refresh_fleet()
        view.refresh_status()
        assert "stale" in view.status.live_indicator.object.lower()
    finally:
        monitor.close()
