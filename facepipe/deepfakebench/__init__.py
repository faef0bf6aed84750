"""DeepfakeBench interoperability: export facepipe crops to DeepfakeBench's on-disk layout and dataset JSON, and
import DeepfakeBench-preprocessed data (frames + JSON) into facepipe shards.

DeepfakeBench (SCLBD/DeepfakeBench; Yan et al., NeurIPS 2023 Datasets and Benchmarks) trains from one JSON per
dataset, written by its ``preprocessing/rearrange.py`` and read by ``training/dataset/abstract_dataset.py``::

    {<dataset>: {<label name>: {<split>: {[<compression>:] {<video>: {"label": <label name>,
                                                                      "frames": [<path>, ...],
                                                                      ["masks": [<path>, ...]]}}}}}}

``<split>`` is ``train`` / ``val`` / ``test`` (all three present under every label name); ``<compression>``
(``raw`` / ``c23`` / ``c40``) only for the FaceForensics++ family (:data:`NESTED`). Label names map to 0/1 through
the ``label_dict`` of its training config (:data:`LABEL_DICT`). Frame files are named by their frame index
(``<idx:03d>.png``; its loader sorts them by ``int`` of the file stem); the mask and landmark of a frame are found
by replacing ``frames`` with ``masks`` (same ``.png`` name) and with ``landmarks`` (``.npy``) in its path. Its
loader prefixes paths that do not start with ``.`` with ``rgb_dir`` and a backslash, so usable paths start with
``./`` (``rearrange.py`` writes them under its ``dataset_root_path``, default ``./datasets/rgb``).

The package's rooms:

- :mod:`~facepipe.deepfakebench.names`: DeepfakeBench's naming (:data:`LABEL_DICT`, :data:`NESTED`,
  :data:`DATASETS`, :func:`dfb_dataset`), shared by both directions;
- :mod:`~facepipe.deepfakebench.export`: facepipe shards or an extract output -> DeepfakeBench's layout
  (:func:`faces_from_shards`, :func:`faces_from_extract`, :func:`export`);
- :mod:`~facepipe.deepfakebench.import_`: DeepfakeBench's JSON and frames -> facepipe shards
  (:func:`import_json`, :func:`load_label_dict`).
"""

from facepipe.deepfakebench.export import ExportSummary, Face, export, faces_from_extract, faces_from_shards
from facepipe.deepfakebench.import_ import ImportSummary, import_json, load_label_dict
from facepipe.deepfakebench.names import DATASETS, DEFAULT_PREFIX, LABEL_DICT, NESTED, DFBDataset, dfb_dataset

__all__ = ["DATASETS", "DEFAULT_PREFIX", "LABEL_DICT", "NESTED", "DFBDataset", "ExportSummary", "Face", "ImportSummary",
           "dfb_dataset", "export", "faces_from_extract", "faces_from_shards", "import_json", "load_label_dict"]
