"""Webhooks, against a real HTTP server on loopback: every alert is delivered after retries or
counted failed, a hanging or failing endpoint costs the stream nothing, the body carries the
alert, the run and the snapshot (inline or as a URL), and wrong config says what to do."""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from notify_factories import alerting_run
from prometheus_client.parser import text_string_to_metric_families

from vidqa.config import load_config
from vidqa.errors import ConfigError
from vidqa.notify import Notifiers
from vidqa.store import AlertRecord, EventStore, StoreSink, StreamRecord
from vidqa.web.metrics import Monitor
from vidqa.zones import Alert

Reply = Callable[[dict[str, Any], int], int | None]  # (body, attempt) -> status; None: hang


class Receiver:
    """An HTTP server on 127.0.0.1 that answers each POST as ``reply`` says, and notes the
    bodies it answered 2xx and when it hung (monotonic start of each hang)."""

    def __init__(self, reply: Reply, hang_s: float = 1.0) -> None:
        self.reply, self.hang_s = reply, hang_s
        self.delivered: list[dict[str, Any]] = []
        self.attempts: Counter[int] = Counter()  # alert id -> requests
        self.hangs: list[float] = []
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.headers.append(dict(self.headers))
                alert_id = body["alert"]["alert_id"]
                receiver.attempts[alert_id] += 1
                status = receiver.reply(body, receiver.attempts[alert_id])
                if status is None:
                    receiver.hangs.append(time.monotonic())
                    time.sleep(receiver.hang_s)  # the client has given up by now
                    return
                if 200 <= status < 300:
                    receiver.delivered.append(body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver_of() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(reply: Reply, hang_s: float = 1.0) -> Receiver:
        started.append(Receiver(reply, hang_s))
        return started[-1]

    yield start
    for receiver in started:
        receiver.close()


def flaky(body: dict[str, Any], attempt: int) -> int | None:
    """Alert ids 0 mod 3 always fail (500); 1 mod 3 hang once, then 200; 2 mod 3 get a 500
    once, then 200."""
    kind = body["alert"]["alert_id"] % 3
    if kind == 0:
        return 500
    if attempt == 1:
        return None if kind == 1 else 500
    return 200


@pytest.mark.slow
def test_run_when_endpoint_fails_and_hangs_then_alerts_retried_or_failed_and_frames_flow(
        tmp_path, tiny_vlm_dir, receiver_of) -> None:
    receiver = receiver_of(flaky)
    timeout_s = 0.3
    run = alerting_run(tmp_path, tiny_vlm_dir, f"webhooks=[{{url: '{receiver.url}', "
                       f"timeout_s: {timeout_s}, attempts: 3, backoff_s: 0.05, flush_s: 20, "
                       f"headers: ['X-Token: fixed']}}]", frames=140)
    run.pipeline.run()

    ids = run.ids("alerts")
    counts = run.store.summary()["notify"]["webhooks"][0]
    assert len(ids) >= 20
    assert sorted(b["alert"]["alert_id"] for b in receiver.delivered) == \
        [i for i in ids if i % 3]  # each once, after its retry
    assert counts["delivered"] == len([i for i in ids if i % 3])
    assert counts["failed"] == len([i for i in ids if i % 3 == 0])
    assert all(receiver.attempts[i] == (3 if i % 3 == 0 else 2) for i in ids)
    assert counts["retries"] == sum(receiver.attempts.values()) - len(ids)
    assert counts["dropped"] == counts["undelivered"] == 0
    assert all(h["X-Token"] == "fixed" for h in receiver.headers)
    # while the endpoint hung, the stream kept its frame rate
    times = run.times.times
    hung = sum(any(h <= t < h + timeout_s for h in receiver.hangs) for t in times)
    rest = run.times.rate(times[0], times[-1])
    print(f"fps while the endpoint hung {hung / (len(receiver.hangs) * timeout_s):.2f}, over "
          f"the run {rest:.2f}; {counts}")
    print("a body:", json.dumps(receiver.delivered[0])[:2000])
    assert hung / (len(receiver.hangs) * timeout_s) >= 0.7 * rest


def test_webhook_when_alert_committed_then_body_has_alert_run_and_inline_snapshot(
        tmp_path, receiver_of) -> None:
    receiver = receiver_of(lambda body, attempt: 200)
    jpeg = b"\xff\xd8fake jpeg"
    (tmp_path / "snapshots" / "cam1").mkdir(parents=True)
    (tmp_path / "snapshots" / "cam1" / "alert-7.jpg").write_bytes(jpeg)
    cfg = load_config(None, [f"webhooks=[{{url: '{receiver.url}'}}, {{url: '{receiver.url}', "
                             f"snapshot: url, media_url: 'https://cams.example.com/'}}, "
                             f"{{url: '{receiver.url}', snapshot: none}}]"])
    notifiers = Notifiers.from_config(cfg)
    notifiers.start(3, tmp_path / "run", tmp_path)
    alert = {"alert_id": 7, "event": "alert", "rule": "no_hat", "stream_id": "cam1",
             "snapshot": "snapshots/cam1/alert-7.jpg"}
    notifiers.committed([("cam1", "streams", {"source": "x"}), ("cam1", "events", {}),
                         ("cam1", "alerts", alert)])
    notifiers.close("completed")

    none, inline, url = sorted(receiver.delivered, key=lambda b: list(b["snapshot"] or {}))
    assert inline["alert"] == url["alert"] == alert and inline["stream_id"] == "cam1"
    assert inline["run"] == {"id": 3, "dir": str(tmp_path / "run")}
    assert base64.b64decode(inline["snapshot"]["base64"]) == jpeg
    assert url["snapshot"]["url"] == "https://cams.example.com/media/snapshots/cam1/alert-7.jpg"
    assert none["snapshot"] is None
    assert [s["delivered"] for s in notifiers.summary()["webhooks"]] == [1, 1, 1]


def test_webhook_when_rules_named_then_only_their_alerts_are_sent(tmp_path, receiver_of) -> None:
    receiver = receiver_of(lambda body, attempt: 200)
    cfg = load_config(None, ["zones=[{name: z, polygon: [[0, 0], [9, 0], [9, 9]]}]",
                             "rules=[{name: a, question: jeans, answer: 'yes', zone: z}, "
                             "{name: b, question: jeans, answer: 'no', zone: z}]",
                             f"webhooks=[{{url: '{receiver.url}', rules: [b]}}]"])
    notifiers = Notifiers.from_config(cfg)
    notifiers.start(1, tmp_path, tmp_path)
    notifiers.committed([("0", "alerts", {"alert_id": i, "rule": rule})
                         for i, rule in enumerate("abab")])
    notifiers.committed([("0", "alerts", {"event": "clip", "clip": "clips/0/a.webm",
                                          "alert_ids": [1, 3]})])  # a clip is not an alert
    notifiers.close("completed")

    assert [b["alert"]["alert_id"] for b in receiver.delivered] == [1, 3]


def test_webhook_when_queue_is_full_then_oldest_dropped_counted_and_committed_never_waits(
        tmp_path, receiver_of) -> None:
    receiver = receiver_of(lambda body, attempt: None, hang_s=5.0)  # hangs on everything
    cfg = load_config(None, [f"webhooks=[{{url: '{receiver.url}', timeout_s: 0.2, "
                             f"attempts: 1, queue_size: 3, flush_s: 0.5}}]"])
    notifiers = Notifiers.from_config(cfg)
    notifiers.start(1, tmp_path, tmp_path)
    started = time.monotonic()
    notifiers.committed([("0", "alerts", {"alert_id": i, "rule": "r"}) for i in range(50)])
    handed_s = time.monotonic() - started
    notifiers.close("completed")

    counts = notifiers.summary()["webhooks"][0]
    assert handed_s < 0.5  # only queued
    assert counts["dropped"] >= 46  # the first may already be on its way
    assert counts["dropped"] + counts["failed"] + counts["undelivered"] == 50


@pytest.mark.parametrize("hook, error", [
    ("{url: 'ftp://x'}", "must start with http:// or https://"),
    ("{url: 'http://x', snapshot: url}", "needs media_url"),
    ("{url: 'http://x', rules: [nope]}", "unknown rule 'nope'; valid rules: none"),
    ("{url: 'http://x', headers: ['no colon']}", "must read 'Name: value'"),
    ("{url: 'http://x', headers: ['Authorization: Bearer ${VIDQA_TEST_UNSET}']}",
     "VIDQA_TEST_UNSET, which is not set: export VIDQA_TEST_UNSET="),
    ("{url: 'http://x', attempts: 0}", "attempts = 0 is out of range"),
])
def test_webhooks_config_when_wrong_then_error_says_what_to_do(hook: str, error: str,
                                                               monkeypatch) -> None:
    monkeypatch.delenv("VIDQA_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError, match=error.replace("$", r"\$")):
        load_config(None, [f"webhooks=[{hook}]"])


def test_metrics_when_a_store_notifies_then_each_channel_is_counted(tmp_path, receiver_of) -> None:
    receiver = receiver_of(lambda body, attempt: 200 if body["alert"]["alert_id"] else 404)
    cfg = load_config(None, [f"webhooks=[{{url: '{receiver.url}?key=k', attempts: 1}}]"])
    store = EventStore(cfg, tmp_path).open()
    store.notify.committed([("0", "alerts", {"alert_id": i, "rule": "r"}) for i in range(3)])
    store.close("completed")
    monitor = Monitor()
    monitor.store = store

    found = {f.name: f for f in text_string_to_metric_families(monitor.exposition().decode())}
    samples = {(f.name, s.labels["channel"]): s.value for f in found.values()
               for s in f.samples if "channel" in s.labels}
    assert samples[("vidqa_notify_delivered", receiver.url)] == 2  # the query string left out
    assert samples[("vidqa_notify_failed", receiver.url)] == 1  # a 404 is not tried again
    assert samples[("vidqa_notify_dropped", receiver.url)] == 0


def test_store_when_it_notifies_then_the_alert_is_already_committed(tmp_path,
                                                                    receiver_of) -> None:
    committed: list[bool] = []

    def reply(body: dict[str, Any], attempt: int) -> int:
        with sqlite3.connect(f"file:{tmp_path / 'store' / 'vidqa.db'}?mode=ro", uri=True) as db:
            committed.append(db.execute("SELECT 1 FROM alerts WHERE id = ?",
                                        (body["alert"]["alert_id"],)).fetchone() is not None)
        return 200

    receiver = receiver_of(reply)
    cfg = load_config(None, [f"webhooks=[{{url: '{receiver.url}'}}]"])
    store = EventStore(cfg, tmp_path).open()
    sink = StoreSink("cam", store.put_many)
    store.put_many([StreamRecord("cam", "clip", tmp_path, False, True, True)])
    for frame_index in range(3):
        alert = Alert("r", frame_index, "z", "q", "no", frame_index, 0.1, 0.0, (0, 0, 9, 9), "cam")
        sink.send(AlertRecord(alert, time.time(), None))
        sink.close()
    store.close("completed")

    assert committed == [True, True, True]
