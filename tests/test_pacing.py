"""The pacer stretches the sessions' update periods while the server's loop runs late (sbg.pacing)."""

import asyncio
import gc
import time

from sbg.pacing import Pacer


def feed(pacer, lag, seconds, start):
    """Probes every 100 ms for ``seconds``, each ``lag`` late; returns the stretch after each window."""
    seen = []
    for i in range(int(seconds * 10)):
        pacer.observe(lag(pacer) if callable(lag) else lag, now=start + i * 0.1)
        if not seen or seen[-1] != pacer.stretch:
            seen.append(pacer.stretch)
    return seen


def test_a_loop_on_time_keeps_the_full_rates():
    p = Pacer()
    feed(p, 0.005, 60, start=0)
    assert p.stretch == 1.0


def test_a_late_loop_stretches_up_to_the_cap_then_eases_back():
    p = Pacer(max_stretch=10)
    feed(p, 0.5, 30, start=0)
    assert p.stretch == 10
    feed(p, 0.001, 40, start=30)
    assert p.stretch == 1.0


def test_the_stretch_settles_where_the_load_fits():
    # A loop whose lag falls as the updates are spaced out: 600 ms at the full rates, 600/stretch ms stretched.
    p = Pacer(max_stretch=20)
    steps = feed(p, lambda p: 0.6 / p.stretch, 120, start=0)
    # Grows while over 200 ms (stretch < 3), then holds: the lag is between 100 and 200 ms from 3 to 6.
    assert 3 <= p.stretch <= 6
    assert steps == sorted(steps), "it only grew: no swinging back and forth"


def test_probes_measure_a_blocked_loop():
    async def main():
        p = Pacer(interval=0.05, window=0.2)
        p.start()
        await asyncio.sleep(0.12)
        time.sleep(0.4)  # a callback holding the loop
        await asyncio.sleep(0.06)  # the probe after it
        gc.collect()  # a full collection holds the loop too: timed apart
        p._task.cancel()
        gc.callbacks.remove(p._on_gc)
        return p.summary()

    summary = asyncio.run(main())
    assert summary["lag_max_ms"] >= 250
    assert summary["stretch"] == 1.5
    assert summary["lag_samples"] >= 4
    assert summary["full_collections"] >= 1 and summary["full_collection_max_ms"] > 0


def test_a_paced_session_says_so_on_its_live_indicator(monkeypatch):
    from sbg import app
    from sbg.monitor import Monitor
    from sbg.pacing import PACER

    view = app.Dashboard(Monitor([app._bundled_data_dir() / "battery_fleet.csv.gz"]))
    try:
        view._update_fast()
        assert "plots update every" not in view.live_indicator.object
        monkeypatch.setattr(app.Dashboard, "_served", staticmethod(lambda: True))
        monkeypatch.setattr(PACER, "stretch", 3.0)
        view._update_fast()
        assert "plots update every 0.3 s to keep the busy server responsive" in view.live_indicator.object
    finally:
        view.close()


def test_frozen_survivors_are_thawed_when_a_session_goes_and_when_due():
    """Served, the survivors of a full collection are frozen out of the collector's walks; a closed
    session's objects (cyclic garbage among frozen objects) are freed once it thaws them."""
    import weakref

    class Node:
        def __init__(self):
            self.me = self  # a cycle: only the collector frees it

    p = Pacer(refresh=60)
    p.freeze = True
    gc.callbacks.append(p._on_gc)
    try:
        node = Node()
        alive = weakref.ref(node)
        gc.collect()
        p._freeze_step(now=0.0)
        assert gc.get_freeze_count() > 0 and p.summary()["full_collections"] >= 1
        del node
        gc.collect()
        assert alive() is not None, "frozen: not looked at by the collector"
        p.thaw()
        p._freeze_step(now=time.monotonic() + 2)  # a second's grace after the close
        assert gc.get_freeze_count() == 0
        gc.collect()
        assert alive() is None, "thawed: the cycle is garbage again and freed"
        # And without any session closing, everything is thawed every `refresh` seconds.
        p._freeze_step(now=100.0)
        assert gc.get_freeze_count() > 0
        p._freeze_step(now=159.0)
        assert gc.get_freeze_count() > 0
        p._freeze_step(now=161.0)
        assert gc.get_freeze_count() == 0
    finally:
        gc.callbacks.remove(p._on_gc)
        gc.unfreeze()
