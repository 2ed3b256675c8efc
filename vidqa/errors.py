"""Exceptions vidqa raises for problems a user can fix.

Anything derived from :class:`VidqaError` is a user error: the CLI prints its message on one
line and exits non-zero without a traceback. Everything else is a bug and keeps its traceback.
"""


class VidqaError(Exception):
    """Base class: a problem with the user's input, config, assets or environment."""


class ConfigError(VidqaError):
    """The YAML or a ``--set`` override is malformed, has unknown keys or bad values."""


class SourceError(VidqaError):
    """A video file, MOT sequence, webcam or stream cannot be opened or read."""


class ModelError(VidqaError):
    """A detector or VLM cannot be found, downloaded or loaded."""


class OutputError(VidqaError):
    """The run directory exists already or cannot be written."""
