"""The detector zoo: ``create_detector(name, **overrides)``, ``list_detectors()``, ``get_spec(name)``."""

from facepipe.models import baselines, frequency, multipole  # noqa: F401  (registration)
from facepipe.models._registry import DetectorSpec, create_detector, get_spec, list_detectors, register_detector

__all__ = ["DetectorSpec", "create_detector", "get_spec", "list_detectors", "register_detector"]
