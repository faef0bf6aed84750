"""The forgery-detector zoo: models that classify face crops as real or fake (face *detectors*, which find
faces, are :mod:`facepipe.faces`).

``create_model(name, **overrides)``, ``list_models()``, ``get_spec(name)``.
"""

from facepipe.models import baselines, frequency, multipole  # noqa: F401  (registration)
from facepipe.models._registry import ModelSpec, create_model, get_spec, list_models, register_model

__all__ = ["ModelSpec", "create_model", "get_spec", "list_models", "register_model"]
