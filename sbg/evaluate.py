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

from .sources import DEFAULT_CLOCK_DATE

__all__ = ["load_labels", "evaluate"]


def load_labels(path, entity: str | None = None, date: str = DEFAULT_CLOCK_DATE) -> pd.DataFrame:
    """Read a labels CSV into ``entity, start, end, fault`` (plus any other columns).

    The entity comes from an ``*_id``/``entity`` column, or is ``entity``
    (the data file's name for wide files). ``HH:MM:SS`` times get ``date``.
    """
    df = pd.read_csv(path, dtype=str)
    ent_col = next((c for c in df.columns if c == "entity" or c.endswith("_id")), None)
    out = df.rename(columns={ent_col: "entity"}) if ent_col else df.assign(entity=entity or Path(path).stem)
    for col in ("start", "end"):
        text = out[col].astype(str).str.strip()
        clock = text.str.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?")
        out[col] = pd.to_datetime(np.where(clock, date + " " + text, text), format="ISO8601")
    return out


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
    one row per variant: recall, precision, median delay and alert count.

    >>> from sbg.datasets import DATA_DIR
    >>> labels = load_labels(DATA_DIR / "machine_monitor_labels.csv", entity="machine_monitor")
    >>> table = compare([DATA_DIR / "machine_monitor.csv"], labels, {"defaults": {}},
    ...                 baseline=DATA_DIR / "machine_baseline.csv")
    >>> float(table.loc["defaults", "recall"])
    1.0
    """
    from .config import Settings
    from .monitor import Monitor

    rows = {}
    for name, settings in variants.items():
        monitor = Monitor(paths, baseline=baseline, settings=Settings.from_dict(settings), **schema_options)
        monitor.run_to_end()
        result = evaluate(monitor.alerts, labels, tolerance)
        rows[name] = {"recall": result["recall"], "precision": result["precision"],
                      "median_delay_s": result["median_delay_s"], "alerts": len(result["alerts"]),
                      "rows_flagged": int(monitor.history.frame()["is_anomaly"].sum())}
    return pd.DataFrame.from_dict(rows, orient="index")
