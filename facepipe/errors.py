"""Exceptions that reach the user as one clear line (the CLI turns them into exit code 1)."""

from __future__ import annotations


class FacepipeError(Exception):
    """Base class for every error facepipe raises on purpose. The message is shown to the user as is."""


class Interrupted(FacepipeError):
    """A run stopped by SIGINT (Ctrl-C) or SIGTERM after cleaning up: the message says how far it got and how to
    resume; ``exit_code`` is 130 (SIGINT) or 143 (SIGTERM), the shell's convention."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ConfigError(FacepipeError):
    """A parameter, a params file or a command-line option is invalid."""


class InputError(FacepipeError):
    """An input path is missing, empty or not what the stage expects."""


class VideoError(FacepipeError):
    """A video cannot be opened or decoded.

    Attributes:
        status: the ``videos.parquet`` status this error maps to: ``decode_error`` or ``unsupported``.
    """

    def __init__(self, message: str, status: str = "decode_error") -> None:
        super().__init__(message)
        self.status = status


class DetectorError(FacepipeError):
    """A face detector cannot be created (unknown name, missing model files)."""


class SchemaError(FacepipeError):
    """A sample or shard set does not follow this schema (names the shard and key when known).

    Also importable as :class:`facepipe.data.schema.SchemaError`, where it was defined first.
    """


class ShardIndexError(InputError, SchemaError):
    """A shard set's ``index.json`` cannot be used: missing, unreadable, not JSON, another schema version, or
    missing keys (the message names the path and what is wrong). Raised by
    :func:`facepipe.data.index.read_index`, the one reader of the index; an :class:`InputError` and a
    :class:`SchemaError`, so code catching either of the errors the earlier readers raised still catches it."""
