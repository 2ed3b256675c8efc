"""The frame path in a stream's summary: seconds and ms per frame of each stage."""

from __future__ import annotations

from vidqa.pipeline import frame_path


class TimedTracker:
    def frame_path(self) -> dict[str, float]:
        return {"letterbox_s": 0.5, "detect_s": 3.0, "track_s": 1.0}


def test_frame_path_when_tracker_is_timed_then_every_stage_per_frame():
    path = frame_path({"decode_s": 2.0}, TimedTracker(), sinks_s=0.25, frames=100)

    assert path == {"decode_s": 2.0, "letterbox_s": 0.5, "detect_s": 3.0, "track_s": 1.0,
                    "sinks_s": 0.25,
                    "per_frame": {"decode_ms": 20.0, "letterbox_ms": 5.0, "detect_ms": 30.0,
                                  "track_ms": 10.0, "sinks_ms": 2.5}}


def test_frame_path_when_no_frames_and_untimed_tracker_then_no_per_frame_figures():
    path = frame_path({}, object(), sinks_s=0.0, frames=0)

    assert path == {"decode_s": 0.0, "sinks_s": 0.0,
                    "per_frame": {"decode_ms": None, "sinks_ms": None}}
