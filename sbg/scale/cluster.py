"""Scale out on Dask: the same detectors over more data than one process can take.

Every statistic, detector and alert rule carries state per entity and
nothing else, so the work splits by entity: a stable hash of the entity id
picks its partition (:func:`partition_of`), and each partition runs the
unchanged, chunk-invariant :class:`~sbg.stream.pipeline.Pipeline` over its
entities' rows in their original order. The results are therefore the
results of one process, row for row and alert for alert, whatever the number
of workers. ``docs/scaling.md`` says when this pays off.

Two modes:

* **Batch backfill** (:func:`run_detect_dask`, ``sbg detect --workers N`` or
  ``--scheduler tcp://HOST:PORT``). One task per input file validates it and
  splits its rows by partition into a scratch Parquet dataset; then one task
  per partition scores its rows file by file, a chunk at a time, writes its
  part of the flags dataset and returns its alerts, which the client files
  in the SQLite log. Every task holds one block or chunk at a time; the
  client receives counts and alerts, never rows.
* **Live fan-out** (:class:`FanOut`, ``sbg replay``, ``sbg report`` and
  ``sbg serve`` with ``--workers`` or ``--scheduler``). The streamz graph
  splits each chunk by partition, ``scatter()`` sends each part to the
  cluster, a Dask ``accumulate`` per partition carries that partition's
  pipeline state from chunk to chunk on a worker, and ``gather()`` brings
  the scores back; the client puts the rows back in order and runs the alert
  rules, so the monitor, its dashboard and its alert log are unchanged.

Dask is an optional extra (``pip install 'sbg[dask]'``); nothing here imports
it until a cluster is asked for.

>>> partition_of(np.array(["B01", "B02", "B01"], dtype=object), 4).tolist()
[1, 2, 1]
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import csv
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
import uuid
from collections import deque
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__
from ..alerts.engine import Alert, AlertEngine, alerts_frame
from ..alerts.log import AlertLog
from ..config import Settings, describe
from ..errors import OutputError, SbgError
from ..io.inputs import FileOrder, expand_inputs, open_inputs, source_name
from ..io.outputs import AtomicFile, output_errors, write_text_atomic
from ..io.sources import Source, load_reference
from ..stream.batch import (
    FlagsWriter,
    TableWriter,
    check_output,
    dataset_output,
    first_quarantined,
    is_dataset,
    note_first_quarantined,
    quarantine_file,
    quarantine_rows,
)
from ..stream.pipeline import Pipeline, build_pipeline

__all__ = ["dask_client", "partition_of", "run_detect_dask", "FanOut", "FanOutPipeline", "fan_out_from_env"]

_ADDRESS = re.compile(r"^(tcp|tls|inproc|ucx|ws|wss)://[^\s/]+(:\d+)?/?$")
#: Most partitions a backfill uses: each input file task keeps one writer open per partition.
MAX_PARTITIONS = 256


def _require_dask():
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise SbgError("--workers and --scheduler need Dask: pip install 'sbg[dask]'") from None


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None, echo=print, connect_timeout: float = 10):
    """A Dask client on ``scheduler``, or on a ``LocalCluster`` of ``workers`` processes started (and stopped) here.

    ``echo`` receives one line with the dashboard link.
    """
    _require_dask()
    from distributed import Client, LocalCluster

    if scheduler and workers:
        raise SbgError("give --scheduler or --workers, not both")
    cluster = None
    if workers is not None:
        if workers < 1:
            raise SbgError(f"--workers must be at least 1, not {workers}")
        # One thread per process: the numba kernels and the per-partition state want a core each.
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.ERROR)
        client = Client(cluster)
    else:
        if not _ADDRESS.match(str(scheduler or "")):
            raise SbgError(f"{scheduler!r}: not a Dask scheduler address; expected tcp://HOST:PORT")
        try:
            client = Client(scheduler, timeout=f"{connect_timeout}s")
        except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, ValueError... all mean "cannot connect"
            raise SbgError(f"{scheduler}: cannot reach the Dask scheduler ({type(exc).__name__}: {exc})") from None
    try:
        try:
            client.wait_for_workers(1, timeout=connect_timeout)
        except Exception:  # noqa: BLE001 - distributed raises TimeoutError or its own
            raise SbgError(f"{scheduler}: the Dask scheduler has no workers") from None
        where = f"{workers} local worker processes" if cluster is not None else scheduler
        link = client.dashboard_link if _has_dashboard(client) else "not available (install bokeh)"
        echo(f"dask: {where}, {n_workers(client)} workers; dashboard {link}")
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _has_dashboard(client) -> bool:
    try:
        return bool(client.scheduler_info().get("services", {}).get("dashboard"))
    except Exception:  # noqa: BLE001
        return False


def n_workers(client) -> int:
    return len(client.nthreads())


def partition_of(entities: np.ndarray, partitions: int) -> np.ndarray:
    """The partition of each entity: a hash of its id, stable across processes and runs."""
    ids = np.asarray(entities, dtype=object)
    return (pd.util.hash_array(ids) % np.uint64(partitions)).astype(np.int64)


class _RemoteError(Exception):
    """An error caught on a worker, carried back as its type name and text."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self):
        return self.text


def _user_errors(fn):
    """Return an ``SbgError`` from a task as data: its subclasses do not survive pickling."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OutputError as exc:
            return {"error": str(exc), "exit_code": exc.exit_code, "output": [exc.path, exc.reason]}
        except SbgError as exc:
            return {"error": str(exc), "exit_code": exc.exit_code}

    return wrapper


def _raise_user_errors(results):
    for r in results:
        if isinstance(r, dict) and "error" in r:
            if "output" in r:
                raise OutputError(*r["output"])
            err = SbgError(r["error"])
            err.exit_code = r["exit_code"]
            raise err


# --------------------------------------------------------------------------- batch backfill

def _arrow_schema(schema) -> pa.Schema:
    fields = [pa.field("timestamp", pa.timestamp("ns")), pa.field("entity", pa.string())]
    fields += [pa.field(s, pa.float64()) for s in schema.signals]
    fields += [pa.field(c, pa.string()) for c in schema.carried]
    return pa.schema(fields)


def _to_frame(batch: pa.RecordBatch) -> pd.DataFrame:
    """A scratch batch as the frame a :class:`Source` yields (object text columns, ns timestamps)."""
    return pd.DataFrame({name: col.to_numpy(zero_copy_only=False) for name, col in
                         zip(batch.schema.names, batch.columns, strict=True)})


@_user_errors
def _split_file(index: int, schema, scratch: str, partitions: int, with_file: bool) -> dict:
    """Validate one file and write its rows to ``scratch/p{partition}/f{index}.parquet``."""
    src = Source(schema.path, schema=schema)
    arrow = _arrow_schema(schema)
    writers: dict[int, TableWriter] = {}
    rows_in = rows_ok = rows_q = 0
    faults: list[str] = []
    firsts: dict = {}
    qpath = Path(scratch) / f"quarantine-{index:06d}.csv"
    qwriter = None
    lo: dict = {}
    hi: dict = {}
    # Each scratch file is kept only when the whole file was split; a failure drops them all.
    with contextlib.ExitStack() as files:
        for batch in src.batches():
            rows_in += batch.rows_in
            rows_ok += batch.rows_ok
            rows_q += batch.rows_quarantined
            if batch.fault is not None:
                faults.append(f"{type(batch.fault).__name__}: {batch.fault}")
            note_first_quarantined(firsts, batch)
            if batch.quarantined:
                if qwriter is None:
                    qwriter = csv.writer(files.enter_context(AtomicFile(qpath, "w", encoding="utf-8", newline="")))
                qwriter.writerows(quarantine_rows(batch, with_file))
            frame = batch.frame
            if not len(frame):
                continue
            ent = frame["entity"].to_numpy(dtype=object)
            ns = frame["timestamp"].to_numpy(dtype="datetime64[ns]").view("int64")
            bounds = pd.DataFrame({"e": ent, "t": ns}).groupby("e", sort=False)["t"].agg(["min", "max"])
            for e, a, b in zip(bounds.index.tolist(), bounds["min"].tolist(), bounds["max"].tolist(), strict=True):
                lo[e] = min(a, lo.get(e, a))
                hi[e] = max(b, hi.get(e, b))
            table = pa.Table.from_pandas(frame[arrow.names], schema=arrow, preserve_index=False)
            parts = partition_of(ent, partitions)
            order = np.argsort(parts, kind="stable")
            cuts = np.flatnonzero(np.diff(parts[order])) + 1
            for rows in np.split(order, cuts):
                p = int(parts[rows[0]])
                if p not in writers:
                    folder = Path(scratch) / f"p{p:05d}"
                    with output_errors(folder):
                        folder.mkdir(exist_ok=True)
                    writers[p] = files.enter_context(TableWriter(folder / f"f{index:06d}.parquet", parquet=True))
                writers[p].write_table(table.take(rows))
    entities = list(lo)
    return {"index": index, "rows_in": rows_in, "rows_ok": rows_ok, "rows_quarantined": rows_q, "faults": faults,
            "partitions": sorted(writers), "quarantine": str(qpath) if qwriter is not None else None,
            "firsts": firsts,
            "entities": entities, "first": [lo[e] for e in entities], "last": [hi[e] for e in entities]}


def _make_pipeline(schema, settings_data: dict, reference, source: str, **kwargs):
    return build_pipeline(Settings(settings_data), schema.signals, schema.carried, schema.entity, reference,
                          source=source, battery=schema.battery, **kwargs)


@_user_errors
def _score_partition(files: list[str], schema, settings_data: dict, reference, source: str, chunk_size: int,
                     output: str) -> dict:
    """Score one partition's rows, file after file, into one part of the flags dataset."""
    pipeline = _make_pipeline(schema, settings_data, reference, source)
    flagged = 0
    with FlagsWriter(Path(output), schema, parquet=True, example=pipeline.example) as writer:
        for path in files:
            for rb in pq.ParquetFile(path).iter_batches(batch_size=chunk_size):
                enriched = pipeline.process(_to_frame(rb), stats=False)
                flagged += int(enriched["is_anomaly"].sum())
                writer.write(enriched)
    errors = [e["message"] for e in pipeline.events if e["kind"] == "error"]
    return {"rows": writer.rows, "flagged": flagged, "errors": pipeline.metrics.errors, "error_messages": errors,
            "alerts": [a.as_record() for a in pipeline.engine.alerts.values()],
            "entities": len(pipeline.features.index)}


def _wait(client, futures, progress: bool):
    if progress:
        from distributed import progress as progress_bar

        progress_bar(futures)
        print(file=sys.stdout, flush=True)
    results = client.gather(futures)
    _raise_user_errors(results)
    return results


def run_detect_dask(path, output, baseline=None, settings: Settings | None = None, alerts_db=None,
                    chunk_size: int = 65536, quarantine_path=None, summary_path=None,
                    schema_options: dict | None = None, partitions: int | None = None, client=None,
                    scheduler: str | None = None, workers: int | None = None, progress: bool = False,
                    echo=print) -> dict:
    """``sbg detect`` on a Dask cluster: the same flags and alerts as :func:`~sbg.stream.batch.run_detect`.

    The cluster is ``client``'s, or the one :func:`dask_client` gives for
    ``scheduler`` or ``workers``, connected only once the inputs and options
    have been checked. ``output`` must be a Parquet dataset directory; it
    gets one ``part-NNNNN.parquet`` per partition that has rows.
    ``partitions`` defaults to four per worker. Returns what ``run_detect``
    returns.
    """
    t0 = time.perf_counter()
    settings = settings or Settings()
    schema_options = schema_options or {}
    paths = expand_inputs(path)
    sources = open_inputs(paths, **schema_options)
    if sources[0].schema.reorder_ns:
        raise SbgError("--reorder runs in one process: the Dask path splits entities over workers before any "
                       "reorder window could hold them; run without --workers/--scheduler")
    schema = sources[0].schema
    output = Path(output)
    check_output(output, paths)
    if not is_dataset(output):
        raise SbgError(f"{output}: with --workers or --scheduler the flags are a Parquet dataset; "
                       "give -o a directory such as flags.parquet")
    if partitions is not None and not 1 <= partitions <= MAX_PARTITIONS:
        raise SbgError(f"--partitions must be between 1 and {MAX_PARTITIONS}, not {partitions}")
    reference = load_reference(baseline, **schema_options) if baseline else None
    with contextlib.ExitStack() as stack:
        # Outputs first, so one that cannot be written fails before a cluster starts; each gets
        # its new content only when the run has succeeded (see sbg.stream.batch.run_detect).
        log = AlertLog(alerts_db) if alerts_db else None
        if log is not None:
            stack.callback(log.close)
        scratch = stack.enter_context(dataset_output(output))
        if quarantine_path:
            qfile = stack.enter_context(quarantine_file(quarantine_path, paths)[0])
        if client is None:
            client = stack.enter_context(dask_client(scheduler, workers, echo=echo))
        workers = n_workers(client)
        partitions = min(int(partitions or 4 * workers), MAX_PARTITIONS)
        run = uuid.uuid4().hex[:8]
        source = source_name(sources)
        with_file = len(paths) > 1
        echo(f"dask: splitting {len(paths)} file(s) into {partitions} partitions by entity")
        futures = [client.submit(_split_file, i, src.schema, str(scratch.resolve()), partitions, with_file,
                                 key=f"sbg-split-{run}-{i}", pure=False) for i, src in enumerate(sources)]
        split = _wait(client, futures, progress)
        del futures
        order = FileOrder()
        for r in split:
            order.start(paths[r["index"]])
            ents = np.asarray(r["entities"] * 2, dtype=object)
            order.update(ents, np.asarray(r["first"] + r["last"], dtype="int64"))
        ref = client.scatter(reference, broadcast=True) if reference is not None else None
        jobs = []
        for p in range(partitions):
            files = [str(scratch.resolve() / f"p{p:05d}" / f"f{r['index']:06d}.parquet") for r in split
                     if p in r["partitions"]]
            if files:
                jobs.append(client.submit(_score_partition, files, schema, settings.data, ref, source, chunk_size,
                                          str(scratch.resolve() / f"part-{p:05d}.parquet"),
                                          key=f"sbg-score-{run}-{p}", pure=False))
        echo(f"dask: scoring {len(jobs)} partitions on {workers} workers")
        scored = _wait(client, jobs, progress)
        del jobs
        if not scored:  # no valid row anywhere: still a readable, empty dataset
            FlagsWriter(scratch / "part-00000.parquet", schema, parquet=True,
                        example=_make_pipeline(schema, settings.data, reference, source).example).close()
        if quarantine_path:
            for r in split:
                if r["quarantine"]:
                    with open(r["quarantine"], encoding="utf-8", newline="") as part:
                        shutil.copyfileobj(part, qfile)
        records = [rec for r in scored for rec in r["alerts"]]
        alerts = alerts_frame(records)
        if log is not None:
            log.write(Alert.from_record(rec) for rec in records)
    faults = [f for r in split for f in r["faults"]]
    summary = {
        "file": str(paths[0]) if len(paths) == 1 else [str(p) for p in paths], "files": [str(p) for p in paths], "output": str(output),
        "sbg_version": __version__,
        "rows_in": sum(r["rows_in"] for r in split), "rows_ok": sum(r["rows_ok"] for r in split),
        "rows_quarantined": sum(r["rows_quarantined"] for r in split),
        "rows_flagged": sum(r["flagged"] for r in scored), "alerts": len(alerts),
        "first_quarantined": first_quarantined({k: v for r in split for k, v in r["firsts"].items()}, paths),
        "alerts_by_severity": {s: int((alerts["severity"] == s).sum()) for s in ("info", "warning", "critical")},
        "pipeline_errors": len(faults) + sum(r["errors"] for r in scored), "chunk_size": chunk_size,
        "schema": schema.as_dict(), "baseline": str(baseline) if baseline else None,
        "settings": describe(settings), "dask": {"workers": workers, "partitions": partitions},
    }
    if summary_path:
        write_text_atomic(summary_path, json.dumps(summary, indent=1, default=str))
    return {"summary": summary, "alerts": alerts, "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------- live fan-out

class _WorkerPipeline(Pipeline):
    """The per-partition pipeline on a worker: scores only, its faults kept to be sent back."""

    def __init__(self, **params):
        super().__init__(**params)
        self.faults: list[tuple[str, str]] = []

    def fault(self, where, exc):
        self.faults.append((where, f"{type(exc).__name__}: {exc}"))


def _state_bytes(state: _WorkerPipeline) -> int:
    """What a partition's state says it weighs: its arrays, and never less than 16 MB.

    Dask places a task next to its heaviest input. The state must win over
    the chunk it scores, or the scheduler would ship the state to wherever
    the chunk was scattered, on every chunk.
    """
    return max(state.features.nbytes(), 16 << 20)


with contextlib.suppress(ImportError):
    from dask.sizeof import sizeof as _sizeof

    _sizeof.register(_WorkerPipeline)(_state_bytes)


def _score_step(state: _WorkerPipeline, message):
    """One chunk of one partition on a worker: ``(state, (enriched, scores, faults))``."""
    frame, params = message
    if params is not None:  # settings changed on the client (the dashboard's detector widgets)
        stats_params, detector_params = params
        state.stats.param.update(**stats_params)
        for det, values in zip(state.detectors, detector_params, strict=True):
            det.param.update(**values)
    n = len(frame)
    chunk = state._guard("features", lambda: state.features.chunk(frame), lambda: None) if n else None
    if chunk is None:
        result = state._neutral(frame, count=False, stats=True)
        scores = np.zeros((n, len(state.pairs)))
    else:
        result, scores = state.score(frame, chunk, stats=True)
    faults, state.faults = state.faults, []
    return state, (result, scores, faults)


class FanOutPipeline(Pipeline):
    """A :class:`~sbg.stream.pipeline.Pipeline` whose stateful part runs on Dask workers, one state per partition.

    Built by :meth:`FanOut.pipeline`. Its :meth:`connect` graph is
    ``split → scatter() → accumulate(score) → zip → gather() → assemble``;
    the assembled chunk is exactly what :meth:`Pipeline.process` returns,
    and the alert rules and metrics run here, on the client.
    """

    def __init__(self, client=None, partitions: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.client = client
        self.partitions = int(partitions)
        self._inflight: deque = deque()
        self._accumulators: list = []
        self._sent_params = None

    def _worker_state(self) -> _WorkerPipeline:
        stats_params = {k: v for k, v in self.stats.param.values().items() if k not in ("name", "signals")}
        return _WorkerPipeline(stats=self.stats.__class__(**stats_params), detectors=copy.deepcopy(self.detectors),
                               engine=AlertEngine([]), signals=list(self.signals), carried=list(self.carried))

    def _params(self):
        def values(obj):
            return {k: v for k, v in obj.param.values().items() if k not in ("name", "signals")}

        return values(self.stats), [values(d) for d in self.detectors]

    def connect(self, stream):
        from streamz.dataframe import DataFrame as StreamingDataFrame

        parts = stream.map(self._split)
        branches = []
        for p in range(self.partitions):
            node = parts.pluck(p).scatter().accumulate(_score_step, start=self.client.scatter(self._worker_state()),
                                                       returns_state=True)
            self._accumulators.append(node)
            branches.append(node)
        joined = branches[0].zip(*branches[1:]) if len(branches) > 1 else branches[0]
        out = joined.gather().map(self._assemble)
        return StreamingDataFrame(out, example=self.example())

    def reset_state(self):
        super().reset_state()
        for node in self._accumulators:
            node.state = self.client.scatter(self._worker_state())
        self._sent_params = None

    def _split(self, frame: pd.DataFrame):
        params = self._params()
        changed = params if params != self._sent_params else None
        self._sent_params = params
        parts = partition_of(frame["entity"].to_numpy(dtype=object), self.partitions)
        order = np.argsort(parts, kind="stable")
        cuts = np.searchsorted(parts[order], np.arange(self.partitions + 1))
        self._inflight.clear()  # one chunk at a time: anything left is from a chunk that failed
        self._inflight.append((frame, order))
        return tuple((frame.iloc[order[cuts[p]:cuts[p + 1]]].reset_index(drop=True), changed)
                     for p in range(self.partitions))

    def _assemble(self, results) -> pd.DataFrame:
        frame, order = self._inflight.popleft()
        if self.partitions == 1:
            results = (results,)
        for _, _, faults in results:
            for where, text in faults:
                self.fault(where, _RemoteError(text))
        n = len(frame)
        if n == 0:
            return self.example()
        filled = [(r, s) for r, s, _ in results if len(r)]
        merged = pd.concat([r for r, _ in filled], ignore_index=True) if len(filled) > 1 else filled[0][0]
        inverse = np.empty(n, dtype=np.intp)
        inverse[order] = np.arange(n)
        result = merged.iloc[inverse].reset_index(drop=True)
        scores = np.vstack([s for _, s in filled])[inverse]
        chunk = self._guard("features", lambda: self.features.chunk(frame), lambda: None)
        if chunk is not None:
            self.account(result, scores, chunk)
        else:
            self.metrics.analyses += 1
        return result

    def process(self, frame, count=True, stats=True):
        if len(frame):
            raise RuntimeError("a fan-out pipeline scores chunks through its connect() graph")
        return super().process(frame, count=count, stats=stats)


class FanOut:
    """Spread a :class:`~sbg.stream.monitor.Monitor`'s entities over the workers of a Dask ``client``.

    Pass it as ``Monitor(..., fan_out=FanOut(client))``. ``partitions``
    defaults to the number of workers.
    """

    def __init__(self, client, partitions: int | None = None):
        self.client = client
        self.partitions = int(partitions or n_workers(client))
        if self.partitions < 1:
            raise SbgError("a fan-out needs at least one partition")

    def pipeline(self, **kwargs) -> FanOutPipeline:
        return FanOutPipeline(client=self.client, partitions=self.partitions, **kwargs)


_SERVED: dict = {}
_SERVED_LOCK = threading.Lock()


def fan_out_from_env(environ=None) -> FanOut | None:
    """The process-wide fan-out ``sbg serve --workers``/``--scheduler`` asked for, or ``None``.

    Read from ``SBG_WORKERS``, ``SBG_SCHEDULER`` and ``SBG_PARTITIONS``. The
    first call connects (or starts the local cluster); every monitor of the
    served process shares it, and it closes when the process exits.
    """
    environ = os.environ if environ is None else environ
    workers, scheduler = environ.get("SBG_WORKERS"), environ.get("SBG_SCHEDULER")
    if not (workers or scheduler):
        return None
    with _SERVED_LOCK:
        if "fan_out" not in _SERVED:
            stack = contextlib.ExitStack()
            client = stack.enter_context(dask_client(scheduler or None, int(workers) if workers else None,
                                                     echo=lambda line: print(f"sbg: {line}", flush=True)))
            atexit.register(stack.close)
            partitions = environ.get("SBG_PARTITIONS")
            _SERVED["fan_out"] = FanOut(client, int(partitions) if partitions else None)
        return _SERVED["fan_out"]
