"""The Monitor: one run of replay, pipeline, alert engine, history, metrics, alert log and checkpoints.

Everything goes through the Monitor's public surface (constructor, ``run_to_end``,
``subscribe``, ``status``, ``data_state``, ``health``, ``close`` and
the documented attributes ``replay``, ``history``, ``metrics``, ``alerts``,
``quarantine``, ``events``). The data is small and generated here: three
battery cells at 1 Hz, each with one sustained over-temperature episode that a
configured limit turns into a critical alert.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sbg.alerts.log import AlertLog
from sbg.config import Settings
from sbg.errors import ConfigError, SbgError, SourceError
from sbg.stream.batch import run_detect
from sbg.stream.monitor import Monitor

CELLS = ("c1", "c2", "c3")
ROWS = 600  # per cell, one a second
#: A configured limit: each cell's over-temperature episode is a critical ``limit_breach``.
LIMITS = {"detectors": {"limits": {"limits": {"temperature_c": [0, 45]}}}}
#: Where each cell's episode starts (row 200, 250, 300 of the cell = these times).
EPISODES = [pd.Timestamp("2024-01-01 00:03:20"), pd.Timestamp("2024-01-01 00:04:10"),
            pd.Timestamp("2024-01-01 00:05:00")]
FLAG_COLUMNS = ["anomaly_score", "is_anomaly", "reason", "quality"]
ALERT_COLUMNS = ["id", "rule", "entity", "signal", "severity", "start", "end", "state"]


def fleet_csv(path, n=ROWS, seed=7, stop=None, hot_end=(), drift=0.0, bad_lines=()):
    """Three cells (``cell_id``), 1 Hz, ``temperature_c`` and ``voltage_v``, sorted by time.

    Cell k runs at 60 °C for 40 rows from row 200 + 50 k. ``stop`` maps a cell to the
    rows it sends before falling silent; the cells in ``hot_end`` are at 70 °C for
    their last 20 rows; ``drift`` is added to every voltage from the middle on;
    ``bad_lines`` are ``(index, text)`` lines inserted into the file (index 0 is the header).
    """
    rng = np.random.default_rng(seed)
    parts = []
    for k, cell in enumerate(CELLS):
        t = pd.date_range("2024-01-01", periods=n, freq="s")
        temp = 25 + rng.normal(0, 0.05, n)
        episode, hot = slice(200 + 50 * k, 240 + 50 * k), 60 + rng.normal(0, 0.05, 40)
        temp[episode] = hot[: len(temp[episode])]  # a short file has no (or part of an) episode
        if cell in hot_end:
            temp[-20:] = 70.0
        volt = 3.7 + rng.normal(0, 0.01, n)
        volt[n // 2:] += drift
        part = pd.DataFrame({"timestamp": t, "cell_id": cell, "temperature_c": temp.round(3),
                             "voltage_v": volt.round(4)})
        parts.append(part.iloc[: (stop or {}).get(cell, n)])
    frame = pd.concat(parts).sort_values(["timestamp", "cell_id"], kind="stable")
    lines = frame.to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%S").splitlines()
    for index, text in sorted(bad_lines):
        lines.insert(index, text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def alert_rows(db):
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT * FROM alerts ORDER BY id").fetchall()


def read_log(db):
    log = AlertLog(db)
    try:
        return log.read(), log.checkpoint_sources()
    finally:
        log.close()


def stop_after(monitor, chunks: int, how: str = "pause"):
    """Subscribe a callback that pauses (or stops) the replay after ``chunks`` chunks; returns the chunks."""
    seen: list[pd.DataFrame] = []

    def callback(chunk):
        seen.append(chunk)
        if len(seen) == chunks:
            getattr(monitor.replay, how)()

    monitor.subscribe(callback)
    return seen


# ----------------------------------------------------------------------------- the run


def test_run_to_end_gives_the_flags_and_alerts_of_the_batch_path(fleet, limits, tmp_path):
    m = Monitor([fleet], settings=limits, max_chunk_rows=64)
    m.run_to_end()
    out = tmp_path / "flags.csv"
    result = run_detect(fleet, out, settings=limits, chunk_size=500)

    live = m.history.frame()
    batch = pd.read_csv(out, keep_default_na=False, dtype={c: str for c in ("timestamp", "cell_id", "is_anomaly")})
    assert len(live) == len(batch) == len(CELLS) * ROWS
    assert (live["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S").to_numpy() == batch["timestamp"].to_numpy()).all()
    assert (live["entity"].astype(str).to_numpy() == batch["cell_id"].to_numpy()).all()
    np.testing.assert_array_equal(live["anomaly_score"].round(6).to_numpy(), batch["anomaly_score"].to_numpy())
    assert (live["is_anomaly"].to_numpy() == (batch["is_anomaly"] == "true").to_numpy()).all()
    for col in ("reason", "quality"):
        assert (live[col].fillna("").to_numpy() == batch[col].to_numpy()).all(), col
    # The fault is found: 40 rows per cell over the limit, each flagged by the limits detector.
    assert int(live["is_anomaly"].sum()) == result["summary"]["rows_flagged"] == 3 * 40
    assert set(live.loc[live["is_anomaly"], "reason"]) == {"limits:temperature_c"}

    alerts = m.alerts
    assert list(alerts["rule"]) == ["limit_breach"] * 3 and set(alerts["severity"]) == {"critical"}
    assert sorted(alerts["start"]) == EPISODES
    expected = result["alerts"][ALERT_COLUMNS].sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(alerts[ALERT_COLUMNS].sort_values("id").reset_index(drop=True), expected)
    assert m.metrics.reconciles and m.metrics.rows_in == m.metrics.rows_ok == 1800 and m.metrics.errors == 0


def test_several_files_merged_by_time_score_as_the_batch_path_reads_them(fleet, limits, tmp_path):
    frame = pd.read_csv(fleet)
    paths = []
    for cell in CELLS:  # one file per cell
        paths.append(tmp_path / f"{cell}.csv")
        frame[frame["cell_id"] == cell].to_csv(paths[-1], index=False)
    m = Monitor(paths, settings=limits, max_chunk_rows=100)
    m.run_to_end()
    live = m.history.frame()
    assert live["timestamp"].is_monotonic_increasing  # merged by time, not read file after file
    assert m.source_key == "c1+c2+c3" and m.status()["files"] == [str(p) for p in paths]
    result = run_detect(paths, tmp_path / "flags.csv", settings=limits)
    batch = pd.read_csv(tmp_path / "flags.csv", keep_default_na=False)
    by_cell = live.sort_values(["entity", "timestamp"], kind="stable")
    np.testing.assert_array_equal(by_cell["anomaly_score"].round(6).to_numpy(), batch["anomaly_score"].to_numpy())
    assert (by_cell["entity"].astype(str).to_numpy() == batch["cell_id"].to_numpy()).all()
    expected = result["alerts"][ALERT_COLUMNS].sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(m.alerts[ALERT_COLUMNS].sort_values("id").reset_index(drop=True), expected)
    assert len(expected) == 3


def test_chunking_does_not_change_the_run(fleet, limits):
    runs = []
    for max_chunk in (23, 1000):
        m = Monitor([fleet], settings=limits, max_chunk_rows=max_chunk)
        m.run_to_end()
        runs.append((m.history.frame(), m.alerts[ALERT_COLUMNS]))
    (h1, a1), (h2, a2) = runs
    pd.testing.assert_frame_equal(h1, h2)
    pd.testing.assert_frame_equal(a1, a2)


def test_subscribers_get_each_enriched_chunk_until_they_unsubscribe(fleet, limits):
    m = Monitor([fleet], settings=limits, max_chunk_rows=100)
    kept, dropped = [], []
    unsubscribe = None

    def dropping(chunk):
        dropped.append(chunk)
        if len(dropped) == 3:
            unsubscribe()

    m.subscribe(kept.append)
    unsubscribe = m.subscribe(dropping)
    assert m.subscriber_count == 2
    m.run_to_end()
    assert m.subscriber_count == 1
    unsubscribe()  # a second call is harmless
    assert m.subscriber_count == 1

    assert len(dropped) == 3 and len(kept) == 18
    assert all(len(c) == 100 for c in kept)
    for col in ("timestamp", "entity", "temperature_c", "voltage_v", "temperature_c__score",
                "temperature_c__mean", *FLAG_COLUMNS):
        assert col in kept[0].columns, col
    whole = pd.concat(kept, ignore_index=True)
    pd.testing.assert_frame_equal(whole[m.history_columns(whole)], m.history.frame())
    assert int(whole["is_anomaly"].sum()) == 120
    assert [len(c) for c in dropped] == [100, 100, 100]


def test_a_stuck_sensor_shows_as_data_quality_in_the_health_grid(tmp_path):
    # c1's voltage sticks at one value for its last 800 rows: a data-quality finding (flatline), state 4.
    n = 2000
    rng = np.random.default_rng(3)
    t = pd.date_range("2024-01-01", periods=n, freq="s").strftime("%Y-%m-%dT%H:%M:%S")
    frames = []
    for cell in ("c1", "c2"):
        v = 3.7 + rng.normal(0, 0.01, n)
        if cell == "c1":
            v[1200:] = 3.7
        frames.append(pd.DataFrame({"timestamp": t, "cell_id": cell, "voltage_v": v.round(4),
                                    "temperature_c": (25 + rng.normal(0, 0.2, n)).round(2)}))
    path = tmp_path / "stuck.csv"
    pd.concat(frames).sort_values(["timestamp", "cell_id"]).to_csv(path, index=False)
    m = Monitor([path])
    m.run_to_end()
    assert m.history.frame().query("entity == 'c1'")["quality"].str.contains("flatline").any()
    states = {(r.entity, r.signal): r.state for r in m.health().itertuples()}
    assert states[("c1", "voltage_v")] == 4 and states[("c2", "voltage_v")] == 0


def test_status_data_state_and_health_after_a_run(tmp_path, limits):
    # c3 falls silent after 300 rows (5 minutes before the end); c1 is over its limit at the end.
    path = fleet_csv(tmp_path / "cells.csv", stop={"c3": 300}, hot_end=("c1",))
    m = Monitor([path], settings=limits)
    assert m.data_state() == {"state": "no data", "entities": 0, "stale_entities": [], "stale_count": 0,
                              "silent_s": None, "behind_s": 0.0}
    assert m.health().empty and list(m.health().columns) == ["entity", "signal", "state", "score", "last_seen"]
    m.run_to_end()

    state = m.data_state()
    assert state == {"state": "partly stale", "entities": 3, "stale_entities": ["c3"], "stale_count": 1,
                     "silent_s": 0.0, "behind_s": 0.0}
    health = m.health()
    states = {(r.entity, r.signal): r.state for r in health.itertuples()}
    assert states == {("c1", "temperature_c"): 2, ("c1", "voltage_v"): 0, ("c2", "temperature_c"): 0,
                      ("c2", "voltage_v"): 0, ("c3", "temperature_c"): 3, ("c3", "voltage_v"): 3}
    last_seen = dict(zip(health["entity"], health["last_seen"], strict=False))
    assert last_seen["c3"] == pd.Timestamp("2024-01-01 00:04:59")
    assert last_seen["c1"] == pd.Timestamp("2024-01-01 00:09:59")
    # A wider staleness allowance: nobody is stale any more.
    assert m.data_state(stale_after="10min")["state"] == "live"
    assert set(m.health(stale_after="10min")["state"]) == {0, 2}

    status = m.status()
    assert set(status) == {"source", "files", "baseline", "metrics", "replay", "data", "health"}
    assert status["source"] == "cells" and status["files"] == [str(path)] and status["baseline"] is None
    assert status["data"] == state
    metrics = status["metrics"]
    assert metrics["rows_in"] == metrics["rows_ok"] == 1500 and metrics["rows_quarantined"] == 0
    assert metrics["reconciles"] is True and metrics["entities"] == 3 and metrics["errors"] == 0
    assert metrics["sim_time"] == "2024-01-01 00:09:59"
    # c1's episode and its hot end, c2's episode (c3 fell silent before its own): one still firing.
    assert metrics["alerts_total"] == 3 and metrics["alerts_firing"] == 1
    replay = status["replay"]
    assert replay["state"] == "finished" and replay["percent"] == 100.0
    assert replay["rows_emitted"] == replay["rows_total"] == 1500
    json.dumps(status, default=str)  # served as /api/status


def test_a_slow_logger_is_stale_after_ten_of_its_intervals_not_between_its_rows(slow_meters):
    """Meters every 5 minutes, written 2.5 minutes apart from each other: at the end one's newest row is
    150 s older than the other's, which is not silence (60 s was, for the 1 Hz rule). Four hours without a
    row (more than ten of its intervals) is."""
    m = Monitor([slow_meters])
    m.run_to_end()
    state = m.data_state()
    assert state["state"] == "partly stale" and state["stale_entities"] == ["m3"], state
    assert dict(zip(m.health()["entity"], m.health()["state"], strict=True)) == {"m1": 0, "m2": 0, "m3": 3}
    m.close()


def test_quarantined_rows_are_counted_with_file_and_line_and_kept_bounded(tmp_path, limits):
    bad = [(10, "garbage,c1,25.0,3.7"), (20, "2024-01-01T00:00:05,c2,x,3.7"), (30, "short,row")]
    path = fleet_csv(tmp_path / "bad.csv", bad_lines=bad)
    m = Monitor([path], settings=limits, quarantine_keep=2)
    m.run_to_end()
    assert m.metrics.rows_in == 1803 and m.metrics.rows_ok == 1800 and m.metrics.rows_quarantined == 3
    assert m.metrics.reconciles
    # Only the newest two are kept in memory; all three are counted and reported.
    assert [(q.line, q.reason) for q in m.quarantine] == [
        (21, "column 3 'temperature_c': 'x' is not a number"), (31, "expected 4 fields, found 2")]
    assert all(q.source == str(path) for q in m.quarantine)
    messages = [e["message"] for e in m.events if e["kind"] == "quarantine"]
    assert messages == ["bad.csv:11: column 1 'timestamp': unparsable timestamp 'garbage'",
                        "bad.csv:21: column 3 'temperature_c': 'x' is not a number",
                        "bad.csv:31: expected 4 fields, found 2"]


def test_history_is_bounded_by_the_settings(fleet):
    m = Monitor([fleet], settings=Settings.from_dict({**LIMITS, "history": {"max_rows": 500}}), max_chunk_rows=64)
    m.run_to_end()
    assert len(m.history) == 500 and m.history.rows_dropped == 1300
    kept = m.history.frame()
    assert kept["timestamp"].iloc[-1] == pd.Timestamp("2024-01-01 00:09:59")
    assert kept["timestamp"].iloc[0] == pd.Timestamp("2024-01-01 00:07:13")  # the 1301st row
    assert m.metrics.rows_ok == 1800 and len(m.alerts) == 3  # bounding the history loses no alert


def test_settings_may_be_a_yaml_path(fleet, tmp_path):
    config = tmp_path / "sbg.yaml"
    config.write_text("detectors:\n  limits:\n    limits: {temperature_c: [0, 45]}\n")
    m = Monitor([fleet], settings=str(config))
    assert m.settings.origin == str(config)
    m.run_to_end()
    assert sorted(m.alerts["start"]) == EPISODES


def test_baseline_option_adds_the_baseline_detector(tmp_path, limits):
    reference = fleet_csv(tmp_path / "reference.csv", n=400, seed=1)
    drifting = fleet_csv(tmp_path / "drifting.csv", n=1200, seed=2, drift=0.2)
    with_baseline = Monitor([drifting], baseline=reference, settings=limits)
    without = Monitor([drifting], settings=limits)
    for m in (with_baseline, without):
        m.run_to_end()
    assert with_baseline.status()["baseline"] == str(reference) and without.status()["baseline"] is None

    def baseline_flags(m):
        return int(m.history.frame()["reason"].fillna("").str.contains("baseline:voltage_v").sum())

    assert baseline_flags(without) == 0 and "baseline_drift" not in set(without.alerts["rule"])
    drift = with_baseline.alerts[with_baseline.alerts["rule"] == "baseline_drift"]
    assert sorted(drift["entity"]) == list(CELLS) and set(drift["signal"]) == {"voltage_v"}
    # Only the shifted second half departs from the baseline.
    first = with_baseline.history.frame().head(1800)
    assert baseline_flags(with_baseline) > 1000 and first["reason"].fillna("").str.contains("baseline").sum() == 0


def test_a_baseline_without_valid_rows_is_refused(fleet, tmp_path):
    baseline = tmp_path / "bad_baseline.csv"
    baseline.write_text("timestamp,cell_id,temperature_c,voltage_v\n"
                        "2024-01-01T00:00:00,c1,inf,3.7\n2024-01-01T00:00:01,c1,inf,3.7\n")
    with pytest.raises(SbgError, match="bad_baseline.csv: baseline has no valid rows"):
        Monitor([fleet], baseline=baseline)


def test_constructor_refusals(fleet, tmp_path):
    with pytest.raises(SbgError, match="no data file given"):
        Monitor([])
    with pytest.raises(ValueError, match="speed must be a positive number, 'max' or 'auto', not 'fast'"):
        Monitor([fleet], speed="fast")
    with pytest.raises(SourceError, match="nowhere.csv: no such file"):
        Monitor([tmp_path / "nowhere.csv"])
    m = Monitor(str(fleet))  # one path, not in a list
    assert m.paths == [fleet] and m.source_key == "fleet"


# ----------------------------------------------------------------------------- alert log and close


def test_the_alert_log_holds_the_alerts(fleet, limits, tmp_path):
    db = tmp_path / "alerts.sqlite"
    m = Monitor([fleet], settings=limits, alerts_db=db, max_chunk_rows=100)
    m.run_to_end()
    in_memory = m.alerts
    m.close()
    logged, sources = read_log(db)
    assert sources == ["fleet"]
    assert len(logged) == 3 and logged["id"].is_unique
    pd.testing.assert_frame_equal(logged[ALERT_COLUMNS].sort_values("id").reset_index(drop=True),
                                  in_memory[ALERT_COLUMNS].sort_values("id").reset_index(drop=True))
    assert set(logged["state"]) == {"resolved"} and set(logged["source"]) == {"fleet"}
    # A re-run over the same log upserts the same alerts: nothing duplicated.
    again = Monitor([fleet], settings=limits, alerts_db=db, max_chunk_rows=250)
    again.run_to_end()
    again.close()
    assert len(alert_rows(db)) == 3


def test_close_is_idempotent_without_an_alert_log(fleet):
    m = Monitor([fleet])
    m.run_to_end()
    m.close()
    m.close()
    assert m.replay.state == "finished"


def test_close_is_idempotent_with_an_alert_log(fleet, limits, tmp_path):
    db = tmp_path / "alerts.sqlite"
    m = Monitor([fleet], settings=limits, alerts_db=db)
    m.run_to_end()
    m.close()
    m.close()
    assert len(alert_rows(db)) == 3


# ----------------------------------------------------------------------------- pause and resume


def test_pause_then_run_on_continues_the_same_run(fleet, limits):
    whole = Monitor([fleet], settings=limits, max_chunk_rows=100)
    whole.run_to_end()
    m = Monitor([fleet], settings=limits, max_chunk_rows=100)
    seen = stop_after(m, 5)
    m.run_to_end()
    assert m.replay.state == "paused" and m.metrics.rows_ok == 500 and len(seen) == 5
    m.run_to_end()
    assert m.replay.state == "finished"
    pd.testing.assert_frame_equal(m.history.frame(), whole.history.frame())
    pd.testing.assert_frame_equal(m.alerts[ALERT_COLUMNS], whole.alerts[ALERT_COLUMNS])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """An uninterrupted run with an alert log: the data, the log, its history and alerts."""
    root = tmp_path_factory.mktemp("whole")
    path = fleet_csv(root / "fleet.csv")
    db = root / "whole.sqlite"
    m = Monitor([path], settings=Settings.from_dict(LIMITS), alerts_db=db, max_chunk_rows=100)
    m.run_to_end()
    history, alerts = m.history.frame(), m.alerts
    m.close()
    return {"path": path, "db": db, "history": history, "alerts": alerts, "rows": alert_rows(db)}


@pytest.mark.parametrize(("chunks", "how"), [(1, "pause"), (7, "pause"), (12, "stop")])
def test_resume_continues_where_the_run_stopped(uninterrupted, tmp_path, chunks, how):
    path = uninterrupted["path"]
    db = tmp_path / "parts.sqlite"
    first = Monitor([path], settings=Settings.from_dict(LIMITS), alerts_db=db, max_chunk_rows=100)
    before = stop_after(first, chunks, how)
    first.run_to_end()
    assert first.replay.state == ("paused" if how == "pause" else "stopped")
    first.close()
    assert first.metrics.rows_ok == 100 * chunks

    # A different chunking after the resume: chunk invariance carries over the checkpoint.
    second = Monitor([path], settings=Settings.from_dict(LIMITS), alerts_db=db, max_chunk_rows=64, resume=True)
    assert second.resumed_from["rows_emitted"] == 100 * chunks and second.resumed_from["finished"] is False
    assert second.metrics.rows_ok == 100 * chunks  # the counters carry over too
    after = []
    second.subscribe(after.append)
    second.run_to_end()
    alerts = second.alerts
    second.close()

    # Every row analysed exactly once, with the scores of the uninterrupted run.
    analysed = pd.concat([*before, *after], ignore_index=True)
    pd.testing.assert_frame_equal(analysed[second.history_columns(analysed)], uninterrupted["history"])
    assert second.metrics.rows_in == second.metrics.rows_ok == 1800 and second.metrics.reconciles
    # No alert lost, none twice, each as the uninterrupted run left it.
    assert alert_rows(db) == uninterrupted["rows"] and len(uninterrupted["rows"]) == 3
    pd.testing.assert_frame_equal(alerts[ALERT_COLUMNS], uninterrupted["alerts"][ALERT_COLUMNS])


def test_resume_with_quarantined_rows_and_small_blocks_counts_every_row_once(tmp_path, limits):
    bad = [(i, f"garbage{i},c1,25.0,3.7") for i in range(10, 1800, 97)]  # 19 bad rows, all through the file
    path = fleet_csv(tmp_path / "bad.csv", bad_lines=bad)
    options = {"settings": limits, "max_chunk_rows": 50, "block_bytes": 2048}
    whole = Monitor([path], alerts_db=tmp_path / "whole.sqlite", **options)
    whole.run_to_end()
    whole.close()
    first = Monitor([path], alerts_db=tmp_path / "parts.sqlite", **options)
    stop_after(first, 11)
    first.run_to_end()
    first.close()
    second = Monitor([path], alerts_db=tmp_path / "parts.sqlite", resume=True, **options)
    assert (second.metrics.rows_ok, second.metrics.rows_quarantined) == (550, 6)
    second.run_to_end()
    second.close()
    counts = [(m.metrics.rows_in, m.metrics.rows_ok, m.metrics.rows_quarantined) for m in (whole, second)]
    assert counts == [(1819, 1800, 19)] * 2 and second.metrics.reconciles
    assert second.status()["replay"]["percent"] == 100.0
    assert alert_rows(tmp_path / "parts.sqlite") == alert_rows(tmp_path / "whole.sqlite")


def test_resuming_a_finished_run_changes_nothing(uninterrupted, tmp_path):
    db = shutil.copy(uninterrupted["db"], tmp_path / "copy.sqlite")
    m = Monitor([uninterrupted["path"]], settings=Settings.from_dict(LIMITS), alerts_db=db, resume=True)
    assert m.resumed_from["finished"] is True and m.resumed_from["rows_emitted"] == 1800
    chunks = []
    m.subscribe(chunks.append)
    m.run_to_end()
    assert chunks == [] and m.replay.state == "finished"
    assert m.metrics.rows_in == 1800 and m.metrics.alerts_total == 3
    m.close()
    assert alert_rows(db) == uninterrupted["rows"]


def test_resume_accepts_another_chunking_and_another_notify_section(uninterrupted, tmp_path):
    db = shutil.copy(uninterrupted["db"], tmp_path / "copy.sqlite")
    settings = Settings.from_dict({**LIMITS, "notify": {"webhook": "http://127.0.0.1:9/hook"}})
    m = Monitor([uninterrupted["path"]], settings=settings, alerts_db=db, max_chunk_rows=7, resume=True)
    assert m.resumed_from["rows_emitted"] == 1800
    m.close()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run of ``fleet.csv`` with its alert log."""
    root = tmp_path_factory.mktemp("refusals")
    path = fleet_csv(root / "fleet.csv")
    db = root / "done.sqlite"
    m = Monitor([path], settings=Settings.from_dict(LIMITS), alerts_db=db)
    m.run_to_end()
    m.close()
    return path, db


SAME_OPTIONS = "the settings, baseline or schema options differ from the checkpoint's"


@pytest.mark.parametrize(("case", "options", "message"), [
    ("other settings", {"settings": Settings.from_dict({"detectors": {"limits": {"limits": {"temperature_c": [0, 50]}}}})},
     f"{{db}}: {SAME_OPTIONS}; resume with the same options or run without --resume"),
    ("a baseline", {"baseline": "fleet.csv"}, f"{{db}}: {SAME_OPTIONS}"),
    # The same entity column as inferred, but given: options shape the run, so they must match too.
    ("schema options", {"entity": "cell_id"}, f"{{db}}: {SAME_OPTIONS}"),
])
def test_resume_refuses_other_options(finished, tmp_path, case, options, message):
    path, done = finished
    db = shutil.copy(done, tmp_path / "log.sqlite")
    kwargs = {"settings": Settings.from_dict(LIMITS), **options}
    if "baseline" in kwargs:
        kwargs["baseline"] = path
    before = alert_rows(db)
    with pytest.raises(ConfigError) as info:
        Monitor([path], alerts_db=db, resume=True, **kwargs)
    assert str(info.value).startswith(message.format(db=db))
    assert alert_rows(db) == before  # a refusal writes nothing


def test_resume_refuses_other_files(finished, tmp_path):
    path, done = finished
    db = shutil.copy(done, tmp_path / "log.sqlite")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    same_name = Path(shutil.copy(path, elsewhere / "fleet.csv"))
    with pytest.raises(SbgError) as info:
        Monitor([same_name], settings=Settings.from_dict(LIMITS), alerts_db=db, resume=True)
    assert str(info.value) == (f"{db}: the checkpoint is for {path.resolve()}, not these files; "
                               "resume with the same files or run without --resume")
    other = Path(shutil.copy(path, tmp_path / "other.csv"))
    with pytest.raises(SbgError) as info:
        Monitor([other], settings=Settings.from_dict(LIMITS), alerts_db=db, resume=True)
    assert str(info.value) == (f"{db}: has no checkpoint for other, only for fleet; "
                               "resume with the same files or run without --resume")


@pytest.mark.parametrize("change", ["appended", "touched"])
def test_resume_refuses_a_file_changed_since_the_checkpoint(tmp_path, limits, change):
    path = fleet_csv(tmp_path / "fleet.csv", n=100)
    db = tmp_path / "alerts.sqlite"
    m = Monitor([path], settings=limits, alerts_db=db)
    m.run_to_end()
    m.close()
    before = alert_rows(db)
    if change == "appended":
        with open(path, "a") as fh:
            fh.write("2024-01-01T00:01:40,c1,25.0,3.7\n")
    else:
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(SbgError) as info:
        Monitor([path], settings=limits, alerts_db=db, resume=True)
    assert str(info.value) == (f"{path.resolve()}: changed since the checkpoint (size, modification time or "
                               "content); run without --resume to start over")
    assert alert_rows(db) == before


def test_resume_needs_an_alert_log_that_has_a_checkpoint(fleet, tmp_path):
    with pytest.raises(SbgError, match="--resume needs --alerts-db: the checkpoint is kept in the alert log"):
        Monitor([fleet], resume=True)
    nope = tmp_path / "nope.sqlite"
    with pytest.raises(SbgError, match=r"nope.sqlite: no checkpoint to resume from \(no such alert log\)"):
        Monitor([fleet], alerts_db=nope, resume=True)
    assert not nope.exists()
    bare = tmp_path / "bare.sqlite"
    AlertLog(bare).close()
    with pytest.raises(SbgError, match="bare.sqlite: no checkpoint to resume from; run without --resume first"):
        Monitor([fleet], alerts_db=bare, resume=True)
