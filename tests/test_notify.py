"""Alert notifications against real receivers: Debian's Prometheus Alertmanager, an HTTP server, a pipe.

Every wait is on a condition with a deadline (``wait_for``); no assertion rests on how fast things run.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import io
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from sbg.alerts.engine import Alert, AlertEngine, Rule
from sbg.alerts.notify import (
    AlertmanagerNotifier,
    JsonLinesNotifier,
    Notifiers,
    WebhookNotifier,
    attach,
    notifiers_from,
    notify_specs,
)
from sbg.errors import ConfigError
from tests import alertmanager as am
from tests.served import free_port

FAST = dict(backoff=0.01, max_backoff=0.05)


def wait_for(cond, timeout=60.0, what="the condition"):
    """Poll ``cond`` until it is true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def make_alert(i=0, entity=None, detector="limits", start="2024-01-01T00:00:00") -> Alert:
    t0 = pd.Timestamp(start)
    return Alert(id=f"alert{i:04d}", rule="limit_breach", entity=entity or f"cell{i}", signal="temperature_c",
                 detector=detector, severity="critical", start=t0, end=None, peak=51.5, peak_score=0.93,
                 peak_time=t0 + pd.Timedelta(seconds=5), message="limit breached: temperature_c = 51.5",
                 source="fleet.csv")


def resolve(alert, seconds=30) -> Alert:
    alert.state, alert.end = "resolved", alert.start + pd.Timedelta(seconds=seconds)
    return alert


def idle(n):
    return n.stats()["queued"] == 0 and n.stats()["inflight"] == 0


# -- a webhook receiver ------------------------------------------------------------------------------
class Receiver:
    """A real HTTP server: answers 200, or what ``script`` says next (a code, or "hang" until released)."""

    def __init__(self):
        self.script: collections.deque = collections.deque()
        self.attempts: list[tuple[dict, bytes]] = []  # every request
        self.delivered: list[dict] = []  # bodies answered 2xx, in order
        self.hanging = 0
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.lock:
                    outer.attempts.append((dict(self.headers), body))
                    action = outer.script.popleft() if outer.script else 200
                if action == "hang":
                    with outer.lock:
                        outer.hanging += 1
                    outer.release.wait(60)
                    action = 200
                if 200 <= action < 300:
                    with outer.lock:
                        outer.delivered.append(json.loads(body))
                try:
                    self.send_response(action)
                    if action == 429:
                        self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"no" if action >= 400 else b"ok")
                except OSError:  # the client gave up on a hanging answer
                    pass

            def log_message(self, *args):
                pass

        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def closing():
    """Notifiers made in a test, closed after it whatever happens."""
    made = []
    yield made.append
    for n in made:
        n.close(timeout=0)


# -- webhooks ------------------------------------------------------------------------------------------
def test_webhook_payload_headers_and_signature(receiver, closing):
    n = WebhookNotifier(receiver.url.replace("http://", "http://bot:p%40ss@"), secret="s3cret", **FAST)
    closing(n)
    alert = make_alert(1, detector="gap")
    assert n.notify("fired", alert)
    wait_for(lambda: n.stats()["sent"] == 1, what="the delivery")
    headers, body = receiver.attempts[0]
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Sbg-Signature"], expected)
    assert headers["Content-Type"] == "application/json" and headers["X-Sbg-Event"] == "fired"
    assert len(headers["X-Sbg-Delivery"]) == 32
    assert headers["Authorization"] == "Basic Ym90OnBAc3M="  # bot:p@ss, taken out of the URL
    msg = json.loads(body)
    assert set(msg) == {"version", "event", "sent_at", "alert"}
    assert msg["version"] == 1 and msg["event"] == "fired" and msg["sent_at"].endswith("Z")
    assert msg["alert"] == {**alert.as_record(), "kind": "quality"}
    assert "p%40ss" not in n.target and "bot" not in n.target and "s3cret" not in repr(n.__dict__.get("target"))

    unsigned = WebhookNotifier(receiver.url, **FAST)
    closing(unsigned)
    unsigned.notify("fired", make_alert(2))
    wait_for(lambda: unsigned.stats()["sent"] == 1, what="the unsigned delivery")
    assert "X-Sbg-Signature" not in receiver.attempts[-1][0]


def test_webhook_dedup_and_event_snapshots(receiver, closing):
    n = WebhookNotifier(receiver.url, **FAST)
    closing(n)
    a = make_alert(3)
    sent = [n.notify("fired", a), n.notify("fired", a)]
    resolve(a)
    sent += [n.notify("resolved", a), n.notify("resolved", a)]
    a.state, a.end, a.reopened = "firing", None, 1
    sent += [n.notify("reopened", a), n.notify("fired", a)]
    resolve(a, 90)
    sent += [n.notify("resolved", a)]
    assert sent == [True, False, True, False, True, False, True]
    # The engine calls subscribers after the whole chunk: the alert may have resolved since it fired.
    b = resolve(make_alert(4))
    assert n.notify("fired", b) and n.notify("resolved", b)
    wait_for(lambda: n.stats()["sent"] == 6, what="six deliveries")
    got = [(m["event"], m["alert"]["id"], m["alert"]["state"], m["alert"]["end"]) for m in receiver.delivered]
    assert got == [("fired", a.id, "firing", None), ("resolved", a.id, "resolved", "2024-01-01T00:00:30"),
                   ("reopened", a.id, "firing", None), ("resolved", a.id, "resolved", "2024-01-01T00:01:30"),
                   ("fired", b.id, "firing", None), ("resolved", b.id, "resolved", "2024-01-01T00:00:30")]
    assert n.stats() == {"sent": 6, "failed": 0, "retried": 0, "dropped": 0, "queued": 0, "inflight": 0}


def test_webhook_retries_5xx_and_429_then_delivers_everything_in_order(receiver, closing):
    receiver.script.extend([500, 503, 429, 502])
    errors = []
    n = WebhookNotifier(receiver.url, retries=5, on_error=errors.append, **FAST)
    closing(n)
    alerts = [make_alert(10 + i) for i in range(10)]
    order = []
    for a in alerts:
        n.notify("fired", a)
        order.append(("fired", a.id))
    for a in alerts:
        n.notify("resolved", resolve(a))
        order.append(("resolved", a.id))
    wait_for(lambda: n.stats()["sent"] == 20, what="all 20 deliveries")
    assert [(m["event"], m["alert"]["id"]) for m in receiver.delivered] == order
    assert n.stats() == {"sent": 20, "failed": 4, "retried": 4, "dropped": 0, "queued": 0, "inflight": 0}
    first = [(h["X-Sbg-Delivery"], body) for h, body in receiver.attempts[:5]]
    assert len(set(first)) == 1  # a retry sends the same bytes under the same delivery id
    assert errors[0].startswith(f"webhook {receiver.url}: HTTP 500") and "retry 1 of 5 in" in errors[0]
    assert "HTTP 429" in errors[2] and "retry 4 of 5" in errors[3]


def test_webhook_4xx_is_not_retried(receiver, closing):
    receiver.script.append(404)
    errors = []
    n = WebhookNotifier(receiver.url, retries=5, on_error=errors.append, **FAST)
    closing(n)
    n.notify("fired", make_alert(20))
    n.notify("fired", make_alert(21))
    wait_for(lambda: n.stats()["sent"] == 1, what="the second delivery")
    assert n.stats() == {"sent": 1, "failed": 1, "retried": 0, "dropped": 1, "queued": 0, "inflight": 0}
    assert len(receiver.attempts) == 2 and receiver.delivered[0]["alert"]["id"] == "alert0021"
    assert len(errors) == 1 and "HTTP 404" in errors[0] and "not retried" in errors[0]


def test_webhook_down_gives_up_after_retries_and_survives_a_failing_on_error(closing):
    errors = []

    def on_error(message):
        errors.append(message)
        raise RuntimeError("the event feed is broken")

    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    n = WebhookNotifier(url, retries=2, on_error=on_error, **FAST)
    closing(n)
    n.notify("fired", make_alert(30))
    wait_for(lambda: n.stats()["dropped"] == 1, what="the give-up")
    n.notify("fired", make_alert(31))
    wait_for(lambda: n.stats()["dropped"] == 2, what="the second give-up: the worker is alive")
    assert n.stats() == {"sent": 0, "failed": 6, "retried": 4, "dropped": 2, "queued": 0, "inflight": 0}
    assert "connection refused, retry 1 of 2 in" in errors[0] and "retry 2 of 2" in errors[1]
    assert "gave up after 3 attempts; 1 notification dropped" in errors[2]


def test_a_hanging_receiver_never_blocks_notify(receiver, closing):
    receiver.script.extend(["hang"] * 2000)
    n = WebhookNotifier(receiver.url, timeout=0.2, retries=1, queue_size=100, **FAST)
    closing(n)
    accepted = [n.notify("fired", make_alert(1000 + i)) for i in range(1000)]
    st = n.stats()
    assert sum(accepted) >= 100 and st["sent"] == 0  # the bound, plus what the worker took meanwhile
    assert st["dropped"] >= accepted.count(False) and st["dropped"] + st["queued"] + st["inflight"] == 1000
    wait_for(lambda: receiver.hanging >= 2, what="attempts to time out")
    before = n.stats()["dropped"]
    undelivered = n.close(timeout=0.5)
    st = n.stats()
    assert st["sent"] == 0 and st["dropped"] == 1000 and st["queued"] == st["inflight"] == 0
    assert undelivered == 1000 - before > 0  # all it still held


def test_drops_beyond_the_queue_bound_are_counted_exactly(receiver, closing):
    receiver.script.append("hang")
    n = WebhookNotifier(receiver.url, timeout=60, retries=0, queue_size=10, **FAST)
    closing(n)
    n.notify("fired", make_alert(2000))
    wait_for(lambda: receiver.hanging == 1, what="the first post to hang")
    accepted = [n.notify("fired", make_alert(2001 + i)) for i in range(100)]
    assert accepted == [True] * 10 + [False] * 90
    assert n.stats() == {"sent": 0, "failed": 0, "retried": 0, "dropped": 90, "queued": 10, "inflight": 1}
    receiver.release.set()
    wait_for(lambda: n.stats()["sent"] == 11, what="the held messages to go")
    assert [m["alert"]["id"] for m in receiver.delivered] == [f"alert{2000 + i:04d}" for i in range(11)]
    assert n.stats()["dropped"] == 90


def test_close_flushes_what_is_queued(receiver):
    n = WebhookNotifier(receiver.url, **FAST)
    for i in range(50):
        n.notify("fired", make_alert(3000 + i))
    assert n.close(timeout=60) == 0
    assert n.stats()["sent"] == 50 and len(receiver.delivered) == 50
    assert not n.notify("fired", make_alert(3100)) and n.stats()["dropped"] == 1
    assert n.close() == 0


def test_close_gives_up_at_its_deadline_and_says_how_many():
    n = WebhookNotifier(f"http://127.0.0.1:{free_port()}/hook", retries=1000, backoff=0.05, max_backoff=0.05)
    for i in range(5):
        n.notify("fired", make_alert(3200 + i))
    assert n.close(timeout=0.5) == 5
    assert n.stats()["dropped"] == 5 and n.stats()["sent"] == 0


# -- JSON lines -----------------------------------------------------------------------------------------
def test_json_lines_one_object_per_line():
    out = io.StringIO()
    n = JsonLinesNotifier(out)
    a = make_alert(40)
    n.notify("fired", a)
    n.notify("fired", a)
    n.notify("resolved", resolve(a))
    assert n.close(timeout=30) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(m["version"], m["event"], m["alert"]["id"], m["alert"]["kind"]) for m in lines] == [
        (1, "fired", a.id, "anomaly"), (1, "resolved", a.id, "anomaly")]
    assert n.stats()["sent"] == 2


def test_json_lines_survive_a_closed_pipe():
    errors = []
    r, w = os.pipe()
    stream = os.fdopen(w, "w")
    os.close(r)  # the reader went away (`sbg watch --json | head -1`)
    n = JsonLinesNotifier(stream, on_error=errors.append)
    assert n.notify("fired", make_alert(41))
    wait_for(lambda: n.stats()["dropped"] == 1, what="the broken pipe to be noticed")
    assert not n.notify("fired", make_alert(42))
    assert n.close(timeout=5) == 0
    assert n.stats() == {"sent": 0, "failed": 1, "retried": 0, "dropped": 2, "queued": 0, "inflight": 0}
    assert "BrokenPipeError" in errors[0]
    stream.close()  # nothing left to raise at exit


# -- configuration --------------------------------------------------------------------------------------
@pytest.mark.parametrize("options, words", [
    ({"webhook": "ftp://example.com/hook"}, "webhook 'ftp://example.com/hook' is not an http:// or https://"),
    ({"alertmanager": "localhost:9093"}, "alertmanager 'localhost:9093' is not an http:// or https://"),
    ({"webhook": {"secret": "x"}}, "webhook needs a URL, got None"),
    ({"webhook": ""}, "webhook needs a URL, got ''"),
    ({"alertmanager": ["http://127.0.0.1:99999"]}, "has an invalid port"),
    ({"webhook": {"url": "http://h/x", "retries": -1}}, "retries must be a number of at least 0, not -1"),
    ({"webhook": {"url": "http://h/x", "secret_env": "SBG_TEST_NO_SUCH_VAR"}}, "SBG_TEST_NO_SUCH_VAR"),
    ({"webhook": {"url": "http://h/x", "colour": "red"}}, "unknown setting(s) ['colour']"),
    ({"slack": "http://h/x"}, "unknown setting(s) ['slack']"),
    ({"jsonl": "yes"}, "jsonl must be true or false"),
    ({"webhook": {"url": "http://h/x", "secret": 1234}}, "secret must be text, not 1234"),
    ({"alertmanager": {"url": "http://h:9093", "generator_url": "sbg"}}, "generator_url 'sbg' is not an http"),
])
def test_bad_settings_are_named(options, words):
    with pytest.raises(ConfigError) as info:
        notify_specs(options, environ={})
    assert words in str(info.value)


def test_settings_build_notifiers_with_secrets_from_the_environment():
    specs = notify_specs({"alertmanager": "http://127.0.0.1:9093/", "jsonl": True,
                          "webhook": ["https://hooks.example.com/a", {"url": "https://hooks.example.com/b",
                                                                     "secret_env": "HOOK_B"},
                                      "https://hooks.example.com/a"]},
                         environ={"SBG_WEBHOOK_SECRET": "from-env", "HOOK_B": "b-secret"})
    assert [(cls.__name__, kw.get("secret")) for cls, kw in specs] == [
        ("AlertmanagerNotifier", None), ("WebhookNotifier", "from-env"), ("WebhookNotifier", "b-secret"),
        ("JsonLinesNotifier", None)]
    ns = notifiers_from({"alertmanager": "http://127.0.0.1:9093/",
                         "webhook": "https://u:pw@hooks.example.com/services/T0/B0/XXXXXXXXXXXXXXXXXXXXXXXX?k=v"},
                        environ={"SBG_WEBHOOK_SECRET": "from-env"})
    try:
        assert isinstance(ns, Notifiers)
        assert [(s["kind"], s["target"]) for s in ns.stats()] == [
            ("alertmanager", "http://127.0.0.1:9093"), ("webhook", "https://hooks.example.com/services/T0/B0/***")]
        assert ns[0].url == "http://127.0.0.1:9093/api/v2/alerts"
        from sbg.serve.exposition import prometheus_text

        text = prometheus_text([], notifiers=ns)
        assert 'sbg_notifications_sent_total{kind="webhook",target="https://hooks.example.com/services/T0/B0/***"} 0' in text
        assert "pw" not in text and "from-env" not in text and "k=v" not in text
    finally:
        assert ns.close(timeout=5) == 0


# -- Prometheus Alertmanager ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory):
    if am.binary() is None:
        pytest.fail(am.MISSING)
    with am.alertmanager(tmp_path_factory.mktemp("alertmanager")) as url:
        yield url


def test_alertmanager_fire_dedup_and_resolve(alertmanager, closing):
    n = AlertmanagerNotifier(alertmanager, generator_url="http://sbg.example/alerts", **FAST)
    closing(n)
    a = make_alert(50, entity="am-cell-50", detector="gap")
    assert n.notify("fired", a)
    assert not n.notify("fired", a)
    found = wait_for(lambda: am.alerts(alertmanager, entity="am-cell-50"), what="the alert in Alertmanager")
    assert len(found) == 1
    got = found[0]
    assert got["labels"] == {"alertname": "limit_breach", "entity": "am-cell-50", "signal": "temperature_c",
                             "severity": "critical", "detector": "gap", "kind": "quality", "source": "fleet.csv"}
    assert got["status"]["state"] == "active"
    assert got["startsAt"].startswith("2024-01-01T00:00:00")
    assert pd.Timestamp(got["endsAt"]) > pd.Timestamp.now(tz="UTC")  # firing: an end ahead, not the data's
    assert got["annotations"]["summary"] == a.message and got["annotations"]["alert_id"] == a.id
    assert got["annotations"]["start"] == "2024-01-01T00:00:00" and got["annotations"]["peak"] == "51.5"
    assert got["generatorURL"] == "http://sbg.example/alerts"
    assert got["receivers"] == [{"name": "logger-care"}]  # deploy/alertmanager.yml's route for quality
    wait_for(lambda: idle(n), what="the queue to drain")
    assert n.stats()["sent"] == 1

    assert n.notify("resolved", resolve(a))
    wait_for(lambda: not am.alerts(alertmanager, entity="am-cell-50"), what="the alert to resolve")
    assert not n.notify("resolved", a)
    wait_for(lambda: idle(n), what="the queue to drain")
    assert n.stats()["sent"] == 2 and n.stats()["failed"] == 0


def test_alertmanager_alerts_stay_firing_while_sbg_says_so(alertmanager):
    n = AlertmanagerNotifier(alertmanager, repeat=1.0, **FAST)
    n.notify("fired", make_alert(60, entity="am-cell-60"))
    first = wait_for(lambda: am.alerts(alertmanager, entity="am-cell-60"), what="the alert")[0]["endsAt"]
    # Re-posted every `repeat` s with an end 4 repeats ahead: its end moves on, it stays active.
    wait_for(lambda: n.stats()["reposted"] >= 2, what="two re-posts")
    later = am.alerts(alertmanager, entity="am-cell-60")
    assert later and later[0]["status"]["state"] == "active"
    assert pd.Timestamp(later[0]["endsAt"]) > pd.Timestamp(first)
    wait_for(lambda: idle(n), what="the queue to drain")
    assert n.stats()["sent"] == 1
    # sbg stops (no resolution): Alertmanager times the alert out by itself.
    assert n.close(timeout=5) == 0
    wait_for(lambda: not am.alerts(alertmanager, entity="am-cell-60"), what="the alert to time out")


def fleet_engine():
    rule = Rule(name="hot", title="too hot", detectors=["limits"], severity="critical", clear_rows=2)
    return AlertEngine([rule], source="fleet")


def feed(engine, flags, start=0, entity="am-engine"):
    n = len(flags)
    frame = pd.DataFrame({"timestamp": pd.date_range("2024-03-01", periods=n, freq="1s")
                          + pd.Timedelta(seconds=start), "entity": [entity] * n,
                          "temperature_c": np.linspace(40, 60, n)})
    scores = np.where(np.asarray(flags, dtype=bool), 0.9, 0.0)[:, None]
    return engine.update(frame, [("limits", "temperature_c")], scores, np.zeros(n, dtype=int),
                         np.arange(start, start + n), [entity])


def test_alertmanager_follows_the_engine(alertmanager, closing):
    engine = fleet_engine()
    n = AlertmanagerNotifier(alertmanager, **FAST)
    closing(n)
    attach(engine, [n])
    assert [e for e, _ in feed(engine, [0, 1, 1, 1])] == ["fired"]
    got = wait_for(lambda: am.alerts(alertmanager, entity="am-engine"), what="the engine's alert")[0]
    assert got["labels"] == {"alertname": "hot", "entity": "am-engine", "signal": "temperature_c",
                             "severity": "critical", "detector": "limits", "kind": "anomaly", "source": "fleet"}
    assert got["receivers"] == [{"name": "engineers"}] and got["startsAt"].startswith("2024-03-01T00:00:01")
    assert [e for e, _ in feed(engine, [0, 0, 0], start=4)] == ["resolved"]
    wait_for(lambda: not am.alerts(alertmanager, entity="am-engine"), what="the resolution")
    wait_for(lambda: idle(n), what="the queue to drain")  # Alertmanager may answer before sent is counted
    assert n.stats()["sent"] == 2


def test_alertmanager_resumed_and_restarted_engines(alertmanager, closing):
    engine = fleet_engine()
    feed(engine, [1, 1, 1], entity="am-resumed")  # fired before "the restart", never seen by this notifier
    resumed = AlertEngine(engine.rules, source="fleet")
    resumed.restore(engine.state())
    n = AlertmanagerNotifier(alertmanager, repeat=1.0, **FAST)
    closing(n)
    attach(resumed, [n])
    wait_for(lambda: am.alerts(alertmanager, entity="am-resumed"), what="the adopted alert")
    wait_for(lambda: n.stats()["reposted"] >= 1, what="the re-post to be counted")
    assert n.stats()["sent"] == 0  # re-posted, not notified again
    resumed.reset()  # the data starts over: the engine lets its alerts go without resolving them
    wait_for(lambda: not am.alerts(alertmanager, entity="am-resumed"), what="the let-go alert to resolve")
