"""Zones and rules: foot points in polygons, dwell, one alert per track, eviction, config."""

from __future__ import annotations

import numpy as np
import pytest

from vidqa.config import PipelineConfig, RuleConfig, ZoneConfig, load_config
from vidqa.errors import ConfigError
from vidqa.messages import Answer, Detections, FrameResult, VideoFrame
from vidqa.zones import Alert, RuleEngine, ZoneMap, foot_point

SQUARE = ZoneConfig(name="square", polygon=((100, 100), (200, 100), (200, 200), (100, 200)))
TRIANGLE = ZoneConfig(name="triangle", polygon=((0, 0), (100, 0), (0, 100)))
THIN = ZoneConfig(name="line", polygon=((300, 0), (310, 0), (310, 400), (300, 400)))
QUESTION = "Is this person wearing a hard hat?"


def box_standing_at(x: float, y: float) -> tuple[float, float, float, float]:
    """A 20x60 box whose foot point is (x, y)."""
    return (x - 10, y - 60, x + 10, y)


@pytest.mark.parametrize("foot, expected", [
    ((150, 150), ("square",)),  # inside
    ((100, 150), ("square",)),  # on an edge counts as inside
    ((200, 200), ("square",)),  # on a corner
    ((250, 150), ()),  # right of it
    ((20, 20), ("triangle",)),
    ((60, 60), ()),  # beyond the hypotenuse
    ((50, 50), ("triangle",)),  # on the hypotenuse
    ((305, 390), ("line",)),  # a thin band across a walkway
    ((312, 200), ()),
])
def test_zone_map_zones_of_when_foot_point_is_placed(foot: tuple[float, float],
                                                     expected: tuple[str, ...]) -> None:
    zones = ZoneMap([SQUARE, TRIANGLE, THIN])
    assert zones.zones_of(box_standing_at(*foot)) == expected


def test_zone_map_zones_of_when_zones_overlap_lists_every_zone_in_config_order() -> None:
    big = ZoneConfig(name="big", polygon=((0, 0), (500, 0), (500, 500), (0, 500)))
    assert ZoneMap([SQUARE, big]).zones_of(box_standing_at(150, 150)) == ("square", "big")


def test_zone_map_zones_of_when_only_the_head_is_inside_uses_the_feet() -> None:
    head_in_square = (140.0, 150.0, 160.0, 260.0)  # top in the square, feet below it
    assert foot_point(head_in_square) == (150.0, 260.0)
    assert ZoneMap([SQUARE]).zones_of(head_in_square) == ()


@pytest.mark.parametrize("foot, allowed, expected", [
    ((150, 150), (), True),  # no zones asked for: everywhere
    ((500, 500), (), True),
    ((150, 150), ("square",), True),
    ((500, 500), ("square",), False),
    ((20, 20), ("square", "triangle"), True),
])
def test_zone_map_allows_when_zones_are_given(foot: tuple[float, float],
                                              allowed: tuple[str, ...], expected: bool) -> None:
    assert ZoneMap([SQUARE, TRIANGLE]).allows(box_standing_at(*foot), allowed) is expected


def test_zone_map_draw_when_zones_exist_tints_inside_and_leaves_outside() -> None:
    image = np.zeros((300, 400, 3), np.uint8)
    out = ZoneMap([SQUARE]).draw(image)
    assert out is image
    assert image[150, 150].any()  # tinted
    assert not image[280, 380].any()  # far outside: untouched


# ---- rules -------------------------------------------------------------------------------------

def frame_result(index: int, boxes: dict[int, tuple[float, float]], fps: float = 10.0,
                 ended: tuple[int, ...] = ()) -> FrameResult:
    """Frame ``index`` at ``index / fps`` s with track id -> foot point."""
    ids = list(boxes)
    xyxy = np.array([box_standing_at(*boxes[i]) for i in ids], np.float32).reshape(-1, 4)
    detections = Detections(xyxy=xyxy, confidence=np.ones(len(ids), np.float32),
                            class_id=np.zeros(len(ids), np.int64),
                            track_id=np.array(ids, np.int64))
    frame = VideoFrame(image=np.zeros((8, 8, 3), np.uint8), frame_index=index,
                       timestamp=index / fps, source_id="test", fps=fps)
    return FrameResult(frame=frame, detections=detections, ended_tracks=ended)


def said(track_id: int, answer: str, question: str = QUESTION) -> dict[str, Answer]:
    return {question: Answer(frame_index=0, time_s=0.0, track_id=track_id, question=question,
                             answer=answer, p_yes=0.1 if answer == "no" else 0.9, margin=0.0,
                             bbox=(0, 0, 1, 1), vlm_ms=1.0, model="test")}


def engine(dwell_s: float = 2.0, answer: str = "no") -> RuleEngine:
    rule = RuleConfig(name="no_hat", question="hard_hat", answer=answer, zone="square",
                      dwell_s=dwell_s)
    return RuleEngine([rule], ZoneMap([SQUARE, TRIANGLE]), {"hard_hat": QUESTION},
                      stream_id="cam1")


INSIDE, OUTSIDE = (150.0, 150.0), (300.0, 300.0)


@pytest.mark.parametrize("dwell_s, fires_at", [
    (0.0, 0),  # no dwell: the first frame inside
    (0.5, 5),  # 10 fps: after 0.5 s of frame time
    (2.0, 20),
])
def test_rule_engine_update_when_answer_holds_in_zone_fires_after_dwell(
        dwell_s: float, fires_at: int) -> None:
    rules = engine(dwell_s)
    fired = {i: rules.update(frame_result(i, {7: INSIDE}), {7: said(7, "no")})
             for i in range(30)}

    assert [i for i, alerts in fired.items() if alerts] == [fires_at]
    alert = fired[fires_at][0]
    assert alert == Alert(rule="no_hat", track_id=7, zone="square", question=QUESTION,
                          answer="no", frame_index=fires_at, time_s=pytest.approx(fires_at / 10),
                          dwell_s=pytest.approx(dwell_s), bbox=(140, 90, 160, 150),
                          stream_id="cam1")


def test_rule_engine_update_when_track_leaves_zone_resets_dwell() -> None:
    rules = engine(dwell_s=1.0)
    places = [INSIDE] * 8 + [OUTSIDE] + [INSIDE] * 12  # 0.7 s, out, then 1.1 s
    fired = [bool(rules.update(frame_result(i, {3: p}), {3: said(3, "no")}))
             for i, p in enumerate(places)]

    assert fired.index(True) == 9 + 10  # 1.0 s after re-entering at frame 9
    assert fired.count(True) == 1


def test_rule_engine_update_when_answer_changes_resets_dwell() -> None:
    rules = engine(dwell_s=1.0)
    answers = ["no"] * 8 + ["yes"] + ["no"] * 12
    fired = [bool(rules.update(frame_result(i, {3: INSIDE}), {3: said(3, a)}))
             for i, a in enumerate(answers)]

    assert fired.index(True) == 19


@pytest.mark.parametrize("latest", [
    {},  # not asked yet
    {5: said(5, "yes")},  # the other answer
    {5: said(5, "no", question="Is this person running?")},  # another question
])
def test_rule_engine_update_when_answer_does_not_match_never_fires(latest: dict) -> None:
    rules = engine(dwell_s=0.0)
    assert not any(rules.update(frame_result(i, {5: INSIDE}), latest) for i in range(10))


def test_rule_engine_update_when_several_tracks_qualify_fires_once_per_track() -> None:
    rules = engine(dwell_s=0.3)
    latest = {1: said(1, "no"), 2: said(2, "no"), 3: said(3, "yes")}
    alerts = [a for i in range(40) for a in
              rules.update(frame_result(i, {1: INSIDE, 2: (120, 180), 3: INSIDE}), latest)]

    assert sorted(a.track_id for a in alerts) == [1, 2]


def test_rule_engine_update_when_question_is_named_by_its_text_matches_too() -> None:
    rule = RuleConfig(name="r", question=QUESTION, answer="no", zone="square", dwell_s=0)
    rules = RuleEngine([rule], ZoneMap([SQUARE]))
    assert rules.update(frame_result(0, {1: INSIDE}), {1: said(1, "no")})


def test_rule_engine_update_when_tracks_end_evicts_their_state() -> None:
    rules = engine(dwell_s=0.0)
    for start in range(0, 1000, 10):  # 100 short-lived tracks, each ended after 10 frames
        track = start // 10
        for i in range(start, start + 10):
            ended = (track,) if i == start + 9 else ()
            rules.update(frame_result(i, {track: INSIDE}, ended=ended), {track: said(track, "no")})

    assert rules.tracks == 0




# ---- config ------------------------------------------------------------------------------------

ZONES = "zones=[{name: door, polygon: [[0, 0], [10, 0], [10, 10]]}]"


def rules_override(**rule: object) -> str:
    fields = {"name": "r", "question": "jeans", "answer": "yes", "zone": "door",
              "dwell_s": 1} | rule
    return "rules=[{" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}]"


@pytest.mark.parametrize("overrides, message", [
    (["zones=[{name: a, polygon: [[0, 0], [1, 1]]}]"], "at least 3"),
    (["zones=[{name: a, polygon: [[0, 0, 0], [1, 1, 1], [2, 0, 0]]}]"], "at least 3"),
    (["zones=[{name: a, polygon: [[0, 0], [1, x], [1, 0]]}]"], "must be a number"),
    ([ZONES[:-1] + ", {name: door, polygon: [[0, 0], [1, 1], [1, 0]]}]"], "'door' is used more"),
    ([ZONES, rules_override(zone="gate")], "unknown zone 'gate'; valid zones: door"),
    ([rules_override()], "valid zones: none"),
    ([ZONES, rules_override(question="helmet")], "not one of the vlm questions.*'jeans'"),
    ([ZONES, rules_override(answer="maybe")], "choose one of 'yes', 'no'"),
    ([ZONES, rules_override(dwell_s=-1)], "dwell_s = -1.0 is out of range"),
    ([ZONES, rules_override()[:-1] + ", {name: r, question: jeans, answer: no, zone: door}]"],
     "'r' is used more"),
    ([ZONES, "vlm.questions=[{question: 'What colour is the coat?', answer: text, name: colour}]",
      rules_override(question="colour")], "rules need a yesno question"),
])
def test_pipeline_config_when_zones_or_rules_are_wrong_raises(overrides: list[str],
                                                              message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize("rule, answer", [
    (rules_override(answer="no"), "no"),  # YAML reads a bare no as false
    (rules_override(answer="yes"), "yes"),
    (rules_override(question="'Is this person wearing jeans?'"), "yes"),  # by its text
])
def test_pipeline_config_when_rules_are_valid_loads(rule: str, answer: str) -> None:
    cfg = load_config(None, [ZONES, rule])
    assert cfg.rules[0].answer == answer and cfg.zones[0].polygon[1] == (10.0, 0.0)


def test_rule_engine_from_config_when_rule_names_a_question_resolves_its_text() -> None:
    cfg = load_config(None, [ZONES, rules_override(dwell_s=0)])
    assert isinstance(cfg, PipelineConfig)
    rules = RuleEngine.from_config(cfg)
    latest = {1: said(1, "yes", question="Is this person wearing jeans?")}
    assert rules.update(frame_result(0, {1: (2, 1)}), latest)[0].zone == "door"
