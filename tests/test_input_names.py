"""Files read together keep apart: wide files whose names collide get distinct entities.

A wide file (no entity column) takes its file name as the entity. Two runs
``valve1/0.csv`` and ``valve2/0.csv`` read by one command must stay two
entities, each with its own rolling state; and ``--summary-json`` names the
files it read as JSON strings, never as a Python repr.
"""

import json
from pathlib import Path
from types import SimpleNamespace as S

import numpy as np
import pandas as pd

from sbg.cli import main
from sbg.io.inputs import distinct_names, expand_inputs, open_inputs, source_name
from sbg.io.sources import Source
from sbg.stream.batch import read_dataset, run_detect
from sbg.stream.monitor import Monitor

N = 240


def wide_csv(path, seed: int, start="2024-01-01T00:00:00", n=N):
    """A wide CSV (time and two signals, no entity column) with a level and a spike of its own."""
    rng = np.random.default_rng(seed)
    t = pd.date_range(start, periods=n, freq="10s")
    level = 10.0 * (seed + 1)
    pressure = level + rng.normal(0, 0.2, n)
    pressure[n // 2] += 8
    temp = 40 + seed + np.cumsum(rng.normal(0, 0.05, n))
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"timestamp": t.strftime("%Y-%m-%dT%H:%M:%S"), "pressure": pressure.round(4),
                  "temp": temp.round(4)}).to_csv(path, index=False)
    return path


def long_csv(path, entities, start, n=60):
    t = pd.date_range(start, periods=n, freq="10s")
    rows = [(ts.strftime("%Y-%m-%dT%H:%M:%S"), e, 1.0 + i % 7) for i, ts in enumerate(t) for e in entities]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["timestamp", "valve_id", "pressure"]).to_csv(path, index=False)
    return path


def detect(inputs, out, tmp_path, tag="run"):
    summary = tmp_path / f"{tag}.json"
    code = main(["detect", *map(str, inputs), "-o", str(out), "--summary-json", str(summary)])
    assert code in (0, 1)
    return read_dataset(out).to_pandas(), json.loads(summary.read_text())


def names_of(tmp_path, *rel):
    paths = [wide_csv(tmp_path / r, seed=i) for i, r in enumerate(rel)]
    return [src.name for src in open_inputs(paths)]


def entities_of(frame) -> list:
    return list(dict.fromkeys(frame["entity"].tolist()))


# ----------------------------------------------------------------------------- names


def test_a_single_file_and_distinct_stems_keep_their_names(tmp_path):
    one = wide_csv(tmp_path / "valve1" / "0.csv", 0)
    assert [s.name for s in open_inputs([one])] == ["0"]
    assert names_of(tmp_path / "b", "valve1/a.csv", "valve2/b.csv") == ["a", "b"]
    # a file alone keeps its stem even when it sits deep
    assert Source(one).name == "0"


def test_colliding_stems_take_the_shortest_distinguishing_path(tmp_path):
    assert names_of(tmp_path / "a", "valve1/0.csv", "valve2/0.csv") == ["valve1/0", "valve2/0"]
    # only the files that collide get longer names
    assert names_of(tmp_path / "b", "valve1/0.csv", "valve2/0.csv", "valve2/1.csv") == ["valve1/0", "valve2/0", "1"]
    # deeper nesting: relative to the files' common folder, only as deep as needed
    assert names_of(tmp_path / "c", "a/b/0.csv", "a/c/0.csv") == ["b/0", "c/0"]
    assert names_of(tmp_path / "d", "x/a/0.csv", "y/a/0.csv", "a/0.csv") == ["x/a/0", "y/a/0", "a/0"]
    # only the suffix differs: the file name is the name
    wide_csv(tmp_path / "e" / "0.csv", 0)
    pd.read_csv(tmp_path / "e" / "0.csv").to_parquet(tmp_path / "e" / "0.parquet")
    srcs = open_inputs(expand_inputs([tmp_path / "e"]))
    assert [s.name for s in srcs] == ["0.csv", "0.parquet"]


def test_hostile_names_stay_distinct_and_readable(tmp_path):
    rel = ["run 1/the valve.csv", "run 2/the valve.csv", "débit/vanne ü.csv", "Durchfluß/vanne ü.csv",
           "=a/=0.csv", "=b/=0.csv", "day=1/part-0.csv", "day=2/part-0.csv", "a/b/0.csv", "a/c/0.csv"]
    names = names_of(tmp_path, *rel)
    assert names == ["run 1/the valve", "run 2/the valve", "débit/vanne ü", "Durchfluß/vanne ü",
                     "=a/=0", "=b/=0", "day=1/part-0", "day=2/part-0", "b/0", "c/0"]
    assert len(set(names)) == len(names)


def test_the_same_file_twice_is_numbered():
    srcs = [S(path=Path("x/0.csv"), name="0"), S(path=Path("x/0.csv"), name="0")]
    names = distinct_names(srcs)
    assert len(set(names)) == 2 and names[0] == "0.csv"


def test_source_name_joins_the_distinct_names(tmp_path):
    paths = [wide_csv(tmp_path / r, i) for i, r in enumerate(["valve1/0.csv", "valve2/0.csv"])]
    assert source_name(open_inputs(paths)) == "valve1/0+valve2/0"
    srcs = open_inputs(paths)
    assert "entity is 'valve1/0'" in srcs[0].schema.describe()
    assert srcs[0].schema.as_dict()["path"] == str(paths[0])  # the schema still names the file itself


# ----------------------------------------------------------------------------- detect


def test_detect_keeps_two_runs_with_one_stem_apart(tmp_path):
    v1 = wide_csv(tmp_path / "valve1" / "0.csv", 0)
    v2 = wide_csv(tmp_path / "valve2" / "0.csv", 1, start="2024-01-01T01:00:00")
    both, summary = detect([tmp_path], tmp_path / "both.parquet", tmp_path, "both")
    assert entities_of(both) == ["valve1/0", "valve2/0"]
    assert summary["rows_ok"] == 2 * N

    alone, _ = detect([v2], tmp_path / "alone.parquet", tmp_path, "alone")
    assert entities_of(alone) == ["0"]
    second = both[both["entity"] == "valve2/0"].drop(columns="entity").reset_index(drop=True)
    pd.testing.assert_frame_equal(second, alone.drop(columns="entity"), check_exact=True)
    first_alone, _ = detect([v1], tmp_path / "first.parquet", tmp_path, "first")
    first = both[both["entity"] == "valve1/0"].drop(columns="entity").reset_index(drop=True)
    pd.testing.assert_frame_equal(first, first_alone.drop(columns="entity"), check_exact=True)


def test_detect_runs_with_one_stem_may_overlap_in_time(tmp_path):
    """Two valves logged at the same time are not one entity going back in time."""
    wide_csv(tmp_path / "valve1" / "0.csv", 0)
    wide_csv(tmp_path / "valve2" / "0.csv", 1)
    out = tmp_path / "flags.parquet"
    result = run_detect([str(tmp_path / "valve*" / "0.csv")], out)
    frame = read_dataset(out).to_pandas()
    assert entities_of(frame) == ["valve1/0", "valve2/0"]
    assert result["summary"]["rows_ok"] == 2 * N


def test_an_entity_in_two_long_files_stays_one_entity(tmp_path):
    long_csv(tmp_path / "day1" / "0.csv", ["v1", "v2"], "2024-01-01T00:00:00")
    long_csv(tmp_path / "day2" / "0.csv", ["v1", "v2"], "2024-01-02T00:00:00")
    out = tmp_path / "flags.parquet"
    run_detect([tmp_path], out)
    frame = read_dataset(out).to_pandas()
    assert sorted(set(frame["valve_id"])) == ["v1", "v2"]
    assert "entity" not in frame.columns


# ----------------------------------------------------------------------------- replay


def test_a_replay_keeps_two_runs_with_one_stem_apart(tmp_path):
    v1 = wide_csv(tmp_path / "valve1" / "0.csv", 0)
    v2 = wide_csv(tmp_path / "valve2" / "0.csv", 1)
    m = Monitor([v1, v2], speed="max")
    m.run_to_end()
    assert m.metrics.rows_ok == 2 * N
    assert sorted(set(m.history.frame()["entity"])) == ["valve1/0", "valve2/0"]
    assert m.source_key == "valve1/0+valve2/0"


# ----------------------------------------------------------------------------- summary


def test_summary_json_names_the_files_as_json(tmp_path):
    v1 = wide_csv(tmp_path / "valve1" / "0.csv", 0)
    v2 = wide_csv(tmp_path / "valve2" / "0.csv", 1, start="2024-01-01T01:00:00")
    _, one = detect([v1], tmp_path / "one.parquet", tmp_path, "one")
    assert one["file"] == str(v1) and one["files"] == [str(v1)]
    _, glob_one = detect([tmp_path / "valve1" / "*.csv"], tmp_path / "glob.parquet", tmp_path, "glob")
    assert glob_one["file"] == str(v1) and glob_one["files"] == [str(v1)]
    _, both = detect([tmp_path / "valve1", v2], tmp_path / "two.parquet", tmp_path, "two")
    assert both["file"] == both["files"] == [str(v1), str(v2)]
    for s in (one, glob_one, both):
        assert all(isinstance(f, str) and not f.startswith("[") for f in s["files"])

    result = run_detect([v1], tmp_path / "api.parquet")  # a list of one spec, through the API
    assert result["summary"]["file"] == str(v1) and result["summary"]["files"] == [str(v1)]
