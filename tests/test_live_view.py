"""The dashboard's live plots in process: which entities they draw, and that a fleet appearing does not
make a session rebuild its plots.

A replay of a fleet whose entities come online one after another at ``1000x``, with the session's
periodic callback run after every chunk, as a served session would.
"""

import re

import pandas as pd
import panel as pn
import pytest

from sbg.io.datasets import DATA_DIR
from sbg.stream.monitor import Monitor
from sbg.ui.dashboard import Dashboard

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
    """One run of the session's periodic update, with every queued row drawn."""
    view.session.tick(draw=True)


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
    return {e: len(buf.data) for e, buf in view.plots.live.buffers.items()}


def test_entities_coming_online_take_the_drawn_slots_without_a_rebuild(staggered):
    monitor, view = watched(staggered, max_entities=4)
    try:
        plots, baseline = view.plots.signals_area.objects[0], view.baseline.pane.object
        assert len(view.plots.live.slots) == 4 and view.plots.live.entities == [] and view.entities == []
        run(monitor, view)
        # The plots drawn before any data are the ones still shown: entities took their slots.
        assert view.plots.signals_area.objects[0] is plots and view.baseline.pane.object is baseline
        assert view.plots.live.entities == FLEET[:4] == view.entities
        rows = drawn(view)
        assert set(rows) == set(FLEET[:4]) and all(rows.values()), rows
        # Every entity can be chosen, and the legend names those drawn.
        assert list(view.session.param.entities.objects) == FLEET
        for e in FLEET[:4]:
            assert e in view.plots.entity_legend.object
        assert FLEET[4] not in view.plots.entity_legend.object
    finally:
        monitor.close()


def test_a_chosen_selection_is_kept_and_clearing_it_brings_back_the_automatic_one(staggered):
    monitor, view = watched(staggered, max_entities=2)
    try:
        run(monitor, view, until=lambda: len(monitor.pipeline.features.index.labels) >= 3)
        assert view.entities == FLEET[:2]
        view.entities = [FLEET[2]]  # the user's choice
        assert view.plots.live.entities == [FLEET[2]] and len(view.plots.live.slots) == 1
        run(monitor, view)
        # Entities coming online later do not join a chosen selection.
        assert view.entities == [FLEET[2]] == view.plots.live.entities
        assert list(drawn(view)) == [FLEET[2]] and drawn(view)[FLEET[2]] > 0
        view.entities = []
        assert view.plots.live.entities == FLEET[:2] == view.entities and len(view.plots.live.slots) == 2
        # Primed from the retained history.
        assert all(drawn(view).values())
    finally:
        monitor.close()


def test_reset_keeps_the_plots_and_refills_them(staggered):
    monitor, view = watched(staggered, max_entities=3)
    try:
        run(monitor, view)
        plots = view.plots.signals_area.objects[0]
        view.controls.control("reset")
        assert view.plots.signals_area.objects[0] is plots
        assert view.entities == FLEET[:3] and not any(drawn(view).values())
        run(monitor, view)
        assert view.plots.signals_area.objects[0] is plots
        assert view.plots.live.entities == FLEET[:3] and all(drawn(view).values())
    finally:
        monitor.close()


def test_a_session_that_waits_queues_only_the_rows_its_window_shows(staggered):
    """A session that does not tick (its browser behind, or waiting its turn) while an hour replays
    keeps the last 10 minutes in its queue, and one tick then draws the newest rows."""
    monitor = Monitor([staggered], speed="max")
    view = Dashboard(monitor=monitor, window="10 min")
    try:
        monitor.run_to_end()
        queued = pd.concat(view.session.queued)
        newest = queued["timestamp"].max()
        assert newest == pd.Timestamp("2024-06-03 08:59:59") and monitor.metrics.rows_in > 12_000
        # Nothing older than the window but the chunk that straddles its start.
        old = queued["timestamp"] < newest - pd.Timedelta(minutes=10)
        assert old.sum() < len(view.session.queued[0]) and len(queued) < 4_500, (old.sum(), len(queued))
        assert view.session.queued_rows == len(queued)
        tick(view)
        assert not view.session.queued and view.session.queued_rows == 0
        drawn_newest = max(buf.data["timestamp"].max() for buf in view.plots.live.buffers.values())
        assert drawn_newest == newest
    finally:
        monitor.close()


def test_the_plots_wait_behind_a_message_until_rows_arrive_and_after_a_reset(staggered):
    monitor, view = watched(staggered)
    try:
        view.refresh_status()
        assert not view.plots.signals_area.visible and view.plots.signals_empty.visible
        assert "<b>voltage_v</b>, <b>temperature_c</b>" in view.plots.signals_empty.object
        run(monitor, view)
        view.refresh_status()
        assert view.plots.signals_area.visible and not view.plots.signals_empty.visible
        view.controls.control("reset")
        view.refresh_status()
        assert not view.plots.signals_area.visible and view.plots.signals_empty.visible
    finally:
        monitor.close()


def test_the_activity_chart_rescales_both_axes_as_counts_change():
    import holoviews as hv

    from sbg.ui.plots import activity_view

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
        view.refresh_status()
        rows, sim = f"{monitor.metrics.rows_in:,}", f"{pd.Timestamp(monitor.replay.sim_time):%H:%M:%S}"
        assert len(rows) == 6 and f'<div class="value ">{rows}</div>' in view.status.kpis.object
        assert f'<div class="value small">{sim}</div>' in view.status.kpis.object
        assert f'title="Rows in: {rows}"' in view.status.kpis.object
    finally:
        monitor.close()


def test_new_activity_counts_go_into_the_drawn_sources():
    import holoviews as hv
    import panel as pn
    from bokeh.document import Document

    from sbg.ui.plots import activity_view, update_activity

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

    from sbg.io.datasets import DATA_DIR
    from sbg.ui.plots import health_view, update_health

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

    from sbg.ui.plots import _python_writes_only

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


@pytest.fixture
def fleet_with_a_silent_cell(tmp_path):
    """Three cells at 1 Hz for 20 minutes; ``c3`` stops after 5 minutes."""
    t = pd.date_range("2024-06-03 08:00", periods=1200, freq="1s")
    parts = [pd.DataFrame({"timestamp": t if e != "c3" else t[:300], "entity": e}) for e in ("c1", "c2", "c3")]
    frame = pd.concat(parts).sort_values(["timestamp", "entity"], kind="stable").reset_index(drop=True)
    frame["voltage_v"] = 3.7 + 0.001 * (frame.index % 7)
    path = tmp_path / "fleet.csv"
    frame.to_csv(path, index=False)
    return path


def test_rows_handed_out_but_not_yet_processed_are_behind_not_stale(fleet_with_a_silent_cell):
    """At 1000x a tick of 0.125 s hands out 125 s of rows at once, more than the 60 s of silence that is
    "stale". Looked at while they are being processed (as a Dask fan-out or another thread would), the
    monitor is behind the replay clock; the source is not silent. The wall clock here is a fake one
    (steps of 1/8 s, exact in binary)."""
    monitor = Monitor([fleet_with_a_silent_cell], speed="1000x")
    view = Dashboard(monitor=monitor)
    seen = []

    def look(event):  # the replay's clock has just moved to rows it hands out now
        view.refresh_status()
        seen.append((monitor.data_state(), view.status.live_indicator.object))

    monitor.replay.param.watch(look, "sim_time")
    try:
        replay = monitor.replay
        replay.scan()
        replay.state = "running"
        for i in range(3):  # to 08:04:10, before c3 stops
            replay.step(now=i * 0.125)
            # Between ticks every row handed out is processed: nothing is behind, and nothing silent yet.
            assert monitor.data_state()["state"] == "live" and monitor.data_state()["behind_s"] == 0
        assert seen[0][0]["state"] == "no data"  # the first rows, not yet processed
        during = seen[1:]
        assert [s["state"] for s, _ in during] == ["behind"] * 2
        assert all(s["behind_s"] == 125 and not s["stale_entities"] for s, _ in during)
        for _, label in during:
            assert re.sub(r"<[^>]+>", "", label) == "Live · 2:05 behind"
            assert 'class="sbg-live running"' in label and 'data-data="behind"' in label
        # A cell silent in the data is stale, behind or not: silence is measured at the newest processed row.
        del seen[:]
        for i in range(3, 10):  # to 08:18:45
            replay.step(now=i * 0.125)
            assert monitor.data_state()["stale_entities"] == ["c3"]
            assert monitor.data_state()["state"] == "partly stale"
        assert [s["state"] for s, _ in seen] == ["behind"] + ["partly stale"] * 6
        assert [s["behind_s"] for s, _ in seen] == [125] * 7 and seen[-1][0]["stale_entities"] == ["c3"]
        health = monitor.health()
        assert set(health.loc[health["state"] == 3, "entity"]) == {"c3"}
    finally:
        monitor.close()


def test_a_source_with_nothing_due_is_stale_at_any_speed(tmp_path):
    """The other side of the rule: when the file has no rows for a while, every row handed out is
    processed and the clock runs on alone, and that is silence."""
    t = pd.date_range("2024-06-03 08:00", periods=120, freq="1s")
    frame = pd.DataFrame({"timestamp": t.append(t + pd.Timedelta(minutes=10)), "entity": "c1",
                          "voltage_v": [3.7 + 0.001 * (i % 5) for i in range(240)]})
    path = tmp_path / "gap.csv"
    frame.to_csv(path, index=False)
    monitor = Monitor([path], speed="1000x")
    view = Dashboard(monitor=monitor)
    try:
        replay = monitor.replay
        replay.scan()
        replay.state = "running"
        replay.step(now=0.0)
        replay.step(now=0.125)  # the two minutes of rows before the gap
        replay.step(now=0.375)  # 375 s on: nothing is due
        state = monitor.data_state()
        assert state["state"] == "stale" and state["behind_s"] == 0 and state["silent_s"] == 256
        view.refresh_status()
        label = view.status.live_indicator.object
        assert re.sub(r"<[^>]+>", "", label) == "Live · no data for 4:16"
        assert 'class="sbg-live stale"' in label and 'data-data="stale"' in label
    finally:
        monitor.close()


@pytest.fixture
def data_dir(tmp_path):
    """A data directory the page may choose from: a good file, and files that do not load."""
    import shutil

    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(DATA_DIR / "machine_monitor.csv", folder / "machine_monitor.csv")
    (folder / "empty.csv").write_bytes(b"")
    (folder / "sub" / "no_time.csv").write_text("a,b\nx,1\ny,2\n")
    return folder


def _no_server_path(text, folder):
    return all(form not in text for form in (str(folder), str(folder.resolve()), str(folder.parent)))


def test_a_chosen_source_that_does_not_load_is_named_without_the_server_path(data_dir):
    from sbg.serve import registry

    monitor = Monitor([data_dir / "machine_monitor.csv"])
    view = Dashboard(monitor=monitor, data_dir=str(data_dir))
    view.settings.__panel__()  # laid out: the settings area a change of source redraws
    before = set(registry.monitors())
    try:
        view.sources.source_select.value = "empty.csv"
        shown = view.sources.upload_status.object
        assert "empty.csv: is empty" in shown and _no_server_path(shown, data_dir), shown
        view.sources.source_select.value = "sub/no_time.csv"
        shown = view.sources.upload_status.object
        assert "sub/no_time.csv: no usable timestamp column" in shown and _no_server_path(shown, data_dir), shown
        view.sources.source_select.value = "machine_monitor.csv"
        view.sources.baseline_select.value = "sub/no_time.csv"
        shown = view.sources.upload_status.object
        assert "sub/no_time.csv: no usable timestamp column" in shown and _no_server_path(shown, data_dir), shown
    finally:
        view.close()
        monitor.close()
        for key in set(registry.monitors()) - before:
            registry.monitors().pop(key).close()


def test_a_data_file_deleted_under_a_running_page_is_one_clear_error(data_dir, caplog):
    """The file goes before its rows were counted, then Start is pressed: the page's callbacks and the
    replay task say so in the page, naming the file, and in the log in one line each, without a traceback."""
    import asyncio
    import logging

    path = data_dir / "machine_monitor.csv"
    monitor = Monitor([path], speed="1000x")
    view = Dashboard(monitor=monitor, data_dir=str(data_dir))
    path.unlink()
    caplog.set_level(logging.INFO, logger="sbg")

    def shown():
        return (view.status.banner.object + view.status.empty_state.object + view.status.live_indicator.object
                + view.alerts.feed.object)

    async def press_start_and_wait():
        view.controls.control("start")
        for _ in range(2000):  # the replay task fails at its first read; this bound only ends a hang
            if monitor.replay.state != "running":
                break
            await asyncio.sleep(0.005)

    try:
        for _ in range(3):  # the page's periodic callback, as served: idle, it counts the rows to show
            view.session.tick()
            view.refresh_status()
        assert monitor.metrics.errors == 1  # said once, not at every tick
        assert "machine_monitor.csv</b> (rows not counted)" in view.status.empty_state.object
        asyncio.run(press_start_and_wait())
        assert monitor.replay.state == "stopped" and monitor.metrics.errors == 2
        view.refresh_status()
        view.refresh_fleet()
        text = shown()
        assert "cannot read the data: machine_monitor.csv: No such file or directory; the replay has stopped" in text
        assert "The replay goes on" not in text and "Stopped · 2 errors" in text
        assert _no_server_path(text, data_dir), text
        logged = [r for r in caplog.records if r.name.startswith("sbg")]
        assert len(logged) == 2 and not any(r.exc_info for r in logged), [r.getMessage() for r in logged]
        assert all("machine_monitor.csv" in r.getMessage() and "\n" not in r.getMessage() for r in logged)
    finally:
        view.close()
        monitor.close()


def _page_event(*events):
    """A Bokeh PATCH-DOC message as the page's comm sends it to the kernel."""
    return {"header": {"msgid": "1", "msgtype": "PATCH-DOC"}, "metadata": {}, "content": {"events": list(events)},
            "_buffers": {}}


def _click(button, ref):
    """The event the page sends when ``button`` (a Panel Button drawn under root ``ref``) is clicked."""
    model = button._models[ref][0]
    data = {"type": "event", "name": "button_click", "values": {"type": "map", "entries": [["model", {"id": model.id}]]}}
    return _page_event({"kind": "MessageSent", "msg_type": "bokeh_event", "msg_data": data})


def test_page_events_handled_on_a_subshell_thread_act_on_the_notebooks_own_loop(staggered):
    """JupyterLab sends comm messages to a kernel subshell, which ipykernel 7 runs on a thread and loop of
    its own. The page's clicks must still change the page, and run the replay, on the notebook's loop, where
    the periodic update reads the monitor between chunks and sends the page its messages: from two threads,
    one document's message fragments interleaved and the page froze."""
    import asyncio
    import threading

    import panel as pn

    pn.extension()
    monitor = Monitor([staggered], speed="1000x")
    view = Dashboard(monitor=monitor)
    home = threading.current_thread()
    steps, changes = [], []
    step = monitor.replay.step
    monitor.replay.step = lambda *a, **k: (steps.append(threading.current_thread()), step(*a, **k))[1]
    view.status.live_indicator.param.watch(lambda e: changes.append(threading.current_thread()), "object")

    def from_a_subshell(client, message):
        thread = threading.Thread(target=asyncio.run, args=(_handle(client, message),), name="subshell")
        thread.start()
        thread.join()

    async def _resume():
        monitor.replay.resume()

    async def _handle(client, message):
        client._handle_msg(message)  # as pyviz_comms does with a message from the page

    async def until(test, what):
        for _ in range(4000):  # the bound only ends a wait that would never end
            if test():
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"timed out waiting for {what}")

    async def notebook():
        layout = view.__panel__()  # displayed in the notebook: its updates start on this loop
        layout._repr_mimebundle_()
        (ref, (_, client)), = layout._comms.items()
        monitor.replay.start()
        await until(lambda: monitor.metrics.rows_in > 0 and view.controls.pause_btn.visible, "rows")
        from_a_subshell(client, _click(view.controls.pause_btn, ref))
        await until(lambda: monitor.replay.state == "paused", "the pause")
        paused_at = monitor.metrics.rows_in
        del steps[:], changes[:]
        from_a_subshell(client, _click(view.controls.resume_btn, ref))
        await until(lambda: monitor.metrics.rows_in > paused_at and len(steps) > 3, "rows after Resume")
        speed = view.sources.speed._models[ref][0]
        from_a_subshell(client, _page_event({"kind": "ModelChanged", "model": {"id": speed.id}, "attr": "active",
                                             "new": list(view.sources.speed.options).index("100x")}))
        await until(lambda: monitor.replay.speed == "100x", "the new speed")
        # The replay itself resumed on another thread (a user's own code there) keeps to its loop too.
        monitor.replay.pause()
        resumed_at, before = monitor.metrics.rows_in, len(steps)
        thread = threading.Thread(target=asyncio.run, args=(_resume(),), name="subshell")
        thread.start()
        thread.join()
        await until(lambda: monitor.metrics.rows_in > resumed_at and len(steps) > before + 3, "rows again")
        view.stop_updates()
        monitor.replay.pause()

    try:
        asyncio.run(notebook())
        assert steps and set(steps) == {home}, {t.name for t in steps}
        assert changes and set(changes) == {home}, {t.name for t in changes}
    finally:
        view.close()
        monitor.close()


def test_a_duration_typed_into_the_settings_that_is_not_one_is_refused_in_the_page(caplog):
    """The settings widgets are checked as a settings file is: the detector keeps a value it can use, and
    the box shows that value again, with one line in the log."""
    monitor = Monitor([DATA_DIR / "machine_monitor.csv"])
    view = Dashboard(monitor=monitor)
    try:
        area = view.settings.__panel__()
        box = next(w for w in area.select(pn.widgets.TextInput) if w.name == "False alarm every")
        surprise = next(d for d in monitor.pipeline.detectors if d.label == "surprise")
        box.value = "12h"
        assert surprise.false_alarm_every == "12h"
        with caplog.at_level("WARNING", logger="sbg.detect.detectors"):
            box.value = "next week"
        assert surprise.false_alarm_every == "12h" and box.value == "12h"
        assert any("false_alarm_every must be a positive duration" in r.getMessage() for r in caplog.records)
        # A rule's quiet span too: the engine then clears by it, or keeps the span it had.
        rule = next(r for r in monitor.engine.rules if r.name == "anomaly")
        card = next(c for c in area.select(pn.Card) if c.title == "Rule: anomaly")
        clear = next(w for w in card.select(pn.widgets.TextInput) if w.name == "Clear for")
        clear.value = "10min"
        assert rule.clear_for == "10min" and rule.clear_ns == 600 * 10**9
        with caplog.at_level("WARNING", logger="sbg.detect.detectors"):
            clear.value = "soon"
        assert rule.clear_for == "10min" and rule.clear_ns == 600 * 10**9 and clear.value == "10min"
        assert any("clear_for must be a positive duration" in r.getMessage() for r in caplog.records)
        # A tail probability of 0.001 is a box that shows it, not a 0-1 slider that read "0".
        card = next(c for c in area.select(pn.Card) if c.title == "Detector: surprise")
        shared = next(w for w in card.select(pn.widgets.FloatInput) if w.name == "Shared tail")
        assert shared.value == 0.001
        assert not any(w.name == "Shared tail" for w in card.select(pn.widgets.FloatSlider))
    finally:
        view.close()
        monitor.close()


@pytest.fixture
def slow_logger(tmp_path):
    """One signal named ``value``, every 5 minutes for two weeks: how a univariate logger writes."""
    t = pd.date_range("2024-03-01", periods=4000, freq="5min")
    path = tmp_path / "cpu.csv"
    value = 50.0 + (pd.Series(range(4000)) % 17) * 0.5
    value[3000] = 90.0  # one reading far off: an alert, and an event in the feed
    pd.DataFrame({"timestamp": t, "value": value}).to_csv(path, index=False)
    return path


def test_a_slow_logger_with_one_signal_is_shown_over_a_span_that_holds_its_rows(slow_logger):
    """A 5-minute logger gets a day of view (a ten-minute window held two points), and the baseline card
    says that one signal has no pair to draw (it used to stop the page with an IndexError)."""
    monitor, view = watched(slow_logger)
    try:
        area = view.__panel__()
        run(monitor, view)
        assert view.session.window == "24 h"
        assert min(drawn(view).values()) >= 289  # at least a day of 5-minute rows, both ends in
        assert view.baseline.buffer is None and view.baseline.note.visible and not view.baseline.pane.visible
        assert "this source has one (<b>value</b>)" in view.baseline.note.object
        assert "two signals" in "".join(p.object for p in area.select(pn.pane.HTML)
                                        if isinstance(p.object, str) and "sbg-empty" in p.object)
        # A page opened on rows already seen (a second viewer, or a page after --autostart) fits itself too.
        late = Dashboard(monitor=monitor)
        assert late.session.window == "24 h" and late.baseline.note.visible
        late.close()
        # The data's date stands beside each event's time: a log of days would read ambiguously without it.
        view.alerts.refresh()
        assert re.search(r'<span class="t"[^>]*>03-1\d \d\d:\d\d:\d\d</span>', view.alerts.feed.object)
    finally:
        view.close()
        monitor.close()


def test_a_window_the_user_picked_is_kept_whatever_the_data(slow_logger):
    monitor, view = watched(slow_logger)
    try:
        view.session.window = "1 h"
        run(monitor, view)
        assert view.session.window == "1 h"
        assert min(drawn(view).values()) >= 13  # an hour of 5-minute rows, both ends in
    finally:
        view.close()
        monitor.close()


def test_the_speed_suits_each_source_until_the_user_picks_one(slow_logger, tmp_path):
    """A 5-minute logger replays at 10000x (at 100x it showed a row every 3 s) and the page says so (a speed
    it did not list used to read "max"). A new source gets a speed of its own, unless the user chose one."""
    import shutil

    from sbg.serve import registry

    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(slow_logger, folder / "cpu.csv")
    shutil.copy(DATA_DIR / "machine_monitor.csv", folder / "machine_monitor.csv")
    monitor = registry.monitor_for([folder / "cpu.csv"], serve=registry.ServeConfig())
    switched = []
    view = Dashboard(monitor=monitor, data_dir=str(folder))
    view.sources.switch = switched.append
    before = set(registry.monitors())
    try:
        assert monitor.replay.speed == "10000x"
        assert view.sources.speed.value == "10000x" and "10000x" in view.sources.speed.options
        view.sources.source_select.value = "machine_monitor.csv"  # 1 Hz
        assert switched[-1].replay.speed == "100x"
        view.sources.speed.value = "1000x"  # the user's choice
        assert monitor.replay.speed == "1000x"
        view.sources.source_select.value = "cpu.csv"
        assert switched[-1].replay.speed == "1000x"
    finally:
        view.close()
        for key in set(registry.monitors()) - before | {monitor.key}:
            found = registry.monitors().pop(key, None)
            if found is not None:
                found.close()
