"""The dataset card of a shard set: ``README.md`` beside ``index.json`` in the Hugging Face dataset-card form.

YAML front-matter (the Hub's dataset-card metadata, https://huggingface.co/docs/hub/datasets-cards): ``configs`` with
``data_files`` per split (the set's tar series), so ``datasets.load_dataset(DIR)`` finds the splits by itself;
``dataset_info.features`` with the types of every field (:func:`features_yaml`, the same types as
:func:`facepipe.data.hf.hf_features`: Hugging Face's webdataset builder otherwise guesses them from the first samples and
fails on a nullable field), and split sizes; ``size_categories``; ``license`` left empty for the user (each source
dataset's terms apply). The body: samples per split, dataset, label and method; how the crops were made (detector,
alignment, crop size, format, preset, sampling: from each dataset's ``extract.json``); label sources; and per dataset
its adapter, protocol and citation.

Written by the shard stage without importing ``datasets`` (it is not a dependency of facepipe).
"""

from __future__ import annotations

import json

import polars as pl

from facepipe.data.schema import HF_CLIP_JSON_TYPES, HF_JSON_TYPES, IMAGE_EXTS, MASK_EXT, SPLITS

CARD_NAME = "README.md"

LABEL_SOURCES = {
    "original_diff": "compared with the fake's original frame by frame: the face differs beyond the pair's noise "
                     "(fake) or does not (real / uncertain)",
    "original_diff_uncertain": "compared with the original, unchanged (label -1: left out of losses and frame metrics)",
    "policy": "no usable original: the label policy (extract.labels.policy, e.g. the main track of a fake video)",
    "video": "the video's label (real videos: every face is real)",
}


ADAPTERS = {
    "ffpp": ("FaceForensics++ official splits (github.com/ondyari/FaceForensics dataset/splits: 720/140/140 "
             "pairs), the four benchmark methods",
             "Rössler et al., FaceForensics++: Learning to Detect Manipulated Facial Images, ICCV 2019"),
    "dfd": ("Google/Jigsaw DeepFakeDetection, distributed with FaceForensics++; no official split (test by default)",
            "Dufour & Gully, Contributing Data to Deepfake Detection Research, Google AI Blog 2019"),
    "celebdf_v1": ("Celeb-DF official test list (List_of_testing_videos.txt)",
                   "Li et al., Celeb-DF: A Large-scale Challenging Dataset for DeepFake Forensics, CVPR 2020"),
    "celebdf_v2": ("Celeb-DF (v2) official test list (List_of_testing_videos.txt: 518 videos)",
                   "Li et al., Celeb-DF: A Large-scale Challenging Dataset for DeepFake Forensics, CVPR 2020"),
    "dfdc": ("DFDC: the public test set's labels.csv for test, the training parts' metadata.json otherwise",
             "Dolhansky et al., The DeepFake Detection Challenge (DFDC) Dataset, arXiv:2006.07397, 2020"),
    "dfdc_preview": ("DFDC preview's dataset.json splits",
                     "Dolhansky et al., The Deepfake Detection Challenge (DFDC) Preview Dataset, arXiv:1910.08854, "
                     "2019"),
    "deeperforensics": ("DeeperForensics-1.0 official lists (lists/splits)",
                        "Jiang et al., DeeperForensics-1.0: A Large-Scale Dataset for Real-World Face Forgery "
                        "Detection, CVPR 2020"),
    "uadfv": ("UADFV: no official split (grouped split)",
              "Yang, Li & Lyu, Exposing Deep Fakes Using Inconsistent Head Poses, ICASSP 2019"),
    "wilddeepfake": ("WildDeepfake's train/test folders",
                     "Zi et al., WildDeepfake: A Challenging Real-World Dataset for Deepfake Detection, ACM MM 2020"),
    "df40": ("DF40's test folders, fakes scored against the reals of their source dataset",
             "Yan et al., DF40: Toward Next-Generation Deepfake Detection, NeurIPS 2024"),
}
"""Per dataset adapter: (the protocol it follows, the dataset's citation)."""


def dataset_info(adapter: str | None, split_report: dict | None = None) -> dict:
    """What the card says about one dataset: adapter, protocol, citation (from :data:`ADAPTERS`; ``folder`` and ``csv``
    are the user's own data), videos per split."""
    protocol, citation = ADAPTERS.get(adapter or "", (None, None))
    if adapter in ("folder", "csv"):
        protocol = "the user's own labels and splits (facepipe's leakage checks applied)"
    return {"adapter": adapter, "protocol": protocol, "citation": citation, "split_report": split_report or None}


def _value(t) -> dict:
    if isinstance(t, dict):
        return {"struct": [{"name": k, **_value(v)} for k, v in t.items()]}
    if isinstance(t, list):
        return {"list": _value(t[0]).get("dtype", _value(t[0]))}
    return {"dtype": t}


def features_yaml(index: dict) -> list[dict]:
    """``dataset_info.features`` of the card: the shard set's fields as Hugging Face's YAML feature list (``dtype``,
    ``struct``, ``list``; images ``image``; stored views as ``array3_d`` float16), the types of
    :func:`facepipe.data.hf.hf_features`."""
    fmt = index.get("image_format") or "png"
    if fmt not in IMAGE_EXTS:
        return []
    if index.get("sample_kind") == "clip":
        n = int(index["clip_length"])
        feats = [{"name": f"{t:02d}.{fmt}", "dtype": "image"} for t in range(n)]
        if index.get("masks"):
            feats += [{"name": f"{t:02d}.{MASK_EXT}", "dtype": "image"} for t in range(n)]
        types = HF_CLIP_JSON_TYPES
    else:
        feats = [{"name": fmt, "dtype": "image"}]
        if index.get("masks"):
            feats.append({"name": MASK_EXT, "dtype": "image"})
        for v in index.get("views", []):
            shape = list((index.get("view_shapes") or {}).get(v, ()))
            feats.append({"name": f"{v}.npy", "dtype": {"array3_d": {"shape": shape, "dtype": "float16"}}})
        types = HF_JSON_TYPES
    feats += [{"name": "json", **_value(types)}, {"name": "cls", "dtype": "int64"}]
    return feats


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                        (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "10M<n<100M"


def _yaml(o, indent: int = 0) -> list[str]:
    """A small YAML emitter for the front-matter (block style; strings JSON-quoted, which YAML reads)."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(o, dict):
        for k, v in o.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:")
                lines += _yaml(v, indent + 2)
            else:
                lines.append(f"{pad}{k}: {_scalar(v)}")
    else:
        for v in o:
            sub = _yaml(v, indent + 2) if isinstance(v, (dict, list)) else [f"{pad}  {_scalar(v)}"]
            lines.append(f"{pad}- {sub[0].lstrip()}")
            lines += sub[1:]
    return lines


def _scalar(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, dict)):
        return "[]" if isinstance(v, list) else "{}"
    return json.dumps(str(v), ensure_ascii=False)


def front_matter(index: dict, version: str) -> dict:
    """The card's YAML metadata (see the module docstring)."""
    splits = [s for s in SPLITS if index["splits"].get(s, {}).get("samples")]
    files = [{"split": s, "path": f"{version}/{s}-*.tar"} for s in splits]
    return {
        "configs": [{"config_name": "default", "data_files": files}],
        "dataset_info": {"features": features_yaml(index),
                         "splits": [{"name": s, "num_examples": int(index["splits"][s]["samples"])} for s in splits]},
        "license": None,
        "size_categories": [_size_category(int(index["total"]))],
        "task_categories": ["image-classification"],
        "tags": ["deepfake-detection", "face-forgery-detection", "webdataset", "facepipe"],
    }


def _table(df: pl.DataFrame) -> list[str]:
    cols = df.columns
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in df.iter_rows()]
    return out


def _crops(extract: dict, index: dict) -> list[str]:
    lines = []
    for ds, doc in sorted((extract or {}).items()):
        if not doc:
            lines.append(f"- **{ds}**: not recorded (extracted by an older facepipe)")
            continue
        p = doc.get("params", {})
        s, al, det = p.get("sampling", {}), p.get("align", {}), p.get("face_detector", {})
        sampling = (f"{s.get('num_clips')} clips of {s.get('clip_length')} frames" if s.get("mode") == "clips" else
                    f"{s.get('num_frames')} frames per video ({s.get('strategy')})" if s.get("strategy") == "uniform"
                    else f"strategy {s.get('strategy')}")
        out = p.get("output", {})
        fmt = out.get("format", "png") + (f" q{out.get('jpeg_quality')} {out.get('jpeg_subsampling')}"
                                          if out.get("format") == "jpg" else "")
        lines.append(f"- **{ds}**: detector `{doc.get('detector')}` (min score {det.get('min_score')}, detection on "
                     f"a copy with longest side {det.get('max_side')} px); alignment `{al.get('mode')}` at "
                     f"{al.get('size')} px, margin {al.get('margin')}; preset `{al.get('preset') or 'none'}`; "
                     f"{sampling}; "
                     f"crops {fmt}; tracks: `{p.get('track', {}).get('select')}`.")
    if index.get("preset"):
        lines.append(f"- Every sample carries preset `{index['preset']}`.")
    return lines or ["- not recorded"]


def render(index: dict, version: str, rows: pl.DataFrame, datasets: dict[str, dict], layout: str = "cells") -> str:
    """The card's text.

    Args:
        index: the set's ``index.json`` content.
        version: the set folder (``set-<hash>``).
        rows: the set's samples (``split``, ``dataset``, ``label``, ``method``, ``label_source``).
        datasets: per dataset ``{"adapter", "citation", "protocol", "split_report"}`` (values may be ``None``).
        layout: the shard stage's ``layout`` (``cells``: one tar series per (dataset, label); ``mixed``).
    """
    from facepipe.ids import FACE_LABEL_NAMES

    named = rows.with_columns(pl.col("label").replace_strict(FACE_LABEL_NAMES, return_dtype=pl.String))
    counts = (named.group_by("split", "dataset", "label", "method").len().rename({"len": "samples"})
              .with_columns(pl.col("split").replace_strict({s: i for i, s in enumerate(SPLITS)}, default=9,
                                                           return_dtype=pl.Int8).alias("_o"))
              .sort("_o", "dataset", "label", "method").drop("_o"))
    sources = named.group_by("label_source", "label").len().rename({"len": "samples"}).sort("label_source", "label")
    body = ["---", *_yaml(front_matter(index, version)), "---", "",
            f"# Face-forgery detection shards ({', '.join(sorted(datasets)) or 'facepipe'})", "",
            f"WebDataset shards written by facepipe's `shard` stage (schema {index.get('schema_version')}, "
            f"set `{version}`, " + ("one tar series per (dataset, label) cell" if layout == "cells" else "mixed tars")
            + f"). {index['total']} samples "
            f"({index.get('sample_kind', 'frame')} samples; one aligned face crop each"
            + (f", clips of {index.get('clip_length')} frames" if index.get("sample_kind") == "clip" else "") + ").",
            "", "Load with Hugging Face `datasets` (`datasets.load_dataset(\"<this folder>\")`: the splits come from "
            "this card) or stream with facepipe (`facepipe.data.make_loader(\"<this folder>\", \"train\", ...)`).",
            "", "**License**: set `license` above; every source dataset's terms of use apply to these crops.", "",
            "## Samples", "", *_table(counts), "", "## How the crops were made", "",
            *_crops(index.get("extract") or {}, index), "", "## Labels", "",
            "Labels are per face (0 real, 1 fake, -1 uncertain). How each was decided:", "", *_table(sources), ""]
    body += [f"- `{k}`: {v}" for k, v in LABEL_SOURCES.items()]
    body += ["", "## Datasets, protocols and citations", ""]
    for ds, info in sorted(datasets.items()):
        body.append(f"### {ds}")
        body.append("")
        body.append(f"- Adapter: `{info.get('adapter') or 'not recorded'}`")
        if info.get("protocol"):
            body.append(f"- Protocol: {info['protocol']}")
        if info.get("split_report"):
            body.append(f"- Videos per split: {json.dumps(info['split_report'], sort_keys=True)}")
        body.append(f"- Cite: {info.get('citation') or 'see the dataset’s own documentation'}")
        body.append("")
    return "\n".join(body)


__all__ = ["ADAPTERS", "CARD_NAME", "LABEL_SOURCES", "dataset_info", "features_yaml", "front_matter", "render"]
