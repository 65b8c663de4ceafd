"""Scoring flags against labelled windows: NAB's window score, point-wise counts, and ``sbg evaluate``.

The command line runs in this process (``sbg.cli.main``), on small series
generated here; nothing is read from ``data/`` or shared directories.
"""

import json
import math

import numpy as np
import pandas as pd
import pytest

from sbg.cli import main
from sbg.evaluate import PROFILES, flagged_runs, load_labels, nab_score, pointwise, scaled_sigmoid

T = pd.date_range("2024-01-01", periods=1000, freq="5min")
WINDOWS = pd.DataFrame({"entity": ["a", "a"], "start": [T[300], T[700]], "end": [T[349], T[749]]})
S_FIRST = 2 / (1 + math.exp(-5)) - 1  # the sigmoid at a window's first row, y = -1


def flags(rows, n=1000, entity="a"):
    return pd.DataFrame({"entity": entity, "timestamp": T[:n], "is_anomaly": np.isin(np.arange(n), rows)})


# ----------------------------------------------------------------------------- NAB window score


def test_profiles_are_the_published_weights():
    assert PROFILES == {"standard": {"tp": 1.0, "fp": -0.11, "fn": -1.0},
                        "reward_low_fp": {"tp": 1.0, "fp": -0.22, "fn": -1.0},
                        "reward_low_fn": {"tp": 1.0, "fp": -0.11, "fn": -2.0}}
    assert float(scaled_sigmoid(-1.0)) == pytest.approx(S_FIRST) and float(scaled_sigmoid(0.0)) == 0.0


def test_nothing_flagged_scores_zero_and_every_window_at_its_start_scores_100():
    null = nab_score(flags([]), WINDOWS)
    assert null["score"] == 0.0 and null["raw"] == null["null"] == -2.0 and (null["tp"], null["fn"]) == (0, 2)
    perfect = nab_score(flags([300, 700]), WINDOWS)
    assert perfect["score"] == pytest.approx(100.0) and perfect["perfect"] == pytest.approx(2 * S_FIRST)
    assert perfect["per_entity"].to_dict("records")[0] | {"raw": 0} == {
        "entity": "a", "rows": 1000, "windows": 2, "tp": 2, "fp": 0, "fn": 0, "raw": 0}


def test_an_early_detection_scores_near_a_tp_a_late_one_less_and_only_the_first_counts():
    first = nab_score(flags([300]), WINDOWS)["raw"] + 1.0  # the other window is missed: A_FN = -1
    assert first == pytest.approx(S_FIRST) and first > 0.98
    late = nab_score(flags([345]), WINDOWS)["raw"] + 1.0  # 5 rows before the end of a 50-row window
    assert late == pytest.approx(2 / (1 + math.exp(5 * -5 / 50)) - 1)  # y = -0.1: 0.245
    assert late < first
    early = nab_score(flags([305, 705]), WINDOWS)["score"]
    assert 90 < early < 100
    assert nab_score(flags([305, 306, 307, 705]), WINDOWS)["score"] == pytest.approx(early)


def test_a_false_positive_far_after_a_window_costs_a_fp_and_one_just_after_costs_little():
    base = nab_score(flags([300, 700]), WINDOWS)["raw"]
    for profile in ("standard", "reward_low_fp"):
        far = nab_score(flags([300, 700, 999]), WINDOWS, profile)  # 5 window lengths after the last one
        assert far["raw"] - base == pytest.approx(PROFILES[profile]["fp"], rel=1e-4) and far["fp"] == 1
    near = nab_score(flags([300, 700, 351]), WINDOWS)["raw"] - base  # 2 rows after: y = 0.04
    assert near == pytest.approx(-0.11 * -(2 / (1 + math.exp(5 * 2 / 50)) - 1))
    assert -0.02 < near < 0
    before = nab_score(flags([200, 300, 700]), WINDOWS)["raw"] - base  # no window before it: full A_FP
    assert before == pytest.approx(-0.11)


def test_a_missed_window_costs_a_fn_per_profile():
    one = flags([300])
    assert nab_score(one, WINDOWS)["fn"] == 1
    assert nab_score(one, WINDOWS)["raw"] == pytest.approx(S_FIRST - 1.0)
    assert nab_score(one, WINDOWS, "reward_low_fn")["raw"] == pytest.approx(S_FIRST - 2.0)


def test_detections_in_the_probation_period_are_ignored():
    assert nab_score(flags([10, 20, 149, 300, 700]), WINDOWS)["fp"] == 0  # 15 % of 1000 rows: 0..149
    assert nab_score(flags([150, 300, 700]), WINDOWS)["fp"] == 1
    assert nab_score(flags([10, 300, 700]), WINDOWS, probation=0.0)["fp"] == 1
    assert nab_score(flags([10, 300, 700]), WINDOWS, probation=0.5)["tp"] == 1  # the first window is in it


def test_entities_are_scored_separately_and_summed():
    two = pd.concat([flags([300, 700]), flags([], entity="b")])
    windows = pd.concat([WINDOWS, WINDOWS.assign(entity="b")])
    r = nab_score(two, windows)
    assert (r["tp"], r["fn"]) == (2, 2) and r["score"] == pytest.approx(50.0)
    assert r["per_entity"]["entity"].tolist() == ["a", "b"]


# ----------------------------------------------------------------------------- point-wise


def test_pointwise_confusion_counts_by_hand():
    f = flags([0, 1, 300, 301, 500, 749, 750])
    r = pointwise(f, WINDOWS)
    # In windows (100 rows): 300, 301, 749 flagged. Outside (900 rows): 0, 1, 500, 750 flagged.
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (3, 4, 97, 896)
    assert r["precision"] == pytest.approx(3 / 7) and r["recall"] == pytest.approx(0.03)
    assert r["f1"] == pytest.approx(3 / (3 + (97 + 4) / 2))
    assert r["false_alarm_rate"] == pytest.approx(4 / 900) and r["miss_rate"] == pytest.approx(0.97)


def test_pointwise_skips_the_first_rows_of_each_entity():
    f = pd.concat([flags([0, 1, 300, 301, 500]), flags([5, 20], entity="b")])
    r = pointwise(f, WINDOWS)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (2, 5, 98, 1895)
    r = pointwise(f, WINDOWS, skip_rows=10)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (2, 2, 98, 1878)
    assert r["f1"] == pytest.approx(2 / (2 + 100 / 2))


def test_pointwise_without_labels_or_flags_gives_nan_ratios():
    r = pointwise(flags([]), WINDOWS.iloc[:0])
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (0, 0, 0, 1000)
    assert math.isnan(r["precision"]) and math.isnan(r["recall"]) and r["false_alarm_rate"] == 0.0


def test_flagged_runs_are_the_events():
    runs = flagged_runs(flags([1, 2, 3, 10, 12]))
    assert runs["start"].tolist() == [T[1], T[10], T[12]] and runs["end"].tolist() == [T[3], T[10], T[12]]


def test_load_labels_keeps_the_name_of_its_entity_column(tmp_path):
    (tmp_path / "l.csv").write_text("unit_id,start,end\nu1,2024-01-01 00:00,2024-01-01 01:00\n")
    labels = load_labels(tmp_path / "l.csv")
    assert labels["entity"].tolist() == ["u1"] and labels.attrs["entity_column"] == "unit_id"


# ----------------------------------------------------------------------------- sbg evaluate


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A wide 5-minute series with a spike and a plateau, and a long two-unit file, scored by ``sbg detect``."""
    root = tmp_path_factory.mktemp("evaluate")
    rng = np.random.default_rng(1)
    n = 3000
    t = pd.date_range("2024-02-14", periods=n, freq="5min")

    def series():
        v = 50 + 10 * np.sin(2 * np.pi * np.arange(n) / 288) + rng.normal(0, 2, n)
        v[2000] += 40
        v[2500:2560] += 25
        return v.round(3)

    stamps = t.strftime("%Y-%m-%d %H:%M:%S")
    pd.DataFrame({"timestamp": stamps, "value": series()}).to_csv(root / "cpu.csv", index=False)
    windows = {"start": [t[1990], t[2490]], "end": [t[2010], t[2570]]}
    pd.DataFrame({"entity": "cpu", **windows}).to_csv(root / "labels.csv", index=False)
    pd.DataFrame(windows).to_csv(root / "plain_labels.csv", index=False)  # no entity column
    units = pd.concat([pd.DataFrame({"timestamp": stamps, "unit_id": u, "value": series()}) for u in ("u1", "u2")])
    units.sort_values("timestamp", kind="stable").to_csv(root / "units.csv", index=False)
    pd.DataFrame({"unit_id": ["u1", "u2", "u2"], "start": [t[1990], t[1990], t[2490]],
                  "end": [t[2010], t[2010], t[2570]]}).to_csv(root / "unit_labels.csv", index=False)
    for src, out in (("cpu.csv", "flags.csv"), ("cpu.csv", "flags.parquet"), ("units.csv", "units_flags.csv")):
        assert main(["detect", str(root / src), "-o", str(root / out)]) == 0
    return root


def evaluate_cli(capsys, *args):
    code = main(["evaluate", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("output", ["flags.csv", "flags.parquet"])
def test_sbg_evaluate_prints_every_view_and_writes_json(run, capsys, output):
    capsys.readouterr()
    code, out, err = evaluate_cli(capsys, run / output, "--labels", run / "labels.csv", "--json", run / "r.json")
    assert code == 0 and err == ""
    for words in ("events", "recall", "median delay", "point-wise", "F1", "false-alarm rate", "NAB window score",
                  "standard", "reward_low_fp", "reward_low_fn"):
        assert words in out
    r = json.loads((run / "r.json").read_text())
    assert r["events"]["recall"] == 1.0 and r["events"]["labels"] == 2 and r["nab"]["standard"]["fn"] == 0
    assert r["nab"]["standard"]["score"] > 50 and set(r["nab"]) == set(PROFILES)
    pw = r["pointwise"]
    assert pw["tp"] + pw["fp"] + pw["fn"] + pw["tn"] == 3000
    rows = [line for line in out.splitlines() if line.startswith("  ")]
    assert len(rows) == 10  # an aligned table: every figure ends in the same column
    assert all(row[29] != " " and row[30:31] in ("", " ") for row in rows), out


def test_sbg_evaluate_one_profile_skip_rows_and_labels_without_an_entity_column(run, capsys):
    code, out, err = evaluate_cli(capsys, run / "flags.parquet", "--labels", run / "plain_labels.csv",
                                  "--profile", "reward_low_fn", "--skip-rows", "400", "--json", run / "p.json")
    assert code == 0 and err == ""
    assert "reward_low_fn" in out and "standard" not in out and "first 400 rows" in out
    r = json.loads((run / "p.json").read_text())
    assert list(r["nab"]) == ["reward_low_fn"] and r["events"]["labels"] == 2
    assert sum(r["pointwise"][k] for k in ("tp", "fp", "fn", "tn")) == 2600


def test_sbg_evaluate_finds_a_long_files_entity_column(run, capsys):
    """``sbg detect`` keeps a long file's entity column under its own name (here ``unit_id``)."""
    code, out, err = evaluate_cli(capsys, run / "units_flags.csv", "--labels", run / "unit_labels.csv",
                                  "--json", run / "u.json")
    assert code == 0 and err == ""
    r = json.loads((run / "u.json").read_text())
    assert r["events"]["labels"] == 3 and r["nab"]["standard"]["fn"] + r["nab"]["standard"]["tp"] == 3
    assert sum(r["pointwise"][k] for k in ("tp", "fp", "fn", "tn")) == 6000
    assert r["events"]["recall"] > 0 and r["pointwise"]["tp"] > 0


def test_sbg_evaluate_warns_about_windows_it_cannot_score(run, capsys):
    (run / "other.csv").write_text("entity,start,end\nnobody,2024-02-20,2024-02-21\n"
                                   "cpu,2030-01-01,2030-01-02\ncpu,2024-02-20 22:00,2024-02-20 23:00\n")
    code, out, err = evaluate_cli(capsys, run / "flags.csv", "--labels", run / "other.csv", "--entity-name", "cpu")
    assert code == 0
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("sbg: warning: ") for line in lines)
    assert "1 labelled windows are for entities not in" in lines[0] and "nobody" in lines[0]
    assert "1 labelled windows hold no row" in lines[1]


@pytest.mark.parametrize("which,content,words", [
    ("flags", None, "no such file"),
    ("flags", "", "cannot be read"),
    ("flags", "timestamp,value,is_anomaly\n2024-01-01,1,maybe\n", "bad.csv:2: is_anomaly is 'maybe'"),
    ("flags", "timestamp,value\n2024-01-01,1\n", "no is_anomaly column"),
    ("flags", "timestamp,value,is_anomaly\nyesterday,1,true\n", "not timestamps"),
    ("labels", None, "no such file"),
    ("labels", "a,b\n1,2\n", "labels need start and end columns"),
    ("labels", "entity,start,end\ncpu,soon,later\n", "bad.csv:2:2: 'soon' is not a time"),
    ("labels", "entity,start,end\ncpu,2024-01-01 10:00,2024-01-01 11:00\ncpu,2024-01-01 12:00,2024-01-01 09:00\n",
     "bad.csv:3:3: the window ends (2024-01-01 09:00:00) before it starts (2024-01-01 12:00:00)"),
    ("labels", "timestamp,label\n2024-01-01 10:00,0\n2024-01-01 10:05,yes\n", "bad.csv:3:2: label 'yes' is not 0 or 1"),
    ("labels", "timestamp,label\n2024-01-01 10:00,0\nlater,1\n", "bad.csv:3:1: 'later' is not a time"),
    ("labels", "", "cannot be read as a labels CSV"),
])
def test_sbg_evaluate_refuses_bad_flags_or_labels_in_one_line(run, capsys, which, content, words):
    bad = run / "bad.csv"
    if content is None:
        bad.unlink(missing_ok=True)
    else:
        bad.write_text(content)
    flags, labels = (bad, run / "labels.csv") if which == "flags" else (run / "flags.csv", bad)
    code, out, err = evaluate_cli(capsys, flags, "--labels", labels)
    assert code == 3 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith(f"sbg: error: {bad}") and words in err


@pytest.mark.parametrize("option,words", [
    (["--skip-rows", "-1"], "--skip-rows"),
    (["--probation", "1.5"], "--probation"),
    (["--tolerance", "soon"], "--tolerance"),
    (["--entity", "nope"], "has no column 'nope'"),
])
def test_sbg_evaluate_refuses_bad_options_in_one_line(run, capsys, option, words):
    code, out, err = evaluate_cli(capsys, run / "flags.csv", "--labels", run / "labels.csv", *option)
    assert code in (2, 3) and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("sbg: error: ") and words in err


def test_sbg_evaluate_usage_errors_exit_2(run, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(run / "flags.csv")])  # --labels is required
    assert exc.value.code == 2 and "--labels" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(run / "flags.csv"), "--labels", str(run / "labels.csv"), "--profile", "best"])
    assert exc.value.code == 2


def test_labels_of_one_row_per_timestamp_are_read_as_their_runs(tmp_path):
    """Public labelled series ship a 0/1 label per row (often in the data file itself, often in epoch seconds):
    each run of labelled rows of an entity is a window, from its first row to its last."""
    t = pd.date_range("2024-01-01", periods=10, freq="5min")
    epoch = ((t - pd.Timestamp("1970-01-01")) // pd.Timedelta("1s")).astype(str)
    rows = pd.DataFrame({"timestamp": epoch, "unit_id": ["a", "b"] * 5, "value": 1.0,
                         "label": [0, 1, 1, 1, 1, 0, 0, 0, 0, 1]})
    rows.to_csv(tmp_path / "p.csv", index=False)
    got = load_labels(tmp_path / "p.csv")
    assert got["entity"].tolist() == ["a", "b", "b"] and got.attrs["entity_column"] == "unit_id"
    assert got["start"].tolist() == [t[2], t[1], t[9]] and got["end"].tolist() == [t[4], t[3], t[9]]
    # The same rows in ISO times, and a file with no labelled row: no window.
    rows.assign(timestamp=t.astype(str), label=0).to_csv(tmp_path / "none.csv", index=False)
    assert len(load_labels(tmp_path / "none.csv")) == 0


def test_sbg_evaluate_scores_point_labels_as_it_scores_their_windows(run, capsys):
    """The series' own rows with a label column, instead of a windows file: the same figures."""
    flags = pd.read_csv(run / "flags.csv")
    t = pd.to_datetime(flags["timestamp"])
    windows = pd.read_csv(run / "labels.csv", parse_dates=["start", "end"])
    on = np.zeros(len(t), dtype=int)
    for s, e in zip(windows["start"], windows["end"], strict=True):
        on[(t >= s) & (t <= e)] = 1
    flags[["timestamp", "value"]].assign(anomaly=on).to_csv(run / "points.csv", index=False)
    capsys.readouterr()
    code, by_points, err = evaluate_cli(capsys, run / "flags.csv", "--labels", run / "points.csv")
    assert code == 0 and err == ""
    code, by_windows, _ = evaluate_cli(capsys, run / "flags.csv", "--labels", run / "labels.csv")
    assert by_points.splitlines()[1:] == by_windows.splitlines()[1:]  # all but the line naming the labels file
