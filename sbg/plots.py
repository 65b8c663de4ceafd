"""HoloViews views of a run: live, fed by bounded Buffers, and static, from history.

The streamz -> HoloViews bridge is sbg's own (HoloViews 1.23 dropped its
streamz support). :class:`LiveBuffers` takes enriched chunks from a monitor
and sends the new rows to bounded ``hv.streams.Buffer`` objects, one per
entity; each DynamicMap returns its Buffer's data unchanged, so Bokeh streams
only the new rows to the browser. Derived columns (the band, the scores) come
from the pipeline, never from plot callbacks.

Colours carry one meaning everywhere, in the dashboard and in reports:
:data:`STATE_COLORS` for normal / warning / critical / stale, and a
categorical palette without reds or ambers for entities.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "STATE_COLORS",
    "ENTITY_COLORS",
    "LiveBuffers",
    "signal_view",
    "activity_view",
    "activity_element",
    "health_view",
    "health_element",
    "baseline_view",
    "static_signal_view",
]

STATE_COLORS = {
    "normal": "#16a34a",
    "info": "#0284c7",
    "warning": "#d97706",
    "critical": "#dc2626",
    "stale": "#9ca3af",
}
#: Entity colours: blues, teals, purples and greys, so no entity looks like a warning.
ENTITY_COLORS = ["#2563eb", "#0d9488", "#7c3aed", "#475569", "#0891b2", "#4f46e5", "#15803d", "#a21caf",
                 "#1e40af", "#0f766e", "#6d28d9", "#334155"]
STATE_LABELS = {0: "normal", 1: "warning", 2: "critical", 3: "stale"}


def _hv():
    import holoviews as hv
    import holoviews.plotting.bokeh  # noqa: F401  (registers the Bokeh backend without notebook output)

    if hv.Store.current_backend != "bokeh":
        hv.Store.set_current_backend("bokeh")
    return hv


class LiveBuffers:
    """Bounded per-session Buffers for the selected entities.

    One Buffer per entity (its curves and bands for every signal) and one per
    signal for flagged points. :meth:`send` updates every Buffer a chunk
    touches and then triggers them together, so each plot refreshes once per
    send however many entities moved.

    Parameters
    ----------
    signals : list of str
    entities : list of str
        The entities shown (the dashboard's filter); others are ignored.
    length : int
        Rows kept per entity Buffer (bounded memory per session).
    """

    def __init__(self, signals, entities, length: int = 20_000, flag_length: int = 2_000):
        hv = _hv()
        self.signals = list(signals)
        self.entities = [str(e) for e in entities]
        self.columns = ["timestamp"]
        for s in self.signals:
            self.columns += [s, f"{s}__lower", f"{s}__upper"]
        self.buffers = {e: hv.streams.Buffer(self._empty(self.columns), length=length, index=False)
                        for e in self.entities}
        self.flags = {s: hv.streams.Buffer(self._empty(["timestamp", s]), length=flag_length, index=False)
                      for s in self.signals}

    @staticmethod
    def _empty(columns):
        data = {c: pd.Series([], dtype="float64") for c in columns}
        data["timestamp"] = pd.Series([], dtype="datetime64[ns]")
        return pd.DataFrame(data)

    def send(self, frame: pd.DataFrame) -> int:
        """Push the rows of ``frame`` (enriched chunk or history) to the Buffers; returns rows sent."""
        hv = _hv()
        if frame is None or len(frame) == 0 or not self.entities:
            return 0
        ent = frame["entity"].astype(str).to_numpy()
        mine = np.isin(ent, self.entities)
        if not mine.any():
            return 0
        frame = frame.loc[mine]
        ent = ent[mine]
        touched = []
        for e, buf in self.buffers.items():
            mask = ent == e
            if not mask.any():
                continue
            part = frame.loc[mask].reindex(columns=self.columns).reset_index(drop=True)
            part["timestamp"] = part["timestamp"].astype("datetime64[ns]")
            buf.update(data=part)
            touched.append(buf)
        for s, buf in self.flags.items():
            score = f"{s}__score"
            if score not in frame.columns:
                continue
            hit = frame[score].to_numpy() >= 0.5
            if hit.any():
                flagged = frame.loc[hit, ["timestamp", s]].reset_index(drop=True)
                flagged["timestamp"] = flagged["timestamp"].astype("datetime64[ns]")
                buf.update(data=flagged)
                touched.append(buf)
        if touched:
            trigger_together(touched)
        return len(frame)

    def clear(self):
        for buf in (*self.buffers.values(), *self.flags.values()):
            buf.clear()


def trigger_together(streams):
    """Trigger several streams so that each subscriber (each plot) refreshes once.

    ``hv.streams.Stream.trigger`` does this too, but compares every Buffer's
    frame with every other (all their parameters are called ``data``) and
    prints a clash warning; plots read their own Buffer, so the merged
    keywords carry nothing they need.
    """
    from collections import defaultdict

    from holoviews.streams import triggering_streams

    contents = {}
    groups = defaultdict(list)
    for stream in streams:
        contents.update(stream.contents)
        stream._on_trigger()
        for precedence, subscriber in stream._subscribers:
            groups[precedence].append(subscriber)
    seen, ordered = set(), []
    for _, subscribers in sorted(groups.items(), key=lambda item: item[0]):
        for subscriber in subscribers:
            if id(subscriber) not in seen:
                seen.add(id(subscriber))
                ordered.append(subscriber)
    errors = []
    with triggering_streams(streams):
        for subscriber in ordered:
            try:
                subscriber(**contents)
            except Exception as exc:  # one broken plot must not starve the others
                errors.append(exc)
    if errors:
        raise errors[0]


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


def signal_view(buffers: LiveBuffers, signal: str, span_s: float, height: int = 210, bands: int = 2):
    """Live curves of one signal for every buffered entity, bands for the first ``bands``, flagged points.

    Each DynamicMap returns the Buffer's frame untouched: Bokeh then streams
    only new rows. The x-range follows the newest data over ``span_s`` seconds.
    Options sit on the layers (an Overlay of DynamicMaps does not pass its own
    down); the dashboard draws one shared entity legend instead of one per plot.
    """
    hv = _hv()
    common = dict(responsive=True, height=height, show_legend=False, xlabel="", ylabel=signal, show_grid=True,
                  hooks=[_follow_hook(span_s)], toolbar="right")
    layers = []
    for i, (entity, buf) in enumerate(buffers.buffers.items()):
        color = ENTITY_COLORS[i % len(ENTITY_COLORS)]
        if i < bands:
            band = hv.DynamicMap(_element("Area", "timestamp", [f"{signal}__lower", f"{signal}__upper"]),
                                 streams=[buf])
            layers.append(band.opts(color=color, alpha=0.13, line_alpha=0, **common))
        curve = hv.DynamicMap(_element("Curve", "timestamp", signal, label=entity), streams=[buf])
        layers.append(curve.opts(color=color, line_width=1.5, tools=["hover"], **common))
    if layers:
        flags = hv.DynamicMap(_element("Scatter", "timestamp", signal), streams=[buffers.flags[signal]])
        layers.append(flags.opts(color=STATE_COLORS["critical"], size=7, marker="circle", line_color="white",
                                 **common))
    if not layers:
        return hv.Curve([], "timestamp", signal).opts(**common)
    # Collated, the overlay keeps each layer tied to its own Buffer (stream
    # mapping), so a Buffer's new rows stream to its layer alone.
    return hv.Overlay(layers).collate()


def _follow_hook(span_s):
    """Show the last ``span_s`` seconds of data: a time span, whatever the row rate."""
    span_ms = span_s * 1000.0

    def hook(plot, element):
        data = element.data
        if not hasattr(data, "columns") or "timestamp" not in data.columns or len(data) == 0:
            return
        end = pd.Timestamp(data["timestamp"].iat[-1]).value / 1e6
        x_range = plot.handles.get("x_range")
        if x_range is not None and getattr(x_range, "end", None) is not None:
            end = max(end, _as_ms(x_range.end) if plot.current_frame is not element else end)
        if x_range is not None:
            x_range.start, x_range.end = end - span_ms, end

    return hook


def _as_ms(value):
    if isinstance(value, (int, float)):
        return float(value)
    return pd.Timestamp(value).value / 1e6


def activity_element(frame: pd.DataFrame, height: int = 190):
    """Rows ingested (bars) and alerts raised (red line, right axis) per minute."""
    hv = _hv()
    # Minutes ago, short enough for a narrow axis; object dtype because HoloViews
    # reshapes categorical values, which pandas' Arrow-backed strings refuse.
    labels = [str(i - len(frame) + 1) for i in range(len(frame))]
    frame = frame.assign(label=pd.Series(labels, index=frame.index, dtype=object))
    rows = hv.Bars(frame, "label", "rows").opts(color="#2563eb", alpha=0.8, tools=["hover"], ylabel="rows / min")
    alerts = hv.Curve(frame, "label", "alerts").opts(color=STATE_COLORS["critical"], line_width=2, tools=["hover"],
                                                   ylabel="alerts / min")
    points = hv.Scatter(frame, "label", "alerts").opts(color=STATE_COLORS["critical"], size=6)
    return (rows * alerts * points).opts(multi_y=True, responsive=True, height=height, show_legend=False,
                                         title="Activity per minute", xlabel="minutes ago", framewise=True)


def activity_view(pipe, height: int = 190):
    """Activity chart fed by a ``Pipe``: updates replace ten bars, not the plot."""
    hv = _hv()

    def callback(data):
        return activity_element(data, height)

    return hv.DynamicMap(callback, streams=[pipe])


def health_element(frame: pd.DataFrame, height: int | None = None):
    """Entity x signal grid coloured by state (normal, warning, critical, stale)."""
    hv = _hv()
    if frame is None or frame.empty:
        frame = pd.DataFrame({"signal": pd.Series([], dtype=object), "entity": pd.Series([], dtype=object),
                              "state_name": pd.Series([], dtype=object), "score": [], "last_seen": []})
    else:
        frame = frame.assign(state_name=frame["state"].map(STATE_LABELS).astype(object),
                             score=frame["score"].round(3), last_seen=frame["last_seen"].astype(str).astype(object),
                             entity=frame["entity"].astype(str).astype(object),
                             signal=frame["signal"].astype(object))
    n_entities = max(frame["entity"].nunique(), 1)
    height = height or health_height(n_entities)
    cmap = {name: STATE_COLORS[name] for name in ("normal", "warning", "critical", "stale")}
    return hv.HeatMap(frame, ["signal", "entity"], ["state_name", "score", "last_seen"]).opts(
        cmap=cmap, color="state_name", responsive=True, height=height, tools=["hover"], xlabel="", ylabel="",
        line_color="white", line_width=2 if n_entities <= 40 else 0, colorbar=False, show_legend=False,
        invert_yaxis=True, xrotation=30, framewise=True, toolbar=None,
        fontsize={"yticks": 7 if n_entities > 40 else 9, "xticks": 9},
        yaxis=None if n_entities > 80 else "left",
    )


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
    """Baseline points (blue) with density contours against live points (red) in the x-y plane."""
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
    layers.append(live.opts(color=STATE_COLORS["critical"], size=size, alpha=0.7, responsive=True, height=height,
                            title=f"Baseline vs live: {x} / {y}", show_grid=True, show_legend=True))
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
        flagged = rows[rows.get(f"{signal}__score", pd.Series(0, index=rows.index)) >= 0.5]
        layers.append(hv.Scatter(flagged, "timestamp", signal).opts(color=STATE_COLORS["critical"], size=5))
    return hv.Overlay(layers).opts(width=width, height=height, title=signal, show_grid=True)
