import json

import cv2
import numpy as np
import pytest
from factories import detections

from vidqa.messages import Answer, FrameResult, VideoFrame
from vidqa.sinks import AnswerBoard, MotSink, SinkSet, VideoSink, annotate
from vidqa.storage import write_json


def result(index: int, answers=(), ended=()) -> FrameResult:
    frame = VideoFrame(image=np.zeros((120, 160, 3), np.uint8), frame_index=index,
                       timestamp=index / 10,
                       source_id="t", fps=10.0)
    return FrameResult(frame=frame, detections=detections([(10, 20, 60, 110)], [7]),
                       answers=tuple(answers), ended_tracks=tuple(ended))


def answer(index: int, value: str = "yes", p_yes: float | None = 0.9) -> Answer:
    return Answer(frame_index=index, time_s=index / 10, track_id=7, question="Backpack?",
                  answer=value,
                  p_yes=p_yes, margin=2.0 if p_yes else None, bbox=(10, 20, 60, 110),
                  vlm_ms=12.5, model="tiny")


def test_video_sink_when_frames_written_then_file_is_playable_with_all_frames(tmp_path):
    board = AnswerBoard()
    sink = VideoSink(tmp_path / "out.mp4", board)
    for i in range(12):
        sink.write(result(i))
    sink.close()

    capture = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    assert capture.isOpened()
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    ok, image = capture.read()
    assert ok and image.shape == (120, 160, 3)


@pytest.mark.parametrize("answers, colour_channel", [
    ([answer(0, "yes", 0.9)], 1),  # green
    ([answer(0, "no", 0.1)], 2),  # red
])
def test_annotate_when_track_answered_then_box_coloured_by_answer(answers, colour_channel):
    board = AnswerBoard()
    board.update(result(0, answers))

    image = annotate(result(0), board)

    pixel = image[60, 10]  # on the left edge of the box
    assert pixel.argmax() == colour_channel


def test_answer_board_when_track_ends_then_forgotten():
    board = AnswerBoard()
    board.update(result(0, [answer(0)]))
    board.update(result(1, ended=[7]))

    assert board.latest == {}


def test_sink_set_when_one_sink_fails_then_others_continue(tmp_path):
    class Broken:
        closed = False

        def write(self, result):
            raise RuntimeError("disk on fire")

        def close(self):
            Broken.closed = True

    mot = MotSink(tmp_path / "mot.txt")
    with SinkSet([Broken(), mot], AnswerBoard()) as sinks:
        sinks.write(result(0, [answer(0)]))
        sinks.write(result(1, [answer(1)]))

    assert Broken.closed
    assert "Broken" in sinks.failed
    assert len((tmp_path / "mot.txt").read_text().splitlines()) == 2


def test_write_json_when_numpy_values_then_serialised(tmp_path):
    write_json(tmp_path / "s.json", {"a": np.int64(3), "b": np.arange(2), "c": tmp_path})

    assert json.loads((tmp_path / "s.json").read_text())["b"] == [0, 1]


def test_annotate_when_sinks_of_one_frame_ask_then_drawn_once_and_shared():
    board = AnswerBoard()
    first = result(0, [answer(0)])
    board.update(first)

    image = annotate(first, board)

    assert annotate(first, board) is image  # the video, clips and live view share it
    assert annotate(result(1), board) is not image
    assert not np.shares_memory(image, first.frame.image)  # never drawn on the frame itself
