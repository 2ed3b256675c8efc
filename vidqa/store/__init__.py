"""The event store: one SQLite file per deployment holding runs, streams, tracks, answers, alerts
and the video segments, with JPEG snapshots beside it; the JSONL files are its export.

Streams never wait for it: a stream's :class:`~vidqa.store.sink.StoreSink` turns frames into
records and hands them to the run's :class:`~vidqa.store.writer.EventStore`, whose one writer
thread commits them in small transactions, writes the snapshots and the JSONL export, and
enforces retention (:mod:`vidqa.store.retention`). Readers open their own connections
(:func:`~vidqa.store.schema.connect` with ``readonly=True``).
"""

from vidqa.store.records import AlertRecord, AnswerRecord, StreamRecord, TrackSeen
from vidqa.store.schema import SCHEMA_VERSION, connect
from vidqa.store.sink import StoreSink
from vidqa.store.writer import EventStore, store_path

__all__ = ["SCHEMA_VERSION", "AlertRecord", "AnswerRecord", "EventStore", "StoreSink",
           "StreamRecord", "TrackSeen", "connect", "store_path"]
