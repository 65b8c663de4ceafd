"""Crash safety: a replay killed at any moment resumes to exactly the alert log of an uninterrupted run.

The crash test kills real ``sbg replay`` processes with SIGKILL after seeded
random delays, checks the alert log after every kill, and resumes with
``--resume`` until the run ends. The other tests cover the same resume in
process (with a different chunking) and every way ``--resume`` can be refused.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing

import pandas as pd
import pytest

from sbg.alerts.log import AlertLog
from sbg.config import Settings
from sbg.io.datasets import DATA_DIR
from sbg.stream.monitor import Monitor

from .test_alerts import _fault_file

SBG = [sys.executable, "-m", "sbg.cli"]
ENV = {**os.environ, "NO_COLOR": "1", "PYTHONDONTWRITEBYTECODE": "1"}
ENV.pop("PYTHONWARNINGS", None)
KILLS = 12
SEED = 20240603

# Sensitive rules: ~160 alerts that fire, resolve and reopen all through the run, and every kind of
# carried state (robust quantiles, the baseline's paired windows, the surprise histograms, the joint
# reference) in the checkpoint.
SENSITIVE = {
    "detectors": {"zscore": {"threshold": 3.0, "warmup": 200, "confirm": 0},
                  "spike": {"threshold": 4.0, "warmup": 200, "confirm": 0},
                  "robust": {"enabled": True, "threshold": 4.0, "warmup": 200, "confirm": 0},
                  "surprise": {"decades": 3.0}, "joint": {"applies": "always", "decades": 3.0}},
    "rules": [
        {"name": "anomaly", "detectors": ["surprise"], "clear_rows": 5, "dedup": "1min"},
        {"name": "condition", "detectors": ["joint"], "clear_rows": 5, "dedup": "1min"},
        {"name": "outlier", "detectors": ["zscore", "robust"], "clear_rows": 5, "dedup": "2min"},
        {"name": "spike", "detectors": ["spike"], "clear_rows": 3, "dedup": "1min"},
        {"name": "limit_breach", "detectors": ["limits"], "severity": "critical", "pending_rows": 3,
         "clear_rows": 30},
        {"name": "stuck_sensor", "detectors": ["flatline"], "clear_rows": 5},
        {"name": "data_gap", "detectors": ["gap"], "clear_rows": 1},
        {"name": "baseline_drift", "detectors": ["baseline"], "pending_rows": 10, "clear_rows": 60},
    ],
}


def _yaml(path, data):
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def _baseline(path, source, rows):
    pd.read_csv(source, nrows=rows).to_csv(path, index=False)
    return path


def _alert_rows(db):
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT * FROM alerts ORDER BY id").fetchall()


def _check_log(db):
    """The log opens, every alert row is whole, and the alerts are exactly those of the checkpoint."""
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT id, rule, entity, severity, start, end, state, peak_score FROM alerts").fetchall()
        checkpoint = conn.execute("SELECT state FROM checkpoint").fetchall()
    for ident, rule, entity, severity, start, end, state, score in rows:
        assert ident and rule and entity and severity and start and score is not None
        assert state in ("firing", "resolved") and (end is None) == (state == "firing")
    if not checkpoint:  # killed before the first commit: nothing written at all
        assert rows == []
        return 0
    saved = {a["id"]: a for a in json.loads(checkpoint[0][0])["engine"]["alerts"]}
    # Committed in one transaction: the log holds what the checkpoint's engine held, no more, no less.
    assert sorted(saved) == sorted(r[0] for r in rows)
    assert all(saved[r[0]]["state"] == r[6] for r in rows)
    return len(rows)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    data = DATA_DIR / "battery_fleet.csv.gz"
    args = [data, "--speed", "max", "--quiet", "--config", _yaml(root / "sensitive.yaml", SENSITIVE),
            "--baseline", _baseline(root / "baseline.csv", data, 16000)]
    return root, [str(a) for a in args]


def _replay(args, db, resume=False):
    cmd = [*SBG, "replay", *args, "--alerts-db", str(db), *(["--resume"] if resume else [])]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, env=ENV)


def _committed_rows(db):
    """Rows analysed at the last committed checkpoint (-1 for none yet)."""
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT position FROM checkpoint").fetchone()
    except sqlite3.OperationalError:  # not created yet
        return -1
    return -1 if row is None else json.loads(row[0])["rows_emitted"]


def _wait_then_kill(proc, db, rng):
    """SIGKILL after a seeded random delay; ``True`` if the process was still running."""
    if rng.random() < 0.2:
        # While it starts, re-reads the files up to the checkpoint, or makes its first commit.
        time.sleep(rng.uniform(0.0, 0.5))
    else:
        # Mid-run: after it has committed progress, so a loaded machine still moves on (and ends).
        before = max(_committed_rows(db), 0)
        while proc.poll() is None and _committed_rows(db) <= before:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    return True


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_log(fleet):
    root, args = fleet
    reference_db = root / "reference.sqlite"
    reference = _replay(args, reference_db)
    rng = random.Random(SEED)
    kills, cycles, t0 = 0, 0, time.monotonic()
    finals = []
    while kills < KILLS:
        # One cycle: a fresh run, killed and resumed until it gets to the end by itself.
        cycles += 1
        db = root / f"killed{cycles}.sqlite"
        resume = False
        while True:
            proc = _replay(args, db, resume)
            first = proc.stdout.readline()  # printed once the monitor is built (and restored)
            assert "replaying" in first, proc.stderr.read()
            if _wait_then_kill(proc, db, rng):
                kills += 1
                _check_log(db)
                resume = True
                continue
            out, err = proc.communicate()
            assert proc.returncode == 0 and err == "", err
            assert "reconciles                 yes" in out
            finals.append(db)
            break
    out, err = reference.communicate()
    assert reference.returncode == 0 and err == "", err
    expected = _alert_rows(reference_db)
    assert len(expected) > 100
    for db in finals:
        assert _check_log(db) == len(expected)
        assert _alert_rows(db) == expected  # same ids, same content, nothing twice, nothing missing
    print(f"survived {kills} SIGKILLs in {cycles} killed runs; {len(expected)} alerts identical "
          f"to the uninterrupted run ({time.monotonic() - t0:.1f}s)")


@pytest.mark.parametrize("stop_after", [1, 9, 40])
def test_resume_in_process_continues_exactly(tmp_path, stop_after):
    data = tmp_path / "faults.csv"
    _fault_file(data, rows_per_entity=6000)
    base = _baseline(tmp_path / "baseline.csv", data, 3000)
    settings = Settings.from_dict(SENSITIVE)

    def monitor(db, **options):
        return Monitor([data], baseline=base, settings=settings, alerts_db=db, speed="max", **options)

    whole = monitor(tmp_path / "whole.sqlite", max_chunk_rows=500)
    whole.run_to_end()
    whole.close()

    first = monitor(tmp_path / "parts.sqlite", max_chunk_rows=500)
    chunks = []
    first.subscribe(lambda chunk: chunks.append(len(chunk)) or (len(chunks) >= stop_after and first.replay.stop()))
    first.run_to_end()
    first.close()
    # Killed after the resume, before a row was read again: the checkpoint must still be where it was.
    idle = monitor(tmp_path / "parts.sqlite", resume=True)
    idle.commit()
    idle.close()
    # A different chunking after the resume: chunk invariance carries over the checkpoint.
    second = monitor(tmp_path / "parts.sqlite", max_chunk_rows=333, resume=True)
    assert second.resumed_from["rows_emitted"] == sum(chunks)
    second.run_to_end()
    assert second.metrics.rows_in == whole.metrics.rows_in and second.metrics.reconciles
    second.close()
    expected = _alert_rows(tmp_path / "whole.sqlite")
    assert len(expected) >= 5
    assert _alert_rows(tmp_path / "parts.sqlite") == expected


# ----------------------------------------------------------------------------- refusals


def _run(*args):
    return subprocess.run([*SBG, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300,
                          stdin=subprocess.DEVNULL)


def _copy_log(src, dst):
    with closing(sqlite3.connect(src)) as a, closing(sqlite3.connect(dst)) as b:
        a.backup(b)
    return dst


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    root = tmp_path_factory.mktemp("refusals")
    data, other, changing = root / "cells.csv", root / "other.csv", root / "changing.csv"
    _fault_file(data, rows_per_entity=3000)
    shutil.copy(data, other)
    shutil.copy(data, changing)
    done, moved = root / "done.sqlite", root / "moved.sqlite"
    for path, db in ((data, done), (changing, moved)):
        finished = Monitor([path], alerts_db=db)  # as `sbg replay PATH --alerts-db DB` would
        finished.run_to_end()
        finished.close()
    with open(changing, "a") as fh:
        fh.write("2024-01-01T06:00:00,c1,25.0\n")
    bare = root / "bare.sqlite"
    AlertLog(bare).close()
    damaged = _copy_log(done, root / "damaged.sqlite")
    with closing(sqlite3.connect(damaged)) as conn:
        conn.execute("UPDATE checkpoint SET arrays = ?", (b"PK\x03\x04 not an npz",))
        conn.commit()
    finished_before = _alert_rows(done)
    cases = {
        "no --alerts-db": (2, ["replay", data, "--resume"], "--resume needs --alerts-db"),
        "no such log": (2, ["replay", data, "--resume", "--alerts-db", root / "nope.sqlite"], "no checkpoint"),
        "log without a checkpoint": (2, ["replay", data, "--resume", "--alerts-db", bare], "no checkpoint"),
        "other files": (2, ["replay", other, "--resume", "--alerts-db", done], "only for cells"),
        "file changed": (2, ["replay", changing, "--resume", "--alerts-db", moved], "changed since the checkpoint"),
        "other settings": (4, ["replay", data, "--resume", "--alerts-db", done, "--entity", "cell_id",
                               "--signals", "temperature_c"], "differ from the checkpoint"),
        "damaged checkpoint": (2, ["replay", data, "--resume", "--alerts-db", damaged], "is damaged"),
        "finished run": (0, ["replay", data, "--resume", "--alerts-db", done], "the run had finished"),
    }
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        procs = list(pool.map(lambda c: _run(*c[1]), cases.values()))
    results = {name: (code, proc, expect) for (name, (code, _, expect)), proc in zip(cases.items(), procs, strict=True)}
    return results, {"finished_before": finished_before, "done": done, "nope": root / "nope.sqlite"}


@pytest.mark.parametrize("case", ["no --alerts-db", "no such log", "log without a checkpoint", "other files",
                                  "file changed", "other settings", "damaged checkpoint"])
def test_resume_refusals_are_one_line_errors(refusals, case):
    results, _ = refusals
    code, proc, expect = results[case]
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sbg: error: ") and expect in lines[0], proc.stderr


def test_resume_refusal_creates_no_log(refusals):
    assert not refusals[1]["nope"].exists()


def test_resuming_a_finished_run_changes_nothing(refusals):
    results, info = refusals
    _, proc, expect = results["finished run"]
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert expect in proc.stdout and "reconciles                 yes" in proc.stdout
    assert _alert_rows(info["done"]) == info["finished_before"]
