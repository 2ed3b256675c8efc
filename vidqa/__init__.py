"""vidqa: track people in video and ask a small vision-language model about each of them.

The stages are generators chained by :class:`vidqa.pipeline.Pipeline` from one YAML; the public
names below are what a script needs to build or inspect a run.
"""

from vidqa.config import PipelineConfig, load_config
from vidqa.errors import ConfigError, ModelError, OutputError, SourceError, VidqaError
from vidqa.messages import Answer, Crop, Detections, FrameResult, VideoFrame

__all__ = [
    "Answer",
    "ConfigError",
    "Detections",
    "FrameResult",
    "ModelError",
    "OutputError",
    "PipelineConfig",
    "Crop",
    "SourceError",
    "VidqaError",
    "VideoFrame",
    "load_config",
]
__version__ = "0.1.0"
