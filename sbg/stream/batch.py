"""Batch scoring of whole files: what ``sbg detect`` runs.

The files are read in blocks and pushed through the same :class:`Pipeline`
the live replay uses, in chunks of ``chunk_size`` rows; because every step
carries its state, the output does not depend on the chunk size. Several
files (globs, directories) are read one after the other, in the order
:func:`~sbg.io.inputs.expand_inputs` gives. Output rows are written as they are
produced, to a CSV file or to a Parquet dataset (a directory of
``part-*.parquet`` files), so memory stays bounded by one block whatever
the input size. ``sbg.scale.cluster`` writes the same dataset from Dask workers.

Outputs are whole or absent (:mod:`sbg.io.outputs`): rows go to a temporary
file beside the output (a dataset's parts to a scratch folder inside it),
which takes the output's name only once the run has succeeded. A run that
fails leaves every earlier output as it was, and an output that cannot be
written is an :class:`~sbg.errors.OutputError` naming it.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import queue
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .. import __version__
from ..alerts.log import AlertLog
from ..config import Settings, describe
from ..errors import OutputError, SbgError
from ..io.bdf import BdfRenamer
from ..io.csvsafe import neutralise_cell, neutralise_table
from ..io.inputs import FileOrder, expand_inputs, open_inputs, source_name
from ..io.outputs import AtomicFile, make_parent, output_errors, write_text_atomic
from ..io.sources import OUTPUT_COLUMNS, load_reference
from .metrics import Metrics
from .pipeline import build_pipeline
from .reorder import Reorder

__all__ = ["run_detect", "format_timestamps", "TableWriter", "FlagsWriter", "is_dataset", "prepare_dataset", "dataset_output",
           "read_dataset", "quarantine_file", "note_first_quarantined", "first_quarantined"]


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


def _output_table(schema, enriched, parquet: bool = False, with_entity: bool = False) -> pa.Table:
    """Output rows: the input columns, then the flags. Parquet keeps timestamps typed and always has an entity;
    a CSV has one for wide files when ``with_entity`` (several files in one output: the entity is the file)."""
    cols, names = [], []
    for c in schema.columns:
        if c == schema.time:
            ns = enriched["timestamp"].to_numpy(dtype="datetime64[ns]").view("int64")
            cols.append(pa.array(ns, type=pa.timestamp("ns")) if parquet else format_timestamps(ns))
            if (parquet or with_entity) and schema.entity is None:  # wide files: the entity is the file
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
    names += list(OUTPUT_COLUMNS)
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


#: Folder inside a dataset where a run writes its parts until it has succeeded.
SCRATCH = "_sbg_tmp"


def prepare_dataset(output: Path) -> bool:
    """Check that ``output`` may become a flags dataset and make the directory; return whether it was made.

    Only a new directory or an earlier flags dataset may be written; the earlier parts stay until
    :func:`dataset_output` replaces them.
    """
    if output.exists() and not output.is_dir():
        raise SbgError(f"{output}: exists and is not a directory; a Parquet flags dataset is a directory")
    if output.is_dir():
        foreign = [p.name for p in output.iterdir() if not (p.name.startswith("part-") and p.suffix == ".parquet")
                   and p.name != SCRATCH]
        if foreign:
            raise SbgError(f"{output}: not empty (holds {foreign[0]!r}); sbg writes a flags dataset only into a "
                           "new directory or over an earlier flags dataset")
        return False
    make_parent(output)
    with output_errors(output):
        output.mkdir()
    return True


@contextlib.contextmanager
def dataset_output(output: Path):
    """A scratch folder for the parts of the flags dataset ``output``; they replace its parts on success.

    The run writes ``part-*.parquet`` files (and anything else it needs) into
    the folder it is given. Leaving the block normally moves the parts into
    ``output`` and removes the earlier run's other parts; leaving it by an
    exception leaves ``output`` as it was (a directory made for this run is
    removed). The scratch folder goes either way.
    """
    output = Path(output)
    created = prepare_dataset(output)
    scratch = output / SCRATCH
    ok = False
    try:
        shutil.rmtree(scratch, ignore_errors=True)
        with output_errors(output):
            scratch.mkdir()
        try:
            yield scratch
        except OutputError as exc:  # name the dataset the user asked for, not the scratch folder
            if not Path(exc.path).resolve().is_relative_to(scratch.resolve()):
                raise
            raise OutputError(output, exc.reason) from exc
        with output_errors(output):
            parts = sorted(scratch.glob("part-*.parquet"))
            for p in parts:
                os.replace(p, output / p.name)
            keep = {p.name for p in parts}
            for p in output.glob("part-*.parquet"):
                if p.name not in keep:
                    p.unlink()
        ok = True
    finally:
        shutil.rmtree(output if created and not ok else scratch, ignore_errors=True)


def read_dataset(output) -> pa.Table:
    """A flags dataset written by ``sbg detect``, its parts in order (for tests and small outputs)."""
    parts = sorted(Path(output).glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts]) if parts else pa.table({})


class TableWriter:
    """Writes Arrow tables to one CSV or Parquet file, whole or not at all.

    The bytes go to an :class:`~sbg.io.outputs.AtomicFile`: ``path`` gets
    them only at :meth:`commit` (or :meth:`close`), and :meth:`discard`
    drops them. A failed write is an :class:`~sbg.errors.OutputError`
    naming ``path``.
    """

    def __init__(self, path: Path, parquet: bool = False):
        self.path, self.parquet = Path(path), parquet
        self._sink = AtomicFile(self.path)
        self._writer = None

    def write_table(self, table: pa.Table):
        if self._writer is None:
            self._writer = (pq.ParquetWriter(self._sink, table.schema) if self.parquet
                            else pacsv.CSVWriter(self._sink, table.schema))
        self._writer.write_table(table)

    def finish(self):
        """Complete the file (a Parquet footer), not yet under its name."""
        writer, self._writer = self._writer, False  # False: finished, nothing more to write
        if writer:
            try:
                writer.close()
            except BaseException:
                _forget(writer)
                raise

    def commit(self):
        """Put the finished file under its name."""
        self._sink.commit()

    def close(self):
        """:meth:`finish` and :meth:`commit`; on failure nothing is left."""
        try:
            self.finish()
            self.commit()
        except BaseException:
            self.discard()
            raise

    def discard(self):
        """Drop what was written; ``path`` keeps what it held."""
        if self._writer:
            with contextlib.suppress(Exception):  # its footer may fail to write again
                self._writer.close()
            _forget(self._writer)
        self._writer = False
        self._sink.discard()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        """:meth:`close` when the block succeeded, else :meth:`discard`."""
        if exc_type is None:
            self.close()
        else:
            self.discard()


def _forget(writer):
    """Mark a writer whose last write failed as closed: a Parquet writer's ``__del__`` would write its
    footer once more, and print that failure too."""
    if isinstance(writer, pq.ParquetWriter):
        writer.is_open = False


class FlagsWriter(TableWriter):
    """Writes enriched chunks as output rows to a CSV file or one Parquet part file, as they come.

    ``example`` (a pipeline's ``example``) gives the enriched frame whose
    header (CSV) or schema (Parquet) a file gets when no row came.
    """

    def __init__(self, path: Path, schema, parquet: bool = False, example=None, output_format: str = "csv",
                 with_entity: bool = False):
        super().__init__(path, parquet)
        self.schema, self.example, self.with_entity = schema, example, with_entity
        self.rows = 0
        if output_format not in ("csv", "bdf"):
            raise SbgError(f"unknown output format {output_format!r} (csv or bdf)")
        # --format bdf: Battery Data Format column names (sbg.io.bdf)
        self.renamer = BdfRenamer(schema) if output_format == "bdf" else None

    def write(self, enriched):
        table = _output_table(self.schema, enriched, self.parquet, self.with_entity)
        if self.renamer is not None:
            table = self.renamer(table, enriched)
        if not self.parquet:  # a CSV is opened in spreadsheets: no cell may run as a formula
            table = neutralise_table(table)
        self.write_table(table)
        self.rows += len(enriched)

    def finish(self):
        if self._writer is None and self.example is not None:
            self.write(self.example())
        super().finish()


def _write_tables(tables: queue.Queue, writer: FlagsWriter):
    """The writer thread: write each enriched chunk until ``None``; errors in ``current_thread().error``."""
    me = threading.current_thread()
    ended = False
    try:
        while (enriched := tables.get()) is not None:
            writer.write(enriched)
        ended = True
        writer.finish()
    except BaseException as exc:
        me.error = exc
        # Drain so the producer never blocks; but not past the end marker already taken (a failed finish()).
        while not ended and tables.get() is not None:
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


def quarantine_file(path, paths) -> tuple[AtomicFile, csv.writer]:
    """The ``--quarantine`` CSV, as an :class:`~sbg.io.outputs.AtomicFile`, and a writer with its header written."""
    qfile = AtomicFile(path, "w", encoding="utf-8", newline="")
    try:
        qwriter = csv.writer(qfile)
        qwriter.writerow(quarantine_header(paths))
    except BaseException:
        qfile.discard()
        raise
    return qfile, qwriter


def run_detect(path, output, baseline=None, settings: Settings | None = None, alerts_db=None,
               chunk_size: int = 65536, quarantine_path=None, summary_path=None,
               schema_options: dict | None = None, output_format: str = "csv", hierarchy=None) -> dict:
    """Score ``path`` (a file, glob or directory, or a list of them) into ``output``.

    ``output`` is a CSV file, or a Parquet dataset directory (see
    :func:`is_dataset`). Returns the summary, the alerts and the time taken.
    Every output is written whole or not at all: ``output`` and the
    quarantine file get their new content only once the run has succeeded,
    and until then keep what they held. An output that cannot be written (a
    full disk, a read-only file system, an alert log that is not a
    database) is an :class:`~sbg.errors.OutputError`. ``output_format="bdf"``
    names the columns as the Battery Data Format does (:mod:`sbg.io.bdf`).

    With a ``hierarchy`` (a mapping file or a :class:`~sbg.io.hierarchy.Hierarchy`),
    or data with a ``site`` column, the summary has ``groups``: per site and
    rack the entities, the worst alert, the flagged rows and the lowest health
    (:func:`sbg.io.hierarchy.group_summary`).
    """
    from ..io.hierarchy import Hierarchy, hierarchy_columns, load_hierarchy

    t0 = time.perf_counter()
    if hierarchy is not None and not isinstance(hierarchy, Hierarchy):
        hierarchy = load_hierarchy(hierarchy)  # a bad mapping file fails before any row is read
    settings = settings or Settings()
    schema_options = schema_options or {}
    paths = expand_inputs(path)
    sources = open_inputs(paths, **schema_options)
    src = sources[0]
    if hierarchy is None and hierarchy_columns(src.schema.carried):
        columns = hierarchy_columns(src.schema.carried)
        hierarchy = Hierarchy(columns=columns, source="columns " + ", ".join(columns.values()))
    flagged_by_entity: dict = {}
    reference = load_reference(baseline, **schema_options) if baseline else None
    output = Path(output)
    check_output(output, paths)
    parquet = is_dataset(output)
    flagged = 0
    firsts: dict = {}  # each file's first quarantined row, named in the summary: never only a count
    with contextlib.ExitStack() as outputs:
        # Opened before any row is read, so an output that cannot be written fails at once.
        log = AlertLog(alerts_db) if alerts_db else None
        if log is not None:
            outputs.callback(log.close)
        target = outputs.enter_context(dataset_output(output)) / "part-00000.parquet" if parquet else output
        metrics = Metrics()
        pipeline = build_pipeline(settings, src.schema.signals, src.schema.carried, src.schema.entity, reference,
                                  source=source_name(sources), metrics=metrics, log=log, battery=src.schema.battery)
        engine = pipeline.engine
        # Finished by the writer thread; committed when the run has succeeded.
        writer = outputs.enter_context(FlagsWriter(target, src.schema, parquet, example=pipeline.example,
                                                   output_format=output_format, with_entity=len(paths) > 1))
        qwriter = None
        if quarantine_path:
            qfile, qwriter = quarantine_file(quarantine_path, paths)
            outputs.enter_context(qfile)
        # Three stages overlap on their own threads: parsing (pyarrow), scoring
        # (numba kernels and numpy release the GIL) and writing (pyarrow). Bounded
        # queues keep at most a few blocks in memory.
        # --reorder: rows a little out of order wait here until their entity's time has moved past them.
        reorder = Reorder(src.schema.reorder_ns) if src.schema.reorder_ns else None
        batches = _background(_read_in_order(sources, FileOrder() if len(sources) > 1 else None), depth=2)
        tables: queue.Queue = queue.Queue(maxsize=4)
        writer_thread = threading.Thread(target=_write_tables, args=(tables, writer),
                                         name="sbg-detect-writer", daemon=True)
        writer_thread.error = None
        writer_thread.start()
        try:
            for batch in batches:
                if writer_thread.error is not None:  # the output failed: reading on would be for nothing
                    break
                metrics.count_batch(batch.rows_in, batch.rows_ok, batch.rows_quarantined)
                if batch.fault is not None:
                    pipeline.fault("source", batch.fault)
                note_first_quarantined(firsts, batch)
                if qwriter is not None:
                    qwriter.writerows(quarantine_rows(batch, len(paths) > 1))
                frame = batch.frame if reorder is None else reorder.push(batch.frame)
                for i in range(0, len(frame), chunk_size):
                    enriched = pipeline.process(frame.iloc[i:i + chunk_size], stats=False)
                    flagged += int(enriched["is_anomaly"].sum())
                    if hierarchy is not None:
                        _count_groups(enriched, hierarchy, flagged_by_entity)
                    tables.put(enriched)
            rest = reorder.flush() if reorder is not None and writer_thread.error is None else None
            for i in range(0, 0 if rest is None else len(rest), chunk_size):
                enriched = pipeline.process(rest.iloc[i:i + chunk_size], stats=False)
                flagged += int(enriched["is_anomaly"].sum())
                if hierarchy is not None:
                    _count_groups(enriched, hierarchy, flagged_by_entity)
                tables.put(enriched)
        finally:
            tables.put(None)
            writer_thread.join()
        if writer_thread.error is not None:
            raise writer_thread.error
        if log is not None and log.failure is not None:  # the pipeline counted it and ran on
            raise log.failure
    alerts = engine.table()
    summary = {
        "file": str(paths[0]) if len(paths) == 1 else [str(p) for p in paths], "files": [str(p) for p in paths], "output": str(output),
        "sbg_version": __version__,
        "rows_in": metrics.rows_in, "rows_ok": metrics.rows_ok, "rows_quarantined": metrics.rows_quarantined,
        "rows_flagged": flagged, "alerts": len(alerts),
        "first_quarantined": first_quarantined(firsts, paths),
        "alerts_by_severity": {s: int((alerts["severity"] == s).sum()) for s in ("info", "warning", "critical")},
        "pipeline_errors": metrics.errors, "chunk_size": chunk_size,
        "schema": src.schema.as_dict(), "baseline": str(baseline) if baseline else None,
        "settings": describe(settings),
        # Per-battery health at the end of the data, as the live monitor has it there (sbg.battery.health).
        "health": None if pipeline.health is None else pipeline.health.as_dict(),
    }
    if hierarchy is not None:
        summary["groups"] = _detect_groups(alerts, pipeline, hierarchy, flagged_by_entity)
    if summary_path:
        write_text_atomic(summary_path, json.dumps(summary, indent=1, default=str))
    return {"summary": summary, "alerts": alerts, "health": None if pipeline.health is None else pipeline.health.table(),
            "seconds": time.perf_counter() - t0}


def _count_groups(enriched, hierarchy, flagged_by_entity: dict) -> None:
    """Flagged rows per entity, and the groups of a hierarchy read from the data's columns."""
    hierarchy.learn(enriched)
    counts = enriched.groupby("entity", sort=False)["is_anomaly"].sum()
    for entity, n in counts.items():
        flagged_by_entity[str(entity)] = flagged_by_entity.get(str(entity), 0) + int(n)


def _detect_groups(alerts, pipeline, hierarchy, flagged_by_entity: dict) -> dict:
    """``sbg detect``'s roll-up: the worst alert of each entity over the run, its flagged rows, its health."""
    import pandas as pd

    from ..io.hierarchy import STATE_RANK, group_summary

    worst = {e: "normal" for e in flagged_by_entity}
    for entity, severity in zip(alerts["entity"].astype(str), alerts["severity"], strict=True) if len(alerts) else ():
        if STATE_RANK.get(severity, 0) > STATE_RANK.get(worst.get(entity, "normal"), 0):
            worst[entity] = severity
    table = pipeline.health.table() if pipeline.health is not None else None
    health = (pd.Series(table["health"].to_numpy(dtype=float), index=table["entity"].astype(str).to_numpy(dtype=object))
              if table is not None and len(table) else None)
    out = group_summary(pd.Series(worst, dtype=object), health, hierarchy)
    for site in out["sites"]:
        members = [e for e in flagged_by_entity if hierarchy.group_of(e)[0] == site["site"]]
        site["rows_flagged"] = sum(flagged_by_entity[e] for e in members)
        for rack in site.get("racks", []):
            site_rack = (site["site"], rack["rack"])
            rack["rows_flagged"] = sum(flagged_by_entity[e] for e in members if hierarchy.group_of(e) == site_rack)
    return out


def check_output(output: Path, paths):
    """Refuse an output that would overwrite an input."""
    for p in paths:
        if output.resolve() == Path(p).resolve():
            raise SbgError(f"{output}: refusing to overwrite the input file")


def note_first_quarantined(firsts: dict, batch):
    """Keep the first quarantined row of each file of ``batch`` in ``firsts`` (file name to the row)."""
    for q in batch.quarantined:
        source = str(q.source)
        if source not in firsts:  # one record a file, not one a quarantined row
            firsts[source] = {"file": source, "line": q.line, "reason": q.reason}


def first_quarantined(firsts: dict, paths) -> dict | None:
    """The first quarantined row in file order, then line order (``None``: none was)."""
    return next((firsts[str(p)] for p in paths if str(p) in firsts), None)


def quarantine_header(paths) -> list[str]:
    """Columns of the quarantine CSV: the file too when there are several."""
    return ["file", "line", "raw", "reason"] if len(paths) > 1 else ["line", "raw", "reason"]


def quarantine_rows(batch, with_file: bool):
    """Rows of the quarantine CSV: text cells neutralised (:mod:`sbg.io.csvsafe`), NUL bytes of the raw
    line written as the four characters ``\\x00``."""
    for q in batch.quarantined:
        raw = q.raw.replace("\x00", "\\x00")
        row = [q.source, q.line, raw, q.reason] if with_file else [q.line, raw, q.reason]
        yield [neutralise_cell(v) for v in row]
