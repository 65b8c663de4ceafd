"""The served process's shared state: its configuration, its monitors and the sessions watching them.

One monitor per source serves every viewer (DESIGN.md: one monitor for many
viewers). ``sbg serve`` hands its options to the ``panel serve`` child in
the environment; :class:`ServeConfig` reads them once, and every monitor the
process creates, the first one or one picked later in the source selector,
gets the same settings, alert log, loop and speed. The HTTP API and the
dashboard both read the registry; it never imports either of them.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import weakref
from pathlib import Path

import param

from ..errors import SbgError
from ..stream.monitor import Monitor
from .exposition import rss_bytes
from .pacing import PACER

__all__ = ["ServeConfig", "DATA_SUFFIXES", "monitors", "shared_monitor", "default_monitor", "monitor_for", "close_monitor",
           "register_session", "forget_session", "session_count", "session_rows_sent", "sessions_behind", "mark_behind",
           "resolve_data_file", "data_files", "status_payload", "live_objects", "rss_bytes", "SESSION_KINDS"]

DATA_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq", ".tsv", ".mpr", ".nda", ".ndax")

_MONITORS: dict[tuple, Monitor] = {}
_LOCK = threading.Lock()
#: The dashboards subscribed to a monitor, by session id (weakly: the registry keeps none alive).
_SESSIONS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
#: Sessions whose browser has not yet taken the last update.
_BEHIND: set[int] = set()
#: Classes whose live instances ``live_objects`` counts, by name (the UI registers its dashboard).
SESSION_KINDS: dict[str, type] = {}


class ServeConfig(param.Parameterized):
    """What ``sbg serve`` was asked for, as the served process sees it (``SBG_*`` environment variables)."""

    data_dir = param.String(default=None, allow_None=True, doc="Directory the source selector and API may read.")
    files = param.List(default=[], item_type=str, doc="Files of the first source (in data_dir unless absolute).")
    baseline = param.String(default=None, allow_None=True, doc="Known-good reference file.")
    config = param.String(default=None, allow_None=True, doc="sbg.yaml settings for every monitor.")
    overrides = param.List(default=[], item_type=str, doc="--set pairs laid over the settings file.")
    speed = param.String(default="auto", doc="Replay speed ('auto': one that suits the data's interval).")
    loop = param.Boolean(default=False, doc="Start over at the end of the source.")
    alerts_db = param.String(default=None, allow_None=True, doc="SQLite alert log every monitor writes.")
    autostart = param.Boolean(default=False, doc="Start the replay when the server starts.")
    follow = param.Boolean(default=False, doc="Follow the files as they grow (sbg watch) instead of replaying them.")
    notify = param.Dict(default={}, doc="Notifiers of every monitor: alertmanager and webhook URLs.")
    hierarchy = param.String(default=None, allow_None=True, doc="Mapping file of each entity's site and rack.")

    @classmethod
    def from_env(cls, environ=None) -> ServeConfig:
        env = os.environ if environ is None else environ
        return cls(data_dir=env.get("SBG_DATA_DIR") or None,
                   files=[f for f in env.get("SBG_FILES", "").split(os.pathsep) if f],
                   baseline=env.get("SBG_BASELINE") or None, config=env.get("SBG_CONFIG") or None,
                   speed=env.get("SBG_SPEED", "auto"), loop=env.get("SBG_LOOP") == "1",
                   alerts_db=env.get("SBG_ALERTS_DB") or None, autostart=env.get("SBG_AUTOSTART") == "1",
                   follow=env.get("SBG_FOLLOW") == "1", notify=json.loads(env.get("SBG_NOTIFY") or "{}"),
                   overrides=json.loads(env.get("SBG_SET") or "[]"), hierarchy=env.get("SBG_HIERARCHY") or None)

    def data_root(self) -> Path:
        if self.data_dir:
            return Path(self.data_dir)
        from ..io.datasets import DATA_DIR

        return DATA_DIR


def monitors() -> dict[tuple, Monitor]:
    """The shared monitors of this server process, by source key."""
    return _MONITORS


def shared_monitor(files, baseline=None, config=None, speed="auto", loop=False, alerts_db=None,
                   follow=False, notify=None, overrides=(), hierarchy=None) -> Monitor:
    """The process-wide monitor for this source, created on first use.

    ``notify`` (options of :func:`sbg.alerts.notify.notifiers_from`) adds
    notifiers to a new monitor; they are closed with it (:func:`close_monitor`).
    """
    key = (tuple(str(Path(f).resolve()) for f in files), str(baseline or ""), str(config or ""), bool(follow),
           tuple(overrides), str(hierarchy or ""))
    with _LOCK:
        monitor = _MONITORS.get(key)
        if monitor is None:
            from ..config import Settings
            from ..scale.cluster import (
                fan_out_from_env,  # imports Dask only if sbg serve was given it
            )

            settings = (Settings.from_yaml(config) if config else Settings()).with_overrides(overrides)
            options = dict(baseline=baseline, settings=settings, alerts_db=alerts_db, speed=speed, loop=loop,
                           fan_out=fan_out_from_env(), follow=follow, hierarchy=hierarchy)
            monitor = None
            if follow and alerts_db and Path(alerts_db).exists():  # a restarted service carries on where it was
                try:
                    monitor = Monitor(list(files), resume=True, **options)
                except SbgError:  # no checkpoint of these files yet (or the options changed): start afresh
                    monitor = None
            if monitor is None:
                monitor = Monitor(list(files), **options)
            monitor.key = key
            monitor.notifiers = _notifiers(monitor, notify)
            _MONITORS[key] = monitor
        return monitor


def _notifiers(monitor: Monitor, notify) -> list:
    """The notifiers of ``sbg serve --alertmanager/--webhook``, subscribed to the monitor's alerts."""
    options = dict(notify or {})
    from_settings = monitor.settings.data.get("notify") or {}
    for key in ("alertmanager", "webhook"):
        mine = from_settings.get(key)
        mine = [] if mine is None else list(mine) if isinstance(mine, (list, tuple)) else [mine]
        options[key] = mine + list(options.get(key) or [])
    if not (options["alertmanager"] or options["webhook"]):
        return []
    from ..alerts.notify import notifiers_from

    found = notifiers_from(options, on_error=lambda message: monitor.pipeline.emit_event("notify", message, "warning"))
    found.attach(monitor.engine)  # a resumed monitor's firing alerts are adopted, not sent again
    return found


def close_monitor(monitor: Monitor, grace: float = 5.0) -> int:
    """Stop a monitor, commit and close its alert log, and give its notifiers ``grace`` s; returns undelivered."""
    monitor.close()
    notifiers = getattr(monitor, "notifiers", None)
    return notifiers.close(timeout=grace) if notifiers else 0


def monitor_for(files, baseline=None, speed=None, serve: ServeConfig | None = None) -> Monitor:
    """The shared monitor of a source picked in the served app, with everything ``sbg serve`` was given.

    The settings file, the alert log, the loop and the speed are the
    process's, not the page's: switching the source keeps them.
    """
    serve = serve or ServeConfig.from_env()
    return shared_monitor(files, baseline=baseline, config=serve.config, speed=speed or serve.speed,
                          loop=serve.loop, alerts_db=serve.alerts_db, notify=serve.notify, overrides=serve.overrides,
                          hierarchy=serve.hierarchy)


def default_monitor(serve: ServeConfig | None = None) -> Monitor:
    """The monitor the served app starts with."""
    serve = serve or ServeConfig.from_env()
    data_dir = serve.data_root()
    files = list(serve.files)
    if not files:  # the bundled fleet, or else the first data file of the directory
        found = data_files(data_dir)
        if not found:
            raise SbgError(f"{data_dir}: no data files (.csv, .csv.gz, .parquet) to serve")
        files = ["battery_fleet.csv.gz" if "battery_fleet.csv.gz" in found else found[0]]
    paths = [resolve_data_file(f, data_dir) if not Path(f).is_absolute() else Path(f) for f in files]
    if serve.follow:  # the files (or globs) sbg serve --follow was given, as they grow
        monitor = shared_monitor(paths, baseline=serve.baseline, config=serve.config, alerts_db=serve.alerts_db,
                                 follow=True, notify=serve.notify, overrides=serve.overrides,
                                 hierarchy=serve.hierarchy)
    else:
        monitor = monitor_for(paths, baseline=serve.baseline, serve=serve)
    if serve.autostart and monitor.replay.state == "idle":  # a resumed monitor is idle too, with its counts
        monitor.replay.start()
    return monitor


def register_session(session_id: int, view) -> None:
    """Count a live dashboard (held weakly) for ``/api/status`` and the update pacing."""
    _SESSIONS[session_id] = view


def forget_session(session_id: int) -> None:
    """A dashboard that closed or switched away."""
    _SESSIONS.pop(session_id, None)
    _BEHIND.discard(session_id)


def mark_behind(session_id: int, behind: bool) -> None:
    """Whether a served session's browser has yet to take its last update."""
    (_BEHIND.add if behind else _BEHIND.discard)(session_id)


def session_count() -> int:
    """Dashboard sessions alive in this process (each has subscribed to a monitor)."""
    return len(_SESSIONS)


def session_rows_sent() -> list[int]:
    """Rows each live dashboard has sent to its plots so far (``/api/status?sessions=1``).

    Served, a session sends nothing while its browser has not taken the
    previous update, so a count that grows says that session's browser keeps
    receiving.
    """
    return [view.rows_sent for view in list(_SESSIONS.values())]


def sessions_behind() -> int:
    """Served sessions whose updates wait for their browser to take the previous one."""
    return len(_BEHIND)


def resolve_data_file(name, data_dir) -> Path:
    """Resolve a file name chosen in the UI or the API inside ``data_dir``, or refuse it.

    Absolute paths, ``..``, symlinks leading out and sibling directories that
    merely share the prefix are all refused.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.csv").write_text("t,v\\n")
    >>> resolve_data_file("a.csv", d).name
    'a.csv'
    >>> resolve_data_file("../etc/passwd", d)
    Traceback (most recent call last):
    ...
    sbg.errors.SbgError: '../etc/passwd' is not a file inside the data directory
    """
    root = Path(data_dir).resolve()
    candidate = Path(str(name))
    if candidate.is_absolute() or not str(name).strip():
        raise SbgError(f"{str(name)!r} is not a file inside the data directory")
    target = (root / candidate).resolve()
    if target != root and root not in target.parents or not target.is_file():
        raise SbgError(f"{str(name)!r} is not a file inside the data directory")
    return target


def data_files(data_dir) -> list[str]:
    """Data files under ``data_dir`` (labels files left out), as paths relative to it."""
    root = Path(data_dir).resolve()
    out = []
    for p in sorted(root.rglob("*")):
        name = p.name.lower()
        if p.is_file() and name.endswith(DATA_SUFFIXES) and "_labels" not in name:
            try:
                resolve_data_file(p.relative_to(root), root)
            except SbgError:
                continue
            out.append(str(p.relative_to(root)))
    return out


def live_objects(top: int = 15) -> dict:
    """Objects alive in this process after a full collection: per-session kinds, and the most common types.

    For finding leaks: served with ``SBG_DEBUG_OBJECTS=1``,
    ``/api/status?objects=1`` adds it as ``objects``. Once every tab is
    closed no :class:`Dashboard` or Bokeh ``Document`` may be left. Walking
    every object takes up to a second in a busy server, hence debug only.
    """
    import gc
    from collections import Counter

    import holoviews as hv
    import panel as pn
    from bokeh.document import Document
    from bokeh.model import Model

    gc.unfreeze()  # objects the pacer froze away from the collector may be garbage (sbg.serve.pacing)
    gc.collect()
    kinds = {**SESSION_KINDS, "documents": Document, "buffers": hv.streams.Buffer,
             "panel_objects": pn.viewable.Viewable, "bokeh_models": Model}
    counts = dict.fromkeys(kinds, 0)
    types: Counter = Counter()
    for obj in gc.get_objects():
        types[type(obj).__qualname__] += 1
        for name, cls in kinds.items():
            if isinstance(obj, cls):
                counts[name] += 1
    try:  # tasks waiting in this thread's loop, by coroutine: e.g. writes queued for a slow browser
        tasks = Counter(getattr(t.get_coro(), "__qualname__", "?") for t in asyncio.all_tasks())
    except RuntimeError:  # no running loop
        tasks = Counter()
    return {**counts, "top_types": dict(types.most_common(top)), "tasks": dict(tasks.most_common(top))}


def status_payload(monitor: Monitor, full: bool = True) -> dict:
    """What ``/api/status`` answers: metrics, replay state and progress, source and start time.

    With ``full=False`` (a remote caller without a login) files are named,
    not located: no directory in any value, and no process id.
    """
    status = monitor.status()
    status["started_at"] = monitor.started_at.isoformat()
    status["sessions"] = session_count()
    status["subscribers"] = monitor.subscriber_count
    status["process"] = {"pid": os.getpid(), "rss_bytes": rss_bytes()}
    # How far the sessions' update periods are stretched to keep the server's loop on time (sbg.serve.pacing).
    status["display"] = {**PACER.summary(), "sessions_behind": sessions_behind()}
    status = json.loads(json.dumps(status, default=str))
    if full:
        return status
    del status["process"]["pid"]
    # Every form of each file's path (an error message may quote one), longest first: the file's name.
    names = {}
    for path in [*monitor.paths, *([monitor.baseline_path] if monitor.baseline_path else [])]:
        path = Path(path)
        for form in (path.absolute(), path.resolve()):
            names[str(form)] = path.name
            if form.parent != form.parent.parent:  # not the root
                names[str(form.parent) + os.sep] = ""

    def strip(value):
        if isinstance(value, str):
            for form in sorted(names, key=len, reverse=True):
                value = value.replace(form, names[form])
            return value
        if isinstance(value, list):
            return [strip(v) for v in value]
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()}
        return value

    return strip(status)
