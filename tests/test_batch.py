"""``sbg detect``'s engine: ``run_detect`` scores files into a CSV or a Parquet dataset, with a summary.

The output is one row per accepted input row (the input columns, then
``anomaly_score``, ``is_anomaly``, ``reason``, ``quality``), byte-identical for
any chunking; quarantined rows go to the ``--quarantine`` CSV with their line;
an output is written whole or not at all.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from sbg.alerts.log import AlertLog
from sbg.errors import SbgError, SourceError
from sbg.stream.batch import read_dataset, run_detect

from .conftest import make_frame
from .test_monitor import fleet_csv

HEADER = '"timestamp","cell_id","temperature_c","voltage_v","anomaly_score","is_anomaly","reason","quality"'


def flags_csv(path):
    return pd.read_csv(path, keep_default_na=False, dtype={"is_anomaly": str, "timestamp": str})


def wide_csv(path, seed, n=800):
    """A wide file (no entity column): a pressure with its own level and one spike, once the detectors are warm."""
    rng = np.random.default_rng(seed)
    pressure = 10.0 * (seed + 1) + rng.normal(0, 0.2, n)
    pressure[700] += 8
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"timestamp": pd.date_range("2024-01-01", periods=n, freq="10s").strftime("%Y-%m-%dT%H:%M:%S"),
                  "pressure": pressure.round(4)}).to_csv(path, index=False)
    return path


# ----------------------------------------------------------------------------- outputs


def test_detect_to_csv(fleet, limits, tmp_path):
    out = tmp_path / "flags.csv"
    result = run_detect(fleet, out, settings=limits)
    lines = out.read_text().splitlines()
    assert lines[0] == HEADER and len(lines) == 1 + 1800
    assert lines[1].startswith('"2024-01-01 00:00:00","c1",')
    flags = flags_csv(out)
    source = pd.read_csv(fleet)
    np.testing.assert_array_equal(flags["temperature_c"], source["temperature_c"])
    assert (flags["cell_id"] == source["cell_id"]).all()
    flagged = flags[flags["is_anomaly"] == "true"]
    assert set(flags["is_anomaly"]) == {"true", "false"} and len(flagged) == 120
    assert set(flagged["reason"]) == {"limits:temperature_c"} and (flagged["anomaly_score"] >= 0.5).all()
    assert (flags.loc[flags["is_anomaly"] == "false", "anomaly_score"] < 0.5).all()
    # Exactly the over-temperature rows, 40 per cell.
    assert flagged.groupby("cell_id").size().to_dict() == {"c1": 40, "c2": 40, "c3": 40}
    assert (flagged["temperature_c"] > 45).all()
    assert result["summary"]["rows_flagged"] == 120 and result["seconds"] > 0
    alerts = result["alerts"]
    assert sorted(alerts["entity"]) == ["c1", "c2", "c3"] and set(alerts["rule"]) == {"limit_breach"}


def test_detect_to_parquet_matches_the_csv(fleet, limits, tmp_path):
    run_detect(fleet, tmp_path / "flags.csv", settings=limits)
    dataset = tmp_path / "flags.parquet"
    result = run_detect(fleet, dataset, settings=limits)
    assert dataset.is_dir() and sorted(p.name for p in dataset.iterdir()) == ["part-00000.parquet"]
    table = read_dataset(dataset)
    assert table.schema.names == ["timestamp", "cell_id", "temperature_c", "voltage_v", *
                                  ["anomaly_score", "is_anomaly", "reason", "quality"]]
    assert table.schema.field("timestamp").type == pa.timestamp("ns")
    assert table.schema.field("is_anomaly").type == pa.bool_()
    frame = table.to_pandas()
    flags = flags_csv(tmp_path / "flags.csv")
    assert len(frame) == len(flags) == 1800
    np.testing.assert_array_equal(frame["anomaly_score"], flags["anomaly_score"])
    np.testing.assert_array_equal(frame["is_anomaly"], flags["is_anomaly"] == "true")
    assert (frame["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S") == flags["timestamp"]).all()
    assert (frame["reason"].fillna("") == flags["reason"]).all()
    assert result["summary"]["output"] == str(dataset)
    # A second run writes over its own earlier dataset.
    run_detect(fleet, dataset, settings=limits, chunk_size=100)
    assert read_dataset(dataset).equals(table)


def test_a_dataset_is_written_only_into_a_new_or_flags_directory(fleet, tmp_path):
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SbgError) as info:
        run_detect(fleet, foreign)
    assert str(info.value) == (f"{foreign}: not empty (holds 'notes.txt'); sbg writes a flags dataset only into a "
                               "new directory or over an earlier flags dataset")
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_the_summary_says_what_was_done(fleet, limits, tmp_path):
    summary_path = tmp_path / "summary.json"
    result = run_detect(fleet, tmp_path / "flags.csv", settings=limits, chunk_size=500, summary_path=summary_path)
    summary = result["summary"]
    assert json.loads(summary_path.read_text()) == json.loads(json.dumps(summary, default=str))
    assert summary["file"] == str(fleet) and summary["files"] == [str(fleet)]
    assert summary["output"] == str(tmp_path / "flags.csv")
    assert (summary["rows_in"], summary["rows_ok"], summary["rows_quarantined"], summary["rows_flagged"]) == (
        1800, 1800, 0, 120)
    assert summary["alerts"] == 3 and summary["alerts_by_severity"] == {"info": 0, "warning": 0, "critical": 3}
    assert summary["pipeline_errors"] == 0 and summary["chunk_size"] == 500 and summary["baseline"] is None
    schema = summary["schema"]
    assert (schema["time"], schema["entity"], schema["signals"]) == ("timestamp", "cell_id",
                                                                     ["temperature_c", "voltage_v"])
    changed = [(r["object"], r["parameter"]) for r in summary["settings"]["rows"] if r["changed"]]
    assert summary["settings"]["origin"] == "settings" and changed == [("limits", "limits")]


def test_the_alert_log_gets_the_alerts_once(fleet, limits, tmp_path):
    db = tmp_path / "alerts.sqlite"
    first = run_detect(fleet, tmp_path / "a.csv", settings=limits, alerts_db=db)
    run_detect(fleet, tmp_path / "b.csv", settings=limits, alerts_db=db, chunk_size=333)
    log = AlertLog(db)
    try:
        logged = log.read()
    finally:
        log.close()
    columns = ["id", "rule", "entity", "signal", "severity", "start", "end", "state"]
    pd.testing.assert_frame_equal(logged[columns], first["alerts"][columns])
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 3


# ----------------------------------------------------------------------------- chunk invariance


def test_the_output_is_byte_identical_for_any_chunk_and_block_size(tmp_path):
    # Ties, irregular intervals, spikes, a flat run, a gap and missing values; 1,000 rows per entity.
    frame = make_frame(n=3000, seed=3)
    path = tmp_path / "telemetry.csv"
    frame.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%S")
    outputs, alerts = [], []
    for chunk_size, block_bytes in [(65536, None), (29, None), (777, 2048), (4096, 3000)]:
        out = tmp_path / f"out_{chunk_size}_{block_bytes}.csv"
        result = run_detect(path, out, chunk_size=chunk_size,
                            schema_options={"block_bytes": block_bytes} if block_bytes else None)
        outputs.append(out.read_bytes())
        alerts.append(result["alerts"])
    assert all(o == outputs[0] for o in outputs[1:])
    for other in alerts[1:]:
        pd.testing.assert_frame_equal(other, alerts[0])
    flags = flags_csv(tmp_path / "out_65536_None.csv")
    summary = result["summary"]
    assert len(flags) == summary["rows_ok"] == 3000 - summary["rows_quarantined"] and summary["rows_in"] == 3000
    assert (flags["is_anomaly"] == "true").sum() > 0  # something to be invariant about
    assert (flags["quality"] != "").sum() > 0
    # One row at a time, on the first 200 rows.
    head = tmp_path / "head.csv"
    frame.head(200).to_csv(head, index=False, date_format="%Y-%m-%dT%H:%M:%S")
    run_detect(head, tmp_path / "one.csv", chunk_size=1)
    run_detect(head, tmp_path / "all.csv")
    assert (tmp_path / "one.csv").read_bytes() == (tmp_path / "all.csv").read_bytes()


def test_a_long_file_split_in_two_scores_like_the_whole(fleet, limits, tmp_path):
    lines = fleet.read_text().splitlines(keepends=True)
    first, second = tmp_path / "part1.csv", tmp_path / "part2.csv"
    first.write_text("".join(lines[:901]))  # the header and the first 300 seconds
    second.write_text(lines[0] + "".join(lines[901:]))
    whole = run_detect(fleet, tmp_path / "whole.csv", settings=limits)
    parts = run_detect([first, second], tmp_path / "parts.csv", settings=limits)
    assert (tmp_path / "parts.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert parts["summary"]["file"] == [str(first), str(second)]
    assert parts["summary"]["rows_flagged"] == whole["summary"]["rows_flagged"] == 120
    # Alerts differ only in the run's name (part1+part2), which is in their ids.
    assert list(parts["alerts"]["start"]) == list(whole["alerts"]["start"])
    assert set(parts["alerts"]["source"]) == {"part1+part2"}


# ----------------------------------------------------------------------------- several files


def test_files_with_one_name_in_two_folders_stay_two_entities(tmp_path):
    a = wide_csv(tmp_path / "valve1" / "0.csv", seed=0)
    b = wide_csv(tmp_path / "valve2" / "0.csv", seed=1)
    both = tmp_path / "both.parquet"
    result = run_detect([a, b], both)
    frame = read_dataset(both).to_pandas()
    assert list(frame.columns[:3]) == ["timestamp", "entity", "pressure"]
    assert list(dict.fromkeys(frame["entity"])) == ["valve1/0", "valve2/0"]
    assert result["summary"]["files"] == [str(a), str(b)]
    # Each keeps its own state: its rows score as the file does alone.
    for path, entity in ((a, "valve1/0"), (b, "valve2/0")):
        alone = tmp_path / f"{entity.replace('/', '_')}.parquet"
        run_detect(path, alone)
        expected = read_dataset(alone).to_pandas()
        mine = frame[frame["entity"] == entity].reset_index(drop=True)
        assert len(mine) == 800
        np.testing.assert_array_equal(mine["anomaly_score"], expected["anomaly_score"])
        assert mine["is_anomaly"].sum() >= 1  # the spike


def test_a_csv_of_several_wide_files_says_which_file_each_row_is_from(tmp_path):
    a = wide_csv(tmp_path / "valve1" / "0.csv", seed=0)
    b = wide_csv(tmp_path / "valve2" / "0.csv", seed=1)
    run_detect([a, b], tmp_path / "both.csv")
    flags = flags_csv(tmp_path / "both.csv")
    assert "entity" in flags.columns
    assert list(dict.fromkeys(flags["entity"])) == ["valve1/0", "valve2/0"]


def test_an_entity_going_back_in_time_across_files_fails_and_keeps_the_earlier_output(fleet, tmp_path):
    out = tmp_path / "flags.csv"
    out.write_text("earlier run\n")
    again = tmp_path / "again.csv"
    again.write_bytes(fleet.read_bytes())
    with pytest.raises(SourceError) as info:
        run_detect([fleet, again], out, quarantine_path=tmp_path / "bad.csv")
    assert str(info.value) == (f"{again}: entity 'c1' starts at 2024-01-01 00:00:00, before {fleet} ends "
                               "(2024-01-01 00:09:59); an entity's files must be given in time order")
    assert out.read_text() == "earlier run\n"
    assert not (tmp_path / "bad.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.csv", "flags.csv", "fleet.csv"]  # no leftovers


# ----------------------------------------------------------------------------- quarantine, empty inputs


def test_quarantined_rows_go_to_the_quarantine_file_with_their_line(tmp_path, limits):
    bad = [(10, "garbage,c1,25.0,3.7"), (20, "2024-01-01T00:00:05,c2,x,3.7"), (30, "short,row")]
    path = fleet_csv(tmp_path / "bad.csv", bad_lines=bad)
    quarantine = tmp_path / "quarantine.csv"
    result = run_detect(path, tmp_path / "flags.csv", settings=limits, quarantine_path=quarantine)
    assert quarantine.read_text().splitlines() == [
        "line,raw,reason",
        "11,\"garbage,c1,25.0,3.7\",column 1 'timestamp': unparsable timestamp 'garbage'",
        "21,\"2024-01-01T00:00:05,c2,x,3.7\",column 3 'temperature_c': 'x' is not a number",
        "31,\"short,row\",\"expected 4 fields, found 2\"",
    ]
    summary = result["summary"]
    assert (summary["rows_in"], summary["rows_ok"], summary["rows_quarantined"]) == (1803, 1800, 3)
    assert len(flags_csv(tmp_path / "flags.csv")) == 1800  # one output row per accepted row


def test_with_several_files_the_quarantine_file_names_the_file(tmp_path):
    first = tmp_path / "first.csv"
    first.write_text("time,id,v\n2024-01-01T00:00:00,a,1\n2024-01-01T00:00:01,a,oops\n2024-01-01T00:00:02,a,3\n")
    second = tmp_path / "second.csv"
    second.write_text("time,id,v\n2024-01-01T00:00:03,a,4\n2024-01-01T00:00:01,a,5\n")
    quarantine = tmp_path / "quarantine.csv"
    result = run_detect([first, second], tmp_path / "flags.csv", quarantine_path=quarantine)
    rows = pd.read_csv(quarantine, dtype=str, keep_default_na=False).to_dict(orient="records")
    assert [(r["file"], r["line"], r["raw"]) for r in rows] == [
        (str(first), "3", "2024-01-01T00:00:01,a,oops"), (str(second), "3", "2024-01-01T00:00:01,a,5")]
    assert rows[0]["reason"] == "column 3 'v': 'oops' is not a number"
    assert rows[1]["reason"].startswith("timestamp goes backwards for entity 'a'")
    assert (result["summary"]["rows_in"], result["summary"]["rows_quarantined"]) == (5, 2)


def test_a_clean_run_writes_a_quarantine_file_with_only_its_header(fleet, tmp_path):
    quarantine = tmp_path / "quarantine.csv"
    run_detect(fleet, tmp_path / "flags.csv", quarantine_path=quarantine)
    assert quarantine.read_bytes() == b"line,raw,reason\r\n"


@pytest.mark.parametrize(("content", "message"), [
    ("", "is empty"),
    ("timestamp,cell_id,temperature_c\n", "has a header but no data rows"),
])
@pytest.mark.parametrize("output", ["flags.csv", "flags.parquet"])
def test_an_empty_or_header_only_file_is_an_error_that_writes_nothing(tmp_path, content, message, output):
    path = tmp_path / "input.csv"
    path.write_text(content)
    summary = tmp_path / "summary.json"
    with pytest.raises(SourceError) as info:
        run_detect(path, tmp_path / output, summary_path=summary)
    assert str(info.value) == f"{path}: {message}" and info.value.exit_code == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.csv"]


def test_the_input_is_never_overwritten(fleet):
    before = fleet.read_bytes()
    with pytest.raises(SbgError) as info:
        run_detect(fleet, fleet)
    assert str(info.value) == f"{fleet}: refusing to overwrite the input file"
    assert fleet.read_bytes() == before
