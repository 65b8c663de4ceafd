"""Cycler files (BioLogic .mpr, Neware .nda/.ndax) and the Battery Data Format (issue 21, part 1).

The binary files are real ones from the readers' own test data (data/README names
them and their licences). galvani and NewareNDA are the ``cyclers`` extra.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sbg.cli import main
from sbg.errors import SourceError
from sbg.io.sources import Source, infer_schema

pytest.importorskip("galvani")
pytest.importorskip("NewareNDA")

DATA = Path(__file__).parent / "data" / "cyclers"
MPR = DATA / "bcd.issue_241.mpr"
NDA = DATA / "new_nda_file.nda"
NDAX = DATA / "46_1_5_60_ZZZZZZZZTEST_20250924092922.ndax"
FILES = [MPR, NDA, NDAX]


def _read(path) -> tuple[Source, pd.DataFrame, int, int]:
    src = Source(path, block_bytes=64 * 1024)  # 1024-row blocks: several for the .mpr
    batches = list(src.batches())
    frame = pd.concat([b.frame for b in batches], ignore_index=True)
    return src, frame, sum(b.rows_in for b in batches), sum(b.rows_quarantined for b in batches)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.suffix)
def test_reads_into_canonical_columns(path):
    src, frame, rows_in, rows_q = _read(path)
    s = src.schema
    assert s.time == "timestamp" and s.entity is None and src.name == path.name.rsplit(".", 1)[0]
    assert s.signals[:2] == ("voltage_v", "current_a")
    assert "cycle" in s.carried
    assert rows_in == len(frame) + rows_q and rows_q == 0
    assert (frame["entity"] == src.name).all()
    v = frame["voltage_v"].to_numpy()
    assert np.isfinite(v).all() and (-5 < v).all() and (v < 5).all()
    i = frame["current_a"].to_numpy()
    assert np.isfinite(i).all() and (np.abs(i) < 10).all()
    ts = frame["timestamp"].to_numpy()
    assert (np.diff(ts.view("int64")) >= 0).all() and ts[-1] > ts[0]
    assert pd.Timestamp(ts[0]).year >= 2019  # an absolute time, not seconds from 1970


def test_biologic_time_and_units():
    """timestamp = the file's start time + time/s; current mA -> A; charge and discharge both present."""
    from galvani import BioLogic

    with open(MPR, "rb") as fh:
        mpr = BioLogic.MPRfile(fh)
    raw = pd.DataFrame(mpr.data)
    _, frame, _, _ = _read(MPR)
    expected = pd.Timestamp(mpr.timestamp) + pd.to_timedelta(raw["time/s"].to_numpy(), unit="s")
    assert np.abs((frame["timestamp"] - expected).dt.total_seconds()).max() < 1e-6
    np.testing.assert_allclose(frame["current_a"], raw["I/mA"] / 1000)
    assert (frame["current_a"] > 0).any() and (frame["current_a"] < 0).any()


def test_neware_temperature_cycle_step():
    src, frame, _, _ = _read(NDAX)
    assert src.schema.signals == ("voltage_v", "current_a", "temperature_c")
    assert frame["temperature_c"].between(0, 60).all()
    assert set(src.schema.carried) == {"cycle", "step", "record"}
    assert frame["step"].astype(int).is_monotonic_increasing and frame["step"].astype(int).max() > 1
    # Charge is positive, discharge negative (BDF's convention and NewareNDA's).
    assert (frame["current_a"] > 1).any() and (frame["current_a"] < -1).any()


def test_old_nda_same_second_rows_are_kept():
    """Records stamped to the same second are not taken for repeats: each keeps its record number."""
    _, frame, rows_in, rows_q = _read(NDA)
    assert rows_q == 0 and len(frame) == rows_in == 439
    assert frame["timestamp"].duplicated().any()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.suffix)
def test_monitor_replays_and_reconciles(path):
    from sbg.stream.monitor import Monitor

    m = Monitor([path])
    m.run_to_end()
    assert m.metrics.rows_in == m.metrics.rows_ok + m.metrics.rows_quarantined > 0
    assert m.metrics.errors == 0


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.suffix)
def test_validate_cli_shows_the_mapping(path, capsys):
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "mapping:" in out and "voltage_v" in out and "reader:" in out and "whole file in memory" in out
    assert "0 quarantined" in out


@pytest.mark.parametrize("path,cut", [(MPR, 60_000), (NDAX, 3_000), (NDA, 60_000)], ids=lambda x: str(x)[-5:])
def test_truncated_file_is_a_one_line_error_naming_it(path, cut, tmp_path, capsys):
    bad = tmp_path / f"cut{path.suffix}"
    bad.write_bytes(path.read_bytes()[:cut])
    assert main(["validate", str(bad)]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "truncated or corrupt" in err
    assert "Traceback" not in err


def test_not_a_cycler_file(tmp_path):
    bad = tmp_path / "text.mpr"
    bad.write_text("time,v\n1,2\n")
    with pytest.raises(SourceError, match="text.mpr: cannot read as a BioLogic"):
        infer_schema(bad)


def test_missing_library_says_how_to_install(monkeypatch, tmp_path):
    import sys

    from sbg.io import cyclers

    path = tmp_path / "x.ndax"
    shutil.copy(NDAX, path)
    monkeypatch.setitem(sys.modules, "NewareNDA", None)  # import fails as if not installed
    cyclers._cache.clear()
    with pytest.raises(SourceError, match=r"pip install 'sbg\[cyclers\]'"):
        infer_schema(path)


def test_bdf_csv_reads_into_canonical_columns(tmp_path, capsys):
    path = tmp_path / "cell__A1.bdf.csv"
    path.write_text("Test Time / s,Voltage / V,Current / A,Temperature T1 / degC,Cycle Count / 1,Step Count / 1\n"
                    "0,3.60,1.5,25.0,1,1\n10,3.62,1.5,25.1,1,1\n20,3.64,0,25.2,1,2\n")
    src, frame, rows_in, rows_q = _read(path)
    s = src.schema
    assert (s.time_kind, s.entity, src.name) == ("seconds", None, "cell__A1")
    assert s.signals == ("voltage_v", "current_a", "temperature_c") and s.carried == ("cycle", "step")
    assert list(frame["timestamp"]) == list(pd.to_datetime(["1970-01-01 00:00:00", "1970-01-01 00:00:10",
                                                             "1970-01-01 00:00:20"]))
    assert rows_q == 0 and list(frame["voltage_v"]) == [3.60, 3.62, 3.64]
    assert main(["validate", "--schema-only", str(path)]) == 0
    assert "voltage_v     <- Voltage / V" in capsys.readouterr().out


@pytest.mark.parametrize("path", [MPR, NDAX], ids=lambda p: p.suffix)
def test_bdf_export_round_trip(path, tmp_path, capsys):
    out = tmp_path / "flags.bdf.csv"
    assert main(["detect", str(path), "-o", str(out), "--format", "bdf"]) == 0
    written = pd.read_csv(out)
    assert list(written.columns[:4]) == ["Test Time / s", "Unix Time / s", "Voltage / V", "Current / A"]
    assert {"Cycle Count / 1", "anomaly_score", "is_anomaly", "reason", "quality"} <= set(written.columns)
    assert written["Test Time / s"].iloc[0] == 0 and written["Test Time / s"].is_monotonic_increasing
    _, original, _, _ = _read(path)
    # sbg's own output is refused as an input (its flag columns would be scored): read the BDF part back.
    bdf_only = tmp_path / "flags_only.bdf.csv"
    written.drop(columns=["anomaly_score", "is_anomaly", "reason", "quality"]).to_csv(bdf_only, index=False)
    src, back, rows_in, rows_q = _read(bdf_only)
    assert src.schema.time_kind == "epoch_s" and rows_q == 0 and len(back) == len(original)
    assert np.abs((back["timestamp"] - original["timestamp"]).dt.total_seconds()).max() < 1e-6
    for col in ("voltage_v", "current_a", "temperature_c"):
        if col in original:
            np.testing.assert_array_equal(back[col].to_numpy(), original[col].to_numpy())
    np.testing.assert_array_equal(back["cycle"].astype(int), original["cycle"].astype(int))


def test_a_directory_and_a_glob_pick_up_cycler_files(tmp_path):
    from sbg.io.inputs import expand_inputs

    for p in FILES:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "notes.json").write_text("{}")
    expected = sorted(tmp_path / p.name for p in FILES)
    assert expand_inputs([tmp_path]) == expected
    assert expand_inputs([str(tmp_path / "*")]) == expected


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.suffix)
def test_a_cycler_file_is_battery_data_and_gets_a_health_score(path):
    from sbg.stream.monitor import Monitor

    assert Source(path).schema.battery
    m = Monitor([path], speed="max")
    m.run_to_end()
    health = m.health_scores()
    assert list(health["entity"]) == [Source(path).schema.name]
    assert 0 <= float(health["health"].iloc[0]) <= 100
    # what the file lacks is said, not guessed
    assert health["capacity_status"].iloc[0] == "no data: no soc_pct column"


def test_a_cycler_file_gets_the_battery_limits_and_their_forecast():
    # voltage_v and current_a alone do not name a battery schema; the file saying what it is does.
    from sbg.stream.monitor import Monitor

    m = Monitor([NDAX], speed="max")
    m.run_to_end()
    limits = next(d for d in m.pipeline.detectors if d.label == "limits")
    assert limits.bounds_for("voltage_v", m.signals) == (2.5, 4.25)
    assert limits.bounds_for("temperature_c", m.signals) == (5.0, 50.0)
    forecast = next(d for d in m.pipeline.detectors if d.label == "forecast")
    assert forecast.battery_data
    # and joint leaves it alone, as it does battery schemas (cells cycle between operating points)
    joint = next(d for d in m.pipeline.detectors if d.label == "joint")
    assert joint.battery_data and (m.history.frame()["reason"].str.contains("joint")).sum() == 0
