"""Following files that are still being written: ``FollowSource``, a following ``Monitor`` and ``sbg watch``.

The files are real files written while they are read; ``sbg watch`` runs as a
real process, killed with SIGKILL in the middle of appends and started again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sbg.io.datasets import DATA_DIR
from sbg.io.follow import FollowSource
from sbg.stream.monitor import Monitor
from sbg.stream.replay import Replay

ROOT = Path(__file__).resolve().parents[1]


def wait_for(check, timeout=90.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)
    return value


def lines(start: int, n: int, value=None, t0="2024-01-01") -> str:
    """CSV lines ``time,v,w`` for seconds ``start`` to ``start + n``; ``value`` overrides ``v``."""
    base = pd.Timestamp(t0)
    rng = np.random.default_rng(start)
    out = []
    for i in range(start, start + n):
        v = 3.7 + 0.01 * rng.standard_normal() if value is None else value
        out.append(f"{(base + pd.Timedelta(seconds=i)).isoformat()},{v:.5f},{1 + 0.01 * rng.standard_normal():.5f}\n")
    return "".join(out)


def follow(src: FollowSource, steps=3, **opts):
    """A replay of ``src`` at max speed, stepped ``steps`` times; returns (replay, values seen)."""
    r = Replay([src], speed="max", **opts)
    seen: list[float] = []
    r.stream.sink(lambda df: seen.extend(df["v"].tolist()))
    r.state = "running"
    return r, seen


def steps(r, n=3):
    for _ in range(n):
        r.step()


def test_only_whole_lines_are_read_and_a_half_line_waits(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("time,v,w\n" + lines(0, 3) + "2024-01-01T00:00:03,3.")
    src = FollowSource(p)
    r, seen = follow(src)
    steps(r)
    assert len(seen) == 3 and r.idle and r.state == "running"  # no end: it waits
    with open(p, "a") as fh:
        fh.write("75,1.0\n")
    steps(r)
    assert seen[-1] == 3.75 and len(seen) == 4
    src.close()


def test_rotation_truncation_and_deletion_lose_no_row(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("time,v,w\n" + lines(0, 5))
    src = FollowSource(p)
    r, seen = follow(src)
    steps(r)
    # Rotation: the old file gets a last line (no newline) after the rename, the new one starts.
    p.rename(tmp_path / "log.csv.1")
    with open(tmp_path / "log.csv.1", "a") as fh:
        fh.write(lines(5, 1).rstrip("\n"))
    p.write_text("time,v,w\n" + lines(6, 2))
    steps(r)
    assert len(seen) == 8
    # copytruncate: the same file cut to nothing and written again from its header.
    with open(p, "r+") as fh:
        fh.truncate(0)
    steps(r)
    p.write_text("time,v,w\n" + lines(8, 3))
    steps(r)
    assert len(seen) == 11
    p.unlink()
    steps(r)
    kinds = [e.kind for e in src.events]
    assert {"rotated", "truncated", "deleted"} <= set(kinds), kinds
    assert src.errors == 1  # the deletion; rotation and truncation are what loggers do
    assert r.state == "running"
    src.close()


def test_a_glob_picks_up_new_files_and_refuses_other_columns(tmp_path):
    (tmp_path / "a.csv").write_text("time,v,w\n" + lines(0, 3))
    src = FollowSource(tmp_path / "*.csv")
    r = Replay([src], speed="max")
    frames = []
    r.stream.sink(frames.append)
    r.state = "running"
    steps(r)
    (tmp_path / "b.csv").write_text("time,v,w\n" + lines(0, 2))
    (tmp_path / "c.csv").write_text("time,x\n2024-01-01T00:00:00,1\n")
    (tmp_path / "d.csv").mkdir()  # matches the glob and cannot be read as a file
    steps(r)
    seen = pd.concat(frames)
    assert sorted(seen["entity"].astype(str).unique()) == ["a", "b"]
    assert len(seen) == 5
    rejected = [e for e in src.events if e.kind == "rejected"]
    assert len(rejected) == 1 and "c.csv:1: its columns differ" in rejected[0].message
    assert any(e.kind == "unreadable" and "d.csv" in e.path for e in src.events)
    assert src.errors == 2
    steps(r)
    assert src.errors == 2  # a problem that lasts is reported once
    src.close()


def test_binary_garbage_is_quarantined_and_the_watch_goes_on(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("time,v,w\n" + lines(0, 3))
    src = FollowSource(p)
    r = Replay([src], speed="max")
    quarantined = []
    r.on_batch(lambda b: quarantined.extend(b.quarantined))
    r.stream.sink(lambda df: None)
    r.state = "running"
    steps(r)
    with open(p, "ab") as fh:
        fh.write(os.urandom(3000).replace(b"\n", b"\x00") + b"\n\xff\xfe\x00garbage\n")
        fh.write(lines(3, 2).encode())
    steps(r)
    assert r.rows_emitted == 5 and r.state == "running"
    assert len(quarantined) == 2 and all(q.line in (5, 6) for q in quarantined)
    assert r.rows_read == r.rows_emitted + r.rows_quarantined
    src.close()


@pytest.mark.parametrize("piece", [1, 7, 250])
def test_following_in_pieces_equals_detecting_the_whole_file(tmp_path, piece):
    """Chunk invariance for a followed file: written a few lines at a time, the flags are the batch flags."""
    rng = np.random.default_rng(3)
    n = 900
    v = 3.7 + 0.01 * rng.standard_normal(n)
    v[600:640] += 0.5
    t = pd.date_range("2024-01-01", periods=n, freq="1s")
    full = pd.DataFrame({"time": t.strftime("%Y-%m-%dT%H:%M:%S"), "v": v.round(5), "w": 1.0 + (np.arange(n) % 3)})
    whole = tmp_path / "whole.csv"
    full.to_csv(whole, index=False)
    ref = Monitor([whole])
    parts = []
    ref.subscribe(parts.append)
    ref.run_to_end()
    expected = pd.concat(parts, ignore_index=True)

    p = tmp_path / "grow" / "whole.csv"
    p.parent.mkdir()
    text = whole.read_text().splitlines(keepends=True)
    p.write_text("".join(text[:2]))
    monitor = Monitor([p], follow=True)
    frames = []
    monitor.subscribe(frames.append)
    monitor.replay.state = "running"
    pos = 2
    while pos < len(text):
        with open(p, "a") as fh:
            fh.write("".join(text[pos:pos + piece]))
        pos += piece
        monitor.replay.step()
    for _ in range(3):
        monitor.replay.step()
    monitor.close()
    got = pd.concat(frames, ignore_index=True)
    assert len(got) == n
    np.testing.assert_array_equal(got["is_anomaly"].to_numpy(), expected["is_anomaly"].to_numpy())
    np.testing.assert_allclose(got["anomaly_score"].to_numpy(), expected["anomaly_score"].to_numpy())


@pytest.mark.parametrize("seed", [3, 5, 11])
def test_restarts_at_any_point_analyse_every_row_once(tmp_path, seed):
    """Monitors dropped without closing (as a killed process is) at random points, some before reading
    anything after their resume, each followed by a resume: every row is analysed once, in order."""
    text = _fault_file(2500)
    p = tmp_path / "bench.csv"
    p.write_text("".join(text[:200]))
    db = tmp_path / "a.sqlite"
    rng = np.random.default_rng(seed)
    chunk = int(rng.integers(50, 1500))
    seen = []

    def start(resume):
        m = Monitor([p], follow=True, alerts_db=db, checkpoint_every=0, max_chunk_rows=chunk, resume=resume)
        m.subscribe(lambda df: seen.extend(df["timestamp"].tolist()))
        m.replay.state = "running"
        return m

    monitor, pos, restarts = start(False), 200, 0
    while pos < len(text):
        step = int(rng.integers(1, 400))
        with open(p, "a") as fh:
            fh.write("".join(text[pos:pos + step]))
        pos += step
        for _ in range(int(rng.integers(0, 3))):
            monitor.replay.step()
        if rng.random() < 0.4:
            for src in monitor.sources:  # what the kernel does for a killed process: no commit, files closed
                src.close()
            monitor.log.close()
            monitor, restarts = start(True), restarts + 1
    wait_for(lambda: monitor.replay.step() and monitor.metrics.rows_in >= len(text) - 1, 60, "every row")
    monitor.close()
    assert restarts >= 2
    times = pd.Series(seen)
    assert len(times) == len(text) - 1 and times.is_monotonic_increasing and not times.duplicated().any()


# ---------------------------------------------------------------------------------------------- sbg watch


def _watch(args, log_path, port_file=None):
    with open(log_path, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "sbg.cli", "watch", "--no-color", *map(str, args)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                                start_new_session=True)


def _alert_table(db) -> pd.DataFrame:
    with sqlite3.connect(db) as conn:
        df = pd.read_sql("SELECT id, rule, entity, signal, severity, start, end, state, peak FROM alerts", conn)
    return df.sort_values("id").reset_index(drop=True)


def _rows_in(port) -> float:
    from tests.served import metric_total

    return metric_total(port, "sbg_rows_in_total")


def _fault_file(n=4000) -> list[str]:
    """A 1 Hz log with faults: a voltage step held for a while, a spike, a stuck stretch."""
    rng = np.random.default_rng(11)
    v = 3.7 + 0.005 * rng.standard_normal(n)
    v[int(n * 0.375):int(n * 0.375) + 30] = 3.2
    v[int(n * 0.625)] = 4.6
    w = 1.0 + 0.01 * rng.standard_normal(n)
    w[int(n * 0.75):int(n * 0.85)] = 1.0
    t = pd.date_range("2024-01-01", periods=n, freq="1s").strftime("%Y-%m-%dT%H:%M:%S")
    return ["time,v,w\n"] + [f"{a},{b:.5f},{c:.5f}\n" for a, b, c in zip(t, v, w, strict=True)]


def test_sigkill_during_appends_then_restart_gives_the_uninterrupted_alert_log(tmp_path):
    text = _fault_file()
    whole = tmp_path / "ref" / "bench.csv"
    whole.parent.mkdir()
    whole.write_text("".join(text))
    ref_db = tmp_path / "ref.sqlite"
    subprocess.run([sys.executable, "-m", "sbg.cli", "replay", str(whole), "--alerts-db", str(ref_db), "--quiet"],
                   cwd=ROOT, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    expected = _alert_table(ref_db)
    assert len(expected) >= 3

    p = tmp_path / "live" / "bench.csv"
    p.parent.mkdir()
    p.write_text("".join(text[:200]))
    db = tmp_path / "live.sqlite"
    log = tmp_path / "watch.log"
    from tests.served import free_port

    port = free_port()
    args = [p, "--alerts-db", db, "--port", port, "--poll", "0.05"]
    pos, kills = 200, 0
    proc = _watch(args, log)
    rng = np.random.default_rng(5)
    try:
        while pos < len(text):
            step = int(rng.integers(1, 400))
            with open(p, "a") as fh:
                fh.write("".join(text[pos:pos + step]))
            pos += step
            if kills < 4 and pos > 800 * (kills + 1):
                # Let it read something since the last start, then kill it mid-flight.
                wait_for(lambda: _rows_in(port) > 0, 60, "the watch to count rows")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                proc = _watch(args, log)
        wait_for(lambda: _rows_in(port) >= len(text) - 1, 120, "every row to be read")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert kills == 4
    out = log.read_text()
    assert out.count("resuming from the checkpoint") == 4, out[-3000:]
    got = _alert_table(db)
    pd.testing.assert_frame_equal(got, expected)


def _unshare_user_works() -> bool:
    try:
        return subprocess.run(["unshare", "-U", "--map-user=1000", "true"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _unshare_user_works(), reason="user namespaces (unshare -U) not allowed here")
def test_an_unreadable_file_is_a_counted_event_and_the_others_go_on():
    """As an unprivileged user (a user namespace; root reads everything): a file made unreadable."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="sbg-unreadable-"))
    try:
        d.chmod(0o755)
        (d / "a.csv").write_text("time,v,w\n" + lines(0, 3))
        (d / "b.csv").write_text("time,v,w\n" + lines(0, 3))
        (d / "b.csv").chmod(0o000)
        script = (
            "from sbg.io.follow import FollowSource\n"
            f"src = FollowSource({str(d / '*.csv')!r})\n"
            "rows = sum(len(b.frame) for b in src.poll())\n"
            "rows += sum(len(b.frame) for b in src.poll())\n"
            "print(rows, src.errors, [e.message for e in src.events if e.error])\n"
        )
        out = subprocess.run(["unshare", "-U", "--map-user=1000", sys.executable, "-c", script], cwd=ROOT,
                             capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert out.returncode == 0, out.stderr
        rows, errors, messages = out.stdout.split(" ", 2)
        assert rows == "3" and errors == "1", out.stdout
        assert "b.csv: cannot read: Permission denied" in messages
    finally:
        (d / "b.csv").chmod(0o644)
        shutil.rmtree(d)
def test_watch_json_lines_and_a_clean_stop(tmp_path):
    text = _fault_file(2600)
    p = tmp_path / "bench.csv"
    p.write_text("".join(text[:1400]))
    proc = subprocess.Popen([sys.executable, "-m", "sbg.cli", "watch", str(p), "--json", "--poll", "0.05",
                             "--alerts-db", str(tmp_path / "a.sqlite")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, start_new_session=True,
                            stdin=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        with open(p, "a") as fh:
            fh.write("".join(text[1400:]))
        events = []
        deadline = time.monotonic() + 90
        while not any(e["event"] == "resolved" for e in events) and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line:
                events.append(json.loads(line))
        assert any(e["event"] == "fired" for e in events) and any(e["event"] == "resolved" for e in events)
        assert {"entity", "rule", "severity", "start"} <= set(events[0]["alert"])
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
        for line in rest.decode().splitlines():  # stdout holds JSON lines and nothing else
            json.loads(line)
        assert b"summary" in err
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_watch_groups_its_summary_by_site_from_a_mapping_and_refuses_a_bad_one(tmp_path):
    """``--hierarchy`` as ``sbg replay`` and ``detect`` take it: the stop's summary is grouped by site and
    rack and names who is unassigned; a bad mapping is refused at FILE:LINE:COL before anything is followed."""
    fleet = pd.read_csv(DATA_DIR / "battery_fleet.csv.gz", nrows=2400)
    data = tmp_path / "live.csv"
    fleet.to_csv(data, index=False)
    mapping = tmp_path / "map.csv"
    mapping.write_text("battery_id,site,rack\nB01,north,r1\nB02,north,r2\nB03,south,r1\n")
    proc = subprocess.Popen([sys.executable, "-m", "sbg.cli", "watch", "--no-color", "--quiet", "--poll", "0.05",
                             str(data), "--hierarchy", str(mapping), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, start_new_session=True,
                            stdin=subprocess.DEVNULL)
    try:
        first = proc.stdout.readline().decode()
        port = int(first.rsplit(":", 1)[1].split()[0])
        wait_for(lambda: _rows_in(port) >= len(fleet), what="every row to be analysed")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
        text = out.decode()
        assert f"by site ({mapping})" in text and "north / r1" in text and "south / r1" in text, text
        assert "grouped as (unassigned): B04" in text, text
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    mapping.write_text("battery_id,site,rack\nB01,north\n")
    bad = subprocess.run([sys.executable, "-m", "sbg.cli", "watch", str(data), "--hierarchy", str(mapping)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120, stdin=subprocess.DEVNULL)
    assert bad.returncode == 3 and "map.csv:2:3: 2 fields, the header has 3" in bad.stderr, bad.stderr
