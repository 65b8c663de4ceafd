"""Tests for the labelled sample-data generator, ``sbg.io.datasets``."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pandas as pd
import pytest

from sbg.io import datasets

FILES = [
    "battery_fleet.csv.gz",
    "battery_fleet_labels.csv",
    "site_power_24h.csv.gz",
    "site_power_24h_labels.csv",
    "machine_baseline.csv",
    "machine_monitor.csv",
    "machine_monitor_labels.csv",
]
FLEET_COLUMNS = ["timestamp", "battery_id", "voltage_v", "current_a", "temperature_c", "soc_pct"]
SITE_COLUMNS = [
    "time",
    "RX_kWh",
    "TX1_kWh",
    "TX2_kWh",
    "RX_CO_ppm",
    "TX1_CO_ppm",
    "TX2_CO_ppm",
    "CO_status",
    "load_status",
    "deviation_percent",
]
MACHINE_COLUMNS = [
    "timestamp",
    "vibration_mm_s",
    "bearing_temp_c",
    "pressure_bar",
    "motor_current_a",
]
CELLS = [f"B{i:02d}" for i in range(1, 9)]
FLEET_SECONDS = 6 * 3600


def _read(path):
    return pd.read_csv(path, keep_default_na=False)


def _seconds(clock: pd.Series) -> np.ndarray:
    parts = clock.str.split(":", expand=True).astype(int).to_numpy()
    return parts[:, 0] * 3600 + parts[:, 1] * 60 + parts[:, 2]


def _longest_run(values: np.ndarray) -> int:
    if values.size == 0:
        return 0
    edges = np.flatnonzero(np.diff(values) != 0)
    bounds = np.concatenate([[-1], edges, [values.size - 1]])
    return int(np.diff(bounds).max())


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("generated")
    paths = datasets.generate(out)
    assert [p.name for p in paths] == FILES
    return out


@pytest.fixture(scope="module")
def fleet(out_dir):
    data = _read(out_dir / "battery_fleet.csv.gz")
    data["t"] = pd.to_datetime(data["timestamp"])
    labels = _read(out_dir / "battery_fleet_labels.csv")
    cells = {cell: frame.set_index("t") for cell, frame in data.groupby("battery_id")}
    windows = {
        row.battery_id: (pd.Timestamp(row.start), pd.Timestamp(row.end), row.fault)
        for row in labels.itertuples()
    }
    return data, labels, cells, windows


@pytest.fixture(scope="module")
def site(out_dir):
    data = _read(out_dir / "site_power_24h.csv.gz")
    labels = _read(out_dir / "site_power_24h_labels.csv")
    return data, labels


@pytest.fixture(scope="module")
def machine_runs(out_dir):
    return (
        _read(out_dir / "machine_baseline.csv"),
        _read(out_dir / "machine_monitor.csv"),
        _read(out_dir / "machine_monitor_labels.csv"),
    )


def test_generate_is_byte_identical(out_dir, tmp_path):
    datasets.generate(tmp_path)
    for name in FILES:
        assert (out_dir / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_gzip_header_has_no_time_or_name(out_dir):
    for name in FILES:
        if name.endswith(".gz"):
            head = (out_dir / name).read_bytes()[:10]
            assert head[:3] == b"\x1f\x8b\x08"
            assert head[3] == 0, "no FNAME/FEXTRA/FCOMMENT flags"
            assert head[4:8] == b"\x00\x00\x00\x00", "mtime must be zero"


def test_shipped_data_is_current(out_dir):
    for name in FILES:
        shipped = datasets.DATA_DIR / name
        assert shipped.exists(), f"run sbg.io.datasets.generate() to create {shipped}"
        fresh = (out_dir / name).read_bytes()
        old = shipped.read_bytes()
        if name.endswith(".gz"):
            fresh, old = gzip.decompress(fresh), gzip.decompress(old)
        assert fresh == old, f"{shipped} is stale; rerun sbg.io.datasets.generate()"


def test_total_size_under_6_mb(out_dir):
    assert sum((out_dir / name).stat().st_size for name in FILES) < 6_000_000


def test_text_format_is_plain(out_dir):
    for name in FILES:
        raw = (out_dir / name).read_bytes()
        text = (gzip.decompress(raw) if name.endswith(".gz") else raw).decode("ascii")
        assert "\r" not in text and text.endswith("\n")
        assert '"' not in text and "-0.0," not in text and "nan" not in text.lower()


def test_in_memory_frames_match_files(out_dir, site, machine_runs):
    data, labels = datasets.site_power(datasets.DEFAULT_SEED)
    for mem, disk in ((data, site[0]), (labels, site[1])):
        assert list(mem.columns) == list(disk.columns)
        for column in mem.columns:
            np.testing.assert_array_equal(mem[column].to_numpy(), disk[column].to_numpy())
    for mem, disk in zip(datasets.machine(datasets.DEFAULT_SEED), machine_runs, strict=True):
        assert list(mem.columns) == list(disk.columns)
        for column in mem.columns:
            np.testing.assert_array_equal(mem[column].to_numpy(), disk[column].to_numpy())


def test_fleet_schema_and_order(fleet):
    data, labels, cells, _ = fleet
    assert list(data.columns[:6]) == FLEET_COLUMNS
    assert list(labels.columns) == ["battery_id", "start", "end", "fault"]
    assert len(data) == 8 * FLEET_SECONDS - 240
    assert data["timestamp"].str.fullmatch(r"2024-06-03T\d\d:\d\d:\d\d").all()
    assert data["timestamp"].iat[0] == "2024-06-03T08:00:00"
    assert data["timestamp"].iat[-1] == "2024-06-03T13:59:59"
    keys = list(zip(data["timestamp"], data["battery_id"], strict=True))
    assert keys == sorted(keys)
    assert not data.duplicated(["timestamp", "battery_id"]).any()
    assert sorted(cells) == CELLS
    assert labels["start"].tolist() == sorted(labels["start"])
    assert sorted(labels["fault"]) == sorted(
        [
            "thermal_runaway_onset",
            "internal_short",
            "stuck_sensor",
            "noise_burst",
            "dropout",
            "over_discharge",
            "over_temperature",
        ]
    )
    first_allowed = pd.Timestamp("2024-06-03T08:30:00")
    assert (pd.to_datetime(labels["start"]) >= first_allowed).all()


def test_fleet_precision(out_dir):
    with gzip.open(out_dir / "battery_fleet.csv.gz", "rt") as fh:
        lines = fh.read().splitlines()[1:2000]
    for line in lines:
        _, _, v, i, t, s = line.split(",")
        assert len(v.split(".")[1]) == 3 and len(i.split(".")[1]) == 3
        assert len(t.split(".")[1]) == 2 and len(s.split(".")[1]) == 2


def _outside(frame, window):
    if window is None:
        return frame
    start, end, _ = window
    return frame[(frame.index < start) | (frame.index > end)]


def test_normal_operation_within_margins(fleet):
    _, _, cells, windows = fleet
    for cell, frame in cells.items():
        normal = _outside(frame, windows.get(cell))
        fault = windows.get(cell, (None, None, ""))[2]
        # The approach to a limit-crossing fault lies outside its label by
        # definition (the label starts at the crossing), so only the
        # labelled limit is relaxed there.
        soc_floor = 15.0 if fault == "over_discharge" else 20.0
        temp_ceiling = 50.0 if fault == "over_temperature" else 45.0
        assert normal["soc_pct"].between(soc_floor, 92.0).all(), cell
        assert normal["temperature_c"].between(10.0, temp_ceiling).all(), cell
        assert normal["voltage_v"].between(3.2, 4.18).all(), cell
        assert normal["current_a"].abs().max() <= 11.0, cell
        assert (normal["current_a"] != 0.0).mean() > 0.9, cell
    healthy = cells["B01"]
    assert healthy["soc_pct"].between(20.0, 92.0).all()
    assert healthy["temperature_c"].between(10.0, 45.0).all()
    assert healthy["voltage_v"].between(3.2, 4.18).all()


def test_no_gaps_or_flat_stretches_in_normal_data(fleet):
    _, _, cells, windows = fleet
    for cell, frame in cells.items():
        step = np.diff(frame.index.to_numpy()).astype("timedelta64[s]").astype(int)
        if cell == "B07":
            assert sorted(set(step)) == [1, 241]
        else:
            assert len(frame) == FLEET_SECONDS and (step == 1).all(), cell
        normal = _outside(frame, windows.get(cell))
        for column in ("temperature_c", "voltage_v"):
            assert _longest_run(normal[column].to_numpy()) < 30, (cell, column)


def test_current_changes_smoothly(fleet):
    _, _, cells, _ = fleet
    for cell, frame in cells.items():
        jumps = frame["current_a"].diff().abs()
        # Slew-limited at 3 A/s plus sensor noise.
        assert jumps.max() < 3.2, cell
        assert frame["current_a"].max() > 8.0, "drive peaks should approach 2C"
        assert frame["current_a"].min() < -2.0, "regen and charging are negative"


def test_thermal_runaway_window(fleet):
    _, _, cells, windows = fleet
    start, end, fault = windows["B03"]
    assert fault == "thermal_runaway_onset"
    frame = cells["B03"]
    assert end == frame.index[-1]
    assert pd.Timedelta(minutes=35) <= end - start <= pd.Timedelta(minutes=45)
    inside = frame.loc[start:end, "temperature_c"]
    assert inside.max() > 80.0
    assert frame.loc[:start, "temperature_c"].iloc[:-1].max() < 45.0
    assert inside.iloc[0] < 45.0
    above = inside.index[inside > 80.0][0]
    warm = inside.index[inside > inside.iloc[:60].mean() + 3.0][0]
    assert pd.Timedelta(minutes=5) <= above - warm <= pd.Timedelta(minutes=15)
    # Accelerating: each ten-minute slice rises faster than the one before.
    per_minute = inside.resample("1min").mean()
    rises = [per_minute.iloc[m + 10] - per_minute.iloc[m] for m in (0, 10, 20)]
    assert rises[0] < rises[1] < rises[2]
    assert frame["voltage_v"].iloc[-1] < 2.0, "voltage collapses towards the end"
    assert frame.loc[start : end - pd.Timedelta(minutes=5), "voltage_v"].min() > 3.2


def test_internal_short_window(fleet):
    _, _, cells, windows = fleet
    start, end, fault = windows["B05"]
    assert fault == "internal_short"
    frame = cells["B05"]
    assert end == frame.index[-1]
    assert pd.Timedelta(minutes=30) <= end - start <= pd.Timedelta(minutes=40)
    v = frame["voltage_v"]
    before = v.loc[start - pd.Timedelta(seconds=10) : start - pd.Timedelta(seconds=1)].mean()
    assert -0.085 <= v.loc[start] - before <= -0.035, "a step sag at onset"
    inside = frame.loc[start:end]
    assert inside["current_a"].abs().max() < 0.1, "the sensor does not see the short"
    assert inside["voltage_v"].iloc[-60:].mean() < inside["voltage_v"].iloc[1:61].mean() - 0.05
    assert inside["soc_pct"].max() - inside["soc_pct"].min() < 0.2, "BMS SOC misses it"
    heat = (
        inside["temperature_c"].iloc[-300:].mean()
        - frame.loc[:start, "temperature_c"].iloc[-60:].mean()
    )
    assert 0.5 < heat < 8.0, "mild extra heating"


def test_stuck_sensor_window(fleet):
    _, _, cells, windows = fleet
    start, end, fault = windows["B02"]
    assert fault == "stuck_sensor"
    assert end - start == pd.Timedelta(minutes=15)
    temp = cells["B02"]["temperature_c"]
    stuck = temp.loc[start : end - pd.Timedelta(seconds=1)]
    assert len(stuck) == 900 and stuck.nunique() == 1
    assert temp.loc[start - pd.Timedelta(seconds=1)] != stuck.iloc[0]
    assert temp.loc[end] != stuck.iloc[0]
    assert cells["B02"].loc[stuck.index, "current_a"].abs().mean() > 0.5, "while driving"


def test_noise_burst_window(fleet):
    _, _, cells, windows = fleet
    start, end, fault = windows["B04"]
    assert fault == "noise_burst"
    assert pd.Timedelta(seconds=30) <= end - start <= pd.Timedelta(seconds=60)
    v = cells["B04"]["voltage_v"]
    burst = v.loc[start : end - pd.Timedelta(seconds=1)]
    baseline = v.loc[start - pd.Timedelta(minutes=2) : start - pd.Timedelta(seconds=1)]
    assert burst.diff().std() > 0.05 > 10 * baseline.diff().std()
    spikes = (burst - burst.median()).abs()
    assert 3 <= (spikes > 0.25).sum() <= 8
    assert spikes.max() > 0.3


def test_dropout_window(fleet):
    _, _, cells, windows = fleet
    start, end, fault = windows["B07"]
    assert fault == "dropout"
    assert end - start == pd.Timedelta(minutes=4)
    index = cells["B07"].index
    assert index[index < start][-1] == start - pd.Timedelta(seconds=1)
    assert index[index >= start][0] == end
    assert len(index) == FLEET_SECONDS - 240


def test_over_discharge_window(fleet):
    _, _, cells, windows = fleet
    start, end, fault = windows["B08"]
    assert fault == "over_discharge"
    frame = cells["B08"]
    soc = frame["soc_pct"]
    assert soc.loc[start] < 15.0 and soc.loc[:start].iloc[:-1].min() >= 15.0
    assert soc.loc[end] >= 15.0 and soc.loc[end:].min() >= 15.0
    inside = frame.loc[start : end - pd.Timedelta(seconds=1)]
    assert (inside["soc_pct"] < 15.0).all()
    assert 7.5 <= inside["soc_pct"].min() <= 10.5
    # Low SOC shows in the voltage too: a low rest OCV, and the BMS current
    # limit keeps the loaded voltage above cut-off.
    assert inside["voltage_v"].min() > 3.2
    at_rest = inside[inside["current_a"].abs() < 0.1]["voltage_v"]
    assert at_rest.size and at_rest.max() < 3.55


def test_over_temperature_window(fleet):
    _, _, cells, windows = fleet
    start, end, fault = windows["B06"]
    assert fault == "over_temperature"
    frame = cells["B06"]
    temp = frame["temperature_c"]
    assert temp.loc[start] > 50.0 and temp.loc[:start].iloc[:-1].max() <= 50.0
    assert temp.loc[end] <= 50.0 and temp.loc[end:].max() <= 50.0
    assert end - start >= pd.Timedelta(minutes=3)
    assert 53.0 <= temp.loc[start:end].max() <= 56.0
    run_up = frame.loc[start - pd.Timedelta(minutes=10) : start, "current_a"]
    assert run_up.mean() > 2.0, "the excursion happens under load"


def test_site_schema_and_clock(site):
    data, labels = site
    assert list(data.columns) == SITE_COLUMNS
    assert list(labels.columns) == ["start", "end", "fault", "signal"]
    assert len(data) == 86_400 and data["time"].is_unique
    assert data["time"].str.fullmatch(r"\d\d:\d\d:\d\d").all()
    assert data["time"].iat[0] == "00:00:00" and data["time"].iat[-1] == "23:59:59"
    assert (_seconds(data["time"]) == np.arange(86_400)).all()
    assert set(data["CO_status"]) == {"OK", "WARN", "ALARM"}
    assert set(data["load_status"]) == {"NORMAL", "LOSS"}


def test_site_derived_columns(site):
    data, _ = site
    rx, tx1, tx2 = data["RX_kWh"], data["TX1_kWh"], data["TX2_kWh"]
    deviation = 100.0 * (rx - tx1 - tx2) / rx
    assert (deviation - data["deviation_percent"]).abs().max() <= 0.005 + 1e-9
    co_max = data[["RX_CO_ppm", "TX1_CO_ppm", "TX2_CO_ppm"]].max(axis=1)
    expected = np.where(co_max > 100, "ALARM", np.where(co_max >= 35, "WARN", "OK"))
    assert (data["CO_status"].to_numpy() == expected).all()


def _site_windows(labels):
    return {
        row.fault: (row.signal, *_seconds(pd.Series([row.start, row.end])))
        for row in labels.itertuples()
    }


def test_site_incidents(site):
    data, labels = site
    windows = _site_windows(labels)
    assert set(windows) >= {"co_buildup", "load_loss", "meter_spike", "stuck_sensor"}
    spans = sorted((a, b) for _, a, b in windows.values())
    assert spans[0][0] >= 3600, "nothing in the first hour"
    assert all(b[0] - a[1] >= 3600 for a, b in zip(spans, spans[1:], strict=False))

    signal, a, b = windows["co_buildup"]
    co = data[signal].to_numpy()
    assert signal == "TX1_CO_ppm" and co[a] < 10.0
    assert 70.0 <= co[a:b].max() <= 120.0
    peak = a + int(np.argmax(co[a:b]))
    assert 20 * 60 <= peak - a <= 30 * 60
    assert co[b - 1] >= 10.0 and (co[b : b + 3600] < 10.0).all()

    signal, a, b = windows["load_loss"]
    assert signal == "TX2_kWh" and 10 * 60 <= b - a <= 14 * 60
    tx2 = data[signal].to_numpy()
    normal = np.median(tx2[a - 600 : a])
    assert (tx2[a : b - 30] < 0.02 * normal).all()
    assert (data["deviation_percent"].to_numpy()[a : b - 30] > 30.0).all()
    loss = np.flatnonzero(data["load_status"].to_numpy() == "LOSS")
    assert loss[0] == a and loss[-1] == b - 1 and loss.size == b - a

    signal, a, b = windows["meter_spike"]
    assert signal == "RX_kWh" and b - a == 60 and a % 60 == 0
    rx = data[signal].to_numpy()
    ratio = rx[a - 60 : b + 60] / np.median(rx[a - 600 : a])
    spikes = np.flatnonzero(ratio > 3.0)
    assert 3 <= spikes.size <= 5 and (spikes >= 60).all() and (spikes < 120).all()
    assert ratio.max() < 6.5

    signal, a, b = windows["stuck_sensor"]
    assert signal == "RX_CO_ppm" and b - a == 20 * 60
    co = data[signal].to_numpy()
    assert np.unique(co[a:b]).size == 1 and co[a - 1] != co[a] and co[b] != co[a]


def test_site_normal_ranges(site):
    data, labels = site
    mask = np.ones(len(data), dtype=bool)
    for fault, (_, a, b) in _site_windows(labels).items():
        # The CO label ends below 10 ppm, before the decay reaches ambient.
        mask[a : b + (1800 if fault == "co_buildup" else 0)] = False
    normal = data[mask]
    assert normal["RX_kWh"].between(0.0105, 0.0260).all()
    ratio = (normal["TX1_kWh"] + normal["TX2_kWh"]) / normal["RX_kWh"]
    assert ratio.between(0.945, 0.975).all() and 0.955 < ratio.mean() < 0.965
    for column in ("RX_CO_ppm", "TX1_CO_ppm", "TX2_CO_ppm"):
        assert normal[column].between(1.0, 6.0).all(), column
        assert _longest_run(normal[column].to_numpy()) < 30, column
    assert (normal["load_status"] == "NORMAL").all()
    hours = _seconds(normal["time"]) // 3600
    by_hour = normal["RX_kWh"].groupby(hours).mean()
    assert by_hour.loc[2:4].mean() < 0.7 * by_hour.loc[13:16].mean(), "daily load shape"


def test_machine_schema(machine_runs):
    baseline, monitor, labels = machine_runs
    for frame, start, rows in ((baseline, "2024-05-20T06:00:00", 21_600), (monitor, "2024-06-03T06:00:00", 10_800)):
        assert list(frame.columns) == MACHINE_COLUMNS
        assert len(frame) == rows
        stamps = pd.to_datetime(frame["timestamp"])
        assert frame["timestamp"].iat[0] == start
        assert (stamps.diff().dropna() == pd.Timedelta(seconds=2)).all()
    assert list(labels.columns) == ["start", "end", "fault"]
    assert labels["fault"].tolist() == ["bearing_wear_drift"]
    assert labels["end"].iat[0] == monitor["timestamp"].iat[-1]


def _check_known_good(frame):
    assert 2.0 <= frame["vibration_mm_s"].mean() <= 3.0
    assert frame["vibration_mm_s"].between(1.5, 3.5).all()
    assert frame["bearing_temp_c"].between(54.5, 62.5).all()
    assert frame["pressure_bar"].between(5.8, 6.2).all()
    assert frame["motor_current_a"].between(37.5, 45.5).all()
    # Current follows the duty cycle; bearing temperature and vibration follow current.
    assert frame["motor_current_a"].std() > 1.0
    assert frame["vibration_mm_s"].corr(frame["motor_current_a"]) > 0.2
    assert frame["pressure_bar"].corr(frame["motor_current_a"]) < -0.2


def test_machine_known_good_and_drift(machine_runs):
    baseline, monitor, labels = machine_runs
    _check_known_good(baseline)
    drift = int(np.flatnonzero(monitor["timestamp"] == labels["start"].iat[0])[0])
    assert 0.50 <= drift / len(monitor) <= 0.60
    _check_known_good(monitor.iloc[:drift])
    tail = monitor.iloc[-900:]
    head = monitor.iloc[:drift]
    ratio = tail["vibration_mm_s"].mean() / head["vibration_mm_s"].mean()
    assert 1.7 <= ratio <= 2.3
    assert tail["vibration_mm_s"].std() > 1.5 * head["vibration_mm_s"].std()
    creep = monitor["bearing_temp_c"].iloc[-300:].mean() - head["bearing_temp_c"].mean()
    assert 5.0 <= creep <= 11.0
    rise = tail["motor_current_a"].mean() / head["motor_current_a"].mean() - 1.0
    assert 0.02 <= rise <= 0.09
    # The drift is gradual: the first quarter after onset barely moves.
    early = monitor.iloc[drift : drift + (len(monitor) - drift) // 4]
    assert early["vibration_mm_s"].mean() < 1.15 * head["vibration_mm_s"].mean()


def test_gzip_reader_round_trip(out_dir):
    with gzip.open(out_dir / "site_power_24h.csv.gz", "rb") as fh:
        header = io.TextIOWrapper(fh, encoding="ascii").readline().strip()
    assert header.split(",") == SITE_COLUMNS


def test_an_installed_sbg_makes_its_samples_once(tmp_path):
    """A wheel ships no data/: sbg serve with no file and sbg data list generate the samples, once."""
    from sbg.io.datasets import ensure_samples

    messages = []
    where = ensure_samples(tmp_path / "share" / "sbg" / "data", echo=messages.append)
    fleet = where / "battery_fleet.csv.gz"
    assert fleet.exists() and len(messages) == 1 and str(where) in messages[0]
    before = fleet.stat().st_mtime_ns
    ensure_samples(where, echo=messages.append)
    assert fleet.stat().st_mtime_ns == before and len(messages) == 1
