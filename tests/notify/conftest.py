"""Fixtures of the notification tests: a real mosquitto on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mqtt_broker import Broker, mosquitto_missing


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[Broker]:
    missing = mosquitto_missing()
    if missing:
        pytest.skip(missing)
    with Broker(tmp_path / "broker") as running:
        yield running
