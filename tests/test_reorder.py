"""The bounded reorder window (``--reorder``): rows a little out of order are sorted, later ones quarantined."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sbg.errors import SbgError
from sbg.stream.batch import run_detect
from sbg.stream.monitor import Monitor
from sbg.stream.reorder import Reorder


def reference(frame: pd.DataFrame, window: int) -> pd.DataFrame:
    """The rule, row by row in plain Python: what every chunking must give."""
    newest, held, out = {}, [], []
    for i, row in enumerate(frame.itertuples(index=False)):
        t = row.timestamp.value
        newest[row.entity] = max(newest.get(row.entity, t), t)
        held.append((t, i, row))
        due = [h for h in held if h[2].entity == row.entity and h[0] + window <= newest[row.entity]]
        out += [h[2] for h in sorted(due, key=lambda h: (h[0], h[1]))]
        held = [h for h in held if h not in due]
    out += [h[2] for h in sorted(held, key=lambda h: (h[0], h[1]))]
    return pd.DataFrame(out, columns=frame.columns).astype({"entity": object})


def jittered(n=300, seed=0, entities=("a", "b")) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ent = rng.choice(entities, n)
    t = pd.Timestamp("2024-01-01").value + np.arange(n) * 10**9 - rng.integers(0, 5, n) * 10**9  # never more than the 5 s window late
    return pd.DataFrame({"timestamp": pd.to_datetime(t), "entity": pd.Series(ent, dtype=object),
                         "v": np.arange(n, dtype=float)})


@pytest.mark.parametrize("seed", range(5))
def test_any_chunking_gives_the_row_by_row_result(seed):
    frame = jittered(seed=seed)
    window = 5 * 10**9
    expected = reference(frame, window)
    rng = np.random.default_rng(seed + 100)
    for _ in range(4):
        cuts = np.sort(rng.choice(np.arange(1, len(frame)), size=rng.integers(0, 30), replace=False))
        r = Reorder(window)
        bounds = [0, *cuts.tolist(), len(frame)]
        parts = [r.push(frame.iloc[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        parts.append(r.flush())
        got = pd.concat([p for p in parts if p is not None], ignore_index=True)
        pd.testing.assert_frame_equal(got, expected)
        for _, g in got.groupby("entity"):
            assert g["timestamp"].is_monotonic_increasing


def test_the_held_rows_survive_a_checkpoint():
    frame = jittered(seed=7)
    window = 5 * 10**9
    first = Reorder(window)
    out = [first.push(frame.iloc[:150])]
    assert first.held_rows
    again = Reorder(window)
    again.load_state(first.state(), like=frame)
    out += [again.push(frame.iloc[150:]), again.flush()]
    pd.testing.assert_frame_equal(pd.concat(out, ignore_index=True), reference(frame, window))


def _dst_log(path):
    """A 1 Hz log whose clock steps back 20 s once (a repeat), plus one row 5 minutes late."""
    t = list(pd.date_range("2024-03-31 00:00:00", periods=200, freq="1s"))
    t = t[:120] + [x - pd.Timedelta(seconds=20) for x in t[120:]]
    lines = [f"{x.isoformat()},{3.7 + 0.0001 * i:.4f}" for i, x in enumerate(t)]
    lines.insert(180, "2024-03-31T00:00:10,3.7")  # far older than the window
    path.write_text("time,voltage_v\n" + "\n".join(lines) + "\n")
    return path


def test_detect_sorts_within_the_window_and_quarantines_beyond_it(tmp_path):
    log = _dst_log(tmp_path / "logger.csv")
    plain = run_detect(log, tmp_path / "plain.csv", quarantine_path=tmp_path / "q0.csv")
    assert plain["summary"]["rows_quarantined"] > 1  # without a window the repeat is quarantined

    out = tmp_path / "flags.csv"
    result = run_detect(log, out, quarantine_path=tmp_path / "q.csv", schema_options={"reorder": "30s"})
    q = pd.read_csv(tmp_path / "q.csv")
    assert len(q) == 1 and q["line"].iloc[0] == 182 and "more than the reorder window 0 days 00:00:30" in q["reason"][0]
    flags = pd.read_csv(out, parse_dates=["time"])
    assert len(flags) == 200 and flags["time"].is_monotonic_increasing
    assert result["summary"]["rows_in"] == result["summary"]["rows_ok"] + result["summary"]["rows_quarantined"]
    # The same with any chunking.
    for chunk in (1, 7, 64):
        run_detect(log, tmp_path / f"c{chunk}.csv", chunk_size=chunk, schema_options={"reorder": "30s"})
        assert (tmp_path / f"c{chunk}.csv").read_bytes() == out.read_bytes()


def test_replay_equals_detect_and_resumes_with_rows_held(tmp_path):
    log = _dst_log(tmp_path / "logger.csv")
    out = tmp_path / "flags.csv"
    run_detect(log, out, schema_options={"reorder": "30s"})
    expected = pd.read_csv(out, parse_dates=["time"]).rename(columns={"time": "timestamp"})

    db = tmp_path / "alerts.sqlite"
    first = Monitor([log], alerts_db=db, max_chunk_rows=13, reorder="30s")
    seen = []
    first.subscribe(seen.append)
    first.subscribe(lambda df: first.replay.stop() if sum(map(len, seen)) >= 100 else None)
    first.run_to_end()
    first.close()
    assert first.replay.reorder.held_rows  # stopped with rows in the window
    again = Monitor([log], alerts_db=db, max_chunk_rows=13, reorder="30s", resume=True)
    again.subscribe(seen.append)
    again.run_to_end()
    again.close()
    got = pd.concat(seen, ignore_index=True)
    assert len(got) == len(expected)
    np.testing.assert_array_equal(got["timestamp"].to_numpy(), expected["timestamp"].to_numpy())
    np.testing.assert_allclose(got["anomaly_score"].to_numpy(), expected["anomaly_score"].to_numpy(), atol=1e-6)


def test_a_bad_window_is_refused(tmp_path):
    log = _dst_log(tmp_path / "logger.csv")
    for bad, why in (("soon", "not a duration"), ("-5s", "negative")):
        with pytest.raises(SbgError, match=why):
            run_detect(log, tmp_path / "out.csv", schema_options={"reorder": bad})
