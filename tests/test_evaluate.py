"""Scoring flags against labelled windows: NAB's window score, point-wise counts, and ``sbg evaluate``."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from sbg.evaluate import PROFILES, flagged_runs, nab_score, pointwise

T = pd.date_range("2024-01-01", periods=1000, freq="5min")
WINDOWS = pd.DataFrame({"entity": ["a", "a"], "start": [T[300], T[700]], "end": [T[349], T[749]]})


def flags(rows, n=1000, entity="a"):
    return pd.DataFrame({"entity": entity, "timestamp": T[:n], "is_anomaly": np.isin(np.arange(n), rows)})


def test_nothing_flagged_scores_zero_and_every_window_at_its_start_scores_100():
    assert nab_score(flags([]), WINDOWS)["score"] == 0.0
    assert nab_score(flags([300, 700]), WINDOWS)["score"] == pytest.approx(100.0)


def test_an_early_detection_earns_more_than_a_late_one_and_only_the_first_counts():
    early = nab_score(flags([305, 705]), WINDOWS)["score"]
    late = nab_score(flags([345, 745]), WINDOWS)["score"]
    assert 90 < early < 100 and late < early
    assert nab_score(flags([305, 306, 307, 705]), WINDOWS)["score"] == pytest.approx(early)


def test_false_positives_cost_more_far_from_a_window_and_per_profile():
    near = nab_score(flags([300, 700, 352]), WINDOWS)
    far = nab_score(flags([300, 700, 600]), WINDOWS)
    assert far["score"] < near["score"] < 100 and far["fp"] == near["fp"] == 1
    low_fp = nab_score(flags([300, 700, 600]), WINDOWS, "reward_low_fp")
    assert low_fp["score"] < far["score"]


def test_a_missed_window_costs_more_under_reward_low_fn():
    one = flags([300])
    assert nab_score(one, WINDOWS)["fn"] == 1
    assert nab_score(one, WINDOWS, "reward_low_fn")["raw"] < nab_score(one, WINDOWS)["raw"]
    assert set(PROFILES) == {"standard", "reward_low_fp", "reward_low_fn"}


def test_detections_in_the_probation_period_are_ignored():
    assert nab_score(flags([10, 20, 300, 700]), WINDOWS)["fp"] == 0
    assert nab_score(flags([10, 300, 700]), WINDOWS, probation=0.0)["fp"] == 1


def test_pointwise_counts_skip_the_first_rows_of_each_entity():
    f = pd.concat([flags([0, 1, 300, 301, 500]), flags([5], entity="b")])
    r = pointwise(f, WINDOWS)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 4, 98)
    r = pointwise(f, WINDOWS, skip_rows=10)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 1, 98)
    assert r["f1"] == pytest.approx(2 / (2 + 99 / 2))


def test_flagged_runs_are_the_events():
    runs = flagged_runs(flags([1, 2, 3, 10, 12]))
    assert runs["start"].tolist() == [T[1], T[10], T[12]] and runs["end"].tolist() == [T[3], T[10], T[12]]


def sbg(*args, cwd):
    return subprocess.run([sys.executable, "-m", "sbg.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 5-minute series with a spike and a plateau, scored by ``sbg detect``."""
    root = tmp_path_factory.mktemp("evaluate")
    rng = np.random.default_rng(1)
    n = 3000
    t = pd.date_range("2024-02-14", periods=n, freq="5min")
    v = 50 + 10 * np.sin(2 * np.pi * np.arange(n) / 288) + rng.normal(0, 2, n)
    v[2000] += 40
    v[2500:2560] += 25
    pd.DataFrame({"timestamp": t.strftime("%Y-%m-%d %H:%M:%S"), "value": v.round(3)}).to_csv(root / "cpu.csv",
                                                                                                index=False)
    pd.DataFrame({"entity": ["cpu", "cpu"], "start": [t[1990], t[2490]], "end": [t[2010], t[2570]]}).to_csv(
        root / "labels.csv", index=False)
    assert sbg("detect", "cpu.csv", "-o", "flags.csv", cwd=root).returncode == 0
    assert sbg("detect", "cpu.csv", "-o", "flags.parquet", cwd=root).returncode == 0
    return root


@pytest.mark.parametrize("output", ["flags.csv", "flags.parquet"])
def test_sbg_evaluate_prints_every_view_and_writes_json(run, output):
    proc = sbg("evaluate", output, "--labels", "labels.csv", "--json", "r.json", cwd=run)
    assert proc.returncode == 0, proc.stderr
    for words in ("events", "point-wise", "F1", "false-alarm rate", "NAB window score", "reward_low_fn"):
        assert words in proc.stdout
    r = json.loads((run / "r.json").read_text())
    assert r["events"]["recall"] == 1.0 and r["nab"]["standard"]["fn"] == 0
    assert r["nab"]["standard"]["score"] > 50


@pytest.mark.parametrize("content,words", [
    (None, "no such file"),
    ("timestamp,value,is_anomaly\n2024-01-01,1,maybe\n", "bad.csv:2: is_anomaly is 'maybe'"),
    ("timestamp,value\n2024-01-01,1\n", "no is_anomaly column"),
    ("timestamp,value,is_anomaly\nyesterday,1,true\n", "not timestamps"),
])
def test_sbg_evaluate_refuses_bad_flags_in_one_line(run, content, words):
    if content is not None:
        (run / "bad.csv").write_text(content)
    else:
        (run / "bad.csv").unlink(missing_ok=True)
    proc = sbg("evaluate", "bad.csv", "--labels", "labels.csv", cwd=run)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("sbg: error: bad.csv") and words in proc.stderr


def test_sbg_evaluate_refuses_labels_without_windows(run):
    (run / "nolabels.csv").write_text("a,b\n1,2\n")
    proc = sbg("evaluate", "flags.csv", "--labels", "nolabels.csv", cwd=run)
    assert proc.returncode == 3 and "nolabels.csv: labels need start and end" in proc.stderr
