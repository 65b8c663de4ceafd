"""Runs adtk's detectors on one wide CSV and writes their flags (executed by the adtk environment's Python).

    python _adtk_runner.py IN.csv OUT.csv TRAIN_ROWS

IN.csv has ``entity, timestamp`` and numeric signals. Per entity and signal,
each detector is fitted on the first TRAIN_ROWS rows (the training part, as
the corpus defines it) and then detects on the whole series, as a streaming
monitor would; the flags of the signals are OR-ed per row. OUT.csv gets one
column per detector (1 flagged, 0 not, -1 where the detector does not apply:
SeasonalAD on a series without a seasonality it can find).

adtk 0.6.2 fails under pandas 3, so this runs in its own virtual environment
with pandas 2.2 (see detection.py). Settings are adtk's defaults; LevelShiftAD
has no default window, so it takes the value of adtk's own examples (5).
"""

import sys
import warnings

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")

from adtk.detector import LevelShiftAD, PersistAD, SeasonalAD  # noqa: E402


def detectors():
    return {"adtk PersistAD": PersistAD(), "adtk LevelShiftAD": LevelShiftAD(window=5),
            "adtk SeasonalAD": SeasonalAD()}


def main(src, dst, train_rows):
    frame = pd.read_csv(src, parse_dates=["timestamp"])
    signals = [c for c in frame.columns if c not in ("entity", "timestamp")]
    out = {name: np.zeros(len(frame), dtype=int) for name in detectors()}
    for _, rows in frame.groupby("entity", sort=False):
        index = rows.index.to_numpy()
        for name, det in detectors().items():
            hit = np.zeros(len(rows), dtype=bool)
            applies = False
            for s in signals:
                series = pd.Series(rows[s].to_numpy(dtype=float), index=pd.DatetimeIndex(rows["timestamp"]))
                series = series[~series.index.duplicated()].asfreq(pd.infer_freq(series.index[:50]) or "s")
                try:
                    det.fit(series.iloc[:train_rows])
                    flags = det.detect(series)
                except Exception:  # noqa: BLE001 - adtk raises when a detector does not apply (no seasonality)
                    continue
                applies = True
                flagged = flags.reindex(pd.DatetimeIndex(rows["timestamp"])).fillna(False).astype(bool).to_numpy()
                hit |= flagged
            out[name][index] = hit.astype(int) if applies else -1
    pd.DataFrame(out).to_csv(dst, index=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
