"""Scoring alerts against labelled fault windows.

An event view, as engineers judge a monitor: a labelled fault is *caught*
when an alert for the same entity overlaps its window; an alert is *true*
when it overlaps some labelled window of its entity. The delay is the time
from the start of the fault to the start of the first alert that caught it.

>>> import pandas as pd
>>> labels = pd.DataFrame({"entity": ["a"], "start": [pd.Timestamp("2024-01-01 00:10")],
...                        "end": [pd.Timestamp("2024-01-01 00:20")], "fault": ["hot"]})
>>> alerts = pd.DataFrame({"entity": ["a", "a"], "start": pd.to_datetime(["2024-01-01 00:12", "2024-01-01 03:00"]),
...                        "end": pd.to_datetime(["2024-01-01 00:13", "2024-01-01 03:01"])})
>>> r = evaluate(alerts, labels)
>>> r["recall"], r["precision"], r["median_delay_s"]
(1.0, 0.5, 120.0)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import SourceError
from .io.sources import DEFAULT_CLOCK_DATE, _time_kind_of

__all__ = ["load_labels", "evaluate", "compare", "nab_score", "pointwise", "flagged_runs", "score_flags", "PROFILES"]


#: Columns a labels file of one row per timestamp may hold its 0/1 label in, and its time in.
LABEL_COLUMNS = ("label", "is_anomaly", "anomaly")
TIME_COLUMNS = ("timestamp", "time", "datetime", "date")


def load_labels(path, entity: str | None = None, date: str = DEFAULT_CLOCK_DATE) -> pd.DataFrame:
    """Read a labels CSV into ``entity, start, end, fault`` (plus any other columns).

    Two shapes are read:

    * windows: ``start`` and ``end`` columns, one labelled window a row;
    * one row per timestamp with a 0/1 label (a ``label``, ``is_anomaly`` or
      ``anomaly`` column beside a ``timestamp``, ``time``, ``datetime`` or
      ``date`` column), as public labelled series ship them (a data file
      with its own label column is one). Each run of labelled rows of an
      entity becomes a window from its first row to its last.

    The entity comes from an ``*_id``/``entity`` column, or is ``entity``
    (the data file's name for wide files). ``HH:MM:SS`` times get ``date``.
    The name of the entity column read, if any, is kept in ``attrs["entity_column"]``.
    A time that does not parse, a label that is not 0 or 1, or a window that
    ends before it starts is a :class:`~sbg.errors.SourceError` naming the
    file, line and column.

    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "points.csv"
    >>> _ = p.write_text("timestamp,value,label\\n" + "".join(
    ...     f"2024-01-01 00:0{i}:00,1.0,{int(i in (2, 3, 7))}\\n" for i in range(9)))
    >>> load_labels(p)[["start", "end"]].astype(str).values.tolist()
    [['2024-01-01 00:02:00', '2024-01-01 00:03:00'], ['2024-01-01 00:07:00', '2024-01-01 00:07:00']]
    """
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    header = list(df.columns)
    ent_col = next((c for c in header if c == "entity" or c.endswith("_id")), None)
    out = df.rename(columns={ent_col: "entity"}) if ent_col else df.assign(entity=entity or Path(path).stem)
    if "start" not in header and "end" not in header:
        out = _windows_of_points(path, out, header, date)
    else:
        for col in ("start", "end"):
            if col not in header:
                raise SourceError(path, f"labels need start and end columns (missing {col!r})")
            out[col] = _label_times(path, out[col], header.index(col), date)
        backwards = np.flatnonzero((out["end"] < out["start"]).to_numpy())
        if len(backwards):
            i = int(backwards[0])
            raise SourceError(path, f"the window ends ({out['end'].iat[i]}) before it starts ({out['start'].iat[i]})",
                              line=i + 2, column=header.index("end") + 1)
    out.attrs["entity_column"] = ent_col
    return out


def _label_times(path, text: pd.Series, column: int, date: str) -> pd.Series:
    """Times of a labels column, told apart as the readers tell a time column (:func:`_time_kind_of`): ISO
    8601, ``HH:MM:SS`` on ``date``, or epoch seconds or milliseconds; the first that does not parse is named."""
    text = text.astype(str).str.strip()
    kind = _time_kind_of(text.iloc[:1000].tolist(), named=True)
    if kind in ("epoch_s", "epoch_ms"):
        times = pd.to_datetime(pd.to_numeric(text, errors="coerce"), unit="ms" if kind == "epoch_ms" else "s")
    else:
        clock = text.str.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?")
        full = pd.Series(np.where(clock, date + " " + text, text), index=text.index)
        times = pd.to_datetime(full, format="ISO8601", errors="coerce")
    bad = np.flatnonzero(times.isna().to_numpy())
    if len(bad):
        i = int(bad[0])
        raise SourceError(path, f"{text.iat[i]!r} is not a time (ISO 8601, HH:MM:SS or epoch seconds)",
                          line=i + 2, column=column + 1)
    return times


def _windows_of_points(path, rows: pd.DataFrame, header: list, date: str) -> pd.DataFrame:
    """Windows from a labels file of one row per timestamp: each run of labelled rows of an entity
    (:func:`flagged_runs`, as runs of flagged rows are events)."""
    label = next((c for c in LABEL_COLUMNS if c in header), None)
    time = next((c for c in TIME_COLUMNS if c in header), None)
    if label is None or time is None:
        raise SourceError(path, "labels need start and end columns, or a timestamp column and a 0/1 label column "
                                f"({', '.join(LABEL_COLUMNS)})")
    values = rows[label].astype(str).str.strip()
    bad = np.flatnonzero(~values.isin(["0", "1", "0.0", "1.0", "true", "false", "True", "False"]).to_numpy())
    if len(bad):
        i = int(bad[0])
        raise SourceError(path, f"label {values.iat[i]!r} is not 0 or 1", line=i + 2, column=header.index(label) + 1)
    return flagged_runs(pd.DataFrame({"entity": rows["entity"].astype(str).to_numpy(),
                                      "timestamp": _label_times(path, rows[time], header.index(time), date).to_numpy(),
                                      "is_anomaly": values.isin(["1", "1.0", "true", "True"]).to_numpy()}))


def evaluate(alerts: pd.DataFrame, labels: pd.DataFrame, tolerance="0s") -> dict:
    """Event recall, precision and detection delays of ``alerts`` against ``labels``."""
    tol = pd.Timedelta(tolerance)
    labels = labels.reset_index(drop=True)
    alerts = alerts.reset_index(drop=True)
    a_start = pd.to_datetime(alerts["start"]).astype("datetime64[ns]") if len(alerts) else pd.Series([], dtype="datetime64[ns]")
    # A firing alert has no end yet: it reaches to the end of time.
    a_end = pd.to_datetime(alerts["end"]).astype("datetime64[ns]").fillna(pd.Timestamp.max) if len(alerts) else a_start
    caught, delays, true_alert = [], [], np.zeros(len(alerts), dtype=bool)
    for _, lab in labels.iterrows():
        lo, hi = lab["start"] - tol, lab["end"] + tol
        hit = (alerts["entity"].astype(str) == str(lab["entity"])) & (a_start <= hi) & (a_end >= lo)
        true_alert |= hit.to_numpy()
        caught.append(bool(hit.any()))
        delays.append((a_start[hit].min() - lab["start"]).total_seconds() if hit.any() else np.nan)
    per_label = labels.assign(caught=caught, delay_s=np.maximum(delays, 0) if delays else [])
    n_alerts = len(alerts)
    return {
        "recall": float(np.mean(caught)) if len(caught) else float("nan"),
        "precision": float(true_alert.mean()) if n_alerts else float("nan"),
        "median_delay_s": float(np.nanmedian(per_label["delay_s"])) if per_label["caught"].any() else float("nan"),
        "labels": per_label,
        "alerts": alerts.assign(true=true_alert),
    }


def compare(paths, labels: pd.DataFrame, variants: dict, baseline=None, tolerance="0s", **schema_options) -> pd.DataFrame:
    """Replay ``paths`` once per settings variant and score each against ``labels``.

    ``variants`` maps a name to a settings dict (as in the YAML file). Returns
    one row per variant: the alerts' event recall, precision and median delay
    and their count, the rows flagged as anomalies and those with a
    data-quality finding, the point-wise F1 and false-alarm rate, and the
    NAB window score (standard profile).

    >>> from sbg.io.datasets import DATA_DIR
    >>> labels = load_labels(DATA_DIR / "machine_monitor_labels.csv", entity="machine_monitor")
    >>> table = compare([DATA_DIR / "machine_monitor.csv"], labels, {"defaults": {}},
    ...                 baseline=DATA_DIR / "machine_baseline.csv")
    >>> float(table.loc["defaults", "recall"])
    1.0
    """
    from .config import Settings
    from .stream.monitor import Monitor

    rows = {}
    for name, settings in variants.items():
        monitor = Monitor(paths, baseline=baseline, settings=Settings.from_dict(settings), **schema_options)
        monitor.run_to_end()
        result = evaluate(monitor.alerts, labels, tolerance)
        history = monitor.history.frame()
        flags = history[["entity", "timestamp", "is_anomaly"]]
        pw = pointwise(flags, labels)
        rows[name] = {"recall": result["recall"], "precision": result["precision"],
                      "median_delay_s": result["median_delay_s"], "alerts": len(result["alerts"]),
                      "rows_flagged": int(history["is_anomaly"].sum()),
                      "rows_with_quality": int((history["quality"] != "").sum()),
                      "f1": pw["f1"], "false_alarm_rate": pw["false_alarm_rate"],
                      "nab_standard": nab_score(flags, labels)["score"]}
    return pd.DataFrame.from_dict(rows, orient="index")

# ----------------------------------------------------------------------------- point-wise and window scores

#: The scoring profiles of the Numenta Anomaly Benchmark (Lavin & Ahmad, 2015): weights of a true
#: positive, a false positive and a missed window.
PROFILES = {
    "standard": {"tp": 1.0, "fp": -0.11, "fn": -1.0},
    "reward_low_fp": {"tp": 1.0, "fp": -0.22, "fn": -1.0},
    "reward_low_fn": {"tp": 1.0, "fp": -0.11, "fn": -2.0},
}


def scaled_sigmoid(y):
    """NAB's weight of a detection at relative position ``y`` (in window lengths from the window's end).

    >>> [round(float(scaled_sigmoid(y)), 3) for y in (-1.0, -0.5, 0.0, 0.5, 3.0)]
    [0.987, 0.848, 0.0, -0.848, -1.0]
    """
    y = np.asarray(y, dtype=float)
    return 2.0 / (1.0 + np.exp(np.clip(5.0 * y, -700, 700))) - 1.0


def _per_entity(flags: pd.DataFrame, windows: pd.DataFrame):
    """Per entity: its rows' flags in time order and each window as a ``[first, last]`` row span."""
    flags = flags.assign(entity=flags["entity"].astype(str))
    windows = windows.assign(entity=windows["entity"].astype(str))
    by_entity = {e: w for e, w in windows.groupby("entity", sort=False)}
    for entity, rows in flags.groupby("entity", sort=True):
        rows = rows.sort_values("timestamp", kind="stable")
        ts = pd.to_datetime(rows["timestamp"]).to_numpy(dtype="datetime64[ns]")
        flagged = rows["is_anomaly"].to_numpy(dtype=bool)
        spans = []
        for w in (by_entity.get(entity, windows.iloc[:0])).itertuples():
            first = int(np.searchsorted(ts, np.datetime64(pd.Timestamp(w.start), "ns"), side="left"))
            last = int(np.searchsorted(ts, np.datetime64(pd.Timestamp(w.end), "ns"), side="right")) - 1
            if last >= first:
                spans.append((first, last))
        yield entity, flagged, sorted(spans)


def nab_score(flags: pd.DataFrame, windows: pd.DataFrame, profile: str = "standard",
              probation: float = 0.15) -> dict:
    """The window score of the Numenta Anomaly Benchmark, from its published rule (Lavin & Ahmad, 2015).

    ``flags`` holds every row of every series (``entity``, ``timestamp``,
    ``is_anomaly``); ``windows`` the labelled anomaly windows (``entity``,
    ``start``, ``end``, inclusive). ``profile`` names the weights ``A_TP``,
    ``A_FP``, ``A_FN`` in :data:`PROFILES`. Per series, in row positions, with
    a window of ``L`` rows whose last row is ``b``, and the scaled sigmoid
    ``s(y) = 2 / (1 + exp(5y)) - 1``:

    * the first detection ``i`` inside a window scores ``A_TP * s(y)`` with
      ``y = (i - b - 1) / L``, its position relative to the window's end in
      window lengths: -1 at the window's first row (``s = 0.987``), close to
      0 at its last; later detections in the same window count for nothing;
    * a detection outside every window is a false positive costing
      ``A_FP * -s(y)`` (``A_FP`` is negative), ``y = (i - b) / L`` its distance
      past the end of the closest preceding window in that window's lengths:
      one just after a window costs little, one far from it the full ``A_FP``;
      with no window before it, it costs the full ``A_FP``;
    * a window without a detection scores ``A_FN``;
    * detections in the first ``probation`` share of a series' rows
      (``floor(probation * rows)``; NAB's probationary period is 15 %) are
      ignored.

    Windows are mapped to the rows whose timestamps they contain; a window
    with no rows is left out. The raw scores of all series are summed and
    normalised: ``100 * (raw - null) / (perfect - null)``, where the null
    detector flags nothing (``A_FN`` per window) and the perfect one flags
    the first row of every window (``A_TP * s(-1)`` per window). The score is
    NaN without windows. Returned: ``score`` (normalised), ``raw``, ``null``,
    ``perfect``, the counts ``tp``, ``fp`` (each scored false detection) and
    ``fn``, ``profile``, and ``per_entity`` (rows, windows, counts and raw
    score per entity).

    Simplifications against NAB: the windows are used as labelled (NAB
    centres windows of a tenth of the series' length, split among its
    anomalies, on point labels); a window inside the probation period cannot
    be detected, so it counts as missed for every detector and keeps the
    score below 100; every detection is scored,
    without NAB's threshold optimisation over anomaly scores.

    >>> t = pd.date_range("2024-01-01", periods=100, freq="min")
    >>> w = pd.DataFrame({"entity": ["a"], "start": [t[40]], "end": [t[59]]})
    >>> def run(rows):
    ...     return nab_score(pd.DataFrame({"entity": "a", "timestamp": t, "is_anomaly": np.isin(range(100), rows)}), w)
    >>> run([])["score"], run([40])["score"], round(run([50])["score"], 1), round(run([40, 90])["score"], 1)
    (0.0, 100.0, 93.0, 94.5)
    """
    weights = PROFILES[profile]
    raw = null = perfect = 0.0
    tp = fp = fn = 0
    rows_out = []
    for entity, flagged, spans in _per_entity(flags, windows):
        n = len(flagged)
        start = int(np.floor(probation * n))
        score = 0.0
        detected = [False] * len(spans)
        e_tp = e_fp = 0
        firsts = np.array([a for a, _ in spans], dtype=int)
        for i in np.flatnonzero(flagged):
            if i < start:
                continue
            k = int(np.searchsorted(firsts, i, side="right")) - 1  # the last window starting at or before i
            if k >= 0 and i <= spans[k][1]:
                if not detected[k]:
                    a, b = spans[k]
                    length = b - a + 1
                    score += weights["tp"] * float(scaled_sigmoid(-(b - i + 1) / length))
                    detected[k] = True
                    e_tp += 1
                continue
            if k >= 0:
                a, b = spans[k]
                score += weights["fp"] * -float(scaled_sigmoid((i - b) / (b - a + 1)))
            else:
                score += weights["fp"]
            e_fp += 1
        e_fn = detected.count(False)
        score += weights["fn"] * e_fn
        raw += score
        null += weights["fn"] * len(spans)
        perfect += sum(weights["tp"] * float(scaled_sigmoid(-1.0)) for _ in spans)
        tp, fp, fn = tp + e_tp, fp + e_fp, fn + e_fn
        rows_out.append({"entity": entity, "rows": n, "windows": len(spans), "tp": e_tp, "fp": e_fp, "fn": e_fn,
                         "raw": score})
    normalised = 100.0 * (raw - null) / (perfect - null) if perfect != null else float("nan")
    return {"profile": profile, "score": float(normalised), "raw": raw, "null": null, "perfect": perfect,
            "tp": tp, "fp": fp, "fn": fn, "per_entity": pd.DataFrame(rows_out)}


def pointwise(flags: pd.DataFrame, windows: pd.DataFrame, skip_rows: int = 0) -> dict:
    """Row-by-row confusion counts of ``is_anomaly`` against the rows inside ``windows``.

    The first ``skip_rows`` rows of each entity are left out (SKAB scores from row 400).
    F1 is ``TP / (TP + (FN + FP) / 2)``; read it beside the false-alarm rate, ``FP / (FP + TN)``.

    >>> t = pd.date_range("2024-01-01", periods=10, freq="s")
    >>> f = pd.DataFrame({"entity": "a", "timestamp": t, "is_anomaly": [0, 0, 1, 1, 1, 0, 0, 0, 1, 0]})
    >>> w = pd.DataFrame({"entity": ["a"], "start": [t[3]], "end": [t[6]]})
    >>> r = pointwise(f, w)
    >>> r["tp"], r["fp"], r["fn"], r["tn"], round(r["f1"], 3), round(r["false_alarm_rate"], 3)
    (2, 2, 2, 4, 0.5, 0.333)
    """
    tp = fp = fn = tn = 0
    for _, flagged, spans in _per_entity(flags, windows):
        truth = np.zeros(len(flagged), dtype=bool)
        for a, b in spans:
            truth[a:b + 1] = True
        f, t = flagged[skip_rows:], truth[skip_rows:]
        tp += int((f & t).sum())
        fp += int((f & ~t).sum())
        fn += int((~f & t).sum())
        tn += int((~f & ~t).sum())

    def ratio(a, b):
        return a / b if b else float("nan")

    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "f1": ratio(tp, tp + (fn + fp) / 2), "false_alarm_rate": ratio(fp, fp + tn),
            "miss_rate": ratio(fn, fn + tp)}


def flagged_runs(flags: pd.DataFrame) -> pd.DataFrame:
    """Runs of consecutive flagged rows per entity, as alert-like ``entity, start, end`` rows (for :func:`evaluate`).

    >>> t = pd.date_range("2024-01-01", periods=6, freq="s")
    >>> flagged_runs(pd.DataFrame({"entity": "a", "timestamp": t, "is_anomaly": [0, 1, 1, 0, 1, 0]}))["start"].dt.second.tolist()
    [1, 4]
    """
    out = []
    for entity, rows in flags.assign(entity=flags["entity"].astype(str)).groupby("entity", sort=True):
        rows = rows.sort_values("timestamp", kind="stable")
        ts = pd.to_datetime(rows["timestamp"]).to_numpy(dtype="datetime64[ns]")
        f = rows["is_anomaly"].to_numpy(dtype=bool)
        edges = np.diff(np.r_[0, f.astype(np.int8), 0])
        for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1, strict=True):
            out.append({"entity": entity, "start": ts[a], "end": ts[b]})
    return pd.DataFrame(out, columns=["entity", "start", "end"]).astype({"start": "datetime64[ns]",
                                                                         "end": "datetime64[ns]"})


def score_flags(flags: pd.DataFrame, windows: pd.DataFrame, profiles=("standard",), skip_rows: int = 0,
                tolerance="0s", probation: float = 0.15) -> dict:
    """Everything ``sbg evaluate`` prints: events, point-wise and NAB window scores of one run's flags."""
    events = evaluate(flagged_runs(flags), windows, tolerance)
    return {
        "events": {"recall": events["recall"], "precision": events["precision"],
                   "median_delay_s": events["median_delay_s"], "alerts": len(events["alerts"]),
                   "labels": len(events["labels"])},
        "pointwise": pointwise(flags, windows, skip_rows),
        "nab": {p: {k: v for k, v in nab_score(flags, windows, p, probation).items() if k != "per_entity"}
                for p in profiles},
    }
