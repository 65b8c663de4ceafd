"""The pacer stretches the sessions' update periods while the server's loop runs late (sbg.serve.pacing)."""

import asyncio
import gc
import socket
import threading
import time

from sbg.serve.pacing import Pacer


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
    from sbg.io.datasets import DATA_DIR
    from sbg.serve.pacing import PACER
    from sbg.stream.monitor import Monitor
    from sbg.ui import dashboard as app

    view = app.Dashboard(Monitor([DATA_DIR / "battery_fleet.csv.gz"]))
    try:
        view.refresh_status()
        assert "plots update every" not in view.status.live_indicator.object
        monkeypatch.setattr(app, "served", lambda: True)  # as under `panel serve`
        monkeypatch.setattr(PACER, "stretch", 3.0)
        view.refresh_status()
        assert "plots update every 0.3 s to keep the busy server responsive" in view.status.live_indicator.object
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


def test_session_updates_take_turns_and_a_request_gets_in_between():
    """Thirty sessions' updates fall due at once; a request comes in while the first one runs. The
    loop runs a turn's budget of updates, looks at its sockets, and runs the rest in later turns."""

    async def main(pacer, sessions=30):
        order, started = [], threading.Event()

        async def update(i):
            await pacer.turn()
            began = time.perf_counter()
            started.set()
            time.sleep(0.01)  # a session's update holding the loop
            pacer.spend(time.perf_counter() - began)
            order.append(i)

        server = await asyncio.start_server(lambda r, w: (order.append("request"), w.close()), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def client():
            started.wait()
            with socket.create_connection(("127.0.0.1", port)) as conn:
                conn.recv(1)  # until the server closes it

        asker = threading.Thread(target=client)
        asker.start()
        await asyncio.gather(*(update(i) for i in range(sessions)))
        while "request" not in order:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(asker.join)
        server.close()
        return order

    pacer = Pacer(turn_budget=0.02)
    order = asyncio.run(main(pacer))
    assert sorted(i for i in order if i != "request") == list(range(30))  # every update ran, once
    assert order.index("request") < 15, order  # served while most updates were still waiting
    assert pacer.summary()["updates_deferred"] > 0
    # Without a budget every update runs in the turn they fell due in, ahead of the request.
    assert asyncio.run(main(Pacer(turn_budget=float("inf"))))[-1] == "request"


def test_updates_taking_most_of_the_loop_stretch_it_though_it_keeps_time():
    """Spread over turns, the updates no longer make the loop late: their share of its time says it is full."""
    p = Pacer(window=1.0)
    for i in range(30):  # 80 ms of updates in every 100 ms, every probe on time
        p.spend(0.08)
        p.observe(0.002, now=i * 0.1)
    assert p.stretch > 1.0 and p.summary()["update_share"] >= 0.5
    for i in range(30, 200):  # a fifth of the time: back to the full rates
        p.spend(0.02)
        p.observe(0.002, now=i * 0.1)
    assert p.stretch == 1.0 and p.summary()["update_share"] < 0.3


def test_a_turn_left_open_on_a_stopped_loop_does_not_hold_the_next_one():
    pacer = Pacer(turn_budget=0.02)
    loop = asyncio.new_event_loop()

    async def spend_a_turn():
        await pacer.turn()
        pacer.spend(1.0)  # over the budget, and the loop stops before its next turn
        loop.stop()

    loop.create_task(spend_a_turn())
    loop.run_forever()
    loop.close()
    assert pacer._spent == 1.0  # the turn never ended on that loop
    asyncio.run(asyncio.wait_for(pacer.turn(), timeout=5))  # a new loop: a new turn at once
