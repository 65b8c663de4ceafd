"""Golden tests of the alert state machine, its chunk invariance, and the SQLite log."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sbg.alerts.engine import AlertEngine, Rule
from sbg.alerts.log import AlertLog

from .conftest import chunkings

PAIRS = [("limits", "v")]


def run_engine(flags, rule, bounds=None, scores=None, freq="1s", entity=None):
    flags = np.asarray(flags, dtype=bool)
    n = len(flags)
    s = np.where(flags, 0.9, 0.0) if scores is None else np.asarray(scores, dtype=float)
    ent = np.array(entity if entity is not None else ["a"] * n, dtype=object)
    labels = sorted(set(ent))
    codes = np.array([labels.index(e) for e in ent])
    positions = np.zeros(n, dtype=int)
    for e in range(len(labels)):
        positions[codes == e] = np.arange((codes == e).sum())
    frame = pd.DataFrame({"timestamp": pd.date_range("2024-01-01", periods=n, freq=freq), "entity": ent,
                          "v": np.arange(n, dtype=float)})
    engine = AlertEngine([rule], source="test")
    events = []
    engine.subscribe(lambda ev, a: events.append((ev, a.id)))
    for a, b in bounds or [(0, n)]:
        engine.update(frame.iloc[a:b].reset_index(drop=True), PAIRS, s[a:b, None], codes[a:b], positions[a:b], labels)
    return engine.table(), events, frame


def t(i):
    return pd.Timestamp("2024-01-01") + pd.Timedelta(seconds=i)


def test_pending_then_firing_then_resolved():
    table, events, _ = run_engine("0001111000000000" and [0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0],
                                  Rule(name="r", pending_rows=3, clear_rows=2))
    assert len(table) == 1
    a = table.iloc[0]
    assert a["start"] == t(3) and a["end"] == t(8) and a["state"] == "resolved"
    assert [e for e, _ in events] == ["fired", "resolved"]


def test_runs_shorter_than_pending_never_fire():
    table, _, _ = run_engine([0, 1, 1, 0, 1, 1, 0, 1, 1, 0], Rule(name="r", pending_rows=3))
    assert table.empty


def test_short_gaps_do_not_resolve():
    table, _, _ = run_engine([1, 1, 1, 0, 1, 1, 0, 0, 0, 0], Rule(name="r", pending_rows=1, clear_rows=2))
    assert len(table) == 1 and table.iloc[0]["end"] == t(7)


def test_still_firing_at_the_end_has_no_end():
    table, _, _ = run_engine([0, 1, 1, 1], Rule(name="r"))
    assert table.iloc[0]["state"] == "firing" and pd.isna(table.iloc[0]["end"])


def test_dedup_reopens_within_window_and_opens_new_after():
    flags = [1, 0, 0] + [0] * 100 + [1, 0, 0] + [0] * 400 + [1, 0, 0]
    table, events, _ = run_engine(flags, Rule(name="r", clear_rows=2, dedup="2min"))
    assert len(table) == 2
    first = table.sort_values("start").iloc[0]
    assert first["reopened"] == 1
    assert [e for e, _ in events] == ["fired", "resolved", "reopened", "resolved", "fired", "resolved"]


def test_pending_for_duration():
    flags = [1] * 10
    table, _, _ = run_engine(flags, Rule(name="r", pending_for="5s"))
    assert table.iloc[0]["start"] == t(0)
    table2, events, _ = run_engine([1] * 4, Rule(name="r", pending_for="5s"))
    assert table2.empty and not events


def test_peak_tracks_the_highest_score():
    scores = [0.6, 0.9, 0.7, 0.0, 0.0]
    table, _, frame = run_engine(np.array(scores) >= 0.5, Rule(name="r", clear_rows=2), scores=scores)
    a = table.iloc[0]
    assert a["peak_score"] == 0.9 and a["peak"] == frame["v"].iloc[1] and a["peak_time"] == t(1)


def test_entities_have_separate_machines():
    ent = ["a", "b"] * 6
    flags = [1, 0] * 6
    table, _, _ = run_engine(flags, Rule(name="r", pending_rows=3, clear_rows=2), entity=ent)
    assert table["entity"].tolist() == ["a"]


def test_ids_are_deterministic():
    flags = [0, 1, 1, 0, 0, 0]
    a, _, _ = run_engine(flags, Rule(name="r", clear_rows=2))
    b, _, _ = run_engine(flags, Rule(name="r", clear_rows=2))
    assert a["id"].tolist() == b["id"].tolist()


def test_an_alert_clears_after_clear_for_of_quiet_data_when_that_comes_before_clear_rows():
    """One odd reading of an hourly logger: quiet for 30 s of data is the next row, not 30 rows (30 hours)."""
    flags = [0] * 5 + [1] + [0] * 40
    start = pd.Timestamp("2024-01-01 05:00")
    timed, _, _ = run_engine(flags, Rule(name="r", clear_rows=30, clear_for="30s"), freq="1h")
    rows_only, _, _ = run_engine(flags, Rule(name="r", clear_rows=30), freq="1h")
    assert timed[["start", "end"]].values.tolist() == [[start, start + pd.Timedelta("1h")]]
    assert rows_only[["start", "end"]].values.tolist() == [[start, start + pd.Timedelta("30h")]]
    # At 1 Hz the default rules' 30 rows and 30 s are the same row.
    fast, _, _ = run_engine(flags, Rule(name="r", clear_rows=30, clear_for="30s"))
    slow_rule, _, _ = run_engine(flags, Rule(name="r", clear_rows=30))
    pd.testing.assert_frame_equal(fast, slow_rule)


def test_a_state_written_before_the_last_flag_time_was_kept_restores_and_clears_by_rows():
    engine = AlertEngine([Rule(name="r", clear_for="30s")])
    engine.restore({"alerts": [], "tracks": [["r", "a", 2, 10, 5, None, None, 0]]})
    assert engine.tracks["r"]["a"].last_true_pos == 5 and engine.state()["tracks"][0][-1] > 10**18


def test_a_rule_duration_that_is_not_one_is_refused_by_name():
    with pytest.raises(ValueError, match="clear_for must be a positive duration such as 30s, not 'soon'"):
        Rule(name="r", clear_for="soon")
    with pytest.raises(ValueError, match="pending_for must be a duration"):
        Rule(name="r", pending_for="-5s")


@settings(max_examples=60, deadline=None)
@given(flags=st.lists(st.booleans(), min_size=1, max_size=300),
       cuts=st.lists(st.integers(1, 299), max_size=15),
       pending=st.integers(1, 4), clear=st.integers(1, 5), dedup=st.sampled_from(["0s", "3s", "1min"]),
       clear_for=st.sampled_from(["", "2s", "4s"]))
def test_alerts_are_chunk_invariant(flags, cuts, pending, clear, dedup, clear_for):
    rule = Rule(name="r", pending_rows=pending, clear_rows=clear, dedup=dedup, clear_for=clear_for)
    ent = ["a" if (i * 7) % 3 else "b" for i in range(len(flags))]
    whole, ev1, _ = run_engine(flags, rule, entity=ent)
    parts, ev2, _ = run_engine(flags, rule, chunkings(len(flags), cuts), entity=ent)
    pd.testing.assert_frame_equal(whole, parts)
    assert ev1 == ev2


def test_log_upserts_idempotently(tmp_path):
    flags = [0, 1, 1, 0, 0, 0, 1, 1, 1, 1]
    table, _, _ = run_engine(flags, Rule(name="r", clear_rows=2, dedup="0s"))
    engine_alerts = []
    for _ in range(2):
        engine = AlertEngine([Rule(name="r", clear_rows=2, dedup="0s")], source="test")
        n = len(flags)
        frame = pd.DataFrame({"timestamp": pd.date_range("2024-01-01", periods=n, freq="s"), "entity": "a",
                              "v": np.arange(n, dtype=float)})
        engine.update(frame, PAIRS, np.where(np.array(flags, bool), 0.9, 0)[:, None], np.zeros(n, int),
                      np.arange(n), ["a"])
        engine_alerts.append(list(engine.alerts.values()))
    log = AlertLog(tmp_path / "a.sqlite")
    log.write(engine_alerts[0])
    log.write(engine_alerts[1])
    stored = log.read()
    assert len(stored) == len(table) == 2
    pd.testing.assert_frame_equal(stored.drop(columns=["source"]), table.drop(columns=["source"]))
    log.to_csv(tmp_path / "a.csv")
    log.to_json(tmp_path / "a.json")
    assert len(pd.read_csv(tmp_path / "a.csv")) == 2
    assert {r["id"] for r in json.loads((tmp_path / "a.json").read_text())} == set(table["id"])
    assert log._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    log.close()


def _fault_file(path, rows_per_entity=20000):
    rng = np.random.default_rng(5)
    parts = []
    for k, ent in enumerate(["c1", "c2", "c3"]):
        t = pd.date_range("2024-01-01", periods=rows_per_entity, freq="s")
        temp = 25 + rng.normal(0, 0.05, rows_per_entity)
        # Frequent over-temperature episodes: plenty of alerts to interrupt.
        for start in range(2000 + 300 * k, rows_per_entity, 900):
            temp[start:start + 60] = 60.0 + rng.normal(0, 0.05, 60)
        parts.append(pd.DataFrame({"timestamp": t, "cell_id": ent, "temperature_c": temp.round(2)}))
    df = pd.concat(parts).sort_values(["timestamp", "cell_id"], kind="stable")
    df.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%S")


@pytest.mark.slow
def test_killed_replay_leaves_a_readable_log(tmp_path):
    data = tmp_path / "faults.csv"
    _fault_file(data)
    db = tmp_path / "alerts.sqlite"
    errors = tmp_path / "stderr.txt"
    with open(errors, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "sbg.cli", "replay", str(data), "--speed", "20000x",
                                 "--alerts-db", str(db), "--quiet"],
                                stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    count = 0
    while time.monotonic() < deadline:
        if db.exists():
            try:
                with closing(sqlite3.connect(db)) as conn:
                    count = conn.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
            except sqlite3.OperationalError:
                count = 0
        if count >= 3 or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the replay finished before it could be killed: " + errors.read_text()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT id, rule, entity, start, state FROM alerts").fetchall()
    assert len(rows) >= 3
    assert all(r[0] and r[1] and r[2] and r[3] and r[4] in ("firing", "resolved") for r in rows)
    # A full re-run over the same log upserts the same ids: nothing duplicated.
    subprocess.run([sys.executable, "-m", "sbg.cli", "replay", str(data), "--alerts-db", str(db), "--quiet"],
                   check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    with closing(sqlite3.connect(db)) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM alerts")]
        assert set(r[0] for r in rows) <= set(ids)
    log = AlertLog(db)
    full = log.read()
    log.close()
    assert len(ids) == len(set(ids)) == len(full)
    assert (full["state"] == "resolved").sum() >= len(full) - 3
