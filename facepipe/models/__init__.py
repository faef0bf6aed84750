"""The forgery-detector zoo: models that classify face crops as real or fake (face *detectors*, which find
faces, are :mod:`facepipe.faces`).

``create_model(name, **overrides)``, ``list_models()``, ``get_spec(name)``; names also resolve as
``timm:<name>`` and ``package.module:factory``; ``import_model_file(path)`` registers a user's models.
See :mod:`facepipe.models._registry` for the contract every model follows.
"""

from facepipe.models import baselines, clip, frequency, multipole, recce, vit  # noqa: F401  (registration)
from facepipe.models._registry import (
    ModelSpec,
    create_model,
    get_layer,
    get_spec,
    import_model_file,
    list_models,
    logits_of,
    register_model,
)

__all__ = ["ModelSpec", "create_model", "get_layer", "get_spec", "import_model_file", "list_models", "logits_of",
           "register_model"]
