"""HoloViews views of a run: live, fed by bounded Buffers, and static, from history.

The streamz -> HoloViews bridge is sbg's own (HoloViews 1.23 dropped its
streamz support). :class:`LiveBuffers` takes enriched chunks from a monitor
and appends the new rows to bounded ``hv.streams.Buffer`` objects, one per
entity. HoloViews draws each plot once from its Buffers' frames, untouched;
after that a :class:`BufferBridge` streams only the new rows straight into
the ColumnDataSources HoloViews drew, with the Buffer's length as rollover,
and moves the axes itself. This skips HoloViews' per-update range and
style machinery, which costs tens of milliseconds per layer and would
otherwise dominate the server's CPU. Derived columns (the band, the scores)
come from the pipeline, never from plot callbacks.

Colours carry one meaning everywhere, in the dashboard and in reports:
:data:`STATE_COLORS` for normal / warning / critical / stale, and a
categorical palette without reds or ambers for entities.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..report.style import ENTITY_COLORS, FLAG_SIZE, LIVE_COLOR, STATE_COLORS

__all__ = [
    "BufferBridge",
    "LiveBuffers",
    "sync_hook",
    "signal_view",
    "activity_view",
    "activity_element",
    "update_activity",
    "update_health",
    "blank_health",
    "health_view",
    "health_element",
    "baseline_view",
    "static_signal_view",
]

STATE_LABELS = {0: "normal", 1: "warning", 2: "critical", 3: "stale", 4: "data quality"}
#: Live plots draw on a 2D canvas: WebGL (HoloViews' default) falls back to a slow
#: software renderer on machines without a GPU, and a few thousand points need no GPU.
CANVAS = {"plot.output_backend": "canvas"}


def _hv():
    import holoviews as hv
    import holoviews.plotting.bokeh  # noqa: F401  (registers the Bokeh backend without notebook output)

    if hv.Store.current_backend != "bokeh":
        hv.Store.set_current_backend("bokeh")
    return hv


def drawn_plots(pane) -> list:
    """The HoloViews plots a ``pn.pane.HoloViews`` has drawn, one per document (or notebook cell) showing it."""
    return [plot for plot, _ in list(getattr(pane, "_plots", {}).values())]


def source_layers(plot) -> list:
    """The layers of a drawn HoloViews plot that own a Bokeh ColumnDataSource (``handles["cds"]``)."""
    return plot.traverse(lambda p: p, [lambda p: "cds" in getattr(p, "handles", {})])


class BufferBridge:
    """Streams the new rows of Buffers into the Bokeh sources HoloViews drew from them.

    Every plot registered with :meth:`watch` is a HoloViews object whose
    layers are DynamicMaps over Buffers, drawn with :func:`sync_hook` among
    their hooks. :meth:`update` appends rows to a Buffer without triggering
    HoloViews; :meth:`flush` then sends each drawn layer (in every document
    showing it) the rows it has not seen, and sets the axes: the last
    ``span_s`` seconds for time series, the data's extent otherwise.
    """

    def __init__(self):
        self._pending: dict[int, tuple] = {}
        self._panes: list[tuple] = []

    def update(self, buffer, part: pd.DataFrame):
        """Append ``part`` to ``buffer`` (bounded by its length) for the next :meth:`flush`."""
        buffer.update(data=part)
        entry = self._pending.setdefault(id(buffer), (buffer, []))
        entry[1].append((buffer._count, part))

    def clear(self, buffers):
        """Empty ``buffers`` and every source drawn from them."""
        from holoviews.core.util import disable_constant

        for buf in buffers:
            with disable_constant(buf):
                buf.data = buf.data.iloc[:0]
            buf._count += 1
            self._pending.pop(id(buf), None)
        ids = {id(b) for b in buffers}
        for _, _, layers in self._layers():
            for layer, buf in layers:
                if id(buf) in ids:
                    cds = layer.handles["cds"]
                    cds.data = {k: np.asarray(v)[:0] for k, v in cds.data.items()}
                    layer._sbg_seen = buf._count

    def watch(self, pane, span_s: float | None = None):
        """Keep ``pane`` (a ``pn.pane.HoloViews``) streaming; ``span_s`` makes its x-axis follow time."""
        self._panes = [(p, s) for p, s in self._panes if p is not pane] + [(pane, span_s)]

    def reset(self):
        """Forget every watched pane and pending row (the plots are being replaced)."""
        self._panes = []
        self._pending = {}

    def _layers(self):
        for pane, span_s in self._panes:
            for plot in drawn_plots(pane):
                layers = []
                for layer in source_layers(plot):
                    buf = next((s for s in getattr(layer, "streams", []) if hasattr(s, "_count")), None)
                    if buf is not None and hasattr(layer, "_sbg_seen"):
                        layers.append((layer, buf))
                yield plot, span_s, layers

    def flush(self) -> int:
        """Stream pending rows to every drawn layer and move the axes; returns rows streamed."""
        pending, self._pending = self._pending, {}
        sent = 0
        for plot, span_s, layers in self._layers():
            moved = False
            for layer, buf in layers:
                entry = pending.get(id(buf))
                if entry is None:
                    continue
                parts = [part for count, part in entry[1] if count > layer._sbg_seen]
                layer._sbg_seen = buf._count
                if not parts:
                    continue
                new = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
                cds = layer.handles["cds"]
                try:
                    data = {k: new[k].to_numpy() for k in cds.data}
                except KeyError:  # a column HoloViews derived: let HoloViews redraw this layer
                    layer.refresh()
                    continue
                cds.stream(data, rollover=buf.length)
                sent += len(new)
                moved = True
            if moved or not getattr(plot, "_sbg_ranged", False):
                plot._sbg_ranged = self._set_ranges(plot, span_s, layers)
                plot.push()  # sends the events over the comm in notebooks; no-op when served
        return sent

    @staticmethod
    def _set_ranges(plot, span_s, layers) -> bool:
        x_range, y_range = plot.handles.get("x_range"), plot.handles.get("y_range")
        if x_range is None or y_range is None or not layers:
            return False
        frames = [(layer.current_frame, buf.data) for layer, buf in layers if len(buf.data)]
        if not frames:
            return False
        if span_s is not None:
            end = max(data["timestamp"].iat[-1] for _, data in frames).value / 1e6
            start = end - span_s * 1000.0
            lo, hi = np.inf, -np.inf
            for element, data in frames:
                t = data["timestamp"].to_numpy().astype("datetime64[ms]").astype("float64")
                keep = t >= start
                for dim in element.vdims:
                    if dim.name in data:
                        v = data[dim.name].to_numpy()[keep]
                        v = v[np.isfinite(v)]
                        if len(v):
                            lo, hi = min(lo, v.min()), max(hi, v.max())
            x_range.start, x_range.end = start, end
        else:
            if not hasattr(plot, "_sbg_home"):  # the extent HoloViews drew (baseline and first live points)
                plot._sbg_home = (x_range.start, x_range.end, y_range.start, y_range.end)
            x0, x1, lo, hi = plot._sbg_home
            for element, data in frames:
                x, y = (d.name for d in element.kdims[:2])
                xs, ys = data[x].to_numpy(), data[y].to_numpy()
                if np.isfinite(xs).any():
                    x0, x1 = min(x0, np.nanmin(xs)), max(x1, np.nanmax(xs))
                if np.isfinite(ys).any():
                    lo, hi = min(lo, np.nanmin(ys)), max(hi, np.nanmax(ys))
            x_range.start, x_range.end = float(x0), float(x1)
        if np.isfinite(lo) and np.isfinite(hi):
            pad = (hi - lo) * 0.06 or max(abs(hi) * 0.05, 1e-9)
            y_range.start, y_range.end = float(lo - pad), float(hi + pad)
        return True


def sync_hook(plot, element):
    """Records how many Buffer updates a freshly drawn layer already holds (see :class:`BufferBridge`).

    It also makes the layer's source deaf to streams that come back from the
    browser (:func:`_python_writes_only`).
    """
    buf = next((s for s in getattr(plot, "streams", []) if hasattr(s, "_count")), None)
    if buf is not None:
        plot._sbg_seen = buf._count
        cds = plot.handles.get("cds")
        if cds is not None and not getattr(cds, "_sbg_python_only", False):
            _python_writes_only(cds)


def _python_writes_only(cds):
    """Ignore rows streamed into ``cds`` from the browser: only the BufferBridge writes these sources.

    In a notebook, Panel's comm manager sends every change of the browser's
    document back to the kernel, including the streams the kernel itself just
    sent (BokehJS marks them ``sync=False``; the served app's session drops
    those, the notebook comm does not). Applied again in the kernel, each echo
    would append the same rows a second time, and as numbers (milliseconds)
    to a column of datetimes, which NumPy refuses with a ``DTypePromotionError``
    traceback printed above the dashboard. A stream from the kernel comes with
    no setter; one from the browser with the comm's id.
    """
    own = cds._stream

    def _stream(new_data, rollover=None, setter=None):
        if setter is None:
            own(new_data, rollover, setter)

    cds._stream = _stream
    cds._sbg_python_only = True


def band_hook(lower: str, upper: str, color: str, alpha: float = 0.14):
    """Draws the rolling band under a curve from the curve's own source, so it streams with it."""

    def hook(plot, element):
        cds, fig = plot.handles.get("cds"), plot.handles.get("plot")
        if cds is None or fig is None or lower not in cds.data or upper not in cds.data:
            return
        name = f"sbg-band-{cds.id}"
        if any(r.name == name for r in fig.renderers):
            return
        band = fig.varea(x="timestamp", y1=lower, y2=upper, source=cds, fill_color=color, fill_alpha=alpha,
                         name=name)
        fig.renderers = [band, *[r for r in fig.renderers if r is not band]]

    return hook


class LiveBuffers:
    """Bounded per-session Buffers for the selected entities.

    One Buffer per entity (its curves and bands for every signal) and one per
    signal for flagged points. :meth:`send` appends a chunk's rows to the
    Buffers it touches; :attr:`bridge` streams them to the drawn plots on
    :meth:`BufferBridge.flush`.

    Parameters
    ----------
    signals : list of str
    entities : list of str
        The entities shown (the dashboard's filter); others are ignored.
    length : int
        Rows kept per entity Buffer, and per browser source (bounded memory per session).
    slots : int
        Buffers drawn in all, at least one per entity given: entities first
        seen in the data take the free ones (the dashboard's automatic
        selection), so the plots need not be rebuilt as a fleet appears.
    """

    def __init__(self, signals, entities, length: int = 20_000, flag_length: int = 2_000, bridge=None,
                 slots: int = 0):
        hv = _hv()
        self.signals = list(signals)
        self.entities = [str(e) for e in entities]
        self.length = length
        self.columns = ["timestamp"]
        for s in self.signals:
            self.columns += [s, f"{s}__lower", f"{s}__upper"]
        self.slots = [hv.streams.Buffer(self._empty(self.columns), length=length, index=False)
                      for _ in range(max(len(self.entities), slots))]
        self.buffers = dict(zip(self.entities, self.slots, strict=False))
        self.flags = {s: hv.streams.Buffer(self._empty(["timestamp", s]), length=flag_length, index=False)
                      for s in self.signals}
        #: Rows with a data-quality finding (gap, stuck sensor), drawn apart from anomalies.
        self.quality = {s: hv.streams.Buffer(self._empty(["timestamp", s]), length=flag_length, index=False)
                        for s in self.signals}
        #: The limit forecast of each slot: a dashed segment and its band (:meth:`send_forecasts`). Each
        #: update sends every slot's three rows, so the Buffer's length replaces the previous segments.
        self.forecasts = {s: hv.streams.Buffer(self._empty(["timestamp", *forecast_columns(s)]),
                                               length=3 * max(len(self.slots), 1), index=False) for s in self.signals}
        self.bridge = bridge if bridge is not None else BufferBridge()

    @staticmethod
    def _empty(columns):
        data = {c: pd.Series([], dtype="float64") for c in columns}
        data["timestamp"] = pd.Series([], dtype="datetime64[ns]")
        return pd.DataFrame(data)

    def _fill_slots(self, ent: np.ndarray) -> None:
        """Give free slots to entities seen for the first time, in the order they arrive.

        The plots are drawn once with every slot; an entity appearing later takes
        a slot's Buffer instead of making the session rebuild its plots (which,
        with many sessions open at the start of a replay, was most of the
        server's work).
        """
        free = len(self.slots) - len(self.entities)
        if free <= 0:
            return
        for e in pd.unique(ent):
            if e not in self.buffers:
                self.buffers[e] = self.slots[len(self.entities)]
                self.entities.append(e)
                free -= 1
                if not free:
                    break

    def send(self, frame: pd.DataFrame, max_rows: int | None = None) -> int:
        """Append the rows of ``frame`` (enriched chunk or history) to the Buffers; returns rows taken.

        Entities not yet shown take free slots first (see ``slots``); rows of
        other entities are ignored. With ``max_rows``, an entity with more rows
        than that in ``frame`` sends only the rows holding each signal's
        minimum and maximum per slice of time (:func:`~sbg.report.downsample.minmax_indices`):
        the curves keep every extreme, flagged points are all kept.
        """
        if frame is None or len(frame) == 0 or not self.slots:
            return 0
        ent = frame["entity"].astype(str).to_numpy()
        self._fill_slots(ent)
        mine = np.isin(ent, self.entities)
        if not mine.any():
            return 0
        # The drawn columns first, once: a chunk carries every signal's scores and flags, and every
        # session copies its entities' rows out of the same chunk.
        drawn = frame.reindex(columns=self.columns)
        drawn["timestamp"] = drawn["timestamp"].astype("datetime64[ns]")
        for e, buf in self.buffers.items():
            rows = np.flatnonzero(ent == e)
            if max_rows is not None and len(rows) > max_rows:
                rows = self._thin(drawn, rows, max_rows)
            if len(rows):
                self.bridge.update(buf, drawn.take(rows).reset_index(drop=True))
        for suffix, buffers in (("score", self.flags), ("quality", self.quality)):
            for s, buf in buffers.items():
                score = f"{s}__{suffix}"
                if score not in frame.columns:
                    continue
                hit = np.flatnonzero(mine & (frame[score].to_numpy() >= 0.5))
                if len(hit):
                    self.bridge.update(buf, drawn[["timestamp", s]].take(hit).reset_index(drop=True))
        return int(mine.sum())

    def _thin(self, drawn, rows, max_rows):
        """At most about ``max_rows`` of ``rows``: per signal, the lowest and highest in each slice of time."""
        from ..report.downsample import minmax_indices

        signals = [c for c in self.columns[1:] if "__" not in c] or self.columns[1:2]
        buckets = max(8, max_rows // (2 * len(signals)))
        t = drawn["timestamp"].to_numpy()[rows].astype("int64").astype("float64")
        keep = [rows[[0, -1]]]
        for s in signals:
            y = drawn[s].to_numpy(dtype="float64", na_value=np.nan)[rows]
            keep.append(rows[minmax_indices(t, y, buckets)])
        return np.unique(np.concatenate(keep))

    def send_forecasts(self, project, span_s: float, min_score: float = 1 / 3) -> int:
        """Replace each signal's forecast segments with ``project(entity, signal)`` for the entities shown.

        ``project`` returns a forecast as :meth:`sbg.detect.forecast.Forecast.projection` does, or None. A
        segment is drawn from the entity's latest row towards the limit while the forecast's score is at
        least ``min_score`` (the band's slow edge reaches the limit within twice the horizon), for at most
        a quarter of the visible ``span_s``. Returns the segments drawn.
        """
        drawn = 0
        for s, buf in self.forecasts.items():
            segments = []
            for e in self.entities:
                p = project(e, s)
                if p is not None and p["score"] >= min_score:
                    segments.append(forecast_segment(p, s, span_s * 0.25))
            drawn += len(segments)
            if not segments and not len(buf.data.dropna(subset=[s])):
                continue  # nothing drawn before, nothing to draw now
            # Unused slots first, the segment that reaches furthest last: its end moves the time axis.
            segments.sort(key=lambda f: f["timestamp"].iat[-1])
            if segments:
                # Bokeh's varea cannot skip NaN: an unused slot is a band of no height on a segment's start.
                blank = pd.concat([segments[0].iloc[:1]] * 3, ignore_index=True).assign(**{s: np.nan})
            else:
                now = buf.data["timestamp"].iat[-1] if len(buf.data) else pd.Timestamp(0)
                blank = pd.DataFrame({"timestamp": [now] * 3, s: np.nan,
                                      **dict.fromkeys(forecast_columns(s)[1:], np.nan)})
            rows = pd.concat([blank] * (max(len(self.slots), 1) - len(segments)) + segments, ignore_index=True)
            self.bridge.update(buf, rows.astype({"timestamp": "datetime64[ns]"}))
        return drawn

    def flush(self) -> int:
        return self.bridge.flush()

    def clear(self):
        self.bridge.clear([*self.slots, *self.flags.values(), *self.quality.values(), *self.forecasts.values()])


def forecast_columns(signal: str) -> list[str]:
    """The columns of a signal's forecast layer: the projected line (named as the signal) and its band."""
    return [signal, f"{signal}__forecast_low", f"{signal}__forecast_high"]


def forecast_segment(p: dict, signal: str, max_s: float) -> pd.DataFrame:
    """Three rows: the projection at its time, where it reaches the limit (or ``max_s`` on), and a break.

    The band is the slope's interval: ``level + slope_low * h`` to ``level + slope_high * h``.
    """
    ahead = p["minutes_to_cross"] * 60.0
    ahead = max_s if not np.isfinite(ahead) else min(max(ahead, 1.0), max_s)
    t0 = pd.Timestamp(p["time"])
    t1 = t0 + pd.Timedelta(seconds=ahead)
    lvl = p["level"]
    low, high = forecast_columns(signal)[1:]
    end = lvl + p["slope"] * ahead
    # The break: NaN ends the dashed line; the band, which cannot skip NaN, closes on no height.
    return pd.DataFrame({"timestamp": [t0, t1, t1], signal: [lvl, end, np.nan],
                         low: [lvl, lvl + p["slope_low"] * ahead, end],
                         high: [lvl, lvl + p["slope_high"] * ahead, end]})


def _element(kind, kdims, vdims, label=""):
    """A DynamicMap callback building one element on the Buffer's frame, untouched.

    A plain closure: bound methods and partials as stream subscribers leaked
    per-session state in HoloViews before 1.23.1.
    """
    hv = _hv()
    cls = getattr(hv, kind)

    def callback(data):
        return cls(data, kdims, vdims, label=label)

    return callback


def signal_view(buffers: LiveBuffers, signal: str, height: int = 210, bands: int = 2):
    """Live curves of one signal for every buffered entity, bands for the first ``bands``, flagged points.

    Each layer is a DynamicMap returning its Buffer's frame untouched; the
    band is drawn from the curve's own source (its bounds ride along as
    hover columns), so one source per entity streams curve and band
    together. Register the pane showing it with ``buffers.bridge.watch``.
    The dashboard draws one shared entity legend instead of one per plot.
    """
    hv = _hv()
    # Five time ticks at most, and labels that would overlap left out (spaced_labels): a plot half a
    # notebook wide has room for three.
    common = dict(responsive=True, height=height, show_legend=False, xlabel="", ylabel=signal, show_grid=True,
                  toolbar="right", backend_opts=CANVAS, xticks=5)
    layers = []
    lower, upper = f"{signal}__lower", f"{signal}__upper"
    for i, buf in enumerate(buffers.slots):
        color = ENTITY_COLORS[i % len(ENTITY_COLORS)]
        vdims, hooks = [signal], [sync_hook, spaced_labels]
        if i < bands:
            vdims, hooks = [signal, lower, upper], [sync_hook, spaced_labels, band_hook(lower, upper, color)]
        curve = hv.DynamicMap(_element("Curve", "timestamp", vdims), streams=[buf])
        layers.append(curve.opts(color=color, line_width=1.5, tools=["hover"], hooks=hooks, **common))
    if layers:
        # The limit forecast: dashed, in the warning colour, with the slope's band, drawn from its own source.
        fc_cols = forecast_columns(signal)
        forecast = hv.DynamicMap(_element("Curve", "timestamp", fc_cols), streams=[buffers.forecasts[signal]])
        # Hover puts the band's columns in the layer's source, where the band hook finds them.
        layers.append(forecast.opts(color=STATE_COLORS["warning"], line_dash="dashed", line_width=2, tools=["hover"],
                                    hooks=[sync_hook, spaced_labels,
                                           band_hook(fc_cols[1], fc_cols[2], STATE_COLORS["warning"], 0.3)],
                                    **common))
        quality = hv.DynamicMap(_element("Scatter", "timestamp", signal), streams=[buffers.quality[signal]])
        layers.append(quality.opts(color=STATE_COLORS["data quality"], size=FLAG_SIZE, marker="square",
                                   line_color="white", line_width=1.5, hooks=[sync_hook, spaced_labels], **common))
        flags = hv.DynamicMap(_element("Scatter", "timestamp", signal), streams=[buffers.flags[signal]])
        layers.append(flags.opts(color=STATE_COLORS["critical"], size=FLAG_SIZE, marker="circle", line_color="white",
                                 line_width=1.5, hooks=[sync_hook, spaced_labels], **common))
    if not layers:
        return hv.Curve([], "timestamp", signal).opts(**common)
    # Collated, the overlay keeps each layer tied to its own Buffer.
    return hv.Overlay(layers).collate()


def _activity_labels(frame: pd.DataFrame) -> pd.DataFrame:
    # Minutes ago, short enough for a narrow axis; object dtype because HoloViews
    # reshapes categorical values, which pandas' Arrow-backed strings refuse.
    labels = [str(i - len(frame) + 1) for i in range(len(frame))]
    return frame.assign(label=pd.Series(labels, index=frame.index, dtype=object))


def spaced_labels(plot, element):
    """A hook leaving out the x-axis labels that would overlap (Bokeh's ``NoOverlap``), as a narrow plot needs."""
    from bokeh.models import NoOverlap

    for axis in plot.state.xaxis:
        if not isinstance(axis.major_label_policy, NoOverlap):  # once: hooks run on every update
            axis.major_label_policy = NoOverlap()


def activity_element(frame: pd.DataFrame, height: int = 190):
    """Rows ingested (bars) and alerts raised (red line, right axis) per minute.

    Untitled: the dashboard titles it in the page, where a narrow column wraps
    the title instead of clipping it.
    """
    hv = _hv()
    frame = _activity_labels(frame)
    rows = hv.Bars(frame, "label", "rows").opts(color="#2563eb", alpha=0.8, tools=["hover"], ylabel="rows / min")
    alerts = hv.Curve(frame, "label", "alerts").opts(color=STATE_COLORS["critical"], line_width=2, tools=["hover"],
                                                   ylabel="alerts / min")
    points = hv.Scatter(frame, "label", "alerts").opts(color=STATE_COLORS["critical"], size=6)
    return (rows * alerts * points).opts(multi_y=True, responsive=True, height=height, show_legend=False,
                                         xlabel="minutes ago", framewise=True,
                                         backend_opts=CANVAS, hooks=[_short_counts, spaced_labels])


def _count_ranges(fig, frame: pd.DataFrame) -> None:
    """Each y-axis of an activity chart from 0 to its counts' top (at least 1)."""
    for name, y_range in [("rows", fig.y_range), *fig.extra_y_ranges.items()]:
        if name in frame:
            values = frame[name].to_numpy(dtype=float)
            top = float(np.nanmax(values)) if np.isfinite(values).any() else 0.0
            y_range.start, y_range.end = 0, max(top * 1.1, 1)


def _short_counts(plot, element):
    """Counts on every y-axis as 150k, not 1.500e+5 (a replay at max ingests that much a minute), each axis
    from 0 to its data's top: HoloViews does not move the second axis of a ``multi_y`` overlay on updates."""
    from bokeh.models import NumeralTickFormatter

    fig = plot.state
    for axis in [*fig.left, *fig.right]:
        if hasattr(axis, "formatter"):
            axis.formatter = NumeralTickFormatter(format="0.[0]a")
    _count_ranges(fig, pd.DataFrame({d.name: layer.dimension_values(d) for layer in element.values()
                                     for d in layer.vdims}))


def activity_view(pipe, height: int = 190):
    """Activity chart fed by a ``Pipe``: updates replace ten bars, not the plot."""
    hv = _hv()

    def callback(data):
        return activity_element(data, height)

    return hv.DynamicMap(callback, streams=[pipe])


def update_activity(pane, pipe, frame: pd.DataFrame) -> None:
    """New counts for the activity chart ``pane`` shows from ``pipe``.

    The chart's ten bars and points keep their labels: the new counts go
    straight into the Bokeh sources drawn, with the axes, and the Pipe only
    keeps the frame for a later redraw. A full HoloViews update of the chart
    cost every session about a sixth of the server's time. Anything else
    (another shape, a chart not drawn yet) takes the HoloViews route.
    """
    data = _activity_labels(frame)
    plots = drawn_plots(pane)
    sources = [[layer.handles["cds"] for layer in source_layers(plot)] for plot in plots]
    labels = data["label"].tolist()
    if not plots or not all(sources) or any(set(c.data) - set(data) or list(c.data["label"]) != labels
                                            for layer in sources for c in layer):
        pipe.event(data=frame)
        return
    pipe.update(data=frame)
    for plot, layer in zip(plots, sources, strict=True):
        for cds in layer:
            cds.data = {k: data[k].to_numpy() for k in cds.data}
        _count_ranges(plot.state, data)
        plot.push()  # sends the events over the comm in notebooks; no-op when served


def health_element(frame: pd.DataFrame, height: int | None = None):
    """Entity x signal grid coloured by state (normal, warning, critical, stale)."""
    hv = _hv()
    frame = _health_cells(frame)
    n_entities = max(frame["row"].nunique(), 1)
    height = height or health_height(n_entities)
    cmap = {name: STATE_COLORS[name] for name in ("normal", "warning", "critical", "stale", "data quality")}
    # Rows are labelled with ids cut to a readable length (a long id would squeeze the grid); hover shows it whole.
    return hv.HeatMap(frame, ["signal", "row"], ["state_name", "entity_id", "score", "last_seen"]).opts(
        hover_tooltips=[("entity", "@entity_id"), ("signal", "@signal"), ("state", "@state_name"),
                        ("score", "@score"), ("last seen", "@last_seen")],
        cmap=cmap, color="state_name", responsive=True, height=height, tools=["hover"], xlabel="", ylabel="",
        line_color="white", line_width=2 if n_entities <= 40 else 0, colorbar=False, show_legend=False,
        invert_yaxis=True, xrotation=30, framewise=True, toolbar=None,
        fontsize={"yticks": 7 if n_entities > 40 else 9, "xticks": 9},
        yaxis=None if n_entities > 80 else "left", backend_opts=CANVAS,
    )


def _health_cells(frame: pd.DataFrame | None) -> pd.DataFrame:
    """The health grid's cells: a row label, the state's name and the hover's columns, per entity and signal."""
    if frame is None or frame.empty:
        frame = pd.DataFrame({"signal": pd.Series([], dtype=object), "entity": pd.Series([], dtype=object),
                              "state_name": pd.Series([], dtype=object), "score": [], "last_seen": []})
        return frame.assign(row=frame["entity"], entity_id=frame["entity"])
    entity = frame["entity"].astype(str)
    return frame.assign(state_name=frame["state"].map(STATE_LABELS).astype(object),
                        score=frame["score"].round(3), last_seen=frame["last_seen"].astype(str).astype(object),
                        entity_id=entity.astype(object), row=short_labels(entity).astype(object),
                        signal=frame["signal"].astype(object))


def update_health(pane, pipe, frame: pd.DataFrame) -> None:
    """New states for the health grid ``pane`` shows from ``pipe``.

    When the grid has the same cells, their colours and hover values go
    straight into the Bokeh source drawn, and the Pipe only keeps the frame
    for a later redraw: states change about every second in a running fleet,
    and a HoloViews update of the grid (which walks the page's whole model
    graph) cost a third of the server's time with 20 sessions open. A grid
    with other cells is drawn by HoloViews.
    """
    from holoviews.core.util import is_nan

    hv = _hv()
    cells = _health_cells(frame)
    plots = drawn_plots(pane)
    sources = [plot.handles.get("cds") for plot in plots]
    keyed = cells.set_index(["signal", "row"])
    if not plots or frame is None or frame.empty or any(cds is None for cds in sources) \
            or not keyed.index.is_unique:
        pipe.event(data=frame)
        return
    columns = {"zvalues": "state_name", "color": "state_name", "state_name": "state_name",
               "entity_id": "entity_id", "score": "score", "last_seen": "last_seen"}
    updates = []
    for cds in sources:
        drawn = pd.MultiIndex.from_arrays([list(cds.data["signal"]), list(cds.data["row"])])
        if len(drawn) != len(keyed) or set(cds.data) - {"signal", "row", *columns} or \
                not drawn.isin(keyed.index).all():
            pipe.event(data=frame)
            return
        aligned = keyed.loc[drawn]
        # The colour columns hold the state's name; the hover columns text, as HoloViews writes them.
        update = {k: aligned["state_name"].tolist() for k in ("zvalues", "color") if k in cds.data}
        for k in ("state_name", "entity_id", "score", "last_seen"):
            if k in cds.data:
                dim = hv.Dimension(k)
                update[k] = ["-" if is_nan(v) else dim.pprint_value(v) for v in aligned[k]]
        updates.append(update)
    pipe.update(data=frame)
    for plot, cds, data in zip(plots, sources, updates, strict=True):
        cds.data.update(data)
        plot.push()  # sends the events over the comm in notebooks; no-op when served


def short_labels(labels: pd.Series, limit: int = 16) -> pd.Series:
    """``labels`` cut to ``limit`` characters with an ellipsis, still one distinct label per distinct id.

    >>> short_labels(pd.Series(["B01", "cell-rack-0001-module-a", "cell-rack-0001-module-b"])).tolist()
    ['B01', 'cell-rack-0001-…', 'cell-rack-0001-… (2)']
    """
    labels = labels.astype(str)
    distinct = pd.unique(labels)
    short, seen = {}, {}
    for label in distinct:
        cut = label if len(label) <= limit else label[: limit - 1] + "…"
        n = seen[cut] = seen.get(cut, 0) + 1
        short[label] = cut if n == 1 else f"{cut} ({n})"
    return labels.map(short)


def blank_health(signals, rows: int = 8) -> pd.DataFrame:
    """A health frame of ``rows`` placeholder entities, for a grid drawn before any data (and kept hidden).

    Rows that arrive later change the drawn grid in place: a grid drawn anew
    replaces models, which makes Bokeh walk the whole page's model graph.
    """
    cells = [(f"slot {i + 1}", s) for i in range(rows) for s in signals]
    return pd.DataFrame({"entity": [e for e, _ in cells], "signal": [s for _, s in cells], "state": 3,
                         "score": np.nan, "last_seen": pd.NaT})


def health_height(n_entities: int) -> int:
    """Pixel height that keeps rows readable for a few entities and the grid usable for hundreds."""
    return int(min(max(150, 24 * n_entities + 70), 620))


def health_view(pipe, height: int):
    """Fleet grid fed by a ``Pipe``."""
    hv = _hv()

    def callback(data):
        return health_element(data, height)

    return hv.DynamicMap(callback, streams=[pipe])


def baseline_view(reference: pd.DataFrame | None, live_buffer, x: str, y: str, size: float = 4, height: int = 320):
    """Baseline points (blue) with density contours against live points (slate) in the x-y plane.

    Live points are not red: red means "flagged" everywhere else. Without a
    baseline the title says how to give one.
    """
    hv = _hv()
    layers = []
    if reference is not None and x in reference and y in reference:
        ref = reference[[x, y]].dropna()
        if len(ref) > 4000:
            ref = ref.sample(4000, random_state=0)
        layers.append(hv.Points(ref, [x, y], label="baseline").opts(color="#2563eb", alpha=0.25, size=size))
        if len(ref) > 20:
            layers.append(hv.Bivariate(ref, [x, y]).opts(
                filled=False, cmap=["#1e3a8a"], levels=6, alpha=0.8, show_legend=False))
    live = hv.DynamicMap(_element("Points", [x, y], [], label="live"), streams=[live_buffer])
    title = (f"Baseline vs live: {x} / {y}" if layers else
             f"Live: {x} / {y} (no baseline: pick one in the sidebar, or --baseline)")
    layers.append(live.opts(color=LIVE_COLOR, size=size, alpha=0.6, responsive=True, height=height,
                            title=title, show_grid=True, show_legend=True,
                            hooks=[sync_hook], backend_opts=CANVAS))
    return hv.Overlay(layers).collate()


def static_signal_view(frame: pd.DataFrame, signal: str, entities=None, width: int = 900, height: int = 220):
    """A static curve, band and flagged points per entity from retained history (for reports)."""
    hv = _hv()
    layers = []
    entities = entities if entities is not None else sorted(frame["entity"].astype(str).unique())
    for i, e in enumerate(entities):
        rows = frame[frame["entity"].astype(str) == e]
        color = ENTITY_COLORS[i % len(ENTITY_COLORS)]
        if f"{signal}__lower" in rows:
            layers.append(hv.Area(rows, "timestamp", [f"{signal}__lower", f"{signal}__upper"]).opts(
                color=color, alpha=0.12, line_alpha=0))
        layers.append(hv.Curve(rows, "timestamp", signal, label=str(e)).opts(color=color, line_width=1.2))
        quality = rows[rows.get(f"{signal}__quality", pd.Series(0, index=rows.index)) >= 0.5]
        layers.append(hv.Scatter(quality, "timestamp", signal).opts(color=STATE_COLORS["data quality"], size=7,
                                                                    marker="square"))
        flagged = rows[rows.get(f"{signal}__score", pd.Series(0, index=rows.index)) >= 0.5]
        layers.append(hv.Scatter(flagged, "timestamp", signal).opts(color=STATE_COLORS["critical"], size=7))
    return hv.Overlay(layers).opts(width=width, height=height, title=signal, show_grid=True)
