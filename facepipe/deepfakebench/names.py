"""DeepfakeBench's naming, shared by export and import: its ``label_dict``, the datasets whose JSON nests a
compression level, how facepipe's dataset adapters and methods are named there, and the rule for names that
become path components."""

from __future__ import annotations

import re
from dataclasses import dataclass

from facepipe.errors import InputError

LABEL_DICT = {
    "FF-real": 0, "FF-DF": 1, "FF-F2F": 1, "FF-FS": 1, "FF-NT": 1, "FF-FH": 1, "FF-SH": 1,
    "DFD_real": 0, "DFD_fake": 1, "CelebDFv1_real": 0, "CelebDFv1_fake": 1, "CelebDFv2_real": 0, "CelebDFv2_fake": 1,
    "DFDCP_Real": 0, "DFDCP_FakeA": 1, "DFDCP_FakeB": 1, "DFDC_Real": 0, "DFDC_Fake": 1, "DF_real": 0, "DF_fake": 1,
    "UADFV_Real": 0, "UADFV_Fake": 1, "roop_Real": 0, "roop_Fake": 1,
}
"""DeepfakeBench's ``label_dict`` (``training/config/train_config.yaml``): label name -> 0 real / 1 fake."""

NESTED = ("FaceForensics++", "DeepFakeDetection", "FaceShifter", "FF-DF", "FF-F2F", "FF-FS", "FF-NT")
"""DeepfakeBench datasets whose JSON has a compression level under each split."""

DEFAULT_PREFIX = "./datasets/rgb"

FF_PAIR = re.compile(r"^(\d{3})_(\d{3})$")
"""A FaceForensics++ fake's video name ``TTT_SSS`` (target and source originals)."""


@dataclass(frozen=True)
class DFBDataset:
    """How one facepipe dataset (named after its adapter) appears in DeepfakeBench."""

    name: str
    real: str
    fake: str
    methods: tuple[tuple[str, str], ...] = ()  # facepipe method -> DeepfakeBench label name

    def label_name(self, label: int, method: str | None, method_map: dict[str, str] | None = None) -> str | None:
        """The label name of a face: ``real`` for label 0; for a fake, ``method_map[method]`` when given, else the
        method's name in :attr:`methods`, else ``fake`` when the dataset has one fake label name (no ``methods``);
        ``None`` when a dataset with per-method names (FaceForensics++, DFDCP) has none for ``method``."""
        if label == 0:
            return self.real
        if method_map and method in method_map:
            return method_map[method]
        if self.methods:
            return dict(self.methods).get(method or "")
        return self.fake

    def method_of(self, label_name: str) -> str | None:
        if label_name == self.real:
            return "original"
        return {v: k for k, v in self.methods}.get(label_name)


DATASETS = {
    "ffpp": DFBDataset("FaceForensics++", "FF-real", "FF-DF", (("Deepfakes", "FF-DF"), ("Face2Face", "FF-F2F"),
                                                              ("FaceSwap", "FF-FS"), ("NeuralTextures", "FF-NT"),
                                                              ("FaceShifter", "FF-FH"))),
    "dfd": DFBDataset("DeepFakeDetection", "DFD_real", "DFD_fake"),
    "celebdf_v1": DFBDataset("Celeb-DF-v1", "CelebDFv1_real", "CelebDFv1_fake"),
    "celebdf_v2": DFBDataset("Celeb-DF-v2", "CelebDFv2_real", "CelebDFv2_fake"),
    "dfdc": DFBDataset("DFDC", "DFDC_Real", "DFDC_Fake"),
    "dfdc_preview": DFBDataset("DFDCP", "DFDCP_Real", "DFDCP_FakeA", (("method_A", "DFDCP_FakeA"),
                                                                      ("method_B", "DFDCP_FakeB"))),
    "deeperforensics": DFBDataset("DeeperForensics-1.0", "DF_real", "DF_fake"),
    "uadfv": DFBDataset("UADFV", "UADFV_Real", "UADFV_Fake"),
}
"""facepipe adapter name -> its DeepfakeBench dataset and label names. Other datasets export as ``<name>`` with
label names ``<name>_real`` / ``<name>_fake`` (added to ``label_dict.yaml``)."""


def dfb_dataset(dataset: str, adapter: str | None = None) -> DFBDataset:
    """The DeepfakeBench naming of facepipe dataset ``dataset`` (looked up by ``adapter``, else by its name)."""
    key = adapter or dataset
    if key in DATASETS:
        return DATASETS[key]
    return DFBDataset(dataset, f"{dataset}_real", f"{dataset}_fake")


def adapter_of(dfb_name: str) -> str | None:
    """The facepipe adapter whose DeepfakeBench dataset is called ``dfb_name`` (``None`` if none is)."""
    return next((k for k, d in DATASETS.items() if d.name == dfb_name), None)


def facepipe_dataset(dfb_name: str, recorded: str | None = None, dataset_names: dict[str, str] | None = None) -> str:
    """The facepipe dataset name of DeepfakeBench dataset ``dfb_name``: the one ``export`` recorded, else
    ``dataset_names[dfb_name]``, else its adapter's name, else ``dfb_name`` with other characters than
    ``[A-Za-z0-9_-]`` replaced by ``_``; checked with :func:`facepipe.ids.check_name`.

    Raises:
        IdError: a name that cannot be part of a sample key.
    """
    from facepipe.ids import check_name

    name = (recorded or (dataset_names or {}).get(dfb_name) or adapter_of(dfb_name)
            or re.sub(r"[^A-Za-z0-9_-]+", "_", dfb_name))
    return check_name("dataset", name)


def safe_component(name: str, what: str, sep_ok: bool = False) -> str:
    """``name`` if it can be a path component of DeepfakeBench's layout (``frames`` nowhere in it; no path
    separator unless ``sep_ok``).

    Raises:
        InputError: naming ``what``.
    """
    if "frames" in name or not sep_ok and ("/" in name or "\\" in name):
        raise InputError(f"{what} {name!r}: DeepfakeBench derives mask and landmark paths by replacing 'frames' in "
                         "the frame path, so a name may contain neither 'frames' nor path separators")
    return name


def check_method_map(method_map: dict[str, str] | None) -> None:
    """Refuse a ``--method-map`` that sends fakes to a real label name or to a name unusable as a path.

    Raises:
        InputError: naming the entry.
    """
    for method, name in (method_map or {}).items():
        if LABEL_DICT.get(name) == 0:
            raise InputError(f"--method-map {method}={name}: '{name}' is a real label name in DeepfakeBench's "
                             "label_dict; fakes need a fake one")
        safe_component(name, "label name")
