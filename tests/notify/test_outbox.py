"""The outbox between the store's writer and a notifier's thread: never blocks, drops the
oldest when full (counted), drains after close."""

from __future__ import annotations

import threading
import time

from vidqa.notify.outbox import Outbox


def test_outbox_put_when_full_then_oldest_dropped_and_counted() -> None:
    outbox: Outbox[int] = Outbox(3)
    for item in range(5):
        outbox.put(item)

    assert [outbox.get(0), outbox.get(0), outbox.get(0), outbox.get(0)] == [2, 3, 4, None]
    assert outbox.dropped == 2


def test_outbox_put_back_when_room_then_next_else_dropped() -> None:
    outbox: Outbox[int] = Outbox(2)
    outbox.put(1)
    outbox.put_back(0)
    outbox.put_back(-1)  # full: the returned item is the oldest, so it goes

    assert [outbox.get(0), outbox.get(0)] == [0, 1] and outbox.dropped == 1


def test_outbox_get_when_closed_then_drains_and_wakes_a_waiting_reader() -> None:
    outbox: Outbox[int] = Outbox(5)
    outbox.put(7)
    got: list = []
    reader = threading.Thread(target=lambda: got.extend([outbox.get(), outbox.get()]))
    reader.start()
    time.sleep(0.1)
    outbox.close()
    reader.join(timeout=5)

    assert got == [7, None] and outbox.done


def test_notifiers_when_one_fails_then_the_others_still_get_the_lines_and_it_is_counted():
    from vidqa.notify import Notifiers

    class Taking:
        def __init__(self, name: str, fails: bool) -> None:
            self.name, self.fails, self.lines = name, fails, []

        def committed(self, lines: list) -> None:
            if self.fails:
                raise KeyError("rule")
            self.lines += lines

        def summary(self) -> dict:
            return {"lines": len(self.lines)}

    working = Taking("working", fails=False)
    notifiers = Notifiers([Taking("broken", fails=True), working])

    notifiers.committed([("0", "alerts", {"alert_id": 1})])
    notifiers.committed([("0", "alerts", {"alert_id": 2})])

    assert [event["alert_id"] for _, _, event in working.lines] == [1, 2]
    assert notifiers.failed_batches == 2
    assert notifiers.summary() == {"broken": {"lines": 0}, "working": {"lines": 2},
                                   "failed_batches": 2}
