"""The ``benchmark`` stage: a protocol (:mod:`facepipe.protocols`) -> the table every paper reports.

``run`` trains each named model once on the protocol's training data (or takes finished checkpoints), evaluates
it on every test shard set with :mod:`facepipe.stages.evaluate` (so the overlap check against the training data
applies), and scores each protocol column: the column's fakes against its reference reals, frame-level AUC
(undecided faces left out) and video-level AUC (the protocol's aggregation), each with its 95 % bootstrap
interval over videos and its n. A column whose videos are not in the test sets is reported as missing, never
as a number. Where a run deviates from the protocol (another training set, a dataset left out), the table
says so next to the numbers.

Outputs in ``OUT``: ``benchmark.json`` (everything), ``metrics.json`` (the headline numbers, for ``dvc metrics
show``), ``benchmark.csv`` (one row per model), ``benchmark.md`` and ``benchmark.tex`` (the table with n per
column, the protocol's citation and notes), and per model its ``train/`` (when trained here) and
``evaluate/`` folders.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Literal, Optional

import polars as pl
from pydantic import Field

from facepipe._io import atomic_path
from facepipe.config import Section
from facepipe.errors import InputError
from facepipe.protocols import Column, Protocol, load_protocol
from facepipe.stages import contract

log = logging.getLogger(__name__)

STAGE = "benchmark"
STAGE_VERSION = 1


class BenchmarkConfig(Section):
    """Parameters of the ``benchmark`` stage (section ``benchmark``): the ``protocol`` (a shipped name, see
    ``facepipe protocols``, or a YAML file), ``aliases`` (protocol dataset name -> the name in the shard sets),
    ``ci_resamples`` / ``ci_seed`` of each AUC's bootstrap interval over videos, and ``overlap`` (``error`` |
    ``drop``: test videos the checkpoint was trained on; see :mod:`facepipe.stages.evaluate`)."""

    protocol: str = "example"
    aliases: dict[str, str] = {}
    ci_resamples: int = Field(1000, ge=0)
    ci_seed: int = 0
    overlap: Literal["error", "drop"] = "error"


def column_frames(preds: pl.DataFrame, col: Column) -> pl.DataFrame:
    """The faces a column scores: its dataset's fakes (of ``methods``, ids matching ``video_id_regex``) and the
    reals of its reference dataset (the column's own, filtered the same way, when ``reference_reals`` is unset).

    Args:
        preds: predictions of the column's split (:data:`facepipe.train.engine.PREDICTION_SCHEMA`).
    """
    vlabel = pl.col("video_label")
    fake = (pl.col("dataset") == col.dataset) & (vlabel == 1)
    if col.methods is not None:
        fake = fake & pl.col("method").is_in(list(col.methods))
    ref = col.reference_reals or col.dataset
    real = (pl.col("dataset") == ref) & (vlabel == 0)
    if col.video_id_regex is not None:
        rx = pl.col("video_id").str.contains(col.video_id_regex)
        fake = fake & rx
        if ref == col.dataset:
            real = real & rx
    return preds.filter(fake | real)


def score_column(frames: pl.DataFrame, agg: str, ci: int, seed: int) -> dict:
    """Frame and video AUC with intervals and counts of one column's faces (see :func:`column_frames`)."""
    from facepipe.metrics import _frame_rows, _groups, auc, auc_ci, video_scores

    fr = _frame_rows(frames)
    vid = video_scores(frames, agg)
    out = {"n_videos": vid.height, "n_real_videos": int((vid["label"] == 0).sum()),
           "n_fake_videos": int((vid["label"] == 1).sum()), "n_frames": fr.height,
           "n_real_frames": int((fr["label"] == 0).sum()), "n_fake_frames": int((fr["label"] == 1).sum())}
    for level, d, groups in (("frame", fr, _groups(fr) if fr.height else None), ("video", vid, None)):
        both = d.height and d["label"].n_unique() == 2
        out[f"{level}_auc"] = auc(d["label"], d["score"]) if both else float("nan")
        out[f"{level}_auc_ci"] = auc_ci(d["label"], d["score"], groups, ci, seed) if both and ci else None
    if not out["n_fake_videos"] or not out["n_real_videos"]:
        out["missing"] = ("no fake videos" if not out["n_fake_videos"] else "no real videos") + " in the test sets"
    return out


def run(out_dir: str | Path, cfg: BenchmarkConfig, test_shards: list[str | Path], *,
        checkpoints: Optional[list[str | Path]] = None, models: Optional[list[str]] = None,
        train_shards: Optional[str | Path] = None, train_cfg=None, freq=None, eval_cfg=None,
        progress: bool = True) -> dict:
    """Run ``cfg.protocol``: train each of ``models`` on ``train_shards`` (``train_cfg`` with its model replaced),
    or take ``checkpoints``; evaluate each on ``test_shards``; score every column; write the tables.

    Returns:
        The ``benchmark.json`` dict.

    Raises:
        InputError: neither models nor checkpoints, models without training shards, no test shard set, an
            unknown protocol, or (from evaluate) test videos seen in training under ``overlap: error``.
        StageBusy: another run holds ``out_dir``.
    """
    from facepipe.stages import evaluate, train

    proto = load_protocol(cfg.protocol).aliased(cfg.aliases)
    if not checkpoints and not models:
        raise InputError("benchmark: give --model (trained here on --train-shards) or --checkpoint")
    if models and train_shards is None:
        raise InputError("benchmark: --model needs --train-shards (the protocol's training data)")
    if not test_shards:
        raise InputError("benchmark: no test shard set (--shards)")
    out = Path(out_dir)
    runs: list[tuple[str, Path, Optional[Path]]] = []  # (label, checkpoint, train folder)
    with contract.stage_lock(out, STAGE):
        for m in models or []:
            tdir = out / "models" / _slug(m) / "train"
            tcfg = (train_cfg or train.TrainConfig()).model_copy(update={"model": m})
            train.run(train_shards, tdir, tcfg, freq, progress=progress)
            runs.append((m, tdir / "best.pt", tdir))
        for c in checkpoints or []:
            runs.append((None, Path(c), None))
        ecfg = (eval_cfg or evaluate.EvaluateConfig()).model_copy(
            update={"video_agg": proto.video_aggregation, "ci_resamples": 0, "overlap": cfg.overlap})
        result = {"protocol": proto.name, "title": proto.title, "citation": proto.citation, "notes": proto.notes,
                  "train": list(proto.train), "video_aggregation": proto.video_aggregation,
                  "ci": {"level": 0.95, "resamples": cfg.ci_resamples, "seed": cfg.ci_seed,
                         "over": "videos (stratified bootstrap)"},
                  "columns": [c.model_dump() for c in proto.columns], "models": {},
                  "tta": ecfg.tta.describe()}
        for label, ckpt_path, _ in runs:
            result["models"].update(_one_model(label, ckpt_path, proto, test_shards, ecfg, cfg, out, result, progress))
        _write(out, result)
    return result


def _one_model(label, ckpt_path: Path, proto: Protocol, test_shards, ecfg, cfg: BenchmarkConfig, out: Path,
               result: dict, progress: bool) -> dict:
    from facepipe.stages import evaluate
    from facepipe.train.engine import load_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    label = label or ckpt["model_name"]
    while label in result["models"]:
        label += "'"
    trained_on = list(ckpt.get("datasets", []))
    deviations = []
    if sorted(trained_on) != sorted(proto.train):
        deviations.append(f"trained on {'+'.join(trained_on) or 'unknown'}, the protocol trains on "
                          f"{'+'.join(proto.train)}")
    columns = {}
    for split in sorted({c.split for c in proto.columns}):
        edir = out / "models" / _slug(label) / f"evaluate-{split}"
        ev = evaluate.run(ckpt_path, list(test_shards), edir, ecfg.model_copy(update={"split": split}),
                          progress=progress)
        if ev["overlap"]["videos"]:
            deviations.append(f"{ev['overlap']['videos']} {split} video(s) seen in training left out")
        preds = pl.read_parquet(edir / "predictions.parquet")
        for col in (c for c in proto.columns if c.split == split):
            columns[col.name] = score_column(column_frames(preds, col), proto.video_aggregation, cfg.ci_resamples,
                                             cfg.ci_seed)
    missing = [n for n, c in columns.items() if "missing" in c]
    if missing:
        deviations.append(f"columns without data: {', '.join(missing)}")
    return {label: {"checkpoint": str(ckpt_path), "model": ckpt["model_name"], "step": ckpt.get("step"),
                    "trained_on": trained_on, "deviations": deviations,
                    "columns": {c.name: columns[c.name] for c in proto.columns}}}


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def _num(v) -> Optional[float]:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 4)


def _clean(o):
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, float):
        return _num(o)
    return o


def _cell(c: dict, level: str) -> str:
    a = _num(c.get(f"{level}_auc"))
    if a is None:
        return "n/a"
    ci = c.get(f"{level}_auc_ci")
    return f"{a:.4f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{a:.4f}"


def markdown(result: dict) -> str:
    """``benchmark.md``: AUC per model and column (frame and video, with 95 % intervals), n per column, the
    protocol's citation, notes and every deviation."""
    cols = [c["name"] for c in result["columns"]]
    lines = [f"# {result['title']}", "", f"Protocol `{result['protocol']}`: {result['citation']}", ""]
    if result.get("tta", "none") != "none":
        lines += [f"**Test-time augmentation: {result['tta']}** (every score below).", ""]
    for level in ("frame", "video"):
        agg = f", aggregation `{result['video_aggregation']}`" if level == "video" else ""
        lines += [f"**{level.capitalize()}-level AUC** (95 % bootstrap interval over videos{agg}; none where a class "
                  "has fewer than two videos)", "",
                  "| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for label, m in result["models"].items():
            lines.append(f"| {label} | " + " | ".join(_cell(m["columns"][c], level) for c in cols) + " |")
        lines.append("")
    lines += ["**n per column** (videos real/fake; faces real/fake)", "", "| model | " + " | ".join(cols) + " |",
              "|---|" + "---:|" * len(cols)]
    for label, m in result["models"].items():
        cells = [f"{c['n_real_videos']}/{c['n_fake_videos']}; {c['n_real_frames']}/{c['n_fake_frames']}"
                 for c in (m["columns"][n] for n in cols)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    if result["notes"]:
        lines += [f"Notes: {result['notes']}", ""]
    for label, m in result["models"].items():
        for d in m["deviations"]:
            lines.append(f"- {label}: deviates from the protocol: {d}")
    return "\n".join(lines).rstrip() + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex_escape(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in s)


def latex(result: dict) -> str:
    """``benchmark.tex``: a booktabs table, frame / video AUC per column, n in the header, citation in the caption."""
    cols = [c["name"] for c in result["columns"]]
    first = next(iter(result["models"].values()), None)
    head = [f"{_tex_escape(c)} ($n$={first['columns'][c]['n_videos']})" if first else _tex_escape(c) for c in cols]
    rows = []
    for label, m in result["models"].items():
        cells = []
        for c in cols:
            f, v = _num(m["columns"][c]["frame_auc"]), _num(m["columns"][c]["video_auc"])
            cells.append(" / ".join("--" if x is None else f"{100 * x:.2f}" for x in (f, v)))
        rows.append(f"{_tex_escape(label)} & " + " & ".join(cells) + r" \\")
    return "\n".join([
        r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "c" * len(cols) + "}", r"\toprule",
        "Model & " + " & ".join(head) + r" \\", r"\midrule", *rows, r"\bottomrule", r"\end{tabular}",
        rf"\caption{{{_tex_escape(result['title'])}: frame / video AUC (\%), video aggregation "
        rf"{_tex_escape(result['video_aggregation'])}; $n$ = test videos. {_tex_escape(result['citation'])}}}",
        r"\end{table}", ""])


def _write(out: Path, result: dict) -> None:
    clean = _clean(result)
    cols = [c["name"] for c in result["columns"]]
    rows = []
    for label, m in clean["models"].items():
        row = {"model": label, "protocol": result["protocol"], "trained_on": "+".join(m["trained_on"])}
        for c in cols:
            cm = m["columns"][c]
            for level in ("frame", "video"):
                ci = cm[f"{level}_auc_ci"] or [None, None]
                row.update({f"{c}:{level}_auc": cm[f"{level}_auc"], f"{c}:{level}_auc_low": ci[0],
                            f"{c}:{level}_auc_high": ci[1]})
            row.update({f"{c}:n_videos": cm["n_videos"], f"{c}:n_frames": cm["n_frames"]})
        row["deviations"] = "; ".join(m["deviations"])
        row["tta"] = result.get("tta", "none")
        row["citation"] = result["citation"]
        rows.append(row)
    headline = {label: {c: {"frame_auc": m["columns"][c]["frame_auc"], "video_auc": m["columns"][c]["video_auc"],
                            "n_videos": m["columns"][c]["n_videos"]} for c in cols}
                for label, m in clean["models"].items()}
    for name, text in (("benchmark.json", json.dumps(clean, indent=1)), ("metrics.json", json.dumps(headline,
                                                                                                    indent=1)),
                       ("benchmark.md", markdown(result)), ("benchmark.tex", latex(result))):
        with atomic_path(out / name) as tmp:
            tmp.write_text(text)
    with atomic_path(out / "benchmark.csv") as tmp:
        pl.DataFrame(rows, infer_schema_length=None).write_csv(tmp)


__all__ = ["BenchmarkConfig", "column_frames", "latex", "markdown", "run", "score_column"]
