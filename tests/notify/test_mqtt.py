"""MQTT, against a real mosquitto on loopback: every committed alert and answer reaches a
subscriber on its topic, snapshots as JPEG, retained state and availability, the last will
when the client dies; a broker that stops mid-run or never comes up costs the streams nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from loguru import logger
from mqtt_broker import Subscriber, free_port
from notify_factories import RULE_TOPICS, alerting_run

from vidqa.config import load_config
from vidqa.errors import ConfigError
from vidqa.notify import Notifiers
from vidqa.notify.mqtt import topic_slug

REPO = Path(__file__).parent.parent.parent


@pytest.mark.parametrize("name, slug", [
    ("Is this person wearing jeans?", "is-this-person-wearing-jeans"),
    ("no_hat", "no_hat"),
    ("a/b+c#d", "a-b-c-d"),
    ("  Ünïcode  ", "n-code"),
    ("???", "[0-9a-f]{8}"),  # nothing left: a hash of the name stands in
    ("x" * 80, "x{39}-[0-9a-f]{8}"),  # too long: cut, and ends in a hash of the whole name
])
def test_topic_slug_when_names_given_then_mqtt_safe_and_stable(name: str, slug: str) -> None:
    got = topic_slug(name)

    assert re.fullmatch(slug, got) and got == topic_slug(name) and len(got) <= 48


@pytest.mark.parametrize("overrides, error", [
    (["mqtt.host=h", "mqtt.port=0"], "mqtt.port = 0 is out of range: expected a TCP port"),
    (["mqtt.host=h", "mqtt.tls=/no/such/ca.pem"], "no such CA file"),
    (["mqtt.host=h", f"mqtt.tls={__file__}"], "is not a CA file"),
    (["mqtt.host=h", "mqtt.password=hunter2"], "must name an environment variable"),
    (["mqtt.host=h", "mqtt.password=${VIDQA_TEST_UNSET}"],
     "environment variable VIDQA_TEST_UNSET, which is not set: export VIDQA_TEST_UNSET="),
    (["mqtt.host=h", "mqtt.topic_prefix=a/+/b"], "mqtt.topic_prefix"),
    (["mqtt.host=h", "mqtt.qos=3"], "mqtt.qos = 3 is out of range"),
])
def test_mqtt_config_when_wrong_then_error_says_what_to_do(overrides: list[str],
                                                           error: str) -> None:
    os.environ.pop("VIDQA_TEST_UNSET", None)
    with pytest.raises(ConfigError, match=error.replace("+", r"\+")):
        load_config(None, overrides)


def test_mqtt_config_when_secrets_named_then_resolved_only_where_the_client_starts(
        monkeypatch) -> None:
    monkeypatch.setenv("VIDQA_TEST_PASSWORD", "s3cret")
    cfg = load_config(None, ["mqtt.host=h", "mqtt.username=vidqa",
                             "mqtt.password=${VIDQA_TEST_PASSWORD}"])

    assert "s3cret" not in json.dumps(cfg.to_dict())  # the summary and store keep the name


@pytest.mark.slow
def test_run_when_rules_fire_then_subscriber_gets_every_alert_answer_snapshot_and_state(
        tmp_path, tiny_vlm_dir, broker) -> None:
    subscriber = Subscriber(broker.port)
    run = alerting_run(tmp_path, tiny_vlm_dir, "mqtt.host=127.0.0.1",
                       f"mqtt.port={broker.port}")
    run.pipeline.run()
    subscriber.wait_for(lambda: subscriber.on("vidqa/available") == [b"online", b"offline"])
    subscriber.close()

    alerts = subscriber.json_on(lambda t: "/alerts/" in t and not t.endswith("/snapshot"))
    answers = subscriber.json_on(lambda t: t.startswith("vidqa/0/answers/"))
    assert sorted(a["alert_id"] for a in alerts) == run.ids("alerts") != []
    assert sorted(a["answer_id"] for a in answers) == run.ids("answers")
    assert {t for t, _, _ in subscriber.messages if t.startswith("vidqa/0/answers/")} \
        == {"vidqa/0/answers/jeans"}  # the question's name
    for alert in alerts:  # each on its rule's topic, its snapshot just before it
        topic = f"vidqa/0/alerts/{RULE_TOPICS[alert['rule']]}"
        index = subscriber.messages.index((topic, json.dumps(alert).encode(), False))
        snapshot_topic, jpeg, _ = subscriber.messages[index - 1]
        assert snapshot_topic == f"{topic}/snapshot" and jpeg[:2] == b"\xff\xd8"
        assert jpeg == (run.store.folder / alert["snapshot"]).read_bytes()
    clips = subscriber.json_on(lambda t: t == "vidqa/0/clips")  # each clip once, when ready
    assert sorted(i for clip in clips for i in clip["alert_ids"]) == run.ids("alerts")
    assert all((run.store.folder / clip["clip"]).stat().st_size > 0 for clip in clips)
    states = subscriber.json_on(lambda t: t == "vidqa/0/state")
    assert [s["state"] for s in states] == ["running", "ended"]
    assert states[-1]["reason"] == "completed"
    counts = run.store.summary()["notify"]["mqtt"]
    assert counts["dropped"] == counts["undelivered"] == 0
    assert counts["delivered"] == len(subscriber.messages)


@pytest.mark.slow
def test_mqtt_client_when_killed_then_broker_sends_the_last_will(tmp_path, broker) -> None:
    subscriber = Subscriber(broker.port)
    script = (f"import time; from pathlib import Path; from vidqa.config import load_config; "
              f"from vidqa.notify import Notifiers; "
              f"n = Notifiers.from_config(load_config(None, ['mqtt.host=127.0.0.1', "
              f"'mqtt.port={broker.port}'])); n.start(1, Path('.'), Path('.')); "
              f"time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        subscriber.wait_for(lambda: subscriber.on("vidqa/available") == [b"online"])
        proc.send_signal(signal.SIGKILL)  # no goodbye: the broker notices the dead socket
        proc.wait(timeout=10)
        subscriber.wait_for(lambda: subscriber.on("vidqa/available") == [b"online", b"offline"])
    finally:
        proc.kill()
        subscriber.close()


def run_in_thread(run) -> threading.Thread:
    thread = threading.Thread(target=run.pipeline.run, name="stream", daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_run_when_broker_stops_for_10_s_then_frames_keep_their_rate_and_alerts_arrive_later(
        tmp_path, tiny_vlm_dir, broker) -> None:
    subscriber = Subscriber(broker.port)
    run = alerting_run(tmp_path, tiny_vlm_dir, "mqtt.host=127.0.0.1", f"mqtt.port={broker.port}",
                       "mqtt.flush_s=20", frames=360)  # 18 s at 20 fps
    stream = run_in_thread(run)
    alerts = lambda: subscriber.json_on(lambda t: "/alerts/" in t and "snapshot" not in t)  # noqa: E731
    subscriber.wait_for(lambda: len(alerts()) >= 2)
    outage = time.monotonic()
    outage_wall = time.time()
    broker.stop()
    time.sleep(10)
    back, back_wall = time.monotonic(), time.time()
    broker.start()
    stream.join(timeout=120)
    # QoS 1 is at least once: an alert in flight at the outage may come twice
    subscriber.wait_for(lambda: {a["alert_id"] for a in alerts()} == set(run.ids("alerts")))
    subscriber.close()

    with sqlite3.connect(f"file:{run.store.path}?mode=ro", uri=True) as conn:
        during = conn.execute("SELECT COUNT(*) FROM alerts WHERE raised_at BETWEEN ? AND ?",
                              (outage_wall, back_wall)).fetchone()[0]
    counts = run.store.summary()["notify"]["mqtt"]
    before = run.times.rate(run.times.times[0], outage)
    assert during >= 5  # raised while the broker was down, published after it came back
    assert counts["reconnects"] >= 1 and counts["dropped"] == counts["undelivered"] == 0
    print(f"fps before the outage {before:.2f}, during it {run.times.rate(outage, back):.2f}; "
          f"{during} alerts raised during it; {counts}")
    assert run.times.rate(outage, back) >= 0.7 * before  # the stream never waited for MQTT


@pytest.mark.slow
def test_mqtt_when_outbox_cap_is_below_the_outage_then_the_oldest_are_dropped_and_counted(
        tmp_path, broker) -> None:
    subscriber = Subscriber(broker.port)
    cfg = load_config(None, ["mqtt.host=127.0.0.1", f"mqtt.port={broker.port}", "mqtt.outbox=5",
                             "mqtt.answers=false"])
    notifiers = Notifiers.from_config(cfg)
    notifiers.start(1, tmp_path, tmp_path)
    mqtt = notifiers.notifiers[0]
    subscriber.wait_for(lambda: subscriber.on("vidqa/available"))
    broker.stop()
    subscriber.wait_for(lambda: not mqtt.summary()["connected"], timeout_s=10)
    notifiers.committed([("cam", "alerts", {"alert_id": i, "rule": "r"}) for i in range(20)])
    broker.start()
    subscriber.wait_for(lambda: len(subscriber.json_on(lambda t: t == "vidqa/cam/alerts/r")) >= 5)
    notifiers.close("completed")
    subscriber.close()

    got = [a["alert_id"] for a in subscriber.json_on(lambda t: t == "vidqa/cam/alerts/r")]
    assert sorted(got) == [15, 16, 17, 18, 19]  # the newest five; the oldest went first
    assert notifiers.summary()["mqtt"]["dropped"] == 15


def test_run_when_broker_never_comes_up_then_run_ends_with_every_event_and_a_warning(
        tmp_path, tiny_vlm_dir) -> None:
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    try:
        run = alerting_run(tmp_path, tiny_vlm_dir, "mqtt.host=127.0.0.1",
                           f"mqtt.port={free_port()}", "mqtt.flush_s=0.5", frames=40)
        summary = run.pipeline.run()
    finally:
        logger.remove(sink)

    counts = run.store.summary()["notify"]["mqtt"]
    exported = [line for line in (run.pipeline.run_dir / "alerts.jsonl").read_text().splitlines()
                if json.loads(line)["event"] == "alert"]  # not the clips' lines
    assert summary["end_reason"] == "completed"
    assert len(exported) == len(run.ids("alerts")) > 0 and run.ids("answers")
    assert counts["delivered"] == 0 and counts["connect_failures"] >= 1
    assert counts["undelivered"] >= 2 * len(exported)  # each alert and its snapshot at least
    assert any("cannot reach the broker" in w for w in warnings)
    assert any("was never reached" in w for w in warnings)
