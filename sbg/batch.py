"""Batch scoring of a whole file: what ``sbg detect`` runs.

The file is read in blocks and pushed through the same :class:`Pipeline`
the live replay uses, in chunks of ``chunk_size`` rows; because every step
carries its state, the output does not depend on the chunk size. Output rows
are written as they are produced (pyarrow's CSV writer), so memory stays
bounded by one block whatever the file size.
"""

from __future__ import annotations

import csv
import json
import queue
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from . import __version__
from .alerts import AlertEngine, AlertLog
from .config import Settings, describe
from .errors import SbgError
from .metrics import Metrics
from .monitor import load_reference
from .pipeline import Pipeline
from .sources import Source

__all__ = ["run_detect", "format_timestamps"]


def format_timestamps(ns: np.ndarray) -> pa.Array:
    """ISO timestamps (``YYYY-MM-DD HH:MM:SS[.fff...]``), each with just the digits it needs.

    The precision is chosen per value, never per chunk, so output does not
    depend on chunking.

    >>> format_timestamps(np.array([0, 1_500_000_000], dtype="int64")).to_pylist()
    ['1970-01-01 00:00:00', '1970-01-01 00:00:01.500']
    """
    ns = np.asarray(ns, dtype="int64")
    out = pa.array(ns, type=pa.timestamp("ns")).cast(pa.timestamp("s"), safe=False).cast(pa.string())
    frac = ns % 1_000_000_000 != 0
    if not frac.any():
        return out
    values = np.asarray(out.to_pylist(), dtype=object)
    for unit, step in (("ms", 1_000_000), ("us", 1_000), ("ns", 1)):
        sel = frac & (ns % step == 0)
        if sel.any():
            values[sel] = pa.array(ns[sel], type=pa.timestamp("ns")).cast(pa.timestamp(unit)).cast(pa.string()).to_pylist()
            frac &= ~sel
    return pa.array(values, type=pa.string())


def _output_table(schema, enriched) -> pa.Table:
    cols, names = [], []
    for c in schema.columns:
        if c == schema.time:
            cols.append(format_timestamps(enriched["timestamp"].to_numpy(dtype="datetime64[ns]").view("int64")))
        elif c == schema.entity:
            cols.append(pa.array(enriched["entity"].astype(str).to_numpy(dtype=object), type=pa.string()))
        elif c in schema.signals:
            cols.append(pa.array(enriched[c].to_numpy(dtype="float64"), from_pandas=True))
        else:
            cols.append(pa.array(enriched[c].to_numpy(dtype=object), type=pa.string(), from_pandas=True))
        names.append(c)
    cols.append(pa.array(np.round(enriched["anomaly_score"].to_numpy(dtype="float64"), 6)))
    cols.append(pa.array(enriched["is_anomaly"].to_numpy(dtype=bool)))
    cols.append(pa.array(enriched["reason"].to_numpy(dtype=object), type=pa.string()))
    names += ["anomaly_score", "is_anomaly", "reason"]
    return pa.Table.from_arrays(cols, names=names)


def _background(iterator, depth=2):
    """Run ``iterator`` on a thread, ``depth`` items ahead; re-raise its errors here."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def produce():
        try:
            for item in iterator:
                items.put(item)
        except BaseException as exc:  # handed over to the consumer
            items.put(exc)
        items.put(done)

    threading.Thread(target=produce, name="sbg-detect-reader", daemon=True).start()
    while (item := items.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def _write_tables(tables: queue.Queue, output: Path, schema, pipeline):
    me = threading.current_thread()
    me.error = None
    writer = None
    try:
        with open(output, "wb") as sink:
            while (enriched := tables.get()) is not None:
                table = _output_table(schema, enriched)
                if writer is None:
                    writer = pacsv.CSVWriter(sink, table.schema)
                writer.write_table(table)
            if writer is None:
                pacsv.write_csv(_output_table(schema, pipeline.example()), sink)
            else:
                writer.close()
    except BaseException as exc:
        me.error = exc
        while tables.get() is not None:  # drain so the producer never blocks
            pass


def run_detect(path, output, baseline=None, settings: Settings | None = None, alerts_db=None,
               chunk_size: int = 65536, quarantine_path=None, summary_path=None,
               schema_options: dict | None = None) -> dict:
    """Score ``path`` into ``output``; returns the summary, the alerts and the time taken."""
    t0 = time.perf_counter()
    settings = settings or Settings()
    schema_options = schema_options or {}
    src = Source(path, **schema_options)
    reference = load_reference(baseline, **schema_options) if baseline else None
    metrics = Metrics()
    log = AlertLog(alerts_db) if alerts_db else None
    engine = AlertEngine(settings.make_rules(), source=src.name)
    pipeline = Pipeline(stats=settings.make_stats(), detectors=settings.make_detectors(reference), engine=engine,
                        metrics=metrics, log=log, signals=list(src.schema.signals), carried=list(src.schema.carried))
    output = Path(output)
    if output.resolve() == Path(path).resolve():
        raise SbgError(f"{output}: refusing to overwrite the input file")
    output.parent.mkdir(parents=True, exist_ok=True)
    qfile = qwriter = None
    if quarantine_path:
        qfile = open(quarantine_path, "w", newline="", encoding="utf-8")
        qwriter = csv.writer(qfile)
        qwriter.writerow(["line", "raw", "reason"])
    flagged = 0
    # Three stages overlap on their own threads: parsing (pyarrow), scoring
    # (numba kernels and numpy release the GIL) and writing (pyarrow). Bounded
    # queues keep at most a few blocks in memory.
    batches = _background(src.batches(), depth=2)
    tables: queue.Queue = queue.Queue(maxsize=4)
    writer_thread = threading.Thread(target=_write_tables, args=(tables, output, src.schema, pipeline),
                                     name="sbg-detect-writer", daemon=True)
    writer_thread.start()
    try:
        for batch in batches:
            metrics.count_batch(batch.rows_in, batch.rows_ok, batch.rows_quarantined)
            if qwriter is not None:
                qwriter.writerows([q.line, q.raw, q.reason] for q in batch.quarantined)
            frame = batch.frame
            for i in range(0, len(frame), chunk_size):
                enriched = pipeline.process(frame.iloc[i:i + chunk_size], stats=False)
                flagged += int(enriched["is_anomaly"].sum())
                tables.put(enriched)
    finally:
        tables.put(None)
        writer_thread.join()
        if qfile is not None:
            qfile.close()
    if getattr(writer_thread, "error", None) is not None:
        raise writer_thread.error
    alerts = engine.table()
    if log is not None:
        log.close()
    summary = {
        "file": str(path), "output": str(output), "sbg_version": __version__,
        "rows_in": metrics.rows_in, "rows_ok": metrics.rows_ok, "rows_quarantined": metrics.rows_quarantined,
        "rows_flagged": flagged, "alerts": len(alerts),
        "alerts_by_severity": {s: int((alerts["severity"] == s).sum()) for s in ("info", "warning", "critical")},
        "pipeline_errors": metrics.errors, "chunk_size": chunk_size,
        "schema": src.schema.as_dict(), "baseline": str(baseline) if baseline else None,
        "settings": describe(settings),
    }
    if summary_path:
        Path(summary_path).write_text(json.dumps(summary, indent=1, default=str))
    return {"summary": summary, "alerts": alerts, "seconds": time.perf_counter() - t0}
