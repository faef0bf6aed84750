"""The forgery-detector zoo: models that classify face crops as real or fake (face *detectors*, which find
faces, are :mod:`facepipe.faces`).

``create_model(name, **overrides)``, ``list_models()``, ``get_spec(name)``; names also resolve as
``timm:<name>`` and ``package.module:factory``; ``import_model_file(path)`` registers a user's models.
Laid out as timm's: :mod:`facepipe.models._registry` (the name table, ``register_model`` and the contract every
model follows), :mod:`facepipe.models._factory` (``create_model``: name resolution and option checking) and
:mod:`facepipe.models._builders` (what the factories share: timm backbones, freezing, layer lookup).
"""

from facepipe.models import baselines, clip, effort, frequency, multipole, recce, video, vit  # noqa: F401  (registration)
from facepipe.models._builders import get_layer, logits_of
from facepipe.models._factory import create_model, get_spec, import_model_file
from facepipe.models._registry import ModelSpec, list_models, register_model

__all__ = ["ModelSpec", "create_model", "get_layer", "get_spec", "import_model_file", "list_models", "logits_of",
           "register_model"]
