"""A local web view of a running pipeline: live video, a tracks table, counters, an SSE feed."""

from vidqa.web.app import ViewOptions
from vidqa.web.server import LiveView, is_loopback
from vidqa.web.sink import LiveViewSink

__all__ = ["LiveView", "LiveViewSink", "ViewOptions", "is_loopback"]
