"""Batch scoring of whole files: what ``sbg detect`` runs.

The files are read in blocks and pushed through the same :class:`Pipeline`
the live replay uses, in chunks of ``chunk_size`` rows; because every step
carries its state, the output does not depend on the chunk size. Several
files (globs, directories) are read one after the other, in the order
:func:`~sbg.inputs.expand_inputs` gives. Output rows are written as they are
produced, to a CSV file or to a Parquet dataset (a directory of
``part-*.parquet`` files), so memory stays bounded by one block whatever
the input size. ``sbg.distributed`` writes the same dataset from Dask workers.
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
import pyarrow.parquet as pq

from . import __version__
from .alerts import AlertEngine, AlertLog
from .config import Settings, describe
from .csvsafe import neutralise_cell, neutralise_table
from .errors import SbgError
from .inputs import FileOrder, expand_inputs, open_inputs, source_name
from .metrics import Metrics
from .monitor import load_reference
from .pipeline import Pipeline

__all__ = ["run_detect", "format_timestamps", "FlagsWriter", "is_dataset", "prepare_dataset", "read_dataset"]


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


def _output_table(schema, enriched, parquet: bool = False) -> pa.Table:
    """Output rows: the input columns, then the flags. Parquet keeps timestamps typed and always has an entity."""
    cols, names = [], []
    for c in schema.columns:
        if c == schema.time:
            ns = enriched["timestamp"].to_numpy(dtype="datetime64[ns]").view("int64")
            cols.append(pa.array(ns, type=pa.timestamp("ns")) if parquet else format_timestamps(ns))
            if parquet and schema.entity is None:  # wide files: the entity is the file, and a dataset mixes files
                cols.append(pa.array(enriched["entity"].astype(str).to_numpy(dtype=object), type=pa.string()))
                names.append(c)
                c = "entity"
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
    cols.append(pa.array(enriched["quality"].to_numpy(dtype=object), type=pa.string()))
    names += ["anomaly_score", "is_anomaly", "reason", "quality"]
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


def is_dataset(output) -> bool:
    """Whether ``output`` names a Parquet dataset (``*.parquet``, or an existing directory) rather than a CSV."""
    output = Path(output)
    return output.is_dir() or output.suffix.lower() in (".parquet", ".pq")


def prepare_dataset(output: Path):
    """Make ``output`` an empty dataset directory; only an earlier flags dataset may be replaced."""
    if output.exists() and not output.is_dir():
        raise SbgError(f"{output}: exists and is not a directory; a Parquet flags dataset is a directory")
    if output.is_dir():
        foreign = [p.name for p in output.iterdir() if not (p.name.startswith("part-") and p.suffix == ".parquet")
                   and p.name != "_sbg_tmp"]
        if foreign:
            raise SbgError(f"{output}: not empty (holds {foreign[0]!r}); sbg writes a flags dataset only into a "
                           "new directory or over an earlier flags dataset")
        for p in output.glob("part-*.parquet"):
            p.unlink()
    output.mkdir(parents=True, exist_ok=True)


def read_dataset(output) -> pa.Table:
    """A flags dataset written by ``sbg detect``, its parts in order (for tests and small outputs)."""
    parts = sorted(Path(output).glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts]) if parts else pa.table({})


class FlagsWriter:
    """Writes enriched chunks as output rows to a CSV file or one Parquet part file, as they come."""

    def __init__(self, path: Path, schema, parquet: bool = False):
        self.path, self.schema, self.parquet = Path(path), schema, parquet
        self._sink = open(self.path, "wb")
        self._writer = None
        self.rows = 0

    def write(self, enriched):
        table = _output_table(self.schema, enriched, self.parquet)
        if not self.parquet:  # a CSV is opened in spreadsheets: no cell may run as a formula
            table = neutralise_table(table)
        if self._writer is None:
            self._writer = (pq.ParquetWriter(self._sink, table.schema) if self.parquet
                            else pacsv.CSVWriter(self._sink, table.schema))
        self._writer.write_table(table)
        self.rows += len(enriched)

    def close(self, example):
        """Finish the file; with no rows written, a header (CSV) or schema (Parquet) from ``example``."""
        try:
            if self._writer is None:
                self.write(example)
            self._writer.close()
        finally:
            self._sink.close()


def _write_tables(tables: queue.Queue, output: Path, schema, pipeline, parquet: bool = False):
    me = threading.current_thread()
    me.error = None
    try:
        writer = FlagsWriter(output / "part-00000.parquet" if parquet else output, schema, parquet)
        while (enriched := tables.get()) is not None:
            writer.write(enriched)
        writer.close(pipeline.example())
    except BaseException as exc:
        me.error = exc
        while tables.get() is not None:  # drain so the producer never blocks
            pass


def _read_in_order(sources, order: FileOrder | None):
    """Every source's batches, one file after the other, checking that no entity goes back in time."""
    for src in sources:
        if order is not None:
            order.start(src.path)
        for batch in src.batches():
            if order is not None:
                frame = batch.frame
                order.update(frame["entity"].to_numpy(dtype=object),
                             frame["timestamp"].to_numpy(dtype="datetime64[ns]").view("int64"))
            yield batch


def run_detect(path, output, baseline=None, settings: Settings | None = None, alerts_db=None,
               chunk_size: int = 65536, quarantine_path=None, summary_path=None,
               schema_options: dict | None = None) -> dict:
    """Score ``path`` (a file, glob or directory, or a list of them) into ``output``.

    ``output`` is a CSV file, or a Parquet dataset directory (see
    :func:`is_dataset`). Returns the summary, the alerts and the time taken.
    """
    t0 = time.perf_counter()
    settings = settings or Settings()
    schema_options = schema_options or {}
    paths = expand_inputs(path)
    sources = open_inputs(paths, **schema_options)
    src = sources[0]
    reference = load_reference(baseline, **schema_options) if baseline else None
    metrics = Metrics()
    log = AlertLog(alerts_db) if alerts_db else None
    engine = AlertEngine(settings.make_rules(), source=source_name(sources))
    pipeline = Pipeline(stats=settings.make_stats(), detectors=settings.make_detectors(reference, src.schema.entity), engine=engine,
                        metrics=metrics, log=log, signals=list(src.schema.signals), carried=list(src.schema.carried))
    output = Path(output)
    check_output(output, paths)
    parquet = is_dataset(output)
    if parquet:
        prepare_dataset(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    qfile = qwriter = None
    if quarantine_path:
        qfile = open(quarantine_path, "w", newline="", encoding="utf-8")
        qwriter = csv.writer(qfile)
        qwriter.writerow(quarantine_header(paths))
    flagged = 0
    # Three stages overlap on their own threads: parsing (pyarrow), scoring
    # (numba kernels and numpy release the GIL) and writing (pyarrow). Bounded
    # queues keep at most a few blocks in memory.
    batches = _background(_read_in_order(sources, FileOrder() if len(sources) > 1 else None), depth=2)
    tables: queue.Queue = queue.Queue(maxsize=4)
    writer_thread = threading.Thread(target=_write_tables, args=(tables, output, src.schema, pipeline, parquet),
                                     name="sbg-detect-writer", daemon=True)
    writer_thread.start()
    try:
        for batch in batches:
            metrics.count_batch(batch.rows_in, batch.rows_ok, batch.rows_quarantined)
            if batch.fault is not None:
                pipeline.fault("source", batch.fault)
            if qwriter is not None:
                qwriter.writerows(quarantine_rows(batch, len(paths) > 1))
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
        "file": str(paths[0]) if len(paths) == 1 else [str(p) for p in paths], "files": [str(p) for p in paths], "output": str(output),
        "sbg_version": __version__,
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


def check_output(output: Path, paths):
    """Refuse an output that would overwrite an input."""
    for p in paths:
        if output.resolve() == Path(p).resolve():
            raise SbgError(f"{output}: refusing to overwrite the input file")


def quarantine_header(paths) -> list[str]:
    """Columns of the quarantine CSV: the file too when there are several."""
    return ["file", "line", "raw", "reason"] if len(paths) > 1 else ["line", "raw", "reason"]


def quarantine_rows(batch, with_file: bool):
    """Rows of the quarantine CSV: text cells neutralised (:mod:`sbg.csvsafe`), NUL bytes of the raw
    line written as the four characters ``\\x00``."""
    for q in batch.quarantined:
        raw = q.raw.replace("\x00", "\\x00")
        row = [q.source, q.line, raw, q.reason] if with_file else [q.line, raw, q.reason]
        yield [neutralise_cell(v) for v in row]
