"""Fixtures of the live-view tests: a started LiveView on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vidqa.web import LiveView


@pytest.fixture()
def view() -> Iterator[LiveView]:
    """A LiveView on 127.0.0.1 and a port the OS picked, closed after the test."""
    with LiveView(port=0) as live:
        yield live
