"""The alert log: a SQLite file in WAL mode, upserted on the alert id, with the run's checkpoint.

The log keeps a run's checkpoint, committed in the same transaction as the
alert rows it accounts for, so a process killed at any moment leaves a
readable database from which ``sbg replay --resume`` continues (see
``docs/reliability.md``). It is the one place alert rows are written.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import OutputError
from ..io.outputs import AtomicFile, make_parent, reason, write_text_atomic
from .engine import ALERT_COLUMNS, alerts_frame

__all__ = ["AlertLog", "alerts_json", "json_records"]

_CHECKPOINT_FIELDS = ["source", "identity", "position", "state", "arrays"]

_CANNOT_OPEN = "cannot open the alert log"


def _sidecars(path: Path) -> tuple[Path, Path]:
    """The write-ahead log and shared-memory files SQLite keeps beside a log in WAL mode."""
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def _open_failure(path: Path, exc: sqlite3.Error) -> str:
    """Why SQLite could not open ``path``: the system's reason when SQLite only says "unable to open".

    SQLite needs to write the log and the files beside it; the first the system refuses names the cause
    (a directory, a read-only file system, no permission). Probe files this creates are removed.
    """
    if getattr(exc, "sqlite_errorname", "") not in ("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_IOERR"):
        return str(exc)
    for p in (path, *_sidecars(path)):
        existed = p.exists()
        try:
            os.close(os.open(p, os.O_RDWR | os.O_CREAT, 0o666))
        except OSError as err:
            return reason(err) if p == path else f"{reason(err)} ({p.name})"
        if not existed:
            p.unlink(missing_ok=True)
    return str(exc)


class AlertLog:
    """The alert log: a SQLite file in WAL mode, upserted on the alert id.

    It also holds one checkpoint per source: where a replay had got to and
    the state it carried there. A checkpoint is only ever written in the same
    transaction as the alert rows it accounts for (:meth:`write`), so the log
    and the checkpoint can never disagree, however the process dies.

    >>> import tempfile, os
    >>> log = AlertLog(os.path.join(tempfile.mkdtemp(), "alerts.sqlite"))
    >>> len(log.read()), log.checkpoint("src")
    (0, None)
    >>> log.write([], checkpoint={"source": "src", "identity": "{}", "position": "{}", "state": "{}",
    ...                           "arrays": b""})
    >>> log.checkpoint("src")["position"], log.checkpoint_sources()
    ('{}', ['src'])
    """

    def __init__(self, path):
        self.path = Path(path)
        #: The first failure to write the log (an :class:`~sbg.errors.OutputError`). A pipeline that
        #: counts the error and runs on leaves it here, for the run's end to report.
        self.failure: OutputError | None = None
        self._lock = threading.Lock()
        make_parent(self.path, _CANNOT_OPEN)
        existed = self.path.exists()
        try:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            # A commit in WAL mode survives a killed process whatever this says; NORMAL only lets a power
            # cut take back the last commits, and the checkpoint goes back with the alerts it covers.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                """CREATE TABLE IF NOT EXISTS alerts (
                    id TEXT PRIMARY KEY, rule TEXT NOT NULL, entity TEXT NOT NULL, signal TEXT,
                    detector TEXT, severity TEXT NOT NULL, start TEXT NOT NULL, end TEXT,
                    peak REAL, peak_score REAL, peak_time TEXT, message TEXT, state TEXT NOT NULL,
                    source TEXT, reopened INTEGER DEFAULT 0)"""
            )
            self._conn.execute(
                """CREATE TABLE IF NOT EXISTS checkpoint (
                    source TEXT PRIMARY KEY, identity TEXT NOT NULL, position TEXT NOT NULL,
                    state TEXT NOT NULL, arrays BLOB NOT NULL, updated TEXT NOT NULL)"""
            )
        except sqlite3.Error as exc:
            if getattr(self, "_conn", None) is not None:
                self._conn.close()
            why = _open_failure(self.path, exc)
            if not existed:  # leave nothing behind that was not there
                for p in (self.path, *_sidecars(self.path)):
                    with contextlib.suppress(OSError):
                        p.unlink()
            raise OutputError(self.path, why, _CANNOT_OPEN) from exc

    def write(self, alerts, checkpoint: dict | None = None):
        """Upsert alerts, and the run's checkpoint if given, in one transaction.

        A write SQLite refuses (a full disk, a read-only file) raises an
        :class:`~sbg.errors.OutputError` naming the log, and is kept in :attr:`failure`.

        ``checkpoint`` has the keys ``source``, ``identity``, ``position`` and
        ``state`` (JSON text) and ``arrays`` (bytes).
        """
        recs = [a.as_record() for a in alerts]
        if not recs and checkpoint is None:
            return
        cols = ALERT_COLUMNS
        sql = (f"INSERT INTO alerts ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
               f"ON CONFLICT(id) DO UPDATE SET {', '.join(f'{c}=excluded.{c}' for c in cols[1:])}")
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(sql, [[r[c] for c in cols] for r in recs])
                if checkpoint is not None:
                    self._conn.execute(
                        "INSERT OR REPLACE INTO checkpoint VALUES (?, ?, ?, ?, ?, datetime('now'))",
                        [checkpoint[k] for k in _CHECKPOINT_FIELDS],
                    )
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):  # a failed write may have ended the transaction
                    self._conn.execute("ROLLBACK")
                self.failure = self.failure or OutputError(self.path, str(exc))
                raise OutputError(self.path, str(exc)) from exc
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def checkpoint(self, source: str) -> dict | None:
        """The last committed checkpoint of ``source``, or ``None``."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {', '.join(_CHECKPOINT_FIELDS)} FROM checkpoint WHERE source = ?", (source,)).fetchone()
        return None if row is None else dict(zip(_CHECKPOINT_FIELDS, row, strict=True))

    def checkpoint_sources(self) -> list[str]:
        """Sources that have a checkpoint in this log."""
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT source FROM checkpoint ORDER BY source")]

    def read(self, limit: int | None = None, source: str | None = None) -> pd.DataFrame:
        """Alerts in the log, newest first."""
        sql = f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts"
        args: list = []
        if source is not None:
            sql += " WHERE source = ?"
            args.append(source)
        sql += " ORDER BY start DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return alerts_frame(dict(zip(ALERT_COLUMNS, r, strict=True)) for r in rows)

    def to_csv(self, path):
        """The log as CSV, text cells a spreadsheet would run as formulas neutralised (:mod:`sbg.io.csvsafe`)."""
        from ..io.csvsafe import neutralise_frame

        with AtomicFile(path, "w", encoding="utf-8", newline="") as fh:
            neutralise_frame(self.read()).to_csv(fh, index=False)

    def to_json(self, path):
        """The log as a JSON array, written atomically."""
        write_text_atomic(path, json.dumps(json_records(self.read()), indent=1))

    def close(self):
        with self._lock:
            self._conn.close()


def json_records(df: pd.DataFrame) -> list[dict]:
    out = []
    for rec in df.to_dict(orient="records"):
        for k, v in rec.items():
            if isinstance(v, pd.Timestamp):
                rec[k] = v.isoformat()
            elif v is pd.NaT or (isinstance(v, float) and not np.isfinite(v)):
                rec[k] = None
        out.append(rec)
    return out


def alerts_json(df: pd.DataFrame) -> str:
    """Alerts as a JSON array, timestamps in ISO 8601."""
    return json.dumps(json_records(df), indent=1)
