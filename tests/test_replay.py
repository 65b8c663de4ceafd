"""The replay clock, its chunks, and its transport controls."""

import pandas as pd
import pytest

from sbg.io.sources import Source
from sbg.stream.replay import Replay, parse_speed


@pytest.fixture
def two_files(tmp_path):
    a = tmp_path / "a.csv"
    b = tmp_path / "b.csv"
    a.write_text("time,v\n" + "".join(f"2024-01-01T00:00:{i:02d},{i}\n" for i in range(0, 60, 2)))
    b.write_text("time,v\n" + "".join(f"2024-01-01T00:00:{i:02d},{i}\n" for i in range(1, 60, 2)))
    return a, b


def collect(replay):
    chunks = []
    replay.stream.sink(chunks.append)
    return chunks


def test_speed_parsing():
    assert parse_speed("10x") == 10 and parse_speed(2.5) == 2.5 and parse_speed("MAX") == float("inf")
    for bad in ("0", "-1", "fast", 0):
        with pytest.raises(ValueError):
            parse_speed(bad)


def test_time_faithful_ticks(two_files):
    r = Replay([Source(p) for p in two_files], speed=10)
    chunks = collect(r)
    r.scan()
    r.state = "running"
    r.step(now=100.0)  # starts the clock at the first row
    r.step(now=100.5)  # 5 simulated seconds later
    emitted = pd.concat(chunks)
    assert emitted["timestamp"].max() == pd.Timestamp("2024-01-01T00:00:05")
    assert emitted["timestamp"].is_monotonic_increasing
    # Everything due at one tick goes out as a single chunk, merged across files.
    assert len(chunks) == 2 and len(chunks[1]) == 5
    r.step(now=103.0)
    assert pd.concat(chunks)["timestamp"].max() == pd.Timestamp("2024-01-01T00:00:30")


def test_max_speed_runs_to_end_in_bounded_chunks(two_files):
    r = Replay([Source(p) for p in two_files], speed="max", max_chunk_rows=7)
    chunks = collect(r)
    r.run_to_end()
    whole = pd.concat(chunks)
    assert len(whole) == 60 and max(len(c) for c in chunks) <= 14
    assert whole["timestamp"].is_monotonic_increasing
    assert r.state == "finished" and r.percent == 100.0 and r.rows_total == 60


def test_pause_resume_stop_reset(two_files):
    r = Replay([Source(p) for p in two_files], speed=1)
    chunks = collect(r)
    r.scan()
    r.state = "running"
    r.step(now=0.0)
    r.step(now=3.0)
    r.pause()
    assert r.state == "paused"
    n = sum(map(len, chunks))
    r.resume()
    r._wall = 13.0  # ten wall seconds passed while paused: they must not count
    r.step(now=14.0)
    assert pd.concat(chunks)["timestamp"].max() == pd.Timestamp("2024-01-01T00:00:04")
    assert sum(map(len, chunks)) == n + 1
    r.stop()
    assert r.state == "stopped"
    r.reset()
    assert r.state == "idle" and r.rows_emitted == 0 and r.percent == 0.0


def test_seek_to_fraction_and_time(two_files):
    r = Replay([Source(p) for p in two_files], speed="max")
    chunks = collect(r)
    r.seek(0.5)
    r.run_to_end()
    first = pd.concat(chunks)["timestamp"].min()
    assert pd.Timestamp("2024-01-01T00:00:29") <= first <= pd.Timestamp("2024-01-01T00:00:30")
    assert r.rows_skipped == 29 or r.rows_skipped == 30
    chunks.clear()
    r.seek("2024-01-01T00:00:50")
    r.run_to_end()
    assert pd.concat(chunks)["timestamp"].min() == pd.Timestamp("2024-01-01T00:00:50")


def test_loop_restarts_and_counts(two_files):
    r = Replay([Source(p) for p in two_files], speed="max", loop=True, max_chunk_rows=100)
    chunks = collect(r)
    reasons = []
    r.on_restart(reasons.append)
    r.state = "running"
    for _ in range(10):
        r.step()
    assert r.loops >= 2 and "loop" in reasons
    assert sum(map(len, chunks)) >= 120


def _stamped(tmp_path, name, stamps, entities=("a",)):
    rows = [(t, e, i) for i, t in enumerate(stamps) for e in entities]
    path = tmp_path / name
    pd.DataFrame(rows, columns=["timestamp", "entity", "v"]).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("freq,entities,speed", [
    ("1s", ("a",), "100x"),  # the bundled data's pace, as before
    ("1s", ("a", "b", "c", "d"), "100x"),  # a fleet's rows stamped alike are one step of the clock
    ("100ms", ("a",), "10x"),
    ("1min", ("a",), "10000x"),
    ("5min", ("a",), "10000x"),  # 33 rows a second, where 100x showed one every 3 s
    ("1h", ("a",), "1e6x"),
])
def test_auto_speed_replays_about_a_hundred_timestamps_a_second(tmp_path, freq, entities, speed):
    from sbg.stream.replay import auto_speed

    path = _stamped(tmp_path, "d.csv", pd.date_range("2024-01-01", periods=300, freq=freq), entities)
    assert auto_speed([Source(path)]) == speed
    from sbg.stream.monitor import Monitor

    monitor = Monitor([path], speed="auto")
    assert monitor.replay.speed == speed and parse_speed(monitor.replay.speed) < float("inf")
    monitor.close()


def test_auto_speed_of_data_that_says_nothing_is_the_old_default(tmp_path):
    from sbg.stream.replay import auto_speed

    one = _stamped(tmp_path, "one.csv", pd.date_range("2024-01-01", periods=1, freq="1s"))
    assert auto_speed([Source(one)]) == "100x"
    # Several sources: the fastest sets the pace, so none of them crawls.
    slow = _stamped(tmp_path, "slow.csv", pd.date_range("2024-01-01", periods=50, freq="5min"))
    fast = _stamped(tmp_path, "fast.csv", pd.date_range("2024-01-01", periods=50, freq="1s"))
    assert auto_speed([Source(slow), Source(fast)]) == "100x"


def test_a_speed_the_page_does_not_list_is_shown_as_it_is_not_as_max():
    from sbg.stream.replay import speed_label, speed_options

    assert speed_options("10000x") == ["1x", "10x", "100x", "1000x", "10000x", "max"]
    assert speed_options(30) == ["1x", "10x", "30x", "100x", "1000x", "max"]
    assert speed_options("0.5x")[0] == "0.5x" and speed_options("100x") == ["1x", "10x", "100x", "1000x", "max"]
    assert speed_label("1000000x") == "1e6x" and parse_speed("1e6x") == 1e6 and speed_label("max") == "max" and speed_label(2.5) == "2.5x"
    with pytest.raises(ValueError, match="'max' or 'auto'"):
        parse_speed("fast")
