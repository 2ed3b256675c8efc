"""Configuration: one frozen dataclass per stage, loaded from YAML and validated.

Unknown keys are rejected with the list of valid ones, values are checked against the
annotated type and range, and ``--set stage.key=value`` overrides are applied before
validation, so an override is held to the same rules as the file.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vidqa.config_notify import MqttConfig, WebhookConfig
from vidqa.config_schema import apply_override, from_dict, one_line
from vidqa.config_schema import require as _require
from vidqa.errors import ConfigError


@dataclass(frozen=True)
class RunConfig:
    name: str = "vidqa"  # folder under out_dir; the CLI's --out replaces out_dir/name
    out_dir: str = "runs"
    overwrite: bool = False  # replace an existing run directory instead of refusing
    max_frames: int = 0  # stop after this many frames per stream (0 = until the source ends)
    log_every_s: float = 5.0  # progress line interval in seconds
    engine: Literal["local", "ray"] = "local"  # local: threads in this process; ray: actors
    ray_address: str = ""  # engine ray: a cluster to join ("auto", "ray://h:10001"); "" = start one
    processes: int = 0  # engine local: stream processes sharing the VLM worker; 0 = auto
    detection_workers: int = 0  # stream processes' detection in N processes; 0 = auto (CUDA)
    stop_grace_s: float = 3.0  # Ctrl-C/SIGTERM: how long answers in flight may still arrive

    def __post_init__(self) -> None:
        _require(self.max_frames >= 0, "run.max_frames", self.max_frames, ">= 0")
        _require(self.processes >= 0, "run.processes", self.processes, ">= 0 (0 = auto)")
        _require(self.detection_workers >= 0, "run.detection_workers", self.detection_workers,
                 ">= 0 (0 = auto)")
        _require(self.stop_grace_s >= 0, "run.stop_grace_s", self.stop_grace_s, ">= 0")


@dataclass(frozen=True)
class SourceConfig:
    kind: Literal["file", "mot", "webcam", "stream"] = "file"
    path: str = "auto"  # video file or MOT sequence dir; "auto" = the sample video vtest.avi
    device: int = 0  # webcam index (kind: webcam)
    url: str = ""  # rtsp:// or http(s):// (kind: stream)
    max_fps: float = 0.0  # live sources: cap the processed frame rate (0 = no cap)
    stall_timeout_s: float = 5.0  # live: no new frame for this long counts as a stall
    reconnect_initial_s: float = 0.5  # live: first reconnect delay, doubled per failure
    reconnect_max_s: float = 10.0  # live: cap on the reconnect delay
    max_reconnects: int = -1  # live: give up after this many failed attempts in a row (-1 = never)
    open_timeout_s: float = 10.0  # live: how long one open attempt may take
    reset_tracks_after_s: float = 2.0  # live: a camera outage longer than this restarts tracks
    replay: Literal["off", "realtime"] = "off"  # file/mot: realtime = play at its fps as live
    loop: bool = False  # replay: restart the file or sequence at its end, forever
    replay_speed: float = 1.0  # replay: stream seconds per wall second (a soak test: 20)

    def __post_init__(self) -> None:
        _require(self.max_fps >= 0, "source.max_fps", self.max_fps, ">= 0")
        _require(self.replay_speed > 0, "source.replay_speed", self.replay_speed, "> 0")
        _require(self.stall_timeout_s > 0, "source.stall_timeout_s", self.stall_timeout_s, "> 0")
        _require(self.reconnect_initial_s > 0, "source.reconnect_initial_s",
                 self.reconnect_initial_s, "> 0")
        _require(self.reconnect_max_s >= self.reconnect_initial_s, "source.reconnect_max_s",
                 self.reconnect_max_s, ">= source.reconnect_initial_s")
        _require(self.max_reconnects >= -1, "source.max_reconnects", self.max_reconnects, ">= -1")
        if self.kind == "stream" and not self.url:
            raise ConfigError("source.url is empty but source.kind is 'stream': "
                              "set source.url to an rtsp:// or http:// address")
        _check_replay(self)


@dataclass(frozen=True)
class TrackerConfig:
    weights: str = "auto"  # ultralytics checkpoint; "auto" = yolov8n.pt online, packaged offline
    tracker: str = "bytetrack.yaml"  # ultralytics tracker YAML: bytetrack.yaml or botsort.yaml
    conf: float = 0.25  # detection confidence threshold
    iou: float = 0.7  # NMS IoU threshold
    imgsz: int = 640  # inference size in pixels
    classes: tuple[int, ...] | None = None  # detector classes that are persons; None = by name
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:0", ...
    batch: int = 64  # most frames of this process's streams detected in one forward pass
    backend: Literal["auto", "torch", "openvino", "onnx"] = "auto"  # auto: OpenVINO on x86 CPUs
    letterbox: Literal["stream", "worker"] = "stream"  # with a detection worker: where frames
    # are letterboxed, in the stream process (CPU) or in the detection worker (on its device)
    in_flight: int = 2  # with a detection worker: frames of a stream sent before the oldest's
    # boxes are tracked (2: the next frame is detected while this one waits; 1: one at a time)

    def __post_init__(self) -> None:
        _require(0 < self.conf < 1, "tracker.conf", self.conf, "between 0 and 1")
        _require(0 < self.iou <= 1, "tracker.iou", self.iou, "between 0 and 1")
        _require(self.imgsz >= 32 and self.imgsz % 32 == 0, "tracker.imgsz", self.imgsz,
                 "a multiple of 32, at least 32")
        _require(self.batch >= 1, "tracker.batch", self.batch, "at least 1")
        _require(self.in_flight >= 1, "tracker.in_flight", self.in_flight, "at least 1")


@dataclass(frozen=True)
class RoiConfig:
    padding: float = 0.1  # grow each box by this fraction of its size on every side
    min_width: int = 24  # ignore crops narrower than this (pixels)
    min_height: int = 48  # ignore crops shorter than this (pixels)
    min_hits: int = 3  # a track is confirmed after this many frames with a box
    reask_every: int = 0  # ask again every N frames of a track (0 = never)
    reask_growth: float = 0.0  # ask again when the crop area grows by this factor (0 = never)
    max_age: int = 60  # frames without a box before a track is forgotten: longer than the
    # trackers' 30-frame buffer, or a track they bring back (same id) would be asked again
    zones: tuple[str, ...] = ()  # ask only tracks whose feet are inside these zones; () = anywhere

    def __post_init__(self) -> None:
        _require(0 <= self.padding <= 1, "roi.padding", self.padding, "between 0 and 1")
        _require(self.min_width >= 1 and self.min_height >= 1, "roi.min_width/min_height",
                 (self.min_width, self.min_height), ">= 1")
        _require(self.min_hits >= 1, "roi.min_hits", self.min_hits, ">= 1")
        _require(self.reask_every >= 0, "roi.reask_every", self.reask_every, ">= 0")
        _require(self.reask_growth == 0 or self.reask_growth > 1, "roi.reask_growth",
                 self.reask_growth, "0 (off) or > 1")
        _require(self.max_age >= 1, "roi.max_age", self.max_age, ">= 1")


@dataclass(frozen=True)
class QuestionConfig:
    SHORTHAND: typing.ClassVar[str] = "question"  # a bare string in YAML is the question

    question: str  # asked about every person crop
    answer: Literal["yesno", "text"] = "yesno"  # yesno: one forward pass; text: generate()
    name: str = ""  # short label for the overlay and plots; defaults to the question

    def __post_init__(self) -> None:
        if not self.question.strip():
            raise ConfigError("vlm.questions: a question is empty: write the question to ask")

    @property
    def label(self) -> str:
        return self.name or self.question


@dataclass(frozen=True)
class AdaptiveConfig:
    enabled: bool = True  # profile the first tracks of each question, then compress
    profile_tracks: int = 10  # K: tracks answered by the full model and profiled per question
    metric: Literal["block_influence", "activation", "task_skip", "task_int8"] = "block_influence"
    task_impact: bool = False  # also measure task impact while profiling (one pass per layer)
    mode: Literal["auto", "static", "bottom_fraction", "off"] = "auto"  # static: fixed plan
    plan: str = "auto"  # auto: plan cache, else profile; PATH: a `vidqa plan` file or folder
    horizon_s: float = 300.0  # live: seconds of stream a plan may count on to pay back
    confirm: int = 2  # most candidate plans confirmed on the profiled batches
    borrow: bool = True  # a new question tries the nearest cached question's plan first
    compile: bool = False  # torch.compile one graph per plan (CUDA)
    # Smaller tiles as candidates, as shares of the model's tile side (0.75: 384 of 512 px).
    tile_scales: tuple[float, ...] = (0.75, 0.5)  # () = tiles are not a candidate
    fraction: float = 0.5  # bottom_fraction mode: share of layers to compress
    operator: Literal["int8", "skip"] = "int8"  # bottom_fraction mode: what to do to them
    target_agreement: float = 0.98  # a plan must agree this often with the full model
    max_dp_yes: float = 0.05  # and move p_yes by less than this on average
    audit_every: int = 10  # answer 1 in N compressed ROIs with the full model too (0 = never)
    audit_window: int = 20  # rolling window of audited ROIs for the agreement check
    cache_dir: str = "auto"  # profile/plan cache; "auto" = the user cache dir

    def __post_init__(self) -> None:
        _require(self.profile_tracks >= 1, "vlm.adaptive.profile_tracks", self.profile_tracks,
                 ">= 1")
        _require(0 < self.fraction < 1, "vlm.adaptive.fraction", self.fraction,
                 "between 0 and 1")
        _require(0 < self.target_agreement <= 1, "vlm.adaptive.target_agreement",
                 self.target_agreement, "between 0 and 1")
        _require(self.max_dp_yes > 0, "vlm.adaptive.max_dp_yes", self.max_dp_yes, "> 0")
        _require(self.audit_every >= 0, "vlm.adaptive.audit_every", self.audit_every, ">= 0")
        _require(self.audit_window >= 1, "vlm.adaptive.audit_window", self.audit_window, ">= 1")
        _require(self.horizon_s >= 0, "vlm.adaptive.horizon_s", self.horizon_s, ">= 0")
        _require(self.confirm >= 0, "vlm.adaptive.confirm", self.confirm, ">= 0")
        _require(bool(self.plan.strip()), "vlm.adaptive.plan", self.plan, "auto or a path")
        _require(all(0 < scale < 1 for scale in self.tile_scales), "vlm.adaptive.tile_scales",
                 self.tile_scales, "shares of the model's tile side between 0 and 1")


@dataclass(frozen=True)
class VlmConfig:
    model: str = "auto"  # hub id or local dir; "auto" = SmolVLM-500M online, stand-in offline
    questions: tuple[QuestionConfig, ...] = (
        QuestionConfig(question="Is this person wearing jeans?", name="jeans"),
    )
    batch_size: int = 8  # most crops answered in one forward pass (from any frame or stream)
    max_wait_ms: float = 20.0  # a crop waits at most this long for others to fill its batch
    queue_size: int = 64  # crops waiting for the VLM; when full, files wait, live tracks defer
    worker: Literal["auto", "thread", "process"] = "auto"  # auto: process on CUDA or for live
    cpu_priority: Literal["low", "idle"] = "low"  # CPU worker process: nice 19, or only idle cores
    device: str = "auto"  # "auto" = cuda if available else cpu
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 cuda, fp32 cpu
    image_splitting: bool = False  # True = the processor's tile grid (up to 17 tiles per crop)
    cuda_graphs: bool = True  # replay the full model's yes/no pass as CUDA graphs (CUDA only)
    max_new_tokens: int = 16  # token budget of text answers
    revision: str = "main"  # hub revision of the model
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, "vlm.batch_size", self.batch_size, ">= 1")
        _require(self.max_wait_ms >= 0, "vlm.max_wait_ms", self.max_wait_ms, ">= 0")
        _require(self.queue_size >= 1, "vlm.queue_size", self.queue_size, ">= 1")
        _require(self.max_new_tokens >= 1, "vlm.max_new_tokens", self.max_new_tokens, ">= 1")
        if not self.questions:
            raise ConfigError("vlm.questions is empty: give at least one question")


@dataclass(frozen=True)
class SinkConfig:
    video: bool = True  # write annotated.mp4
    events: bool = True  # write events.jsonl
    mot: bool = True  # write mot.txt: every tracked box in the MOTChallenge format
    window: bool = False  # show a live window (needs a display)
    codec: str = "mp4v"  # FourCC of the annotated video
    segment_s: float | None = None  # video in playable pieces; None = 300 live, 0 (one file) files

    def __post_init__(self) -> None:
        _require(self.segment_s is None or self.segment_s >= 0, "sinks.segment_s",
                 self.segment_s, ">= 0 (0 = one file), or null for the default")

    def segment_seconds(self, live: bool) -> float:
        """Seconds per video segment of a stream (0: one file, as for a clip)."""
        if self.segment_s is not None:
            return self.segment_s
        return LIVE_SEGMENT_S if live else 0.0


LIVE_SEGMENT_S = 300.0


@dataclass(frozen=True)
class StoreConfig:
    path: str = "auto"  # the deployment's SQLite file; auto = <run folder>/store/vidqa.db
    snapshots: bool = True  # a JPEG of each answered crop and the full frame of each alert
    features: bool = False  # each answered crop's vision features too: `vidqa ask` runs text only
    commit_every_s: float = 0.25  # an answer is committed at most this long after it arrives
    queue_size: int = 20000  # records waiting for the writer; more are dropped and counted

    def __post_init__(self) -> None:
        _require(0 < self.commit_every_s <= 1, "store.commit_every_s", self.commit_every_s,
                 "in (0, 1]: every answer is committed within a second")
        _require(self.queue_size >= 100, "store.queue_size", self.queue_size, ">= 100")


@dataclass(frozen=True)
class RetainConfig:
    days: float = 7.0  # delete segments, snapshots, clips and rows older than this (0 = keep)
    max_gb: float = 0.0  # keep segments, snapshots and clips under this many GB (0 = no cap)
    check_s: float = 30.0  # how often retention runs while the streams run

    def __post_init__(self) -> None:
        _require(self.days >= 0, "retain.days", self.days, ">= 0 (0 = keep forever)")
        _require(self.max_gb >= 0, "retain.max_gb", self.max_gb, ">= 0 (0 = no cap)")
        _require(self.check_s > 0, "retain.check_s", self.check_s, "> 0")


@dataclass(frozen=True)
class AlertsConfig:
    clips: bool = True  # a WebM clip around each alert, under the store's clips/ (rule streams)
    clip_pre_s: float = 5.0  # seconds before the alert, from the stream's ring buffer
    clip_post_s: float = 5.0  # seconds after it; an alert during a clip extends that clip
    clip_max_s: float = 60.0  # longest clip: alerts extend one clip up to this, then it ends
    clip_buffer_mb: float = 16.0  # hard cap on a stream's ring buffer (JPEG frames)
    clip_width: int = 640  # frames scaled down to at most this width (0 = as recorded)
    clip_fps: float = 0.0  # most frames per second in a clip (0 = every frame of the stream)
    clip_queue: int = 64  # frames waiting for the clip writer; a live stream drops beyond

    def __post_init__(self) -> None:
        _require(self.clip_pre_s >= 0, "alerts.clip_pre_s", self.clip_pre_s, ">= 0")
        _require(self.clip_post_s >= 0, "alerts.clip_post_s", self.clip_post_s, ">= 0")
        _require(self.clip_max_s >= self.clip_pre_s + self.clip_post_s, "alerts.clip_max_s",
                 self.clip_max_s, ">= alerts.clip_pre_s + alerts.clip_post_s")
        _require(self.clip_buffer_mb > 0, "alerts.clip_buffer_mb", self.clip_buffer_mb, "> 0")
        _require(self.clip_width == 0 or self.clip_width >= 16, "alerts.clip_width",
                 self.clip_width, "0 (as recorded) or >= 16")
        _require(self.clip_fps >= 0, "alerts.clip_fps", self.clip_fps, ">= 0 (0 = every frame)")
        _require(self.clip_queue >= 1, "alerts.clip_queue", self.clip_queue, ">= 1")


@dataclass(frozen=True)
class StreamConfig:
    """One camera of a multi-stream run. In YAML its ``source``, ``tracker`` and ``roi`` are
    merged over the run's sections, so a stream states only what differs."""

    id: str  # names the stream's output folder and tags its events
    source: SourceConfig = field(default_factory=SourceConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    roi: RoiConfig = field(default_factory=RoiConfig)
    questions: tuple[QuestionConfig, ...] = ()  # empty = the run's vlm.questions

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", self.id):
            raise ConfigError(f"streams: id {self.id!r} must be 1-64 letters, digits, '_', '.' "
                              f"or '-' (it names a folder), e.g. id: entrance")


@dataclass(frozen=True)
class PipelineConfig:
    """The whole pipeline: one section per stage, as in pipeline.yaml."""

    run: RunConfig = field(default_factory=RunConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    roi: RoiConfig = field(default_factory=RoiConfig)
    vlm: VlmConfig = field(default_factory=VlmConfig)
    sinks: SinkConfig = field(default_factory=SinkConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    retain: RetainConfig = field(default_factory=RetainConfig)
    streams: tuple[StreamConfig, ...] = ()  # several cameras; empty = one stream, `source`
    zones: tuple[ZoneConfig, ...] = ()  # named image regions (pixel polygons)
    rules: tuple[RuleConfig, ...] = ()  # alerts: an answer held inside a zone for dwell_s
    alerts: AlertsConfig = field(default_factory=AlertsConfig)  # what an alert records
    mqtt: MqttConfig = field(default_factory=MqttConfig)  # answers, alerts, state to a broker
    webhooks: tuple[WebhookConfig, ...] = ()  # alerts POSTed to HTTP endpoints

    def __post_init__(self) -> None:
        ids = [stream.id for stream in self.streams]
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise ConfigError(f"streams: ids must be unique, {', '.join(duplicated)} repeats")
        _check_zones_and_rules(self)
        _check_webhook_rules(self)

    def stream_configs(self) -> list[StreamConfig]:
        """The streams of the run, each with its questions resolved."""
        if not self.streams:
            return [StreamConfig(id="0", source=self.source, tracker=self.tracker, roi=self.roi,
                                 questions=self.vlm.questions)]
        return [stream if stream.questions else
                dataclasses.replace(stream, questions=self.vlm.questions)
                for stream in self.streams]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Keys that were renamed: the old name gets a one-line error naming the new one.
RENAMED_KEYS = {"vlm.queries": "vlm.questions"}


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()
                ) -> PipelineConfig:
    """Read a pipeline YAML (or the defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found: pass the path of a pipeline YAML "
                              f"such as pipeline.yaml")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {one_line(err)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of sections, got "
                              f"{type(data).__name__}")
    for item in overrides:
        apply_override(data, item)
    return from_dict(PipelineConfig, _merge_streams(data), "", RENAMED_KEYS)


def _merge_streams(data: dict[str, Any]) -> dict[str, Any]:
    """Each stream's ``source``, ``tracker`` and ``roi`` merged over the run's sections."""
    streams = data.get("streams")
    if not streams:
        return data
    if not isinstance(streams, list):
        raise ConfigError(f"streams must be a list of {{id, source, ...}} mappings, got "
                          f"{type(streams).__name__}")
    merged = []
    for item in streams:
        if not isinstance(item, dict):
            raise ConfigError(f"streams: each stream must be a mapping with an id, got {item!r}")
        merged.append({**item, **{section: {**_section(data, section), **_section(item, section)}
                                  for section in ("source", "tracker", "roi")}})
    return {**data, "streams": merged}


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a mapping, got {type(value).__name__} {value!r}")
    return value


# ---- replay, zones and rules -------------------------------------------------------------------

def _check_replay(cfg: SourceConfig) -> None:
    if cfg.replay != "off" and cfg.kind not in ("file", "mot"):
        raise ConfigError(f"source.replay = {cfg.replay!r} but source.kind is {cfg.kind!r}: "
                          f"replay plays a recorded file or MOT sequence as live; set "
                          f"source.kind to file or mot, or source.replay: off")
    if cfg.loop and cfg.replay == "off":
        raise ConfigError("source.loop = true needs source.replay: realtime (a loop only "
                          "makes sense for a file played as a live camera); set both")
    if cfg.replay_speed != 1.0 and cfg.replay == "off":
        raise ConfigError("source.replay_speed needs source.replay: realtime (it sets how fast "
                          "a file plays as a live camera); set both")


@dataclass(frozen=True)
class ZoneConfig:
    name: str  # how rules, roi.zones and the overlay refer to the zone
    polygon: tuple[tuple[float, float], ...]  # >= 3 (x, y) corners in frame pixels

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ConfigError("zones: a zone has an empty name")
        if len(self.polygon) < 3 or any(len(point) != 2 for point in self.polygon):
            raise ConfigError(f"zones.{self.name}.polygon = {list(self.polygon)!r}: expected "
                              f"at least 3 [x, y] points in frame pixels")


@dataclass(frozen=True)
class RuleConfig:
    name: str  # alert label in alerts.jsonl and on the overlay
    question: str  # a vlm question's name or its text
    answer: Literal["yes", "no"]  # the answer that, held inside the zone, raises the alert
    zone: str  # the zone a track's foot point must be in
    dwell_s: float = 0.0  # seconds the answer must hold inside the zone before the alert

    def __post_init__(self) -> None:
        _require(self.dwell_s >= 0, f"rules.{self.name}.dwell_s", self.dwell_s, ">= 0")


def _check_zones_and_rules(cfg: PipelineConfig) -> None:
    _check_unique("zones", [zone.name for zone in cfg.zones])
    _check_unique("rules", [rule.name for rule in cfg.rules])
    zone_names = [zone.name for zone in cfg.zones]
    check_zone_names(cfg.roi.zones, zone_names, "roi.zones")
    for stream in cfg.streams:
        check_zone_names(stream.roi.zones, zone_names, f"streams.{stream.id}.roi.zones")
    questions = cfg.vlm.questions  # the vlm's question list
    for rule in cfg.rules:
        check_zone_names([rule.zone], zone_names, f"rules.{rule.name}.zone")
        matches = [q for q in questions if rule.question in (q.name, q.question)]
        if not matches:
            known = ", ".join(repr(q.name or q.question) for q in questions)
            raise ConfigError(f"rules.{rule.name}.question = {rule.question!r} is not one of "
                              f"the vlm questions: use a question's name or text ({known})")
        if matches[0].answer != "yesno":
            raise ConfigError(f"rules.{rule.name}: question {rule.question!r} has answer "
                              f"{matches[0].answer!r}; rules need a yesno question")


def _check_webhook_rules(cfg: PipelineConfig) -> None:
    names = [rule.name for rule in cfg.rules]
    for hook in cfg.webhooks:
        unknown = [name for name in hook.rules if name not in names]
        if unknown:
            raise ConfigError(f"webhooks ({hook.url}).rules: unknown rule "
                              f"{', '.join(map(repr, unknown))}; valid rules: "
                              f"{', '.join(names) or 'none (add a top-level `rules:` list)'}")


def check_zone_names(names: typing.Sequence[str], zones: typing.Sequence[str], key: str) -> None:
    """Raise ConfigError naming the valid zones when one of ``names`` is not a zone."""
    unknown = [name for name in names if name not in zones]
    if unknown:
        valid = ", ".join(zones) if zones else "none (add a top-level `zones:` list)"
        raise ConfigError(f"{key}: unknown zone {', '.join(map(repr, unknown))}; valid zones: "
                          f"{valid}")


def _check_unique(key: str, names: list[str]) -> None:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"{key}: name {', '.join(map(repr, repeated))} is used more than "
                          f"once; give every entry of {key} its own name")
