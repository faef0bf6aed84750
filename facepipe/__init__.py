"""facepipe: reproducible data preparation for face-forgery (deepfake) detection research.

Stages (one module and one ``facepipe <stage>`` command each): extract (decord frame sampling, face
detection, 5-point alignment, tracks) -> frequency views -> WebDataset shards -> train / evaluate.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("facepipe")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "predict"]


def __getattr__(name: str):
    """``facepipe.predict`` (:func:`facepipe.inference.predict`), imported on first use: ``import facepipe`` stays
    light (no torch)."""
    if name == "predict":
        from facepipe.inference import predict

        return predict
    raise AttributeError(f"module 'facepipe' has no attribute {name!r}")
