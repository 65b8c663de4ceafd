"""A health score from 0 to 100 per battery, built from named, explained components.

:class:`HealthScore` updates on enriched chunks (the pipeline's output: the
signals plus ``is_anomaly`` and ``quality``) and keeps, per entity, a fixed
number of floats and two small ring buffers. One compiled loop walks the rows
in arrival order, so the score after any row depends only on the rows before
it: it is the same, to the last bit, for any chunking, in batch and live.

Components (each a 0-100 score; ``NaN`` when its inputs are missing):

``capacity``
    State of health by coulomb counting over partial cycles: the charge
    integrated from ``current_a`` over real time deltas, divided by the
    change of ``soc_pct`` over each swing of at least ``min_soc_swing``
    points, against ``nameplate_ah`` or the first capacity seen.
``resistance``
    DC internal resistance ``|ΔV/ΔI|`` at current steps (``|ΔI| >=
    min_step_a`` between rows at most ``step_max_dt_s`` apart), the median of
    the last steps, against ``nameplate_resistance_ohm`` or the first seen.
``thermal``
    Time above ``temp_limit_c``, the Arrhenius ageing factor of the
    temperatures seen, and the temperature rise per amp of average current.
``anomalies``, ``data_quality``
    Share of rows flagged as anomalous, and of rows with a data-quality
    finding, decayed over ``rate_half_life_s``.

The total is the weighted mean of the components that have data; the weights
of those without are spread over the others, and the output says so.

>>> import pandas as pd
>>> t = pd.date_range("2024-01-01", periods=4, freq="s")
>>> frame = pd.DataFrame({"timestamp": t, "entity": "c1", "voltage_v": [3.70, 3.64, 3.70, 3.64],
...                       "current_a": [0.0, 2.0, 0.0, 2.0], "temperature_c": 25.0,
...                       "is_anomaly": False, "quality": ""})
>>> h = HealthScore(min_steps=3, nameplate_resistance_ohm=0.03)
>>> h.update(frame)
>>> row = h.table().iloc[0]
>>> round(float(row["resistance_ohm"]), 3), round(float(row["resistance"]), 6), row["capacity_status"]
(0.03, 100.0, 'no data: no soc_pct column')
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import param
from numba import njit

from ..io.entities import EntityIndex

__all__ = ["COMPONENTS", "HealthScore"]

#: Boltzmann's constant in eV/K, for the Arrhenius factor.
_K_B_EV = 8.617333262e-5

#: The components: name, title, and where the idea comes from (shown in the drill-down and the report).
COMPONENTS = (
    ("capacity", "Capacity fade",
     "State of health as remaining over rated capacity, capacity measured by coulomb counting (IEEE 1188; "
     "G. Plett, Battery Management Systems, vol. 2, ch. 4, total-capacity estimation from ΔQ/ΔSOC)."),
    ("resistance", "Internal-resistance growth",
     "DC resistance as ΔV/ΔI at current steps, as in the hybrid pulse power characterisation (HPPC) test of "
     "the USABC/FreedomCAR Battery Test Manual; end of life at a doubled resistance."),
    ("thermal", "Thermal stress",
     "Time above the temperature limit; Arrhenius-law ageing acceleration exp(Ea/kB (1/Tref - 1/T)) "
     "(calendar-ageing models such as Wang et al., J. Power Sources 196, 2011); temperature rise per amp "
     "of Joule heating (Bernardi et al., J. Electrochem. Soc. 132, 1985)."),
    ("anomalies", "Anomaly rate",
     "Share of rows the detectors flag as behaving unusually (sbg's anomaly_score >= 0.5)."),
    ("data_quality", "Data-quality rate",
     "Share of rows with a data-quality finding (gap, stuck sensor, limits mismatch...): telemetry that "
     "cannot be trusted is itself a maintenance finding."),
)
_NAMES = tuple(c[0] for c in COMPONENTS)

# Columns of the per-entity state matrix.
(_LAST_I, _LAST_V, _LAST_T, _ANCHOR, _Q_AH, _SOC_ANCHOR, _CAP_N, _RES_N, _OBS_S, _ABOVE_S, _AF_S, _EWM_I,
 _REG_N, _REG_MX, _REG_MY, _REG_CXY, _REG_MXX, _W_SUM, _W_ANOM, _W_QUAL, _ROWS, _ROWS_I, _ROWS_V, _ROWS_T,
 _ROWS_SOC, _THROUGHPUT_AH, _N_STATE) = range(27)
_FILLS = {_LAST_I: np.nan, _LAST_V: np.nan, _LAST_T: np.nan, _SOC_ANCHOR: np.nan, _EWM_I: np.nan}

#: Ring sizes: the last steps and swings the estimates use, and the first ones a first-seen reference uses.
RES_RING, RES_FIRST, CAP_RING, CAP_FIRST = 256, 64, 16, 4
_ARRAYS = {"last_ts": (np.int64, ()), "state": (np.float64, (_N_STATE,)), "res_ring": (np.float64, (RES_RING,)),
           "res_first": (np.float64, (RES_FIRST,)), "cap_ring": (np.float64, (CAP_RING,)),
           "cap_first": (np.float64, (CAP_FIRST,))}


@njit(cache=True, nogil=True)
def _health_kernel(codes, ts, V, amps, T, SOC, A, Q, P, last_ts, S, res_ring, res_first, cap_ring, cap_first):
    max_gap, step_dt, min_step, swing, t_limit, t_ref_k, ea_k, tau_th, tau_rate = (
        P[0], P[1], P[2], P[3], P[4], P[5], P[6], P[7], P[8])
    n_res, n_resf = res_ring.shape[1], res_first.shape[1]
    n_cap, n_capf = cap_ring.shape[1], cap_first.shape[1]
    for r in range(codes.shape[0]):
        e = codes[r]
        s = S[e]
        t = ts[r]
        dt = (t - last_ts[e]) / 1e9 if last_ts[e] != -1 else np.nan
        joined = dt > 0.0 and dt <= max_gap  # the interval to the previous row can be integrated over
        i, v, temp, soc = amps[r], V[r], T[r], SOC[r]
        s[_ROWS] += 1.0
        # Rates: exponentially decayed in time, so a burst long ago weighs little now.
        decay = math.exp(-dt / tau_rate) if dt > 0.0 else 1.0
        s[_W_SUM] = s[_W_SUM] * decay + 1.0
        s[_W_ANOM] = s[_W_ANOM] * decay + A[r]
        s[_W_QUAL] = s[_W_QUAL] * decay + Q[r]
        # Coulomb counting (trapezoid over the real time delta); a gap or a missing current breaks the swing.
        if not math.isnan(i):
            s[_ROWS_I] += 1.0
            if joined and not math.isnan(s[_LAST_I]):
                dq = 0.5 * (i + s[_LAST_I]) * dt / 3600.0
                s[_Q_AH] += dq
                s[_THROUGHPUT_AH] += abs(dq)
            else:
                s[_ANCHOR] = 0.0
            if not math.isnan(soc):
                s[_ROWS_SOC] += 1.0
                if s[_ANCHOR] == 0.0:
                    s[_ANCHOR], s[_Q_AH], s[_SOC_ANCHOR] = 1.0, 0.0, soc
                elif abs(soc - s[_SOC_ANCHOR]) >= swing:
                    cap = s[_Q_AH] / ((soc - s[_SOC_ANCHOR]) / 100.0)
                    k = int(s[_CAP_N])
                    cap_ring[e, k % n_cap] = cap
                    if k < n_capf:
                        cap_first[e, k] = cap
                    s[_CAP_N] += 1.0
                    s[_Q_AH], s[_SOC_ANCHOR] = 0.0, soc
        else:
            s[_ANCHOR] = 0.0
        # Resistance at current steps.
        if not math.isnan(v):
            s[_ROWS_V] += 1.0
            if (dt > 0.0 and dt <= step_dt and not math.isnan(i) and not math.isnan(s[_LAST_I])
                    and not math.isnan(s[_LAST_V])):
                di = i - s[_LAST_I]
                if abs(di) >= min_step:
                    slope = (v - s[_LAST_V]) / di
                    k = int(s[_RES_N])
                    res_ring[e, k % n_res] = slope
                    if k < n_resf:
                        res_first[e, k] = slope
                    s[_RES_N] += 1.0
        # Heating: average |I| with the cell's thermal time constant, regressed against temperature.
        if not math.isnan(i):
            if math.isnan(s[_EWM_I]) or not joined:
                s[_EWM_I] = abs(i)
            else:
                s[_EWM_I] += (1.0 - math.exp(-dt / tau_th)) * (abs(i) - s[_EWM_I])
        if not math.isnan(temp):
            s[_ROWS_T] += 1.0
            if joined and not math.isnan(s[_LAST_T]):
                mid = 0.5 * (temp + s[_LAST_T])
                s[_OBS_S] += dt
                if mid > t_limit:
                    s[_ABOVE_S] += dt
                kelvin = mid + 273.15
                s[_AF_S] += dt * (math.exp(ea_k * (1.0 / t_ref_k - 1.0 / kelvin)) if kelvin > t_ref_k else 1.0)
            if not math.isnan(i) and not math.isnan(s[_EWM_I]):
                s[_REG_N] += 1.0
                dx = s[_EWM_I] - s[_REG_MX]
                s[_REG_MX] += dx / s[_REG_N]
                s[_REG_MY] += (temp - s[_REG_MY]) / s[_REG_N]
                s[_REG_CXY] += dx * (temp - s[_REG_MY])
                s[_REG_MXX] += dx * (s[_EWM_I] - s[_REG_MX])
        last_ts[e] = t
        s[_LAST_I], s[_LAST_V], s[_LAST_T] = i, v, temp


class HealthScore(param.Parameterized):
    # One class of ~350 lines: five components read one state array per battery that a single compiled
    # pass fills in row order (chunk invariance); splitting them would split that pass and its checkpoint.
    """Per-battery health, 0 to 100, from capacity, resistance, thermal, anomaly and data-quality components.

    Current sign: any. The estimates use magnitudes of ratios (``|ΔV/ΔI|``,
    ``|ΔQ/ΔSOC|``, ``|I|``) whose signs only reveal the convention, so a log
    with charging negative scores exactly as one with charging positive. The
    convention the data shows is reported (``current_sign``); when it
    contradicts a declared ``current_sign``, the report says so.
    """

    applies = param.Selector(default="auto", objects=["auto", "always", "never"], doc=(
        "auto: only for battery telemetry (a cycler file or a BDF header, or sbg.detect.detectors.battery_schema: "
        "a battery entity column or unambiguous battery signal names); always; never."))
    voltage = param.String(default="voltage_v", doc="Column of the cell voltage, V.")
    current = param.String(default="current_a", doc="Column of the current, A (either sign convention).")
    temperature = param.String(default="temperature_c", doc="Column of the cell temperature, °C.")
    soc = param.String(default="soc_pct", doc="Column of the BMS state of charge, %.")
    current_sign = param.Selector(default="auto", objects=["auto", "charge_positive", "discharge_positive"], doc=(
        "The current's sign convention, if known. The score does not depend on it; a declared convention "
        "the voltage response contradicts is reported."))

    capacity_weight = param.Number(default=0.35, bounds=(0, None), doc=(
        "Weight of capacity fade. Capacity is the usual definition of state of health: IEEE 1188 calls for "
        "replacement at 80 % of rated capacity, and Plett (Battery Management Systems, vol. 2) estimates total "
        "capacity from the charge passed over a change of state of charge."))
    resistance_weight = param.Number(default=0.25, bounds=(0, None), doc=(
        "Weight of internal-resistance growth, measured as ΔV/ΔI at current steps as in the HPPC test of the "
        "USABC/FreedomCAR Battery Test Manual; power fade follows resistance growth."))
    thermal_weight = param.Number(default=0.2, bounds=(0, None), doc=(
        "Weight of thermal stress: ageing reactions speed up with temperature by the Arrhenius law, and a cell "
        "that heats more per amp has a higher resistance or poorer cooling."))
    anomaly_weight = param.Number(default=0.1, bounds=(0, None), doc=(
        "Weight of the anomaly rate: a cell whose behaviour is often unusual needs a look."))
    quality_weight = param.Number(default=0.1, bounds=(0, None), doc=(
        "Weight of the data-quality rate: gaps and stuck sensors hide a cell's state."))

    nameplate_ah = param.Number(default=None, allow_None=True, bounds=(0, None), inclusive_bounds=(False, True),
                                doc="Rated capacity, Ah; none: each cell's first measured capacity.")
    nameplate_resistance_ohm = param.Number(default=None, allow_None=True, bounds=(0, None),
                                            inclusive_bounds=(False, True),
                                            doc="Resistance of a new cell, ohm; none: each cell's first measured.")
    end_of_life_soh = param.Number(default=0.8, bounds=(0, 1), inclusive_bounds=(True, False), doc=(
        "State of health scored 0 (IEEE 1188 and common EV practice: 80 % of rated capacity)."))
    end_of_life_growth = param.Number(default=1.0, bounds=(0, None), inclusive_bounds=(False, True), doc=(
        "Resistance growth scored 0, as a fraction (1.0: doubled, the usual power-fade end of life)."))
    min_soc_swing = param.Number(default=10.0, bounds=(1, 100), doc=(
        "State-of-charge change, in points, over which one capacity is measured (a partial cycle)."))
    min_cycles = param.Integer(default=2, bounds=(1, CAP_RING), doc=(
        "Swings measured before a capacity is given (and, for a first-seen reference, that make it)."))
    min_step_a = param.Number(default=1.0, bounds=(0, None), inclusive_bounds=(False, True), doc=(
        "Smallest current change between two rows that counts as a step for the resistance."))
    step_max_dt_s = param.Number(default=5.0, bounds=(0, None), inclusive_bounds=(False, True), doc=(
        "Longest time between two rows for their ΔV/ΔI to count: longer, and diffusion and OCV drift enter."))
    min_steps = param.Integer(default=20, bounds=(1, RES_FIRST), doc=(
        "Steps measured before a resistance is given (and, for a first-seen reference, that make it)."))
    max_gap_s = param.Number(default=60.0, bounds=(0, None), inclusive_bounds=(False, True), doc=(
        "Longest time between two rows that current and temperature are integrated over; a longer gap "
        "starts a new capacity swing."))
    temp_limit_c = param.Number(default=45.0, doc="Temperature above which time is counted as over the limit, °C.")
    above_fraction_limit = param.Number(default=0.05, bounds=(0, 1), inclusive_bounds=(False, True), doc=(
        "Share of time above the limit scored 0."))
    reference_temp_c = param.Number(default=25.0, doc="Temperature of no extra thermal ageing, °C.")
    activation_energy_ev = param.Number(default=0.5, bounds=(0, None), doc=(
        "Activation energy of the ageing reactions, eV (Li-ion calendar ageing: about 0.3-0.6 eV)."))
    rise_limit_c_per_a = param.Number(default=2.0, bounds=(0, None), inclusive_bounds=(False, True), doc=(
        "Temperature rise per amp of average current scored 0, °C/A."))
    thermal_tau_s = param.Number(default=300.0, bounds=(0, None), inclusive_bounds=(False, True), doc=(
        "Thermal time constant the current is averaged over before it is regressed against temperature, s."))
    rate_half_life_s = param.Number(default=3600.0, bounds=(0, None), inclusive_bounds=(False, True), doc=(
        "Half-life of the anomaly and data-quality rates, s."))
    anomaly_rate_limit = param.Number(default=0.05, bounds=(0, 1), inclusive_bounds=(False, True),
                                      doc="Anomaly rate scored 0.")
    quality_rate_limit = param.Number(default=0.1, bounds=(0, 1), inclusive_bounds=(False, True),
                                      doc="Data-quality rate scored 0.")

    def __init__(self, **params):
        super().__init__(**params)
        self.reset()

    # ------------------------------------------------------------------ applicability

    def applies_to(self, signals, entity_column: str | None = None, battery: bool = False) -> bool:
        """Whether this score runs on a schema (see :attr:`applies`); ``battery``: the file said it is
        battery data (a cycler file, a BDF header)."""
        if self.applies != "auto":
            return self.applies == "always"
        if battery:
            return True
        from ..detect.detectors import battery_schema

        return battery_schema(signals, entity_column)

    # ------------------------------------------------------------------ state

    def reset(self):
        """Forget every entity (a new run, a loop or a seek); keeps the settings."""
        self.index = EntityIndex()
        self._arrays = {name: np.zeros((0, *shape), dtype=dtype) for name, (dtype, shape) in _ARRAYS.items()}
        self.missing: set[str] = set()  # input columns absent from the chunks seen

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays.values())

    def state_dict(self) -> tuple[dict, dict[str, np.ndarray]]:
        """Carried state as ``(meta, arrays)``: JSON-safe metadata and numeric arrays.

        >>> import json
        >>> h = HealthScore()
        >>> h.update(pd.DataFrame({"timestamp": [pd.Timestamp("2024-01-01")], "entity": ["a"],
        ...                        "temperature_c": [20.0], "is_anomaly": [True], "quality": [""]}))
        >>> meta, arrays = h.state_dict()
        >>> g = HealthScore()
        >>> g.load_state_dict(json.loads(json.dumps(meta)), arrays)
        >>> g.table()["anomaly_rate"].tolist()
        [1.0]
        """
        n = len(self.index)
        return ({"labels": list(self.index.labels), "missing": sorted(self.missing)},
                {name: arr[:n].copy() for name, arr in self._arrays.items()})

    def load_state_dict(self, meta: dict, arrays: dict[str, np.ndarray]):
        """Replace the carried state with what :meth:`state_dict` saved; untrusted input, ``ValueError`` if bad."""
        labels, missing = meta["labels"], meta.get("missing", [])
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels) \
                or len(set(labels)) != len(labels):
            raise ValueError("health: entity labels must be distinct text")
        if not isinstance(missing, list) or not all(isinstance(x, str) for x in missing):
            raise ValueError("health: missing columns must be text")
        loaded = {}
        for name, (dtype, shape) in _ARRAYS.items():
            arr = arrays.get(name)
            if not isinstance(arr, np.ndarray) or arr.shape != (len(labels), *shape) or arr.dtype != dtype:
                raise ValueError(f"health: array {name} does not match {len(labels)} entities")
            loaded[name] = np.array(arr, dtype=dtype, order="C")
        self.index.restore(labels)
        self._arrays = loaded
        self.missing = set(missing)

    # ------------------------------------------------------------------ update

    def _column(self, frame, name) -> np.ndarray:
        if name not in frame.columns:
            self.missing.add(name)
            return np.full(len(frame), np.nan)
        self.missing.discard(name)
        return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)

    def update(self, frame: pd.DataFrame):
        """Advance every entity's state over an enriched chunk (rows in arrival order)."""
        n = len(frame)
        if n == 0:
            return
        codes = self.index.codes(frame["entity"].to_numpy(dtype=object))
        self._grow(len(self.index))
        ts = frame["timestamp"].to_numpy(dtype="datetime64[ns]").view("int64")
        flags = (frame["is_anomaly"].to_numpy(dtype=bool).astype(float) if "is_anomaly" in frame.columns
                 else np.zeros(n))
        quality = (frame["quality"].fillna("").astype(str).to_numpy(dtype=object) != "").astype(float) \
            if "quality" in frame.columns else np.zeros(n)
        V, amps, T, SOC = (self._column(frame, c) for c in (self.voltage, self.current, self.temperature, self.soc))
        a = self._arrays
        _health_kernel(codes, ts, V, amps, T, SOC, flags, quality, self._kernel_params(), a["last_ts"], a["state"],
                       a["res_ring"], a["res_first"], a["cap_ring"], a["cap_first"])

    def _kernel_params(self) -> np.ndarray:
        return np.array([self.max_gap_s, self.step_max_dt_s, self.min_step_a, self.min_soc_swing,
                         self.temp_limit_c, self.reference_temp_c + 273.15, self.activation_energy_ev / _K_B_EV,
                         self.thermal_tau_s, self.rate_half_life_s / math.log(2.0)])

    def _grow(self, n: int):
        have = self._arrays["state"].shape[0]
        if n <= have:
            return
        size = max(n, 2 * have, 4)
        for name, arr in self._arrays.items():
            fill = -1 if name == "last_ts" else np.nan if name != "state" else 0.0
            grown = np.full((size, *arr.shape[1:]), fill, dtype=arr.dtype)
            grown[:have] = arr
            if name == "state":
                for col, value in _FILLS.items():
                    grown[have:, col] = value
            self._arrays[name] = grown

    # ------------------------------------------------------------------ results

    def weights(self) -> dict[str, float]:
        return {"capacity": self.capacity_weight, "resistance": self.resistance_weight,
                "thermal": self.thermal_weight, "anomalies": self.anomaly_weight,
                "data_quality": self.quality_weight}

    def table(self) -> pd.DataFrame:
        """One row per entity: ``health``, each component's score and status, and the measures behind them.

        A component without data has a NaN score and a status saying why;
        ``weights`` says how the total was weighted. Sorted by entity, as seen.
        """
        # A view may read while the stream updates: only entities whose state rows exist yet.
        rows = [self._entity(e) for e in range(min(len(self.index.labels), self._arrays["state"].shape[0]))]
        columns = ["entity", "health", *_NAMES, *(f"{c}_status" for c in _NAMES), "weights", "soh",
                   "capacity_ah", "capacity_ref_ah", "capacity_swings", "resistance_ohm", "resistance_ref_ohm",
                   "resistance_growth", "resistance_steps", "time_above_s", "above_fraction", "arrhenius_factor",
                   "rise_c_per_a", "anomaly_rate", "quality_rate", "throughput_ah", "current_sign", "rows"]
        return pd.DataFrame(rows, columns=columns) if rows else pd.DataFrame(
            {c: pd.Series(dtype=object if c in ("entity", "weights", "current_sign") or c.endswith("_status")
                          else float) for c in columns})

    def _entity(self, e: int) -> dict:
        a = self._arrays
        s = a["state"][e]
        out = {"entity": str(self.index.labels[e]), "rows": int(s[_ROWS]),
               "throughput_ah": float(s[_THROUGHPUT_AH])}
        scores, status = {}, {}
        scores["capacity"], status["capacity"], cap_sign = self._capacity(e, s, out)
        scores["resistance"], status["resistance"], res_sign = self._resistance(e, s, out)
        scores["thermal"], status["thermal"] = self._thermal(s, out)
        scores["anomalies"], scores["data_quality"], status["anomalies"], status["data_quality"] = self._rates(s, out)
        out["current_sign"] = self._sign(res_sign or cap_sign)
        weights = self.weights()
        have = [c for c in _NAMES if not np.isnan(scores[c]) and weights[c] > 0]
        total = sum(weights[c] for c in have)
        out["health"] = float(sum(weights[c] * scores[c] for c in have) / total) if total else np.nan
        lost = [c for c in _NAMES if c not in have and weights[c] > 0]
        out["weights"] = (", ".join(f"{c} {weights[c] / total:.2f}" for c in have) if total else "no data")
        if lost and total:
            out["weights"] += f" (weight of {', '.join(lost)} spread over the others: no data)"
        for c in _NAMES:
            out[c] = scores[c]
            out[f"{c}_status"] = status[c]
        return out

    def _no_data(self, column: str, what: str) -> str:
        return f"no data: no {column} column" if column in self.missing else f"no data: {what}"

    def _short_of(self, columns, n: int, needed: int, what: str) -> str:
        """Why a component has no estimate yet ("" when it has one): a column it needs is absent, or too few events."""
        absent = [c for c in columns if c in self.missing]
        if absent or n < needed:
            return self._no_data(absent[0] if absent else "", f"{n} of {needed} {what}")
        return ""

    def _now_and_reference(self, e, n, key, ring, first, needed, nameplate):
        """``(signed median now, its magnitude, reference, basis)`` of a capacity or resistance estimate.

        Now: the median of the last ``ring`` events; the reference: the nameplate when given, else the
        median magnitude of the first ``needed`` events (a battery's own start, "first seen").
        """
        signed = float(np.median(self._arrays[f"{key}_ring"][e, :min(n, ring)]))
        if nameplate is not None:
            return signed, abs(signed), nameplate, "nameplate"
        start = self._arrays[f"{key}_first"][e, :min(n, first, needed)]
        return signed, abs(signed), abs(float(np.median(start))), "first seen"

    def _capacity(self, e, s, out):
        n = int(s[_CAP_N])
        out["capacity_swings"] = n
        out["capacity_ah"] = out["capacity_ref_ah"] = out["soh"] = np.nan
        short = self._short_of((self.current, self.soc), n, self.min_cycles,
                               f"swings of {self.min_soc_swing:g} % SOC")
        if short:
            return np.nan, short, 0
        signed, capacity, ref, basis = self._now_and_reference(e, n, "cap", CAP_RING, CAP_FIRST, self.min_cycles,
                                                               self.nameplate_ah)
        soh = capacity / ref if ref > 0 else np.nan
        out.update(capacity_ah=capacity, capacity_ref_ah=ref, soh=soh)
        score = 100.0 * float(np.clip((soh - self.end_of_life_soh) / (1.0 - self.end_of_life_soh), 0.0, 1.0))
        return score, f"SOH {soh:.1%} ({capacity:.3g} Ah of {ref:.3g} Ah {basis}; {n} swings)", np.sign(signed)

    def _resistance(self, e, s, out):
        n = int(s[_RES_N])
        out["resistance_steps"] = n
        out["resistance_ohm"] = out["resistance_ref_ohm"] = out["resistance_growth"] = np.nan
        short = self._short_of((self.voltage, self.current), n, self.min_steps,
                               f"current steps of {self.min_step_a:g} A")
        if short:
            return np.nan, short, 0
        signed, r, ref, basis = self._now_and_reference(e, n, "res", RES_RING, RES_FIRST, self.min_steps,
                                                        self.nameplate_resistance_ohm)
        growth = r / ref - 1.0 if ref > 0 else np.nan
        out.update(resistance_ohm=r, resistance_ref_ohm=ref, resistance_growth=growth)
        score = 100.0 * float(np.clip(1.0 - growth / self.end_of_life_growth, 0.0, 1.0))
        # Charging raises the voltage: dV/dI > 0 means charge is counted positive.
        return score, f"{r * 1000:.3g} mΩ, {growth:+.1%} against {ref * 1000:.3g} mΩ {basis} ({n} steps)", \
            np.sign(signed)

    def _thermal(self, s, out):
        obs = s[_OBS_S]
        out["time_above_s"] = float(s[_ABOVE_S])
        out["above_fraction"] = out["arrhenius_factor"] = out["rise_c_per_a"] = np.nan
        if obs <= 0:
            return np.nan, self._no_data(self.temperature, "no temperature over a joined interval")
        above = s[_ABOVE_S] / obs
        factor = s[_AF_S] / obs
        out.update(above_fraction=above, arrhenius_factor=factor)
        kelvin = self.temp_limit_c + 273.15
        t_ref = self.reference_temp_c + 273.15
        limit_factor = math.exp(self.activation_energy_ev / _K_B_EV * (1 / t_ref - 1 / kelvin)) \
            if kelvin > t_ref else 1.0
        parts = [1.0 - above / self.above_fraction_limit]
        if limit_factor > 1.0:
            parts.append(1.0 - (factor - 1.0) / (limit_factor - 1.0))
        text = f"{above:.1%} of time above {self.temp_limit_c:g} °C, ageing x{factor:.2f}"
        n, mxx = s[_REG_N], s[_REG_MXX]
        if n >= 60 and mxx / n >= 0.25:  # the average current must have varied by 0.5 A or more
            rise = s[_REG_CXY] / mxx
            out["rise_c_per_a"] = rise
            parts.append(1.0 - max(rise, 0.0) / self.rise_limit_c_per_a)
            text += f", {rise:.2g} °C/A"
        else:
            text += ", rise per amp: no data" + (" (no current column)" if self.current in self.missing else "")
        return 100.0 * float(np.mean(np.clip(parts, 0.0, 1.0))), text

    def _rates(self, s, out):
        w = s[_W_SUM]
        if w <= 0:
            out["anomaly_rate"] = out["quality_rate"] = np.nan
            return np.nan, np.nan, "no data: no rows", "no data: no rows"
        anomaly, quality = s[_W_ANOM] / w, s[_W_QUAL] / w
        out.update(anomaly_rate=anomaly, quality_rate=quality)
        return (100.0 * float(np.clip(1.0 - anomaly / self.anomaly_rate_limit, 0.0, 1.0)),
                100.0 * float(np.clip(1.0 - quality / self.quality_rate_limit, 0.0, 1.0)),
                f"{anomaly:.2%} of rows flagged", f"{quality:.2%} of rows with a data-quality finding")

    def _sign(self, evidence) -> str:
        seen = {1: "charge_positive", -1: "discharge_positive"}.get(int(evidence), "unknown")
        if self.current_sign != "auto" and seen != "unknown" and seen != self.current_sign:
            return f"{seen} (declared {self.current_sign})"
        return seen

    def components(self, entity: str) -> pd.DataFrame:
        """The drill-down of one entity: each component's score, weight, status and source."""
        table = self.table()
        row = table[table["entity"] == str(entity)]
        if row.empty:
            raise KeyError(entity)
        row = row.iloc[0]
        weights = self.weights()
        return pd.DataFrame([{"component": name, "title": title, "score": row[name], "weight": weights[name],
                              "status": row[f"{name}_status"], "source": source}
                             for name, title, source in COMPONENTS])

    def as_dict(self) -> dict:
        """JSON-ready scores per entity: ``{entity: {"score", "components": {name: {score, weight, status}}}}``."""
        weights = self.weights()
        out = {}
        for rec in self.table().to_dict("records"):
            out[rec["entity"]] = {
                "score": _json_number(rec["health"]), "weights": rec["weights"], "current_sign": rec["current_sign"],
                "components": {c: {"score": _json_number(rec[c]), "weight": weights[c], "status": rec[f"{c}_status"]}
                               for c in _NAMES},
                "measures": {k: _json_number(rec[k]) for k in (
                    "soh", "capacity_ah", "capacity_ref_ah", "resistance_ohm", "resistance_ref_ohm",
                    "resistance_growth", "time_above_s", "above_fraction", "arrhenius_factor", "rise_c_per_a",
                    "anomaly_rate", "quality_rate", "throughput_ah")},
            }
        return out


def _json_number(x):
    """A float for JSON, ``None`` for NaN (JSON has no NaN)."""
    x = float(x)
    return None if math.isnan(x) else round(x, 6)
