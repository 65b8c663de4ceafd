"""The dashboard's live plots in process: which entities they draw, and that a fleet appearing does not
make a session rebuild its plots.

A replay of a fleet whose entities come online one after another at ``1000x``, with the session's
periodic callback run after every chunk, as a served session would.
"""

import pandas as pd
import pytest

from sbg.app import Dashboard
from sbg.datasets import DATA_DIR
from sbg.monitor import Monitor

#: Entities coming online one after another, 5 minutes apart, all at 1 Hz.
FLEET = [f"cell-{i:02d}" for i in range(6)]


@pytest.fixture
def staggered(tmp_path):
    t = pd.date_range("2024-06-03 08:00", periods=3600, freq="1s")
    parts = []
    for i, e in enumerate(FLEET):
        part = pd.DataFrame({"timestamp": t[i * 300:], "entity": e})
        part["voltage_v"] = 3.7 + 0.001 * (part.index % 11) + 0.01 * i
        part["temperature_c"] = 25.0 + 0.01 * (part.index % 13)
        parts.append(part)
    frame = pd.concat(parts).sort_values(["timestamp", "entity"], kind="stable")
    path = tmp_path / "staggered.csv"
    frame.to_csv(path, index=False)
    return path


def tick(view):
    view._last_plot = 0.0
    view._tick()


def watched(path, **params):
    """A monitor replaying ``path`` at ``max`` and a dashboard on it whose session ticks after every chunk."""
    monitor = Monitor([path], speed="max")
    view = Dashboard(monitor=monitor, **params)
    monitor.subscribe(lambda chunk: tick(view))
    return monitor, view


def run(monitor, view, until=None):
    """Replay on from where it is, to the end or until ``until()`` holds (then paused)."""
    monitor.run_to_end(on_tick=(lambda: monitor.replay.pause() if until and until() else None))
    tick(view)


def drawn(view):
    """Rows each entity's Buffer holds."""
    return {e: len(buf.data) for e, buf in view.live.buffers.items()}


def test_entities_coming_online_take_the_drawn_slots_without_a_rebuild(staggered):
    monitor, view = watched(staggered, max_entities=4)
    try:
        plots, baseline = view.signals_area.objects[0], view.baseline_pane.object
        assert len(view.live.slots) == 4 and view.live.entities == [] and view.entities == []
        run(monitor, view)
        # The plots drawn before any data are the ones still shown: entities took their slots.
        assert view.signals_area.objects[0] is plots and view.baseline_pane.object is baseline
        assert view.live.entities == FLEET[:4] == view.entities
        rows = drawn(view)
        assert set(rows) == set(FLEET[:4]) and all(rows.values()), rows
        # Every entity can be chosen, and the legend names those drawn.
        assert list(view.param.entities.objects) == FLEET
        for e in FLEET[:4]:
            assert e in view.entity_legend.object
        assert FLEET[4] not in view.entity_legend.object
    finally:
        monitor.close()


def test_a_chosen_selection_is_kept_and_clearing_it_brings_back_the_automatic_one(staggered):
    monitor, view = watched(staggered, max_entities=2)
    try:
        run(monitor, view, until=lambda: len(monitor.pipeline.features.index.labels) >= 3)
        assert view.entities == FLEET[:2]
        view.entities = [FLEET[2]]  # the user's choice
        assert view.live.entities == [FLEET[2]] and len(view.live.slots) == 1
        run(monitor, view)
        # Entities coming online later do not join a chosen selection.
        assert view.entities == [FLEET[2]] == view.live.entities
        assert list(drawn(view)) == [FLEET[2]] and drawn(view)[FLEET[2]] > 0
        view.entities = []
        assert view.live.entities == FLEET[:2] == view.entities and len(view.live.slots) == 2
        # Primed from the retained history.
        assert all(drawn(view).values())
    finally:
        monitor.close()


def test_reset_keeps_the_plots_and_refills_them(staggered):
    monitor, view = watched(staggered, max_entities=3)
    try:
        run(monitor, view)
        plots = view.signals_area.objects[0]
        view._control("reset")
        assert view.signals_area.objects[0] is plots
        assert view.entities == FLEET[:3] and not any(drawn(view).values())
        run(monitor, view)
        assert view.signals_area.objects[0] is plots
        assert view.live.entities == FLEET[:3] and all(drawn(view).values())
    finally:
        monitor.close()


def test_a_session_that_waits_queues_only_the_rows_its_window_shows(staggered):
    """A session that does not tick (its browser behind, or waiting its turn) while an hour replays
    keeps the last 10 minutes in its queue, and one tick then draws the newest rows."""
    monitor = Monitor([staggered], speed="max")
    view = Dashboard(monitor=monitor, window="10 min")
    try:
        monitor.run_to_end()
        queued = pd.concat([chunk for chunk, _ in view._pending])
        newest = queued["timestamp"].max()
        assert newest == pd.Timestamp("2024-06-03 08:59:59") and monitor.metrics.rows_in > 12_000
        # Nothing older than the window but the chunk that straddles its start.
        old = queued["timestamp"] < newest - pd.Timedelta(minutes=10)
        assert old.sum() < len(view._pending[0][0]) and len(queued) < 4_500, (old.sum(), len(queued))
        assert view._pending_state["rows"] == len(queued)
        tick(view)
        assert not view._pending and view._pending_state["rows"] == 0
        drawn_newest = max(buf.data["timestamp"].max() for buf in view.live.buffers.values())
        assert drawn_newest == newest
    finally:
        monitor.close()


def test_the_plots_wait_behind_a_message_until_rows_arrive_and_after_a_reset(staggered):
    monitor, view = watched(staggered)
    try:
        view._update_fast(force=True)
        assert not view.signals_area.visible and view.signals_empty.visible
        assert "<b>voltage_v</b>, <b>temperature_c</b>" in view.signals_empty.object
        run(monitor, view)
        view._update_fast(force=True)
        assert view.signals_area.visible and not view.signals_empty.visible
        view._control("reset")
        view._update_fast(force=True)
        assert not view.signals_area.visible and view.signals_empty.visible
    finally:
        monitor.close()


def test_the_activity_chart_rescales_both_axes_as_counts_change():
    import holoviews as hv

    from sbg.plots import activity_view

    pipe = hv.streams.Pipe(data=pd.DataFrame({"rows": [10, 20, 30], "alerts": [0, 0, 0]}))
    fig = hv.renderer("bokeh").get_plot(activity_view(pipe)).state
    assert (fig.y_range.end, fig.extra_y_ranges["alerts"].end) == (33, 1)
    pipe.send(pd.DataFrame({"rows": [10, 20, 300_000], "alerts": [0, 8, 2]}))
    assert fig.y_range.start == 0 and fig.y_range.end == pytest.approx(330_000)
    assert fig.extra_y_ranges["alerts"].start == 0 and fig.extra_y_ranges["alerts"].end == pytest.approx(8.8)
    assert {type(a.formatter).__name__ for a in [*fig.left, *fig.right]} == {"NumeralTickFormatter"}


def test_long_kpi_values_are_shown_whole_in_a_smaller_font(staggered):
    monitor, view = watched(staggered)
    try:
        run(monitor, view)
        view._update_fast(force=True)
        rows, sim = f"{monitor.metrics.rows_in:,}", f"{pd.Timestamp(monitor.replay.sim_time):%H:%M:%S}"
        assert len(rows) == 6 and f'<div class="value ">{rows}</div>' in view.kpis.object
        assert f'<div class="value small">{sim}</div>' in view.kpis.object
        assert f'title="Rows in: {rows}"' in view.kpis.object
    finally:
        monitor.close()


def test_new_activity_counts_go_into_the_drawn_sources():
    import holoviews as hv
    import panel as pn
    from bokeh.document import Document

    from sbg.plots import activity_view, update_activity

    pipe = hv.streams.Pipe(data=pd.DataFrame({"rows": [10, 20, 30], "alerts": [0, 0, 0]}))
    pane = pn.pane.HoloViews(activity_view(pipe))
    pane.get_root(Document())
    (plot, _), = pane._plots.values()
    sources = [p.handles["cds"] for p in plot.traverse(lambda p: p, [lambda p: "cds" in getattr(p, "handles", {})])]
    assert len(sources) == 3
    new = pd.DataFrame({"rows": [10, 20, 300_000], "alerts": [0, 8, 2]})
    update_activity(pane, pipe, new)
    # The same plot and sources, holding the new counts; the Pipe keeps the frame for a redraw.
    assert pane._plots and next(iter(pane._plots.values()))[0] is plot
    bars, curve, points = sources
    assert list(bars.data["rows"]) == [10, 20, 300_000] and list(curve.data["alerts"]) == [0, 8, 2]
    assert list(points.data["alerts"]) == [0, 8, 2] and pipe.data is new
    fig = plot.state
    assert fig.y_range.end == pytest.approx(330_000) and fig.extra_y_ranges["alerts"].end == pytest.approx(8.8)
    # Another shape (four minutes instead of three) is drawn by HoloViews.
    update_activity(pane, pipe, pd.DataFrame({"rows": [1, 2, 3, 4], "alerts": [0, 1, 0, 0]}))
    assert len(next(iter(pane._plots.values()))[0].traverse(lambda p: p, [lambda p: "cds" in getattr(
        p, "handles", {})])[0].handles["cds"].data["rows"]) == 4


def test_new_health_states_go_into_the_drawn_grid_as_holoviews_would_draw_them():
    import holoviews as hv
    import panel as pn
    from bokeh.document import Document

    from sbg.datasets import DATA_DIR
    from sbg.plots import health_view, update_health

    monitor = Monitor([DATA_DIR / "battery_fleet.csv.gz"], speed="max")
    try:
        monitor.replay.scan()
        monitor.replay.state = "running"
        frames = []
        for steps in (20, 150):
            for _ in range(steps):
                monitor.replay.step()
            frames.append(monitor.health())
    finally:
        monitor.close()
    before, after = frames
    assert (before["state"] != after["state"]).any() and (before["score"] != after["score"]).any()

    def drawn(frame):
        pipe = hv.streams.Pipe(data=frame)
        pane = pn.pane.HoloViews(health_view(pipe, 300))
        pane.get_root(Document())
        (plot, _), = pane._plots.values()
        return pane, pipe, plot

    pane, pipe, plot = drawn(before)
    update_health(pane, pipe, after)
    assert next(iter(pane._plots.values()))[0] is plot and pipe.data is after
    expected = drawn(after)[2].handles["cds"].data
    assert {k: list(v) for k, v in plot.handles["cds"].data.items()} == {k: list(v) for k, v in expected.items()}
    # A grid with other cells (an entity gone) is drawn by HoloViews.
    update_health(pane, pipe, after[after["entity"] != after["entity"].iloc[0]])
    assert len(next(iter(pane._plots.values()))[0].handles["cds"].data["row"]) == len(after) - after[
        "entity"].eq(after["entity"].iloc[0]).sum()


def test_a_stream_echoed_back_by_the_notebook_comm_is_ignored():
    """In a notebook the browser sends every stream back (as milliseconds): the kernel's source must not take it.

    Before, the echo appended the rows a second time and raised NumPy's DTypePromotionError (datetime64 and
    float64) in the comm handler, whose traceback JupyterLab printed above the live dashboard.
    """
    import numpy as np
    from bokeh.models import ColumnDataSource

    from sbg.plots import _python_writes_only

    t = np.array(["2024-06-03T08:00:00", "2024-06-03T08:00:01"], dtype="datetime64[ns]")
    cds = ColumnDataSource({"timestamp": t, "v": np.array([1.0, 2.0])})
    _python_writes_only(cds)
    cds.stream({"timestamp": t[-1:] + np.timedelta64(1, "s"), "v": np.array([3.0])})  # the kernel's own
    assert len(cds.data["timestamp"]) == 3
    echo = {"timestamp": np.array([1717401602000.0]), "v": np.array([3.0])}  # as the browser sends it back
    cds._stream(echo, None, "comm-id")  # what Bokeh's ColumnsStreamedEvent handler calls with the comm as setter
    assert len(cds.data["timestamp"]) == 3 and cds.data["timestamp"].dtype.kind == "M"


def test_events_carry_the_data_time_beside_the_wall_clock():
    m = Monitor([DATA_DIR / "battery_fleet.csv.gz"], speed="max")
    m.run_to_end()
    alerts = [e for e in m.events if e["kind"] == "alert"]
    assert alerts and all(e["sim_time"] for e in alerts)
    first = m.alerts.sort_values("start").iloc[0]
    fired = next(e for e in alerts if e.get("alert_id") == first["id"] and e["message"].startswith("fired"))
    assert pd.Timestamp(fired["sim_time"]) == first["start"]  # when it happened in the data, not when logged


def test_a_looped_replay_keeps_the_alerts_of_earlier_passes():
    m = Monitor([DATA_DIR / "machine_monitor.csv"], speed="max", loop=True)
    while m.replay.loops < 2:
        m.replay.step()
    alerts = m.alerts
    assert set(alerts["pass"]) >= {1, 2}
    assert alerts["id"].is_unique  # each pass's alerts have ids of their own (the alert log keeps both)
    assert (alerts.loc[alerts["pass"] == 1, "state"] == "resolved").all()
