"""The HTML report of a run: one self-contained file for someone who was not watching.

:func:`build_report` turns a :class:`~sbg.stream.monitor.Monitor` into an HTML
string; :func:`write_report` (and ``Monitor.report``) writes it to a file and
``sbg report`` runs a file through the pipeline first. The report holds a
header (sources, span, counts), a summary (alerts by severity, entities by
worst state, top anomalies), a Bokeh plot per signal and entity (curve,
rolling band, every flagged point), the alert timeline and table, the
baseline comparison, data quality (quarantine by reason, gaps, missing
values) and every setting in force, generated from the ``param``
declarations.

Contracts:

- **Safe mid-run.** The report reads a :class:`Snapshot` taken first: copies
  of the alerts and the quarantine and the history frame, never the live
  objects, and it mutates nothing. A dashboard can build one for the run so
  far while the replay goes on.
- **Self-contained.** BokehJS (the core bundle only) and the CSS are inline;
  the page asks for nothing over the network.
- **Untrusted text stays text.** The page is a Jinja template with
  autoescaping, so file names, headers, entity ids and messages are escaped;
  in plots they are drawn on canvas or shown by Bokeh's escaped ``@field``
  tooltips.
- **Small and fast.** Long series go through :func:`~sbg.report.downsample.minmax_indices`
  (flagged points and gap edges always kept); all plots share one Bokeh
  document and one copy of BokehJS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import param

from .. import __version__
from ..alerts.engine import SEVERITIES, alerts_frame
from ..config import settings_table
from ..detect.detectors import STALE_AFTER, STALE_INTERVALS, stale_limit
from ..errors import SbgError
from ..io.outputs import write_text_atomic
from .downsample import minmax_indices, with_breaks
from .style import fmt_bytes

__all__ = ["ReportOptions", "Snapshot", "build_report", "write_report", "check_output", "render",
           "SECTIONS"]

#: Section anchors and titles, in page order.
SECTIONS = {"summary": "Summary", "signals": "Signals", "alerts": "Alerts", "health": "Battery health",
            "baseline": "Baseline", "quality": "Data quality", "settings": "Settings used"}
_SEV_RANK = {"normal": 0, "stale": 1, **{s: i + 2 for i, s in enumerate(SEVERITIES)}}


def _usual_interval(intervals) -> float:
    """An entity's usual sampling interval in seconds: the median of its rows' intervals (NaN when none)."""
    return float(np.nanmedian(intervals)) if np.isfinite(intervals).any() else np.nan


#: Parameters that are running state or input, not settings: left out of "settings used".
_STATE_PARAMS = {"Replay": ("state", "rows_emitted", "rows_total", "sim_time", "loops"), "Stats": ("signals",)}
_TEMPLATES = Path(__file__).resolve().parent / "templates"
#: Content width of the page in CSS pixels; plots are downsampled to about two points per pixel.
PAGE_WIDTH = 1120


class ReportOptions(param.Parameterized):
    """How much of a run the report shows."""

    max_entities = param.Integer(default=12, bounds=(1, None),
                                 doc="Entities plotted per signal, worst first; the rest are listed by name.")
    points_per_plot = param.Integer(default=2400, bounds=(100, None),
                                    doc="Points per full-width plot after min/max downsampling (flagged points are extra).")
    top_anomalies = param.Integer(default=10, bounds=(0, None), doc="Anomaly episodes listed in the summary.")
    episode_gap_rows = param.Integer(default=10, bounds=(1, None),
                                     doc="Flagged rows closer than this (in rows of the entity) form one episode.")
    examples_per_reason = param.Integer(default=3, bounds=(0, None), doc="Quarantined rows shown per reason.")
    max_gaps = param.Integer(default=20, bounds=(0, None), doc="Longest gaps listed.")
    stale_after = param.String(default=STALE_AFTER,
                               doc="An entity whose last row is this much older than the newest row (or ten of "
                                   "its usual intervals, when longer) is stale.")

    @classmethod
    def from_options(cls, **options) -> ReportOptions:
        """Options by name, with a clear :class:`~sbg.errors.SbgError` for an unknown name or a bad value.

        >>> ReportOptions.from_options(max_entities=4).max_entities
        4
        >>> ReportOptions.from_options(max_entity=4)
        Traceback (most recent call last):
        ...
        sbg.errors.SbgError: unknown report option(s) ['max_entity']; known: episode_gap_rows, ...
        """
        unknown = sorted(set(options) - set(cls.param) - {"name"})
        if unknown:
            known = ", ".join(sorted(p for p in cls.param if p != "name"))
            raise SbgError(f"unknown report option(s) {unknown}; known: {known}")
        try:
            return cls(**options)
        except ValueError as exc:
            raise SbgError(f"report option: {exc}") from None


@dataclass
class Snapshot:
    """Everything a report shows, copied from a monitor at one moment.

    Taking it reads the monitor and changes nothing; the copies are the
    report's own, so a replay may go on meanwhile.
    """

    title: str
    made_at: pd.Timestamp
    files: list[dict]
    baseline: str | None
    schemas: list
    signals: list[str]
    history: pd.DataFrame
    rows_dropped: int
    alerts: pd.DataFrame
    metrics: dict
    quarantine: list
    quarantine_keep: int
    settings: list[dict]
    reference: pd.DataFrame | None
    progress: dict
    gap: dict = field(default_factory=dict)
    band_k: float = 3.0
    version: str = __version__
    #: Per-battery health at the snapshot (:meth:`sbg.battery.health.HealthScore.table`); None: not battery data.
    health: pd.DataFrame | None = None
    #: Each entity's site and rack (a copy of the monitor's :class:`~sbg.io.hierarchy.Hierarchy`); None: no grouping.
    hierarchy: object = None

    @classmethod
    def of(cls, monitor, title: str | None = None) -> Snapshot:
        pipeline, engine = monitor.pipeline, monitor.engine
        # list() of a dict's values or of a deque runs without yielding to other threads.
        records = [a.as_record() for a in list(engine.alerts.values())]
        gap = next((d for d in pipeline.detectors if d.label == "gap"), None)
        objects = [pipeline.stats, *pipeline.detectors, *engine.rules, monitor.history, monitor.replay]
        if pipeline.health is not None:
            objects.append(pipeline.health)
        settings = [r for r in settings_table(objects) if r["parameter"] not in _STATE_PARAMS.get(r["object"], ())]
        files = []
        for p in monitor.paths:
            try:
                size = p.stat().st_size
            except OSError:
                size = None
            files.append({"name": p.name, "path": str(p), "bytes": size})
        return cls(
            title=title or f"sbg report: {monitor.source_key}",
            made_at=pd.Timestamp.now(tz="UTC"),
            files=files,
            baseline=str(monitor.baseline_path) if monitor.baseline_path else None,
            schemas=[s.schema for s in monitor.sources],
            signals=list(monitor.signals),
            history=monitor.history.frame(),
            rows_dropped=monitor.history.rows_dropped,
            alerts=alerts_frame(records),
            metrics=monitor.metrics.as_dict(),
            quarantine=list(monitor.quarantine),
            quarantine_keep=monitor.quarantine.maxlen or 0,
            settings=settings,
            reference=monitor.reference,
            progress=dict(monitor.replay.progress),
            gap={"enabled": bool(gap and gap.enabled), "factor": gap.factor if gap else 10.0,
                 "min_gap": gap.min_gap if gap else "0s"},
            band_k=float(pipeline.stats.band_k),
            health=None if pipeline.health is None else pipeline.health.table(),
            hierarchy=_copy_hierarchy(getattr(monitor, "hierarchy", None)),
        )


def _copy_hierarchy(hierarchy):
    """The report's own copy of a hierarchy: a hierarchy from columns grows while the replay goes on."""
    if hierarchy is None:
        return None
    from ..io.hierarchy import Hierarchy

    return Hierarchy(dict(hierarchy.groups), dict(hierarchy.columns), hierarchy.source)


def build_report(monitor, title: str | None = None, options: ReportOptions | None = None) -> str:
    """The report of ``monitor``'s run so far, as one HTML string.

    Safe while a replay runs: it works on a :class:`Snapshot` and does not
    change the monitor.
    """
    return render(Snapshot.of(monitor, title), options)


def write_report(monitor, path, title: str | None = None, options: ReportOptions | None = None) -> Path:
    """Write the report to ``path`` (atomically) and return the path."""
    path = check_output(path)
    return write_text_atomic(path, build_report(monitor, title, options))


def check_output(path) -> Path:
    """``path`` as a Path, or an :class:`~sbg.errors.SbgError` if a report cannot be written there."""
    path = Path(path)
    if path.is_dir():
        raise SbgError(f"{path}: is a directory; give a file name such as report.html")
    if not path.parent.is_dir():
        raise SbgError(f"{path}: directory {path.parent} does not exist")
    return path


def render(snap: Snapshot, options: ReportOptions | None = None) -> str:
    """The HTML of a snapshot."""
    from bokeh.core.templates import JS_RESOURCES
    from bokeh.document import Document
    from bokeh.embed import components
    from bokeh.models import Plot
    from bokeh.resources import Resources
    from markupsafe import Markup

    from .style import ENTITY_COLORS, STATE_COLORS

    opts = options or ReportOptions()
    run = _Run(snap, opts)
    ctx = {
        "snap": snap, "run": run, "opts": opts, "state_colors": STATE_COLORS, "stale_intervals": STALE_INTERVALS,
        "sections": {k: v for k, v in SECTIONS.items() if k != "health" or snap.health is not None},
        "severities": SEVERITIES[::-1], "css": Markup((_TEMPLATES / "report.css").read_text(encoding="utf-8")),
    }
    ctx.update(run.header())
    ctx.update(run.summary())
    ctx["alert_rows"] = run.alert_rows()
    ctx["baseline_colour"] = ENTITY_COLORS[0]
    ctx.update(run.quality())
    ctx.update(run.settings_groups())
    ctx.update(health_section(snap.health))
    ctx.update(groups_section(run, snap))
    figures = _Figures(run, ENTITY_COLORS, STATE_COLORS)
    plots = {}
    plots.update(figures.signal_plots())
    plots.update(figures.timeline())
    comparison = run.baseline_comparison()
    plots.update(figures.distributions(comparison))
    ctx["baseline_rows"] = comparison
    ctx["signal_sections"] = figures.sections
    if plots:
        doc = Document()
        # Added under one freeze, the document indexes its models once, not once per plot.
        with doc.models.freeze():
            for fig in plots.values():
                doc.add_root(fig)
        script, divs = components(plots)
        # Only BokehJS itself, inline: Resources.render_js() would also link the __javascript__ files of
        # every model class imported in this process (Panel's, for one), which a file cannot load.
        res = Resources(mode="inline", components=["bokeh"], log_level="warn")
        ctx["bokeh_js"] = Markup(JS_RESOURCES.render(js_raw=res.js_raw, js_files=[], hashes={}))
        ctx["bokeh_script"] = Markup(script)
        ctx["divs"] = {k: Markup(v) for k, v in divs.items()}
    else:
        ctx["bokeh_js"] = ctx["bokeh_script"] = Markup("")
        ctx["divs"] = {}
    ctx["plot_count"] = sum(1 for _ in doc.select({"type": Plot})) if plots else 0
    return _environment().get_template("report.html").render(**ctx)


def health_section(health: pd.DataFrame | None) -> dict:
    """The "Battery health" section: a row per battery, worst first, and the components with their sources.

    >>> health_section(None)["health_rows"]
    []
    """
    from ..battery.health import COMPONENTS

    components = [{"name": n, "title": t, "source": src} for n, t, src in COMPONENTS]
    if health is None or health.empty:
        return {"health_rows": [], "health_components": components, "health_applies": health is not None}
    rows = []
    for rec in health.sort_values("health", na_position="last", kind="stable").to_dict("records"):
        rows.append({"entity": str(rec["entity"]), "health": _one_decimal(rec["health"]), "weights": rec["weights"],
                     "current_sign": rec["current_sign"],
                     "parts": [{"score": _one_decimal(rec[c["name"]]), "status": rec[f"{c['name']}_status"]}
                               for c in components]})
    return {"health_rows": rows, "health_components": components, "health_applies": True}


def groups_section(run, snap) -> dict:
    """The summary's "Fleet by site": per site and rack the entities, the worst state, counts, the lowest health.

    The worst state is the report's (the worst alert over the run, or stale);
    the lowest health is the battery health section's. Entities the mapping
    leaves out are the ``(unassigned)`` group, and named.
    """
    if snap.hierarchy is None:
        return {"groups": None}
    from ..io.hierarchy import UNASSIGNED, rollup

    states = pd.Series({e: run.worst_state[e] for e in run.entities}, dtype=object)
    health = snap.health
    scores = (pd.Series(health["health"].to_numpy(dtype=float), index=health["entity"].astype(str).to_numpy(dtype=object))
              if health is not None and len(health) else None)
    table = rollup(states, scores, snap.hierarchy, level="rack" if "rack" in snap.hierarchy.levels else "site")
    rows = [{**rec, "lowest_health": _one_decimal(rec["lowest_health"])} for rec in table.to_dict("records")]
    unassigned = snap.hierarchy.unassigned(run.entities)
    return {"groups": {"rows": rows, "source": snap.hierarchy.source, "levels": list(snap.hierarchy.levels),
                       "sites": len({r["site"] for r in rows} - {UNASSIGNED}), "unassigned": unassigned}}


def _one_decimal(x):
    x = float(x)
    return round(x, 1) if np.isfinite(x) else None


def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(basename=lambda p: Path(p).name, num=_fmt_num, int=_fmt_int, dur=_fmt_duration, bytes=fmt_bytes, pct=_fmt_pct)
    return env


def _fmt_int(n) -> str:
    return "–" if n is None else f"{int(n):,}"


def _fmt_num(x) -> str:
    """A value with six significant digits, or a dash."""
    if x is None or isinstance(x, str):
        return x or "–"
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not np.isfinite(x):
        return "–"
    return f"{x:,.6g}" if abs(x) >= 1e4 else f"{x:.6g}"


def _fmt_pct(x) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:.3g} %"


def _fmt_duration(seconds) -> str:
    """``3 d 4 h``, ``2 h 05 min``, ``4 min 03 s``, ``12 s``, ``0.5 s``."""
    if seconds is None or not np.isfinite(seconds):
        return "–"
    if seconds < 10:
        return f"{seconds:.3g} s"
    s = int(round(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d} d {h} h"
    if h:
        return f"{h} h {m:02d} min"
    return f"{m} min {s:02d} s" if m else f"{s} s"


class _Run:
    """The snapshot's history cut into entities, with the derived tables the sections show."""

    def __init__(self, snap: Snapshot, opts: ReportOptions):
        self.snap, self.opts = snap, opts
        h = snap.history
        self.empty = h.empty or "timestamp" not in h.columns
        self.signals = [s for s in snap.signals if not self.empty and s in h.columns]
        if self.empty:
            self.ts = np.zeros(0, dtype="int64")
            self.entities, self.rows = [], []
        else:
            self.ts = h["timestamp"].to_numpy(dtype="datetime64[ns]").view("int64")
            codes, uniques = pd.factorize(h["entity"].astype(str), sort=True)
            self.entities = [str(u) for u in uniques]
            order = np.argsort(codes, kind="stable")
            bounds = np.r_[0, np.flatnonzero(np.diff(codes[order])) + 1, len(order)]
            self.rows = []
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
                rows = order[lo:hi]
                t = self.ts[rows]
                if len(t) > 1 and (np.diff(t) < 0).any():
                    rows = rows[np.argsort(t, kind="stable")]
                self.rows.append(rows)
        clock_only = all(s.time_kind in ("clock", "seconds") for s in snap.schemas) and len(self.ts) > 0 and \
            pd.Timestamp(self.ts.min()).year == 1970
        self.clock_only = bool(clock_only)
        same_day = len(self.ts) > 0 and pd.Timestamp(self.ts.min()).date() == pd.Timestamp(self.ts.max()).date()
        # Times within one day read better without the date, which the header gives once.
        self.time_format = "%H:%M:%S" if (clock_only and self.span_s < 86400) or same_day else "%Y-%m-%d %H:%M:%S"
        self.alerts = snap.alerts
        alerts_by_entity = self.alerts.groupby("entity")["severity"] if len(self.alerts) else None
        self.alert_counts = alerts_by_entity.size().to_dict() if alerts_by_entity is not None else {}
        self.worst = {}
        newest = self.ts.max() if len(self.ts) else 0
        interval = h["interval_s"].to_numpy(dtype="float64") if "interval_s" in h.columns else None
        for e, rows in zip(self.entities, self.rows, strict=True):
            sev = (alerts_by_entity.get_group(e).map(_SEV_RANK).max()
                   if alerts_by_entity is not None and e in self.alert_counts else 0)
            usual = _usual_interval(interval[rows]) if interval is not None else np.nan
            if sev == 0 and newest - self.ts[rows[-1]] > stale_limit(usual, self.opts.stale_after) * 1e9:
                sev = _SEV_RANK["stale"]
            self.worst[e] = sev
        names = {v: k for k, v in _SEV_RANK.items()}
        self.worst_state = {e: names[v] for e, v in self.worst.items()}
        peak = {}
        if "anomaly_score" in h.columns:
            scores = h["anomaly_score"].to_numpy(dtype="float64")
            peak = {e: float(np.nanmax(scores[rows])) if len(rows) else 0.0
                    for e, rows in zip(self.entities, self.rows, strict=True)}
        #: Entities worst first: state, then alert count, then peak score, then name.
        self.ranked = sorted(self.entities, key=lambda e: (-self.worst[e], -self.alert_counts.get(e, 0),
                                                           -peak.get(e, 0.0), e))
        self.colour_index = {e: i for i, e in enumerate(self.entities)}
        self.gaps, self.gap_rows = self._gaps()

    @property
    def span_s(self) -> float:
        return float(self.ts.max() - self.ts.min()) / 1e9 if len(self.ts) else 0.0

    def when(self, value) -> str:
        if value is None or value is pd.NaT or (isinstance(value, float) and not np.isfinite(value)):
            return "–"
        return pd.Timestamp(value).strftime(self.time_format)

    def header(self) -> dict:
        snap, m = self.snap, self.snap.metrics
        first = "–"
        if len(self.ts):
            first = self.when(self.ts.min()) if self.clock_only else \
                pd.Timestamp(self.ts.min()).strftime("%Y-%m-%d %H:%M:%S")
        last = self.when(self.ts.max()) if len(self.ts) else "–"
        progress = snap.progress
        finished = progress.get("state") == "finished"
        sources = []
        for f, schema in zip(snap.files, snap.schemas, strict=False):
            sources.append({**f, "entity": schema.entity, "time": schema.time, "signals": list(schema.signals)})
        return {"header": {
            "first": first, "last": last, "span": _fmt_duration(self.span_s) if len(self.ts) else "–",
            "rows_in": m["rows_in"], "rows_ok": m["rows_ok"], "rows_quarantined": m["rows_quarantined"],
            "reconciles": m["reconciles"], "entities": len(self.entities), "signals": self.signals,
            "sources": sources, "made": snap.made_at.strftime("%Y-%m-%d %H:%M UTC"), "finished": finished,
            "percent": progress.get("percent"), "state": progress.get("state"), "errors": m.get("errors", 0),
            "last_error": m.get("last_error", ""),
        }}

    def summary(self) -> dict:
        counts = self.alerts["severity"].value_counts().to_dict() if len(self.alerts) else {}
        firing = int((self.alerts["state"] == "firing").sum()) if len(self.alerts) else 0
        states = {}
        for e in self.ranked:
            states.setdefault(self.worst_state[e], []).append(e)
        state_order = ["critical", "warning", "info", "stale", "normal"]
        alerted = sum(1 for e in self.entities if self.alert_counts.get(e))
        return {"summary": {
            "by_severity": {s: int(counts.get(s, 0)) for s in SEVERITIES[::-1]},
            "total": len(self.alerts), "firing": firing,
            "states": [(s, states.get(s, [])) for s in state_order],
            "alerted_entities": alerted,
            "headline": self._headline(counts, alerted),
            "anomalies": self.episodes()[: self.opts.top_anomalies],
        }}

    def alert_rows(self) -> list[dict]:
        """The alert table, oldest first, with display times."""
        a = self.alerts.sort_values(["start", "id"], kind="stable")
        end_ns = self.ts.max() if len(self.ts) else 0
        rows = []
        for rec in a.to_dict(orient="records"):
            firing = rec["end"] is pd.NaT or pd.isna(rec["end"])
            stop = end_ns if firing else pd.Timestamp(rec["end"]).value
            rows.append({**rec, "start": self.when(rec["start"]),
                         "end": "firing" if firing else self.when(rec["end"]),
                         "duration": max(stop - pd.Timestamp(rec["start"]).value, 0) / 1e9})
        return rows

    def _headline(self, counts, alerted) -> str:
        n_ent = len(self.entities)
        if self.empty:
            return "No data has been processed yet."
        parts = [f"{counts.get(s, 0)} {s}" for s in SEVERITIES[::-1] if counts.get(s, 0)]
        q = self.snap.metrics["rows_quarantined"]
        alerts = (f"{' and '.join(parts) if len(parts) < 3 else ', '.join(parts)} alert"
                  f"{'s' if len(self.alerts) != 1 else ''} on {alerted} of {n_ent} "
                  f"entit{'ies' if n_ent != 1 else 'y'}") if len(self.alerts) else \
            f"No alerts on {n_ent} entit{'ies' if n_ent != 1 else 'y'}"
        return (f"{alerts} over {_fmt_duration(self.span_s)} of data; "
                f"{q:,} row{'s' if q != 1 else ''} quarantined.")

    def episodes(self) -> list[dict]:
        """Runs of flagged rows per entity and signal, highest peak score first.

        Scores saturate (many rows of a large excursion score 1.0), so the row
        an episode is shown by is, among its rows at the peak score, the one
        whose value lies farthest from the reference of :func:`_reference`:
        the most extreme value, not merely the first to reach the peak score.
        """
        h = self.snap.history
        out = []
        reasons = h["reason"].to_numpy(dtype=object) if "reason" in h.columns else None
        for s in self.signals:
            col = f"{s}__score"
            if col not in h.columns:
                continue
            score = h[col].to_numpy(dtype="float64")
            values = h[s].to_numpy(dtype="float64")
            mean = h[f"{s}__mean"].to_numpy(dtype="float64") if f"{s}__mean" in h.columns else None
            for e, rows in zip(self.entities, self.rows, strict=True):
                flagged = score[rows] >= 0.5
                pos = np.flatnonzero(flagged)
                if not len(pos):
                    continue
                normal = values[rows[~flagged]]
                normal = normal[np.isfinite(normal)]
                median = float(np.median(normal)) if len(normal) else np.nan
                cuts = np.flatnonzero(np.diff(pos) > self.opts.episode_gap_rows) + 1
                for run in np.split(pos, cuts):
                    r = rows[run]
                    i = _most_extreme(r, score, values, _reference(rows, run[0], mean, median))
                    out.append({
                        "entity": e, "signal": s, "peak_score": float(score[i]), "peak": float(values[i]),
                        "peak_time": self.when(self.ts[i]), "start": self.when(self.ts[r[0]]),
                        "duration": (self.ts[r[-1]] - self.ts[r[0]]) / 1e9, "rows": len(r),
                        "detectors": _detectors(reasons[i], s) if reasons is not None else "",
                        "anchor": f"signal-{self.signals.index(s)}",
                    })
        out.sort(key=lambda ep: (-ep["peak_score"], -ep["rows"], ep["entity"], ep["signal"]))
        return out

    def _gaps(self):
        """Gaps per entity, longest first, and the rows that follow a gap (where lines break)."""
        h = self.snap.history
        gaps, after = [], []
        if self.empty or "interval_s" not in h.columns:
            return gaps, np.zeros(0, dtype="int64")
        interval = h["interval_s"].to_numpy(dtype="float64")
        min_gap = pd.Timedelta(self.snap.gap["min_gap"]).total_seconds()
        for e, rows in zip(self.entities, self.rows, strict=True):
            iv = interval[rows]
            usual = _usual_interval(iv)
            if not np.isfinite(usual) or usual <= 0:
                continue
            hit = np.flatnonzero((iv > self.snap.gap["factor"] * usual) & (iv >= min_gap))
            after.append(rows[hit])
            for k in hit:
                gaps.append({"entity": e, "from": self.when(int(self.ts[rows[k]] - iv[k] * 1e9)),
                             "to": self.when(self.ts[rows[k]]), "seconds": float(iv[k]),
                             "usual": float(usual)})
        gaps.sort(key=lambda g: -g["seconds"])
        return gaps, (np.concatenate(after) if after else np.zeros(0, dtype="int64"))

    def quality(self) -> dict:
        snap = self.snap
        groups: dict[str, list] = {}
        for q in snap.quarantine:
            groups.setdefault(q.kind, []).append(q)
        reasons = [{"reason": k, "count": len(v),
                    "examples": [{"where": f"{Path(q.source).name}:{q.line}", "raw": q.raw[:300],
                                  "detail": q.reason} for q in v[: self.opts.examples_per_reason]]}
                   for k, v in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))]
        h = snap.history
        missing = []
        for s in self.signals:
            n = int(h[s].isna().sum())
            if n:
                missing.append({"signal": s, "count": n, "share": n / max(len(h), 1)})
        findings = []
        if "quality" in h.columns and len(h):
            q = h["quality"].astype(str)
            named = q[q != ""].str.split(";").explode()
            for name, rows in named.groupby(named, sort=True):
                idx = rows.index
                ents = sorted(h.loc[idx, "entity"].astype(str).unique())
                findings.append({"finding": name, "rows": len(idx),
                                 "first": self.when(h.loc[idx, "timestamp"].min()),
                                 "entities": ", ".join(ents[:8]) + (f" and {len(ents) - 8} more" if len(ents) > 8 else "")})
        return {"quality": {
            "findings": findings,
            "reasons": reasons, "kept": len(snap.quarantine), "keep": snap.quarantine_keep,
            "rows_quarantined": snap.metrics["rows_quarantined"],
            "gaps": self.gaps[: self.opts.max_gaps], "gap_count": len(self.gaps),
            "gap_total": float(sum(g["seconds"] for g in self.gaps)), "gap_factor": snap.gap["factor"],
            "missing": missing, "rows_dropped": snap.rows_dropped, "rows_kept": len(h),
        }}

    def settings_groups(self) -> dict:
        groups: dict[str, list] = {}
        for row in self.snap.settings:
            groups.setdefault(row["object"], []).append(row)
        return {"settings_groups": list(groups.items())}

    def baseline_comparison(self) -> list[dict]:
        """Per signal: baseline and run summaries, the KS distance and shared histogram bins."""
        ref = self.snap.reference
        if ref is None or self.empty:
            return []
        h = self.snap.history
        out = []
        for s in self.signals:
            if s not in ref.columns:
                out.append({"signal": s, "missing": True})
                continue
            a = ref[s].to_numpy(dtype="float64")
            b = h[s].to_numpy(dtype="float64")
            a, b = np.sort(a[np.isfinite(a)]), np.sort(b[np.isfinite(b)])
            if not len(a) or not len(b):
                out.append({"signal": s, "missing": True})
                continue
            both = np.concatenate([a, b])
            d = float(np.max(np.abs(np.searchsorted(a, both, "right") / len(a)
                                    - np.searchsorted(b, both, "right") / len(b))))
            lo = min(np.quantile(a, 0.005), np.quantile(b, 0.005))
            hi = max(np.quantile(a, 0.995), np.quantile(b, 0.995))
            if hi <= lo:
                lo, hi = lo - 0.5, hi + 0.5
            edges = np.linspace(lo, hi, 51)
            outside = float(np.mean((b < lo) | (b > hi)))
            out.append({
                "signal": s, "missing": False, "ks": d, "edges": edges,
                "base_density": np.histogram(a, edges, density=True)[0],
                "run_density": np.histogram(b, edges, density=True)[0],
                "base_mean": float(a.mean()), "base_std": float(a.std()), "run_mean": float(b.mean()),
                "run_std": float(b.std()), "outside": outside, "index": len(out),
            })
        return out


def _reference(rows, first: int, mean, median: float) -> float:
    """The normal level an episode departs from: the rolling mean on the entity's row before the
    episode (``rows[first - 1]``, not flagged), else ``median``, that of the entity's unflagged values."""
    if mean is not None and first > 0:
        before = mean[rows[first - 1]]
        if np.isfinite(before):
            return float(before)
    return median


def _most_extreme(r, score, values, reference: float) -> int:
    """The row of ``r`` (history rows) at the highest score whose value is farthest from ``reference``.

    >>> _most_extreme(np.arange(4), np.array([0.6, 1.0, 1.0, 1.0]), np.array([9.0, 7.0, 12.0, 8.0]), 5.0)
    2
    """
    s = score[r]
    top = r[s >= np.nanmax(s)]
    if len(top) > 1:
        v = values[top]
        if not np.isfinite(reference):  # nothing normal to compare with: the entity's own values
            finite = values[r][np.isfinite(values[r])]
            reference = float(np.median(finite)) if len(finite) else np.nan
        distance = np.abs(v - reference)
        if np.isfinite(distance).any():
            return int(top[int(np.nanargmax(distance))])
    return int(top[0])


def _detectors(reason, signal) -> str:
    """Detector labels of a row's ``reason`` that concern ``signal``: ``'zscore:v;limits:v'`` -> ``'zscore, limits'``."""
    if not reason:
        return ""
    labels = []
    for pair in str(reason).split(";"):
        det, _, sig = pair.partition(":")
        if sig == signal and det not in labels:
            labels.append(det)
    return ", ".join(labels)


class _Figures:
    """Plain Bokeh figures for the report, sharing one time range."""

    def __init__(self, run: _Run, entity_colors, state_colors):
        from bokeh.models import (
            AllLabels,
            BasicTicker,
            BasicTickFormatter,
            DatetimeTicker,
            DatetimeTickFormatter,
            Range1d,
        )

        self.run, self.entity_colors, self.state_colors = run, entity_colors, state_colors
        self.sections: list[dict] = []
        if len(run.ts):
            lo, hi = float(run.ts.min()) / 1e6, float(run.ts.max()) / 1e6
            if hi <= lo:
                lo, hi = lo - 1000.0, hi + 1000.0
            pad = (hi - lo) * 0.01
            self.x_range = Range1d(lo - pad, hi + pad)
        else:
            self.x_range = None
        self.time_ticker = DatetimeTicker()
        self.value_ticker, self.value_ticks, self.all_labels = BasicTicker(), BasicTickFormatter(), AllLabels()
        if run.clock_only:
            self.time_ticks = DatetimeTickFormatter(hours="%H:%M", minutes="%H:%M", minsec="%H:%M:%S",
                                                    seconds="%H:%M:%S", days="%H:%M", context=None,
                                                    boundary_scaling=False)
        else:
            self.time_ticks = DatetimeTickFormatter(hours="%H:%M", minutes="%H:%M", days="%b %d", context=None)
        longest = max((len(e) for e in run.entities if run.alert_counts.get(e)), default=0)
        self.left_border = int(min(max(56, 6.5 * longest + 24), 200))

    def _figure(self, align: bool = True, **kw):
        from bokeh.plotting import figure

        fig = figure(x_axis_type="datetime", sizing_mode="stretch_width", tools="xpan,xwheel_zoom,box_zoom,reset",
                     active_scroll=None, toolbar_location="right", x_range=self.x_range, **kw)
        fig.toolbar.autohide = True
        fig.toolbar.logo = None
        fig.xaxis.formatter = self.time_ticks
        # A DatetimeTicker is a dozen models; one serves every time axis.
        fig.xaxis.ticker = self.time_ticker
        fig.xgrid.ticker = self.time_ticker
        fig.yaxis.ticker, fig.ygrid.ticker = self.value_ticker, self.value_ticker
        fig.yaxis.formatter = self.value_ticks
        fig.axis.major_label_policy = self.all_labels
        self._style(fig)
        if align:
            # One left border for the full-width time plots, so that their time axes line up.
            fig.min_border_left = self.left_border
        return fig

    @staticmethod
    def _style(fig):
        if fig.title is not None:
            fig.title.text_font_size = "12px"
            fig.title.text_color = "#111827"
        fig.outline_line_color = None
        fig.axis.axis_line_color = "#d1d5db"
        fig.axis.major_tick_line_color = "#d1d5db"
        fig.axis.minor_tick_line_color = None
        fig.axis.major_label_text_color = "#4b5563"
        fig.axis.major_label_text_font_size = "10.5px"
        fig.grid.grid_line_color = "#eef0f3"
        fig.min_border_left = 52
        fig.min_border_right = 14

    def signal_plots(self) -> dict:
        from bokeh.layouts import gridplot
        from bokeh.models import (
            BoxAnnotation,
            ColumnDataSource,
            DataRange1d,
            HoverTool,
            Line,
            Scatter,
            VArea,
        )

        run, snap = self.run, self.run.snap
        h = snap.history
        plotted = run.ranked[: run.opts.max_entities]
        cols = 1 if len(plotted) <= 1 else 2
        buckets = max(run.opts.points_per_plot // (2 * cols), 16)
        height = 190 if cols == 1 else 165
        plots = {}
        gap_rows = run.gap_rows
        alerts = run.alerts
        flagged_colour = self.state_colors["critical"]
        quality_colour = self.state_colors.get("data quality", "#7c3aed")
        for si, s in enumerate(run.signals):
            y_all = h[s].to_numpy(dtype="float64")
            lower = h[f"{s}__lower"].to_numpy(dtype="float64") if f"{s}__lower" in h.columns else None
            upper = h[f"{s}__upper"].to_numpy(dtype="float64") if f"{s}__upper" in h.columns else None
            score = (h[f"{s}__score"].to_numpy(dtype="float64") if f"{s}__score" in h.columns
                     else np.zeros(len(h)))
            reasons = h["reason"].to_numpy(dtype=object) if "reason" in h.columns else None
            quality = (h[f"{s}__quality"].to_numpy(dtype="float64") if f"{s}__quality" in h.columns
                       else np.zeros(len(h)))
            findings = h["quality"].to_numpy(dtype=object) if "quality" in h.columns else None
            figs = []
            section = {"signal": s, "index": si, "cols": cols, "flagged": 0,
                       "alerts": int((alerts["signal"] == s).sum()) if len(alerts) else 0,
                       "not_plotted": run.ranked[run.opts.max_entities:],
                       "min": np.nanmin(y_all) if np.isfinite(y_all).any() else None,
                       "max": np.nanmax(y_all) if np.isfinite(y_all).any() else None}
            for e in plotted:
                ei = run.entities.index(e)
                rows = run.rows[ei]
                colour = self.entity_colors[run.colour_index[e] % len(self.entity_colors)]
                flag_pos = np.flatnonzero(score[rows] >= 0.5)
                quality_pos = np.flatnonzero((quality[rows] >= 0.5) & (score[rows] < 0.5))
                breaks = np.flatnonzero(np.isin(rows, gap_rows)) if len(gap_rows) else np.zeros(0, dtype="int64")
                keep = np.concatenate([flag_pos, quality_pos, breaks, breaks - 1])
                x = run.ts[rows]
                idx = minmax_indices(x, y_all[rows], buckets, keep=keep[keep >= 0])
                where = with_breaks(idx, breaks)
                sel = rows[idx]
                data = {
                    "x": np.insert(x[idx] / 1e6, where, np.nan),
                    "y": np.insert(y_all[sel], where, np.nan).astype("float32"),
                }
                if lower is not None and upper is not None:
                    data["lower"] = np.insert(lower[sel], where, np.nan).astype("float32")
                    data["upper"] = np.insert(upper[sel], where, np.nan).astype("float32")
                fig = self._figure(align=cols == 1, height=height)
                line_src = ColumnDataSource(data)
                # add_glyph leaves the selection and muted glyphs to BokehJS: a third of the models.
                if "lower" in data:
                    fig.add_glyph(line_src, VArea(x="x", y1="lower", y2="upper", fill_color=colour, fill_alpha=0.13))
                line = fig.add_glyph(line_src, Line(x="x", y="y", line_color=colour, line_width=1.3))
                fr = rows[flag_pos]
                section["flagged"] += len(fr)
                flags = fig.add_glyph(ColumnDataSource({
                    "x": run.ts[fr] / 1e6, "y": y_all[fr].astype("float32"),
                    "score": score[fr].astype("float32"),
                    "detectors": [_detectors(r, s) for r in reasons[fr]] if reasons is not None else [""] * len(fr),
                }), Scatter(x="x", y="y", size=5.5, fill_color=flagged_colour, line_width=0.6,
                            # Sparse points get a white ring to stand off the curve; dense ones would turn pink.
                            line_color="white" if len(fr) <= 300 else flagged_colour))
                qr = rows[quality_pos]
                marks = fig.add_glyph(ColumnDataSource({
                    "x": run.ts[qr] / 1e6, "y": y_all[qr].astype("float32"),
                    "finding": findings[qr].tolist() if findings is not None else [""] * len(qr),
                }), Scatter(x="x", y="y", size=5.5, marker="square", fill_color=quality_colour, line_width=0.6,
                            line_color="white" if len(qr) <= 300 else quality_colour))
                fig.y_range = DataRange1d(renderers=[line, flags], range_padding=0.08)
                if len(alerts):
                    mine = alerts[(alerts["entity"] == e) & (alerts["signal"] == s)]
                    end = run.ts.max() / 1e6
                    for a in mine.itertuples():
                        fig.add_layout(BoxAnnotation(
                            left=a.start.value / 1e6, right=a.end.value / 1e6 if a.end is not pd.NaT else end,
                            fill_color=self.state_colors[a.severity], fill_alpha=0.1, line_alpha=0))
                fmt = run.time_format
                fig.add_tools(
                    HoverTool(renderers=[line], mode="vline", tooltips=[
                        ("time", f"@x{{{fmt}}}"), (s, "@y{%.6g}"), ("band", "@lower{%.4g} – @upper{%.4g}"),
                    ], formatters={"@x": "datetime", "@y": "printf", "@lower": "printf", "@upper": "printf"}),
                    HoverTool(renderers=[flags], tooltips=[
                        ("flagged", f"@x{{{fmt}}}"), (s, "@y{%.6g}"), ("score", "@score{0.00}"),
                        ("by", "@detectors"),
                    ], formatters={"@x": "datetime", "@y": "printf"}),
                    HoverTool(renderers=[marks], tooltips=[
                        ("data quality", f"@x{{{fmt}}}"), (s, "@y{%.6g}"), ("finding", "@finding"),
                    ], formatters={"@x": "datetime", "@y": "printf"}),
                )
                fig.yaxis.axis_label = None
                if cols > 1:
                    fig.title.text = f"{e}   {run.worst_state[e]}" + (f", {len(fr):,} flagged" if len(fr) else "")
                    fig.title.text_color = colour
                figs.append(fig)
            # One Bokeh root per signal: the browser lays out each root in turn, and
            # every root's layout pass measures the whole page.
            key = f"signal-{si}"
            plots[key] = figs[0] if len(figs) == 1 else gridplot(
                figs, ncols=cols, sizing_mode="stretch_width", merge_tools=True, toolbar_location="right")
            section["key"] = key
            self.sections.append(section)
        return plots

    def timeline(self) -> dict:
        from bokeh.models import ColumnDataSource, FactorRange, HoverTool

        run = self.run
        a = run.alerts
        if not len(a) or self.x_range is None:
            return {}
        shown = [e for e in run.ranked if run.alert_counts.get(e)] if len(run.entities) > 40 else run.ranked
        shown = [e for e in shown if e in set(a["entity"])] + [e for e in shown if e not in set(a["entity"])]
        end_ns = run.ts.max()
        span_ms = max(self.x_range.end - self.x_range.start, 1.0)
        start = _ns(a["start"], end_ns) / 1e6
        end = _ns(a["end"], end_ns) / 1e6
        # Brief alerts stay visible: at least 0.3 % of the span wide.
        end = np.maximum(end, start + span_ms * 0.003)
        src = ColumnDataSource({
            "entity": a["entity"].astype(str).tolist(), "start": start, "end": end,
            "colour": [self.state_colors[s] for s in a["severity"]], "severity": a["severity"].tolist(),
            "rule": a["rule"].tolist(), "signal": a["signal"].astype(str).tolist(),
            "message": a["message"].astype(str).tolist(), "state": a["state"].tolist(),
            "from": [run.when(t) for t in a["start"]],
            "to": [run.when(t) if t is not pd.NaT else "still firing" for t in a["end"]],
        })
        height = int(min(max(24 * len(shown) + 60, 120), 900))
        fig = self._figure(height=height, y_range=FactorRange(*shown[::-1]), title=None)
        fig.hbar(y="entity", left="start", right="end", height=0.62, source=src, fill_color="colour",
                 line_color="colour", fill_alpha=0.85)
        fig.ygrid.grid_line_color = None
        fig.yaxis.major_label_text_font_size = "11px" if len(shown) <= 40 else "8px"
        fig.add_tools(HoverTool(tooltips=[
            ("entity", "@entity"), ("alert", "@severity: @rule"), ("signal", "@signal"), ("from", "@from"),
            ("to", "@to"), ("", "@message"),
        ]))
        return {"timeline": fig}

    def distributions(self, comparison) -> dict:
        from bokeh.models import ColumnDataSource, HoverTool
        from bokeh.plotting import figure

        plots = {}
        base_colour = self.entity_colors[0]
        run_colour = self.state_colors["critical"]
        for c in comparison:
            if c["missing"]:
                continue
            e = c["edges"]
            fig = figure(height=200, sizing_mode="stretch_width", title=c["signal"], tools="xpan,xwheel_zoom,reset",
                         active_scroll=None, toolbar_location="right")
            fig.toolbar.autohide = True
            fig.toolbar.logo = None
            self._style(fig)
            for col, colour in (("base_density", base_colour), ("run_density", run_colour)):
                src = ColumnDataSource({"left": e[:-1], "right": e[1:], "top": c[col].astype("float32"),
                                        "mid": ((e[:-1] + e[1:]) / 2)})
                fig.quad(left="left", right="right", bottom=0, top="top", source=src, fill_color=colour,
                         fill_alpha=0.35, line_color=colour, line_alpha=0.6)
            fig.yaxis.visible = False
            fig.add_tools(HoverTool(tooltips=[("value", "@mid{%.4g}"), ("density", "@top{%.3g}")],
                                    formatters={"@mid": "printf", "@top": "printf"}))
            plots[f"base-{c['index']}"] = fig
        return plots


def _ns(series: pd.Series, fill: int) -> np.ndarray:
    """Timestamps as int64 nanoseconds, NaT replaced by ``fill``."""
    values = series.to_numpy(dtype="datetime64[ns]").view("int64").copy()
    values[series.isna().to_numpy()] = fill
    return values.astype("float64")

