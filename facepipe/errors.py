"""Exceptions that reach the user as one clear line (the CLI turns them into exit code 1)."""

from __future__ import annotations


class FacepipeError(Exception):
    """Base class for every error facepipe raises on purpose. The message is shown to the user as is."""


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
