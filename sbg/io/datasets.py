"""Deterministic, labelled sample telemetry for the Smart Battery Guardian.

Every file under ``data/`` comes from :func:`generate`, which is seeded and
rewrites each file byte for byte identically on every run.

Datasets
--------
battery_fleet
    Eight 21700-class NMC cells ``B01``..``B08`` logged at 1 Hz for six hours
    (long format). Each cell is simulated second by second with a one-RC
    Thevenin model on a real NMC OCV(SOC) curve, a lumped thermal model and a
    drive/rest/CC-CV-charge schedule whose current comes from a synthetic
    speed trace. The BMS SOC is the coulomb count of the *measured* current.
    ``B01`` is healthy; every other cell carries one labelled fault
    (stuck temperature sensor, voltage noise burst, thermal runaway onset,
    internal short, over-temperature, dropout, over-discharge).
site_power
    24 h at 1 Hz of per-second energy for a receiver site and two
    transmitters with a daily load shape, and three ambient CO sensors.
    Labelled incidents: CO build-up, transmitter load loss, meter spikes and
    a stuck CO sensor.
fleet_sites
    A multi-site fleet made on demand (not bundled): ``sites`` x ``racks`` x
    ``per_rack`` cells of the fleet's kind with ``site`` and ``rack`` columns
    and a mapping file, a share of them carrying one labelled fault each
    (noise burst, stuck temperature sensor, dropout, over-temperature),
    labelled as ``battery_fleet`` is.
machine
    A known-good 6 h baseline and a 6 h monitor run of one rotating machine
    sampled every 2 s; the monitor run develops a bearing-wear drift after
    about 55 % of its duration.

Notes
-----
Label windows run from ``start`` (first affected sample) to ``end`` (first
sample after the fault or, when the fault lasts to the end of the file, the
last sample). All randomness flows from ``numpy.random.SeedSequence(seed)``.
In-memory frames hold exactly what is written: timestamps as text and
numbers already rounded to the written precision.
"""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.interpolate import CubicSpline, PchipInterpolator
from scipy.signal import lfilter


def _data_dir() -> Path:
    """A source checkout's ``data/``; for an installed sbg, which ships no data, a folder of the user's."""
    checkout = Path(__file__).resolve().parents[2] / "data"
    if checkout.is_dir() and (checkout.parent / "pyproject.toml").is_file():
        return checkout
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "sbg" / "data"


DATA_DIR = _data_dir()
DEFAULT_SEED = 20240603

__all__ = ["DATA_DIR", "DEFAULT_SEED", "aged_cell", "battery_fleet", "ensure_samples", "generate", "machine",
           "site_power"]

FLEET_FILE = "battery_fleet.csv.gz"
FLEET_LABELS_FILE = "battery_fleet_labels.csv"
SITE_FILE = "site_power_24h.csv.gz"
SITE_LABELS_FILE = "site_power_24h_labels.csv"
MACHINE_BASELINE_FILE = "machine_baseline.csv"
MACHINE_MONITOR_FILE = "machine_monitor.csv"
MACHINE_LABELS_FILE = "machine_monitor_labels.csv"

_FLEET_START = np.datetime64("2024-06-03T08:00:00")
_FLEET_SECONDS = 6 * 3600
_CELLS = tuple(f"B{i:02d}" for i in range(1, 9))
_FLEET_DECIMALS = {"voltage_v": 3, "current_a": 3, "temperature_c": 2, "soc_pct": 2}

_SITE_SECONDS = 24 * 3600
_SITE_DECIMALS = {
    "RX_kWh": 6,
    "TX1_kWh": 6,
    "TX2_kWh": 6,
    "RX_CO_ppm": 1,
    "TX1_CO_ppm": 1,
    "TX2_CO_ppm": 1,
    "deviation_percent": 2,
}

_MACHINE_STEP = 2
_MACHINE_ROWS = 6 * 3600 // _MACHINE_STEP
_MACHINE_DECIMALS = {
    "vibration_mm_s": 3,
    "bearing_temp_c": 2,
    "pressure_bar": 3,
    "motor_current_a": 2,
}

# Typical NMC OCV curve; PCHIP keeps it monotone without the slope kinks that
# linear interpolation would print into dV/dt at every table point.
_OCV_SOC = np.array([0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]) / 100.0
_OCV_V = np.array([3.00, 3.30, 3.45, 3.56, 3.62, 3.67, 3.72, 3.80, 3.89, 3.98, 4.07, 4.18])
_OCV_TABLE = PchipInterpolator(_OCV_SOC, _OCV_V)(np.linspace(0.0, 1.0, 1001)).tolist()

# BMS voltage window: the current limiter keeps healthy cells inside
# 3.30-4.15 V, well clear of the 3.2/4.18 V alarm limits.
_V_MIN = 3.30
_V_MAX = 4.15
_CHARGE_BELOW = 0.30
# Real drives and chargers cannot change pack current faster than a few A/s.
_SLEW_A_PER_S = 3.0

_REST, _DRIVE, _CHARGE = 0, 1, 2

# (cruise speed m/s, hold s, max cruise changes, mean acceleration m/s^2)
_STYLES = (
    ((7.0, 14.0), (8, 40), 2, (1.0, 2.0)),  # urban
    ((13.0, 22.0), (20, 90), 3, (0.8, 1.6)),  # suburban
    ((24.0, 33.0), (60, 240), 4, (0.6, 1.2)),  # highway
)


def _streams(seed: int, dataset: int, n: int) -> list[np.random.Generator]:
    """Independent generators for one dataset, stable whatever the others do."""
    child = np.random.SeedSequence(seed).spawn(3)[dataset]
    return [np.random.default_rng(s) for s in child.spawn(n)]


def _ou(rng: np.random.Generator, n: int, tau: float, sigma: float) -> np.ndarray:
    """Stationary Ornstein-Uhlenbeck (AR(1)) path with unit time step."""
    phi = math.exp(-1.0 / tau)
    e = rng.standard_normal(n) * sigma * math.sqrt(1.0 - phi * phi)
    e[0] = rng.standard_normal() * sigma
    return lfilter([1.0], [1.0, -phi], e)


def _ramp(v0: float, v1: float, steps: int) -> np.ndarray:
    """Cosine ramp, so acceleration (and with it current) starts and ends at zero."""
    u = np.arange(1, steps + 1) / steps
    return v0 + (v1 - v0) * (1.0 - np.cos(np.pi * u)) / 2.0


def _micro_trip(rng: np.random.Generator, style: int) -> np.ndarray:
    """Speed trace (m/s, 1 Hz) of one stop-to-stop trip."""
    (v_lo, v_hi), (h_lo, h_hi), changes, (a_lo, a_hi) = _STYLES[style]
    parts = [np.zeros(int(rng.integers(5, 45)))]
    v = rng.uniform(v_lo, v_hi)
    parts.append(_ramp(0.0, v, max(4, round(v / rng.uniform(a_lo, a_hi)))))
    for _ in range(int(rng.integers(1, changes + 1))):
        parts.append(np.full(int(rng.integers(h_lo, h_hi)), v))
        v_new = float(np.clip(v + rng.normal(0.0, 0.15 * v), 0.7 * v_lo, 1.1 * v_hi))
        parts.append(_ramp(v, v_new, max(4, round(abs(v_new - v) / 0.6))))
        v = v_new
    parts.append(np.full(int(rng.integers(h_lo, h_hi)), v))
    parts.append(_ramp(v, 0.0, max(4, round(v / rng.uniform(0.8, 1.8)))))
    return np.concatenate(parts)


class _Session:
    """One driving session: a speed trace turned into per-cell current demand.

    ``demand`` is in A (discharge positive) and ``stops`` flags the seconds
    where a trip ends and the vehicle stands still. The session normally ends
    at the first stop at or after ``nominal``.
    """

    def __init__(self, rng, pack_cells: float, minutes: float, mix, heavy: bool = False):
        self.rng = rng
        self.mix = mix
        # Towing a trailer up a mountain pass: the sustained load under which
        # B06's cooling fails.
        self.mass = 1700.0 * (1.5 if heavy else 1.0)
        self.cda = 0.62 * (1.7 if heavy else 1.0)
        self.climb = rng.uniform(0.05, 0.06) if heavy else 0.0
        # Towing speed limits: trips run at about 2/3 of the usual speeds.
        self.pace = 0.68 if heavy else 1.0
        self.aux = rng.uniform(600.0, 1500.0)
        self.scale = 1.0 / (pack_cells * 3.7)
        self.speed = np.zeros(0)
        self.grade = np.zeros(0)
        self.demand: list[float] = []
        self.stops: list[bool] = []
        self.truncated = False
        self.extend(minutes)
        self.nominal = len(self.demand) - 1

    def _current(self, speed: np.ndarray, grade: np.ndarray) -> np.ndarray:
        accel = np.gradient(speed)
        force = self.mass * accel + 0.6 * self.cda * speed**2
        force += self.mass * 9.81 * (0.011 + grade)
        wheel = force * speed
        battery = np.where(wheel > 0.0, wheel / 0.9, wheel * 0.65) + self.aux
        return battery * self.scale

    def extend(self, minutes: float) -> None:
        trips = []
        total = 0
        while total < minutes * 60:
            trips.append(_micro_trip(self.rng, int(self.rng.choice(3, p=self.mix))))
            total += trips[-1].size
        speed = np.concatenate(trips) * self.pace
        grade = self.climb + _ou(self.rng, speed.size, 90.0, 0.02)
        stops = np.zeros(speed.size, dtype=bool)
        stops[np.cumsum([t.size for t in trips]) - 1] = True
        self.speed = np.concatenate([self.speed, speed])
        self.grade = np.concatenate([self.grade, grade])
        self.demand += self._current(speed, grade).tolist()
        self.stops += stops.tolist()

    def truncate(self, pos: int) -> None:
        """Brake to a stop from ``pos`` on and end the session there."""
        v = float(self.speed[pos])
        tail = np.concatenate([_ramp(v, 0.0, max(4, round(v / 1.2))), np.zeros(5)])
        grade = np.full(tail.size, self.grade[pos])
        self.speed = np.concatenate([self.speed[:pos], tail])
        self.grade = np.concatenate([self.grade[:pos], grade])
        self.demand = self.demand[:pos] + self._current(tail, grade).tolist()
        self.stops = self.stops[:pos] + [False] * (tail.size - 1) + [True]
        self.nominal = len(self.demand) - 1
        self.truncated = True


def _cell_params(rng: np.random.Generator) -> dict[str, float]:
    return {
        "cap": rng.uniform(4.6, 5.2),
        "r0": rng.uniform(0.020, 0.035),
        "r1": rng.uniform(0.010, 0.020),
        "tau": rng.uniform(20.0, 60.0),
        "c_th": rng.uniform(65.0, 75.0),
        "r_th": rng.uniform(3.0, 5.0),
        "t_amb": rng.uniform(18.0, 30.0),
        "warming": rng.uniform(0.5, 2.5),
        "soc0": rng.uniform(0.60, 0.90),
        "i_offset": rng.normal(0.0, 0.004),
        "charge_c": rng.uniform(0.5, 1.0),
        "charge_stop": rng.uniform(0.88, 0.90),
        "pack_cells": rng.uniform(1850.0, 2150.0),
    }


def _simulate_cell(rng: np.random.Generator, p: dict, scen: dict, n: int) -> dict:
    """Second-by-second simulation of one cell; returns true and measured series.

    ``scen`` switches on the scheduled fault physics: ``park_at`` (no new
    sessions after it), ``runaway_at``, ``short_at``/``short_sag``,
    ``deep_after``/``deep_target`` and ``coolfail_after``/``peak``.
    """
    ocv_tab = _OCV_TABLE
    a_rc = math.exp(-1.0 / p["tau"])
    r0, r1 = p["r0"], p["r1"]
    reff = r0 + r1 * (1.0 - a_rc)
    rheat = r0 + r1
    cap_as = p["cap"] * 3600.0
    c_th = p["c_th"]
    i_max = 2.0 * p["cap"]
    i_regen = 1.0 * p["cap"]
    i_cc = p["charge_c"] * p["cap"]
    charge_stop = p["charge_stop"]
    meas_noise = rng.normal(p["i_offset"], 0.02, n)
    noise_l = meas_noise.tolist()
    amb = (p["t_amb"] + p["warming"] * np.arange(n) / n).tolist()

    never = n + 1
    park_at = scen.get("park_at", never)
    runaway_at = scen.get("runaway_at", never)
    short_at = scen.get("short_at", never)
    deep_after = scen.get("deep_after", never)
    deep_target = scen.get("deep_target", 0.0)
    coolfail_after = scen.get("coolfail_after", never)
    peak = scen.get("peak", 1e9)

    soc = p["soc0"]
    soc_bms = soc
    temp = amb[0] + rng.uniform(0.2, 1.0)
    vrc = 0.0
    i_prev = 0.0
    rth_base = p["r_th"]
    rth = rth_goal = rth_base
    amb_off = amb_off_goal = 0.0
    cool_event = never
    r_sc = 0.0
    sc_share = 1.0

    def new_session(minutes, heavy=False, mix=None):
        if mix is None:
            mix = rng.dirichlet([1.0, 1.0, 1.0])
        return _Session(rng, p["pack_cells"], minutes, mix, heavy)

    # B08's driver ignores the first low-SOC prompt after ``deep_after`` and
    # drives on; B06's fan fails during a heavy drive on a well-charged pack.
    deep_armed = deep_target > 0.0
    deep_session = cool_session = None
    cool_state = 0  # 0 waiting, 1 this session, 2 done
    segments = []
    if rng.random() < 0.5:
        mode = _REST
        rest_until = int(rng.integers(0, 25 * 60))
        sess, pos = None, 0
    else:
        mode = _DRIVE
        sess = new_session(rng.uniform(18.0, 40.0))
        pos = int(rng.integers(0, len(sess.demand) // 2))
        rest_until = 0
    segments.append((mode, 0))

    out_v = [0.0] * n
    out_i = [0.0] * n
    out_t = [0.0] * n
    out_s = [0.0] * n
    for k in range(n):
        if mode == _REST:
            if k >= rest_until:
                if k >= park_at:
                    rest_until = never
                elif (soc_bms < _CHARGE_BELOW + 0.05 and not deep_armed) or (
                    # B06 tops up before its long towing trip.
                    cool_state == 0 and k >= coolfail_after and soc_bms < 0.85
                ):
                    mode = _CHARGE
                    segments.append((mode, k))
                else:
                    mode = _DRIVE
                    segments.append((mode, k))
                    pos = 0
                    if cool_state == 0 and k >= coolfail_after and soc_bms >= 0.85:
                        cool_state = 1
                        sess = cool_session = new_session(60.0, heavy=True, mix=[0.0, 0.2, 0.8])
                        cool_event = k + int(rng.integers(30, 90))
                    else:
                        sess = new_session(rng.uniform(18.0, 40.0))
        elif mode == _DRIVE:
            end = pos >= len(sess.demand)
            if not end and not sess.truncated:
                if deep_armed and k >= deep_after and soc_bms < _CHARGE_BELOW:
                    deep_armed = False
                    deep_session = sess
                if sess is deep_session:
                    sess.nominal = never
                    if soc_bms <= deep_target:
                        sess.truncate(pos)
                    elif pos + 2 >= len(sess.demand):
                        sess.extend(20.0)
                elif (
                    soc_bms < _CHARGE_BELOW
                    or k >= park_at
                    # BMS thermal derate: the driver pulls over.
                    or (sess is cool_session and k > cool_event and temp >= peak)
                ):
                    sess.truncate(pos)
                elif sess.stops[pos] and pos >= sess.nominal:
                    end = True
            if end:
                if sess is cool_session:
                    # The fan is reset a few minutes after the stop.
                    cool_event = k + int(rng.integers(180, 300))
                    cool_session = None
                    cool_state = 2
                mode = _REST
                segments.append((mode, k))
                low = soc_bms < _CHARGE_BELOW + 0.05
                rest_until = k + int(rng.integers(120, 360) if low else rng.integers(600, 1800))
        elif soc_bms >= charge_stop or k >= park_at:
            mode = _REST
            segments.append((mode, k))
            rest_until = k + int(rng.integers(600, 1800))

        if k == cool_event:
            if rth_goal == rth_base:
                # Fan stops: air-side resistance jumps and the enclosure air
                # heats up towards the surrounding hot components.
                rth_goal = rth_base * rng.uniform(7.0, 8.0)
                amb_off_goal = rng.uniform(47.0, 50.0) - p["t_amb"]
            else:
                rth_goal = rth_base
                amb_off_goal = 0.0

        if mode == _DRIVE:
            demand = sess.demand[pos]
            pos += 1
        elif mode == _CHARGE:
            demand = -i_cc
        else:
            demand = 0.0

        x = soc * 1000.0
        if x <= 0.0:
            ocv = ocv_tab[0]
        elif x >= 1000.0:
            ocv = ocv_tab[1000]
        else:
            j = int(x)
            ocv = ocv_tab[j] + (x - j) * (ocv_tab[j + 1] - ocv_tab[j])
        vbase = ocv - vrc * a_rc
        hi = min((vbase - _V_MIN) / reff, i_max)
        lo = max((vbase - _V_MAX) / reff, -i_regen)
        i = max(min(demand, max(hi, 0.0)), min(lo, 0.0))
        step = i - i_prev
        if step > _SLEW_A_PER_S:
            i = i_prev + _SLEW_A_PER_S
        elif step < -_SLEW_A_PER_S:
            i = i_prev - _SLEW_A_PER_S
        i_prev = i

        q_self = 0.0
        if k >= runaway_at:
            s = k - runaway_at
            q_self = scen["q0"] * math.exp(s / scen["tau_g"])
            # Separator melt: the growing internal short collapses the voltage
            # and adds its own heat, as in a real runaway.
            if temp > 115.0:
                r_sc = max(20.0 * math.exp(-(temp - 115.0) / 12.0), 0.015)
        elif k == short_at:
            # 1.5-2 A, sized so the ohmic sag at onset lands near ``short_sag``.
            r_sc = ocv / min(max(scen["short_sag"] / r0, 1.5), 2.0)
            # The soft short sits at the can edge against the cold plate, so
            # only a small share of its heat reaches the lumped cell node.
            sc_share = 0.12

        if r_sc > 0.0:
            v = (vbase - i * reff) * r_sc / (r_sc + reff)
            i_sc = v / r_sc
        else:
            v = vbase - i * reff
            i_sc = 0.0
        i_tot = i + i_sc
        vrc = vrc * a_rc + r1 * (1.0 - a_rc) * i_tot

        out_v[k] = v
        out_i[k] = i
        out_t[k] = temp
        out_s[k] = soc_bms

        heat = i_tot * i_tot * rheat + sc_share * i_sc * i_sc * r_sc + q_self
        temp += (heat + (amb[k] + amb_off - temp) / rth) / c_th
        soc -= i_tot / cap_as
        soc_bms -= (i + noise_l[k]) / cap_as
        rth += (rth_goal - rth) * 0.03
        amb_off += (amb_off_goal - amb_off) / 300.0

    return {
        "v": np.asarray(out_v),
        "i": np.asarray(out_i),
        "t": np.asarray(out_t),
        "soc_bms": np.asarray(out_s),
        "i_meas": np.asarray(out_i) + meas_noise,
        "segments": segments,
    }


def _span_after(mask: np.ndarray) -> tuple[int, int]:
    """First index where ``mask`` holds and the index just past its last hit.

    A span still open at the end of the series ends on the last sample.
    """
    hits = np.flatnonzero(mask)
    if hits.size == 0:
        raise RuntimeError("fault signature missing; the seed produced no excursion")
    return int(hits[0]), min(int(hits[-1]) + 1, mask.size - 1)


def battery_fleet(seed: int = DEFAULT_SEED) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate the eight-cell fleet; returns ``(data, labels)``."""
    n = _FLEET_SECONDS
    rngs = _streams(seed, 0, len(_CELLS) + 1)
    fault_rng = rngs[-1]
    minute = 60

    scen = {
        "B03": {
            "park_at": n - 55 * minute,
            "runaway_at": n - 40 * minute - int(fault_rng.integers(0, 91)),
            "q0": 0.002,
            "tau_g": fault_rng.uniform(212.0, 218.0),
        },
        "B05": {
            "park_at": n - 55 * minute,
            "short_at": n - 35 * minute + int(fault_rng.integers(-60, 61)),
            "short_sag": fault_rng.uniform(0.05, 0.07),
        },
        "B06": {
            "coolfail_after": 170 * minute + int(fault_rng.integers(0, 10 * minute)),
            "peak": fault_rng.uniform(53.3, 55.5),
        },
        "B08": {
            "deep_after": 35 * minute + int(fault_rng.integers(0, 5 * minute)),
            "deep_target": fault_rng.uniform(0.085, 0.095),
        },
    }
    sims = {}
    for cell, rng in zip(_CELLS, rngs[:-1], strict=True):
        params = _cell_params(rng)
        sims[cell] = _simulate_cell(rng, params, scen.get(cell, {}), n)

    # Sensor front end: noise, then quantisation to the logged precision.
    volt, cur, temp, soc = (np.empty((n, len(_CELLS))) for _ in range(4))
    for c, cell in enumerate(_CELLS):
        sim = sims[cell]
        volt[:, c] = sim["v"] + rngs[c].normal(0.0, 0.001, n)
        cur[:, c] = sim["i_meas"]
        temp[:, c] = sim["t"] + rngs[c].normal(0.0, 0.05, n)
        soc[:, c] = sim["soc_bms"] * 100.0

    labels = []
    col = _CELLS.index

    # Noise burst on B04's voltage channel (loose connector on the sense lead).
    c = col("B04")
    b0 = 100 * minute + int(fault_rng.integers(0, 30 * minute))
    b1 = b0 + int(fault_rng.integers(30, 61))
    volt[b0:b1, c] += fault_rng.normal(0.0, fault_rng.uniform(0.06, 0.10), b1 - b0)
    spikes = fault_rng.choice(np.arange(b0, b1), size=int(fault_rng.integers(3, 6)), replace=False)
    volt[spikes, c] += fault_rng.choice([-1.0, 1.0], spikes.size) * fault_rng.uniform(
        0.3, 0.5, spikes.size
    )
    labels.append(("B04", b0, b1, "noise_burst"))

    volt = _rounded(volt, 3)
    cur = _rounded(cur, 3)
    temp = _rounded(temp, 2)
    soc = _rounded(soc, 2)

    # Stuck temperature sensor on B02 while driving: it repeats its last
    # reading, so pick a start whose neighbours differ to keep the span exact.
    c = col("B02")
    stuck = 15 * minute
    drives = _segments_of(sims["B02"]["segments"], _DRIVE, n)
    s0 = next((a for a, b in drives if a >= 35 * minute and b - a >= stuck + 3 * minute), None)
    if s0 is None:
        raise RuntimeError("fault signature missing; B02 has no long enough drive")
    s0 += minute
    while temp[s0 - 1, c] == temp[s0, c] or temp[s0 + stuck, c] == temp[s0, c]:
        s0 += 1
    temp[s0 : s0 + stuck, c] = temp[s0, c]
    labels.append(("B02", s0, s0 + stuck, "stuck_sensor"))

    s3 = scen["B03"]["runaway_at"]
    labels.append(("B03", s3, n - 1, "thermal_runaway_onset"))
    s5 = scen["B05"]["short_at"]
    labels.append(("B05", s5, n - 1, "internal_short"))
    start, end = _span_after(temp[:, col("B06")] > 50.0)
    labels.append(("B06", start, end, "over_temperature"))
    start, end = _span_after(soc[:, col("B08")] < 15.0)
    labels.append(("B08", start, end, "over_discharge"))

    c = col("B07")
    d0 = 140 * minute + int(fault_rng.integers(0, 25 * minute))
    keep = np.ones((n, len(_CELLS)), dtype=bool)
    keep[d0 : d0 + 4 * minute, c] = False
    labels.append(("B07", d0, d0 + 4 * minute, "dropout"))

    stamps = _stamps(_FLEET_START, n, 1)
    keep = keep.ravel()
    data = pd.DataFrame(
        {
            "timestamp": np.repeat(stamps, len(_CELLS))[keep],
            "battery_id": np.tile(np.array(_CELLS), n)[keep],
            "voltage_v": volt.ravel()[keep],
            "current_a": cur.ravel()[keep],
            "temperature_c": temp.ravel()[keep],
            "soc_pct": soc.ravel()[keep],
        }
    )
    labels.sort(key=lambda row: (row[1], row[0]))
    label_frame = pd.DataFrame(
        {
            "battery_id": [row[0] for row in labels],
            "start": [stamps[row[1]] for row in labels],
            "end": [stamps[row[2]] for row in labels],
            "fault": [row[3] for row in labels],
        }
    )
    return data, label_frame


def aged_cell(seed: int = DEFAULT_SEED, fade: float = 0.0, resistance_growth: float = 0.0, hours: float = 6.0,
              entity: str = "A01") -> tuple[pd.DataFrame, dict]:
    """One cell of the fleet's kind, aged by a known capacity fade and resistance growth: ``(data, truth)``.

    The cell is drawn as the fleet's are (same model, schedule and sensor
    front end, no fault), then aged: its capacity is multiplied by
    ``1 - fade`` and both resistances of its Thevenin model by
    ``1 + resistance_growth``. The same ``seed`` with other ageing gives the
    same cell, so a fresh and an aged run can be compared. The BMS state of
    charge counts against the aged capacity (a BMS that has learnt it).

    ``truth`` has the fresh and aged capacity (Ah) and the fresh and aged
    one-second DC resistance ``r0 + r1 (1 - exp(-1/tau))`` (ohm): what
    ``ΔV/ΔI`` between two rows a second apart measures.

    >>> data, truth = aged_cell(fade=0.2, resistance_growth=0.5, hours=0.1)
    >>> list(data.columns), round(truth["aged_capacity_ah"] / truth["capacity_ah"], 6)
    (['timestamp', 'battery_id', 'voltage_v', 'current_a', 'temperature_c', 'soc_pct'], 0.8)
    """
    if not 0.0 <= fade < 1.0:
        raise ValueError(f"fade must be from 0 to less than 1, not {fade!r}")
    if resistance_growth < 0.0:
        raise ValueError(f"resistance_growth must be 0 or more, not {resistance_growth!r}")
    n = int(round(hours * 3600))
    # A fourth stream of the seed: the three datasets above are not touched.
    params_rng, sim_rng, sensor_rng = (np.random.default_rng(s)
                                       for s in np.random.SeedSequence(seed, spawn_key=(3,)).spawn(3))
    fresh = _cell_params(params_rng)
    grow = 1.0 + resistance_growth
    aged = dict(fresh, cap=fresh["cap"] * (1.0 - fade), r0=fresh["r0"] * grow, r1=fresh["r1"] * grow)
    sim = _simulate_cell(sim_rng, aged, {}, n)

    def one_second_resistance(p):
        return p["r0"] + p["r1"] * (1.0 - math.exp(-1.0 / p["tau"]))

    data = pd.DataFrame({
        "timestamp": _stamps(_FLEET_START, n, 1),
        "battery_id": entity,
        "voltage_v": _rounded(sim["v"] + sensor_rng.normal(0.0, 0.001, n), 3),
        "current_a": _rounded(sim["i_meas"], 3),
        "temperature_c": _rounded(sim["t"] + sensor_rng.normal(0.0, 0.05, n), 2),
        "soc_pct": _rounded(sim["soc_bms"] * 100.0, 2),
    })
    truth = {"fade": fade, "resistance_growth": resistance_growth, "capacity_ah": fresh["cap"],
             "aged_capacity_ah": aged["cap"], "resistance_ohm": one_second_resistance(fresh),
             "aged_resistance_ohm": one_second_resistance(aged)}
    return data, truth


FLEET_SITES_FILE = "fleet_sites.csv.gz"
FLEET_SITES_LABELS_FILE = "fleet_sites_labels.csv"
FLEET_SITES_MAPPING_FILE = "fleet_sites_mapping.csv"
#: The faults of :func:`fleet_sites`, given in turn to the faulty cells.
SITE_FAULTS = ("noise_burst", "stuck_sensor", "dropout", "over_temperature")


#: Rows of a cell before its fault starts, when the run has them: the detectors' longest warm-up is 1,500.
_SITE_FAULT_AFTER_ROWS = 1600


def fleet_sites(seed: int = DEFAULT_SEED, sites: int = 3, racks: int = 2, per_rack: int = 4, hours: float = 2.0,
                step_s: int = 2, fault_share: float = 0.25) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A fleet across sites and racks: ``(data, labels, mapping)``.

    Cells of the bundled fleet's kind (same model, schedule and sensor front
    end), simulated second by second for ``hours`` and logged every
    ``step_s`` seconds. ``S1``..``Sn`` are the sites, ``R1``..``Rm`` the
    racks of each, and cell ``S2R1-003`` is the third of rack R1 at site S2.
    The data has ``site`` and ``rack`` columns (text, carried); ``mapping``
    has ``battery_id, site, rack`` for a mapping file. ``fault_share`` of the
    cells (at least one) carry one fault each, the kinds of
    :data:`SITE_FAULTS` in turn, labelled as in :func:`battery_fleet`
    (``battery_id, start, end, fault``, plus ``site`` and ``rack``). A fault
    starts after the cell's first 1,600 rows when the run has them (the
    detectors' warm-up), and at least half way in: the defaults (2 h every
    2 s, 3,600 rows a cell) leave room for both.

    Seeded from its own stream of ``seed``: the bundled datasets are not
    touched, and the same arguments give the same frames.

    >>> data, labels, mapping = fleet_sites(sites=2, racks=2, per_rack=2, hours=0.75)
    >>> len(mapping), sorted(data["site"].unique()), labels["fault"].tolist()
    (8, ['S1', 'S2'], ['noise_burst', 'stuck_sensor'])
    """
    if min(sites, racks, per_rack) < 1:
        raise ValueError("sites, racks and per_rack must be at least 1")
    if not 0.0 <= fault_share <= 1.0:
        raise ValueError(f"fault_share must be from 0 to 1, not {fault_share!r}")
    if step_s < 1 or hours * 3600 < 30 * 60:
        raise ValueError(f"step_s must be at least 1 and hours at least 0.5 (30 minutes), not {step_s!r}, {hours!r}")
    n = int(round(hours * 3600))
    cells = [(f"S{i + 1}", f"R{j + 1}", f"S{i + 1}R{j + 1}-{k + 1:03d}")
             for i in range(sites) for j in range(racks) for k in range(per_rack)]
    # A fifth stream of the seed (the fleet, site, machine and aged cell have theirs).
    root = np.random.SeedSequence(seed, spawn_key=(4,))
    fault_rng = np.random.default_rng(root.spawn(1)[0])
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed, spawn_key=(5,)).spawn(len(cells))]
    faulty = max(1, int(round(fault_share * len(cells)))) if fault_share > 0 else 0
    chosen = sorted(fault_rng.choice(len(cells), size=faulty, replace=False).tolist()) if faulty else []
    fault_of = {c: SITE_FAULTS[i % len(SITE_FAULTS)] for i, c in enumerate(chosen)}
    keep_at = np.arange(0, n, step_s)
    m = len(keep_at)
    minute = 60
    volt, cur, temp, soc = (np.empty((m, len(cells))) for _ in range(4))
    keep = np.ones((m, len(cells)), dtype=bool)
    labels = []
    for c, ((_, _, cell), rng) in enumerate(zip(cells, rngs, strict=True)):
        sim = _simulate_cell(rng, _cell_params(rng), {}, n)
        v = sim["v"] + rng.normal(0.0, 0.001, n)
        t = sim["t"] + rng.normal(0.0, 0.05, n)
        kind = fault_of.get(c)
        # Faults start after the detectors' warm-up (about 1,500 rows of the cell) when the run is long enough,
        # and at least half way in, ending before 85 % of it.
        lo = max(n // 2, min(_SITE_FAULT_AFTER_ROWS * step_s, int(0.7 * n)))
        at = int(fault_rng.integers(lo, int(0.75 * n))) // step_s * step_s
        if kind == "noise_burst":  # a loose sense lead: minutes of noise on the voltage, a few spikes
            # Larger than the bundled fleet's burst: logged every few seconds, a drive's own swings are wider.
            end = at + int(fault_rng.integers(3, 6)) * minute
            v[at:end] += fault_rng.normal(0.0, fault_rng.uniform(0.10, 0.15), end - at)
            spikes = fault_rng.choice(np.arange(at, end, step_s), size=4, replace=False)
            v[spikes] += fault_rng.choice([-1.0, 1.0], 4) * fault_rng.uniform(0.6, 0.9, 4)
        elif kind == "over_temperature":  # cooling lost: the cell heats past 50 degC within ten minutes and stays
            ramp = min(10.0 * minute, (n - at) / 2.0)
            rise = max(fault_rng.uniform(24.0, 28.0), fault_rng.uniform(53.0, 56.0) - float(t[at]))
            t = t + np.clip((np.arange(n) - at) / ramp, 0.0, 1.0) * rise
        volt[:, c] = _rounded(v[keep_at], 3)
        cur[:, c] = _rounded(sim["i_meas"][keep_at], 3)
        temp[:, c] = _rounded(t[keep_at], 2)
        soc[:, c] = _rounded(sim["soc_bms"][keep_at] * 100.0, 2)
        i0 = at // step_s
        if kind == "noise_burst":
            labels.append((cell, i0, min(-(-end // step_s), m - 1), kind))
        elif kind == "stuck_sensor":  # the temperature repeats its last reading for 15 minutes
            i1 = min(i0 + 15 * minute // step_s, m - 1)
            while temp[i0 - 1, c] == temp[i0, c] or temp[i1, c] == temp[i0, c]:
                i0, i1 = i0 + 1, min(i1 + 1, m - 1)
            temp[i0:i1, c] = temp[i0, c]
            labels.append((cell, i0, i1, kind))
        elif kind == "dropout":  # four minutes without a row
            i1 = min(i0 + 4 * minute // step_s, m - 1)
            keep[i0:i1, c] = False
            labels.append((cell, i0, i1, kind))
        elif kind == "over_temperature":
            start, end_i = _span_after(temp[:, c] > 50.0)
            labels.append((cell, start, end_i, kind))
    stamps = _stamps(_FLEET_START, n, 1)[keep_at]
    flat = keep.ravel()
    names = np.array([cell for _, _, cell in cells], dtype=object)
    data = pd.DataFrame({
        "timestamp": np.repeat(stamps, len(cells))[flat],
        "battery_id": np.tile(names, m)[flat],
        "site": np.tile(np.array([s for s, _, _ in cells], dtype=object), m)[flat],
        "rack": np.tile(np.array([r for _, r, _ in cells], dtype=object), m)[flat],
        "voltage_v": volt.ravel()[flat], "current_a": cur.ravel()[flat],
        "temperature_c": temp.ravel()[flat], "soc_pct": soc.ravel()[flat],
    })
    place = {cell: (site, rack) for site, rack, cell in cells}
    labels.sort(key=lambda row: (row[1], row[0]))
    label_frame = pd.DataFrame({
        "battery_id": pd.Series([r[0] for r in labels], dtype=object),
        "site": pd.Series([place[r[0]][0] for r in labels], dtype=object),
        "rack": pd.Series([place[r[0]][1] for r in labels], dtype=object),
        "start": pd.Series([stamps[r[1]] for r in labels], dtype=object),
        "end": pd.Series([stamps[r[2]] for r in labels], dtype=object),
        "fault": pd.Series([r[3] for r in labels], dtype=object),
    })
    mapping = pd.DataFrame({"battery_id": pd.Series(names, dtype=object),
                            "site": pd.Series([s for s, _, _ in cells], dtype=object),
                            "rack": pd.Series([r for _, r, _ in cells], dtype=object)})
    return data, label_frame, mapping


def write_fleet_sites(out_dir: str | Path, seed: int = DEFAULT_SEED, **options) -> list[Path]:
    """Write :func:`fleet_sites` as ``fleet_sites.csv.gz``, its labels and its mapping file; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data, labels, mapping = fleet_sites(seed, **options)
    return [_write(data, out / FLEET_SITES_FILE, _FLEET_DECIMALS), _write(labels, out / FLEET_SITES_LABELS_FILE),
            _write(mapping, out / FLEET_SITES_MAPPING_FILE)]


def _segments_of(segments: list, mode: int, n: int) -> list[tuple[int, int]]:
    bounds = [s for _, s in segments] + [n]
    return [(bounds[j], bounds[j + 1]) for j, (m, _) in enumerate(segments) if m == mode]


def _rounded(x: np.ndarray, decimals: int) -> np.ndarray:
    # Adding 0.0 turns -0.0 into 0.0 so nothing prints as "-0.000".
    return np.round(x, decimals) + 0.0


def _stamps(start: np.datetime64, n: int, step: int) -> np.ndarray:
    times = start + np.arange(n, dtype=np.int64) * np.timedelta64(step, "s")
    return np.datetime_as_string(times, unit="s").astype(object)


def _clock(seconds: np.ndarray) -> np.ndarray:
    text = np.datetime_as_string(np.datetime64("2000-01-01T00:00:00") + seconds.astype("m8[s]"))
    return np.array([s[11:19] for s in text], dtype=object)


def site_power(seed: int = DEFAULT_SEED) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generate the 24 h site power / CO log; returns ``(data, labels)``."""
    load_rng, co_rng, inc_rng = _streams(seed, 1, 3)
    n = _SITE_SECONDS
    hours = np.arange(n) / 3600.0

    anchor_h = np.arange(25)
    anchor_kw = np.array(
        [48, 46, 45, 44, 44, 45, 50, 59, 66, 71, 74, 77, 79,
         81, 83, 84, 82, 78, 72, 66, 61, 56, 53, 50, 48], dtype=float,
    )  # fmt: skip
    shape = CubicSpline(anchor_h, anchor_kw, bc_type="periodic")(hours)
    # Slow wander (HVAC, occupancy) and second-scale flicker are shared by all
    # meters because the transmitters are part of the receiver's load.
    wander = _ou(load_rng, n, 1800.0, 0.03) + _ou(load_rng, n, 40.0, 0.012)
    wander += load_rng.normal(0.0, 0.004, n)
    rx_kw = shape * load_rng.uniform(0.97, 1.03) * (1.0 + wander)
    ratio = 0.96 + _ou(load_rng, n, 7200.0, 0.002)
    share = 0.55 + _ou(load_rng, n, 3600.0, 0.015)
    tx1_kw = rx_kw * ratio * share
    tx2_kw = rx_kw * ratio * (1.0 - share)

    def metered(kw):
        return kw * (1.0 + load_rng.normal(0.0, 0.0015, n)) / 3600.0

    rx, tx1, tx2 = metered(rx_kw), metered(tx1_kw), metered(tx2_kw)

    rush = np.exp(-0.5 * ((hours - 8.0) / 1.2) ** 2) + np.exp(-0.5 * ((hours - 18.0) / 1.2) ** 2)
    co = []
    for _ in range(3):
        base = co_rng.uniform(2.0, 3.0) * np.exp(_ou(co_rng, n, 1200.0, 0.15)) + 0.9 * rush
        co.append(base)
    rx_co, tx1_co, tx2_co = co

    labels = []
    # Meter spikes: a few single-sample glitches inside one minute.
    m0 = 60 * (150 + int(inc_rng.integers(0, 60)))
    hits = m0 + inc_rng.choice(60, size=int(inc_rng.integers(3, 6)), replace=False)
    rx[hits] *= inc_rng.uniform(4.0, 6.0, hits.size)
    labels.append((m0, m0 + 60, "meter_spike", "RX_kWh"))

    # TX2 breaker trip: instant drop to standby draw, soft-start on recovery.
    l0 = 12 * 3600 + 1800 + int(inc_rng.integers(0, 3600))
    outage = int(inc_rng.integers(11 * 60, 13 * 60))
    soft = 20
    standby = inc_rng.uniform(30.0, 60.0) / 1000.0 / 3600.0
    tx2[l0 : l0 + outage] = standby * (1.0 + load_rng.normal(0.0, 0.05, outage))
    tx2[l0 + outage : l0 + outage + soft] *= np.linspace(0.05, 1.0, soft)
    loss = np.zeros(n, dtype=bool)
    loss[l0 : l0 + outage + soft] = True
    labels.append((l0, l0 + outage + soft, "load_loss", "TX2_kWh"))

    # CO build-up at TX1 (generator exhaust), then forced ventilation.
    c0 = 18 * 3600 + int(inc_rng.integers(0, 45 * 60))
    ramp = int(inc_rng.integers(23 * 60, 27 * 60))
    # High enough to cross the 100 ppm alarm level for a short while.
    peak = inc_rng.uniform(104.0, 118.0)
    u = np.arange(ramp) / ramp
    amb = tx1_co[c0]
    tx1_co[c0 : c0 + ramp] += (peak - amb) * u * u * (3.0 - 2.0 * u)
    tau_vent = inc_rng.uniform(240.0, 420.0)
    decay = np.arange(n - c0 - ramp)
    tx1_co[c0 + ramp :] += (peak - amb) * np.exp(-decay / tau_vent)

    co_noise = [co_rng.normal(0.0, 1.0, n) for _ in range(3)]
    rx_co, tx1_co, tx2_co = (
        np.maximum(_rounded(x + (0.12 + 0.01 * x) * z, 1), 0.1)
        for x, z in zip((rx_co, tx1_co, tx2_co), co_noise, strict=True)
    )
    below = np.flatnonzero(tx1_co[c0:] >= 10.0)
    labels.append((c0, c0 + int(below[-1]) + 1, "co_buildup", "TX1_CO_ppm"))

    # Stuck RX CO sensor: pick a start whose neighbours differ from the
    # frozen reading so the constant span is exactly 20 min.
    stuck = 20 * 60
    s0 = 7 * 3600 + int(inc_rng.integers(0, 40 * 60))
    while rx_co[s0 - 1] == rx_co[s0] or rx_co[s0 + stuck] == rx_co[s0]:
        s0 += 1
    rx_co[s0 : s0 + stuck] = rx_co[s0]
    labels.append((s0, s0 + stuck, "stuck_sensor", "RX_CO_ppm"))

    rx, tx1, tx2 = (_rounded(x, 6) for x in (rx, tx1, tx2))
    deviation = _rounded(100.0 * (rx - tx1 - tx2) / rx, 2)
    co_max = np.maximum(np.maximum(rx_co, tx1_co), tx2_co)
    co_status = np.where(co_max > 100.0, "ALARM", np.where(co_max >= 35.0, "WARN", "OK"))

    data = pd.DataFrame(
        {
            "time": _clock(np.arange(n)),
            "RX_kWh": rx,
            "TX1_kWh": tx1,
            "TX2_kWh": tx2,
            "RX_CO_ppm": rx_co,
            "TX1_CO_ppm": tx1_co,
            "TX2_CO_ppm": tx2_co,
            "CO_status": co_status.astype(object),
            "load_status": np.where(loss, "LOSS", "NORMAL").astype(object),
            "deviation_percent": deviation,
        }
    )
    labels.sort()
    label_frame = pd.DataFrame(
        {
            "start": _clock(np.array([row[0] for row in labels])),
            "end": _clock(np.array([row[1] for row in labels])),
            "fault": [row[2] for row in labels],
            "signal": [row[3] for row in labels],
        }
    )
    return data, label_frame


def _duty_cycle(rng: np.random.Generator, n: int) -> np.ndarray:
    """Production load in [0, 1]: batches of 3-12 min with smooth changeovers."""
    parts = []
    level = rng.uniform(0.3, 0.7)
    total = 0
    while total < n:
        new = float(np.clip(rng.choice([0.15, 0.45, 0.7, 0.95]) + rng.uniform(-0.05, 0.05), 0, 1))
        parts.append(_ramp(level, new, int(rng.integers(15, 46))))
        parts.append(np.full(int(rng.integers(90, 361)), new))
        level = new
        total += parts[-2].size + parts[-1].size
    return np.concatenate(parts)[:n] + _ou(rng, n, 30.0, 0.03)


def _machine_run(
    rng: np.random.Generator, start: np.datetime64, drift_at: int | None = None, n: int = _MACHINE_ROWS
) -> pd.DataFrame:
    load = _duty_cycle(rng, n)
    wear = np.zeros(n)
    if drift_at is not None:
        # Wear accelerates as the race surface degrades.
        wear[drift_at:] = (np.arange(n - drift_at) / (n - 1 - drift_at)) ** 1.5
    current = (38.3 + 5.6 * load) * (1.0 + 0.05 * wear) + rng.normal(0.0, 0.25, n)
    # Bearing heat follows load and friction through the housing's ~15 min
    # thermal lag; friction from wear adds up to ~8 K at steady state.
    creep = rng.uniform(7.5, 9.5)
    target = 53.8 + 6.5 * load + _ou(rng, n, 1800.0, 0.4) + creep * wear
    phi = math.exp(-_MACHINE_STEP / 900.0)
    bearing, _ = lfilter([1.0 - phi], [1.0, -phi], target, zi=[phi * target[:450].mean()])
    bearing += rng.normal(0.0, 0.04, n)
    pressure = 6.06 - 0.14 * load + _ou(rng, n, 10.0, 0.02) + rng.normal(0.0, 0.01, n)
    sigma = 0.045
    vib_mean = (2.2 + 0.45 * load) * (1.0 + 0.03 * _ou(rng, n, 300.0, 1.0)) * (1.0 + wear)
    vibration = vib_mean * np.exp(sigma * rng.standard_normal(n) - sigma**2 / 2.0)
    return pd.DataFrame(
        {
            "timestamp": _stamps(start, n, _MACHINE_STEP),
            "vibration_mm_s": _rounded(vibration, 3),
            "bearing_temp_c": _rounded(bearing, 2),
            "pressure_bar": _rounded(pressure, 3),
            "motor_current_a": _rounded(current, 2),
        }
    )


def machine(seed: int = DEFAULT_SEED) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Generate the machine runs; returns ``(baseline, monitor, labels)``."""
    base_rng, mon_rng, drift_rng = _streams(seed, 2, 3)
    drift_at = int(round(drift_rng.uniform(0.53, 0.57) * _MACHINE_ROWS))
    # A reference should span the process's slow wander: two shifts of known-good running.
    baseline = _machine_run(base_rng, np.datetime64("2024-05-20T06:00:00"), n=2 * _MACHINE_ROWS)
    monitor = _machine_run(mon_rng, np.datetime64("2024-06-03T06:00:00"), drift_at)
    labels = pd.DataFrame(
        {
            "start": [monitor["timestamp"].iat[drift_at]],
            "end": [monitor["timestamp"].iat[-1]],
            "fault": ["bearing_wear_drift"],
        }
    )
    return baseline, monitor, labels


def _write(frame: pd.DataFrame, path: Path, decimals: dict[str, int] | None = None) -> Path:
    """Write ``frame`` as CSV with fixed decimals; gzip without time or name."""
    out = frame.copy()
    for column, places in (decimals or {}).items():
        out[column] = np.char.mod(f"%.{places}f", out[column].to_numpy(dtype=float))
    payload = out.to_csv(index=False, lineterminator="\n").encode("utf-8")
    with open(path, "wb") as fh:
        if path.name.endswith(".gz"):
            # mtime=0 and no name keep the header reproducible; level 6 is
            # four times faster than 9 for about 5 % more bytes.
            with gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=6, mtime=0, filename="") as gz:
                gz.write(payload)
        else:
            fh.write(payload)
    return path


def generate(out_dir: str | Path = DATA_DIR, seed: int = DEFAULT_SEED) -> list[Path]:
    """Write every sample dataset into ``out_dir`` and return the file paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fleet, fleet_labels = battery_fleet(seed)
    site, site_labels = site_power(seed)
    baseline, monitor, machine_labels = machine(seed)
    return [
        _write(fleet, out / FLEET_FILE, _FLEET_DECIMALS),
        _write(fleet_labels, out / FLEET_LABELS_FILE),
        _write(site, out / SITE_FILE, _SITE_DECIMALS),
        _write(site_labels, out / SITE_LABELS_FILE),
        _write(baseline, out / MACHINE_BASELINE_FILE, _MACHINE_DECIMALS),
        _write(monitor, out / MACHINE_MONITOR_FILE, _MACHINE_DECIMALS),
        _write(machine_labels, out / MACHINE_LABELS_FILE),
    ]


def ensure_samples(data_dir: str | Path = DATA_DIR, echo=None) -> Path:
    """``data_dir`` with the sample datasets in it: generated once (seeded, a few seconds) if missing.

    An installed sbg ships no data files; ``sbg serve`` with no file, and
    ``sbg data list``, make them here the first time.
    """
    data_dir = Path(data_dir)
    if not (data_dir / "battery_fleet.csv.gz").exists():
        if echo is not None:
            echo(f"sbg: generating the sample data in {data_dir} (once, a few seconds)")
        generate(data_dir, DEFAULT_SEED)
    return data_dir
