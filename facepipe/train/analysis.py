"""The researcher's workbench: feature maps and embeddings out of a trained model (``facepipe features``), a 2-D
embedding plot, and the comparison of a DVC experiment grid (``facepipe compare``)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Iterable

import numpy as np
import polars as pl
import torch

from facepipe._io import atomic_path
from facepipe.errors import ConfigError, InputError

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------------------
# features


def _first_tensor(out) -> torch.Tensor | None:
    if torch.is_tensor(out):
        return out
    if isinstance(out, (list, tuple)):
        return next((t for t in (_first_tensor(o) for o in out) if t is not None), None)
    if isinstance(out, dict):
        return next((t for t in (_first_tensor(o) for o in out.values()) if t is not None), None)
    return None


def _is_attention(mod: torch.nn.Module) -> str | None:
    """``record`` for facepipe's attention modules, ``timm`` for timm's ViT ``Attention``, else ``None``."""
    if hasattr(mod, "record_attention"):
        return "record"
    if type(mod).__name__ == "Attention" and hasattr(mod, "fused_attn") and hasattr(mod, "attn_drop"):
        return "timm"
    return None


def list_layers(model: torch.nn.Module, batch: dict, spec) -> list[tuple[str, str, tuple]]:
    """Every named module with its type and the shape of its output on ``batch`` (leaves and containers; ``()`` for
    a module the forward pass does not call as a whole)."""
    shapes: dict[str, tuple] = {}
    hooks = [m.register_forward_hook(lambda m_, i, o, n=n: shapes.__setitem__(n, tuple(t.shape) if (
        t := _first_tensor(o)) is not None else ())) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model({k: batch[k] for k in spec.inputs})
    finally:
        for h in hooks:
            h.remove()
    return [(n, type(m).__name__ + (" [attention]" if _is_attention(m) else ""), shapes.get(n, ()))
            for n, m in model.named_modules() if n]


def layer_table(checkpoint: str | Path, shards: str | Path, split: str = "test") -> list[tuple[str, str, tuple]]:
    """:func:`list_layers` of a checkpoint's model on one batch of a split (the names ``--layers`` takes).

    Raises:
        InputError: unreadable checkpoint or shards, an empty split.
    """
    from facepipe.data.loader import make_loader
    from facepipe.train.engine import model_from_checkpoint

    lm = model_from_checkpoint(checkpoint)
    loader = make_loader(shards, split, 2, 0, shuffle=False, rank=0, world_size=1, image_size=lm.size,
                         views=lm.spec.views, view_source="compute", freq=lm.freq, mean=lm.spec.mean,
                         std=lm.spec.std, device=lm.device)
    batch = next(iter(loader), None)
    if batch is None:
        raise InputError(f"{shards}: split '{split}' holds no samples")
    return list_layers(lm.model, batch, lm.spec)


def feature_layout(mod: torch.nn.Module, t: torch.Tensor) -> str:
    """Axis order of a layer's output: ``NC``, ``NLC`` (tokens), ``NCHW``, ``NHWC`` (facepipe's window attention
    modules, which set ``channels_last``, and timm's Swin stages) or ``N...`` (anything else)."""
    if t.ndim == 2:
        return "NC"
    if t.ndim == 3:
        return "NLC"
    if t.ndim == 4:
        nhwc = getattr(mod, "channels_last", False) or "swin" in type(mod).__module__
        return "NHWC" if nhwc else "NCHW"
    return "N..."


def pool_features(t: torch.Tensor, layout: str) -> torch.Tensor:
    """(N, C) embeddings: the mean over space (``NCHW``/``NHWC``) or tokens (``NLC``); ``NC`` as is.

    Raises:
        ConfigError: a layout without a channel axis to keep (``N...``).
    """
    if layout == "NC":
        return t
    if layout in ("NLC", "NHWC"):
        return t.mean(dim=tuple(range(1, t.ndim - 1)))
    if layout == "NCHW":
        return t.mean(dim=(2, 3))
    raise ConfigError(f"cannot pool a {tuple(t.shape)} output: no known channel axis")


class FeatureRecorder:
    """Forward hooks on named layers: their outputs (and, for attention modules, their attention probabilities)
    for each batch. ``pool`` reduces maps to (B, C) embeddings (mean over space or tokens)."""

    def __init__(self, model: torch.nn.Module, layers: Iterable[str], pool: bool = False) -> None:
        from facepipe.models import get_layer

        self.pool = pool
        self.out: dict[str, torch.Tensor] = {}
        self.layouts: dict[str, str] = {}
        self.hooks = []
        for name in layers:
            mod = get_layer(model, name)
            kind = _is_attention(mod)
            if kind == "record":
                mod.record_attention = True
                self.hooks.append(mod.register_forward_hook(lambda m, i, o, n=name: self._keep_attn(n, m, o)))
            elif kind == "timm":
                mod.fused_attn = False
                self.hooks.append(mod.attn_drop.register_forward_hook(
                    lambda m, i, o, n=name: self._keep_probs(n, i[0])))
                self.hooks.append(mod.register_forward_hook(lambda m, i, o, n=name: self._keep(n, o, m)))
            else:
                self.hooks.append(mod.register_forward_hook(lambda m, i, o, n=name: self._keep(n, o, m)))

    def _keep(self, name: str, out, mod: torch.nn.Module) -> None:
        t = _first_tensor(out)
        if t is None:
            raise ConfigError(f"layer '{name}' returns no tensor")
        t = t.detach().float()
        layout = feature_layout(mod, t)
        if self.pool:
            t, layout = pool_features(t, layout), "NC"
        self.out[name] = t
        self.layouts[name] = layout

    def _keep_attn(self, name: str, mod, out) -> None:
        self._keep(name, out, mod)
        inner = getattr(mod, "attn_map", None)
        if inner is None and hasattr(mod, "attention"):
            inner = getattr(mod.attention, "attn_map", None)
        if inner is not None:
            self._keep_probs(name, inner)

    def _keep_probs(self, name: str, probs: torch.Tensor) -> None:
        self.out[f"{name}.attn"] = probs.detach().float()
        self.layouts[f"{name}.attn"] = "NHQK"  # heads, queries, keys

    def close(self) -> None:
        for h in self.hooks:
            h.remove()


def extract_features(checkpoint: str | Path, shards: str | Path, split: str, layers: list[str], out_dir: str | Path,
                     *, pool: bool = False, limit: int | None = None, batch_size: int = 32, num_workers: int = 0,
                     tsne: bool = True, progress: bool = True) -> dict:
    """Feature maps (or pooled embeddings) of named layers for every sample of a split, in shard order.

    Writes, in ``out_dir``:

    - ``<layer>.npy``: float16, row i = sample i; maps (N, C, H, W) or (N, H, W, C), tokens (N, L, C), or (N, C)
      with ``pool`` (mean over space / tokens). The axis order is in ``features.json`` ``layouts``
      (``NCHW``, ``NHWC``, ``NLC``, ``NC``).
    - ``<layer>.attn.npy`` for attention modules: their softmax probabilities, (N, heads, queries, keys)
      (``NHQK``) or (N, windows, heads, queries, keys) for windowed attention (``NWHQK``).
    - ``index.parquet``: row i = sample i: key, dataset, video_id, method, label (the face's, 0 real / 1 fake),
      video_label, label_source and score (the model's fake probability).
    - with ``tsne`` (and at least 5 samples): ``tsne.png``, a scikit-learn t-SNE of the first layer's pooled
      features coloured by face label, dataset and manipulation method (the analysis DeepfakeBench offers), and
      ``tsne.parquet`` (the index with the 2-D points).
    - a layer with one feature per sample (a logit: ``head.1``, the last of :func:`list_layers`): ``histogram.png``,
      its values per face label, instead of the t-SNE (``note`` in the result says so).
    - ``features.json``: sample count, shapes and layouts.

    Args:
        checkpoint: a ``facepipe train`` checkpoint (the model, size and view parameters it was trained with).
        shards: shard folder; split: which split.
        layers: module names (full paths, or unique endings such as ``layer4``; see :func:`list_layers`).
        limit: at most this many samples.

    Raises:
        InputError: unreadable checkpoint or shards, an empty split.
        ConfigError: no layers, an unknown or ambiguous layer name, a layer returning no tensor.
    """
    from facepipe.data.loader import make_loader
    from facepipe.train.engine import model_from_checkpoint

    if not layers:
        raise ConfigError("give at least one --layers name (see --list-layers)")
    lm = model_from_checkpoint(checkpoint)
    loader = make_loader(shards, split, batch_size, num_workers, shuffle=False, rank=0, world_size=1,
                         image_size=lm.size, views=lm.spec.views, view_source="compute", freq=lm.freq,
                         mean=lm.spec.mean, std=lm.spec.std, device=lm.device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec = FeatureRecorder(lm.model, layers, pool)
    try:
        chunks, rows = _record_split(lm.model, loader, rec, limit, progress)
    finally:
        rec.close()
    if not rows["key"]:
        raise InputError(f"{shards}: split '{split}' holds no samples")
    n = min(len(rows["key"]), limit or len(rows["key"]))
    shapes = {}
    for name, parts in chunks.items():
        arr = np.concatenate(parts)[:n]
        with atomic_path(out / f"{name}.npy") as tmp:
            np.save(tmp, arr)
        shapes[name] = list(arr.shape)
    index = pl.DataFrame({k: v[:n] for k, v in rows.items()})
    with atomic_path(out / "index.parquet") as tmp:
        index.write_parquet(tmp)
    result = {"samples": n, "layers": shapes, "layouts": {k: rec.layouts[k] for k in shapes}}
    if tsne and n >= 5:
        first = torch.from_numpy(np.concatenate(chunks[layers[0]])[:n].astype(np.float32))
        emb = pool_features(first, rec.layouts[layers[0]]).numpy().reshape(n, -1)
        title = f"{lm.checkpoint['model_name']} {layers[0]} ({split})"
        if emb.shape[1] < 2:  # a 1-D output (a logit): nothing for t-SNE to embed
            result["histogram"] = str(histogram_plot(emb[:, 0], index, out, title=title))
            result["note"] = (f"{layers[0]} has 1 feature per sample: per-class histograms ({result['histogram']}) "
                              "instead of a t-SNE")
        else:
            result["tsne"] = str(tsne_plot(emb, index, out, title=title))
    with atomic_path(out / "features.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    return result


@torch.no_grad()
def _record_split(model: torch.nn.Module, loader, rec: FeatureRecorder, limit: int | None,
                  progress: bool) -> tuple[dict[str, list[np.ndarray]], dict[str, list]]:
    """Run ``model`` over ``loader`` (up to ``limit`` samples) with ``rec``'s hooks: the float16 chunks of every
    recorded output (windowed attention reshaped to (B, windows, ...)) and the index rows with the model's score."""
    from tqdm.auto import tqdm

    from facepipe.models import logits_of
    from facepipe.train.engine import model_inputs

    chunks: dict[str, list[np.ndarray]] = {}
    rows: dict[str, list] = {k: [] for k in ("key", "dataset", "video_id", "method", "label", "video_label",
                                             "label_source", "score")}
    for b in tqdm(loader, desc="features", unit="batch", disable=not progress):
        score = torch.sigmoid(logits_of(model(model_inputs(model, b))).float())
        bsz = len(b["key"])
        for name, t in rec.out.items():
            if t.shape[0] != bsz:  # windowed attention: (B * windows, heads, q, k) -> (B, windows, ...)
                t = t.reshape(bsz, -1, *t.shape[1:])
                rec.layouts[name] = "NW" + rec.layouts[name][1:]
            chunks.setdefault(name, []).append(t.cpu().numpy().astype(np.float16))
        for k in ("key", "dataset", "video_id", "method", "video_label", "label_source"):
            rows[k].extend(b[k].tolist() if isinstance(b[k], torch.Tensor) else b[k])
        rows["label"].extend(b["label"].tolist())
        rows["score"].extend(score.cpu().tolist())
        if limit and len(rows["key"]) >= limit:
            break
    return chunks, rows


_LABEL_NAMES = {0: "real", 1: "fake", -1: "uncertain"}


def _save_figure(fig, path: Path) -> Path:
    """A matplotlib figure as PNG at ``path`` (laid out tight, 110 dpi; temp name, then rename), then closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
_LABEL_COLOURS = {"real": "tab:green", "fake": "tab:red", "uncertain": "tab:gray"}


def histogram_plot(values: np.ndarray, index: pl.DataFrame, out_dir: Path, title: str = "") -> Path:
    """Per-class histograms (face label) of a one-dimensional feature, as ``histogram.png``.

    Args:
        values: (N,) the feature of each sample (row i = ``index`` row i).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = index["label"].replace_strict(_LABEL_NAMES, default="?", return_dtype=pl.String).to_numpy()
    bins = np.histogram_bin_edges(values, bins=min(40, max(5, len(values) // 4)))
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in sorted(set(labels)):
        sel = labels == name
        ax.hist(values[sel], bins=bins, alpha=0.55, label=f"{name} ({int(sel.sum())})",
                color=_LABEL_COLOURS.get(name, "tab:blue"))
    ax.set_xlabel("value")
    ax.set_ylabel("faces")
    ax.legend()
    ax.set_title(f"{title} — {len(values)} faces", fontsize=10)
    return _save_figure(fig, out_dir / "histogram.png")


def tsne_plot(embeddings: np.ndarray, index: pl.DataFrame, out_dir: Path, title: str = "", seed: int = 0) -> Path:
    """2-D t-SNE (scikit-learn) of (N, D) embeddings as ``tsne.png``: three panels coloured by face label, dataset and
    manipulation method; the points go to ``tsne.parquet``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    n = len(embeddings)
    pts = TSNE(2, perplexity=float(min(30, max(2, (n - 1) // 3))), init="pca", random_state=seed).fit_transform(
        embeddings.astype(np.float64))
    table = index.with_columns(pl.Series("x", pts[:, 0]), pl.Series("y", pts[:, 1]))
    with atomic_path(out_dir / "tsne.parquet") as tmp:
        table.write_parquet(tmp)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    label_names = table["label"].replace_strict(_LABEL_NAMES, default="?", return_dtype=pl.String)
    for ax, (col, values) in zip(axes, (("face label", label_names), ("dataset", table["dataset"]),
                                        ("method", table["method"].fill_null("?")))):
        for i, v in enumerate(sorted(set(values.to_list()))):
            sel = (values == v).to_numpy()
            ax.scatter(pts[sel, 0], pts[sel, 1], s=10, alpha=0.75, label=f"{v} ({int(sel.sum())})",
                       color=("tab:green" if v == "real" else "tab:red") if col == "face label" else f"C{i % 10}")
        ax.set_title(col)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    fig.suptitle(f"t-SNE of {title} — {n} faces", fontsize=10)
    return _save_figure(fig, out_dir / "tsne.png")


# ------------------------------------------------------------------------------------------------------------------
# compare


DEFAULT_METRICS = ("data/evaluate/metrics.json:video.auc", "data/evaluate/metrics.json:video.eer",
                   "data/evaluate/metrics.json:video.ap", "data/evaluate/metrics.json:frame.auc")
"""``facepipe compare``'s default columns: the evaluate stage's test-split metrics (dvc.yaml ``metrics``)."""


def _flatten(prefix: str, obj, out: dict) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = obj


def _exp_show(repo: Path) -> list:
    """``dvc exp show --json`` (DVC's documented machine-readable form) in ``repo``."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json", "--no-fetch"]
    r = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    if r.returncode != 0:
        raise InputError(f"{repo}: `dvc exp show --json` failed: {(r.stderr or r.stdout).strip()[-800:]}")
    return json.loads(r.stdout or "[]")


def experiment_rows(repo: str | Path = ".", states: Iterable[str] | None = ("success", None)) -> list[dict]:
    """One flat dict per DVC experiment (``dvc exp show --json``): ``name``, ``rev``, ``state`` (``success``,
    ``failed``, ``queued``, ``running``; ``None`` for finished experiments read back from their git refs), every
    param as ``<params file>:<dotted key>`` and every metric as ``<metrics file>:<dotted key>``.

    Args:
        repo: the DVC repository.
        states: keep experiments in these states (``None`` = all).

    Raises:
        InputError: ``dvc exp show`` fails (not a DVC repository, ...).
    """
    rows = []
    for base in _exp_show(Path(repo)):
        for exp in base.get("experiments") or ():
            state = (exp.get("executor") or {}).get("state")
            for rev in exp.get("revs") or ():
                if rev.get("error"):
                    continue
                data = rev.get("data") or {}
                row = {"name": rev.get("name") or exp.get("name"), "rev": rev.get("rev"), "state": state,
                       "baseline": base.get("name") or base.get("rev")}
                for section in ("params", "metrics"):
                    for file, content in (data.get(section) or {}).items():
                        flat: dict = {}
                        _flatten("", (content or {}).get("data") or {}, flat)
                        row.update({f"{file}:{k}": v for k, v in flat.items()})
                rows.append(row)
    return [r for r in rows if states is None or r["state"] in set(states)]


def wait_for_queue(repo: str | Path = ".", timeout_s: float = 86400, poll_s: float = 5.0, progress: bool = True) -> dict:
    """Block until no DVC experiment of ``repo`` is queued or running (after ``dvc queue start``, whose workers
    run in the background); returns the count per final state.

    Raises:
        TimeoutError: experiments still queued or running after ``timeout_s`` seconds.
    """
    import time

    from tqdm.auto import tqdm

    t0 = time.monotonic()
    bar = None
    while True:
        rows = experiment_rows(repo, states=None)
        states = [r["state"] for r in rows]
        pending = sum(s in ("queued", "running") for s in states)
        if bar is None and pending:
            bar = tqdm(total=len(rows), desc="experiments", unit="exp", disable=not progress)
        if bar is not None:
            bar.n = len(rows) - pending
            bar.refresh()
        if not pending:
            if bar is not None:
                bar.close()
            return {s or "done": states.count(s) for s in set(states)}
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"{repo}: {pending} experiment(s) still queued or running after {timeout_s:.0f} s "
                               f"(see `dvc queue status`)")
        time.sleep(poll_s)


def compare(repo: str | Path = ".", metrics: Iterable[str] = DEFAULT_METRICS, group_by: Iterable[str] | None = None,
            seed_keys: Iterable[str] = ("params.yaml:train.seed",), out: str | Path | None = None) -> pl.DataFrame:
    """Mean ± std over seeds of chosen metrics, one row per configuration of a DVC experiment grid.

    Args:
        repo: the DVC repository.
        metrics: ``<metrics file>:<dotted key>`` columns as ``dvc exp show`` names them.
        group_by: params defining a configuration (default: every ``params.yaml`` key that varies across the
            experiments, except ``seed_keys``).
        seed_keys: params that only repeat a configuration.
        out: folder for ``compare.csv`` and ``compare.md`` (none written when ``None``).

    Returns:
        One row per configuration: its params, ``runs``, and ``<metric> mean`` / ``<metric> std`` columns.

    Raises:
        InputError: no finished experiments in the repository, or a metric no experiment has.
    """
    rows = experiment_rows(repo)
    if not rows:
        raise InputError(f"{repo}: no finished DVC experiments (run `dvc exp run --queue -S ...`, then "
                         "`dvc queue start`; `facepipe compare --wait` waits for the queue)")
    metrics, seed_keys = list(metrics), set(seed_keys)
    params = sorted({k for r in rows for k in r if k.startswith("params.yaml:")})
    if group_by is None:
        group_by = [k for k in params if k not in seed_keys and len({json.dumps(r.get(k), default=str)
                                                                      for r in rows}) > 1]
    group_by = list(group_by)
    missing = [m for m in metrics if not any(r.get(m) is not None for r in rows)]
    if missing:
        have = sorted({k for r in rows for k in r if ":" in k and not k.startswith("params.yaml:")})
        raise InputError(f"no experiment has metric(s) {missing}; they have {have[:20]}")
    names = metric_names(metrics)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(json.dumps(r.get(k), default=str) for k in group_by), []).append(r)
    table = []
    for key, members in sorted(groups.items()):
        row = {k.split(":", 1)[1]: json.loads(v) for k, v in zip(group_by, key)}
        row["runs"] = len(members)
        for m in metrics:
            vals = [float(r[m]) for r in members if r.get(m) is not None and not (
                isinstance(r[m], float) and math.isnan(r[m]))]
            name = names[m]
            row[f"{name} mean"] = float(np.mean(vals)) if vals else None
            row[f"{name} std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else (0.0 if vals else None)
        table.append(row)
    df = pl.DataFrame(table)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "compare.csv") as tmp:
            df.write_csv(tmp)
        with atomic_path(out / "compare.md") as tmp:
            tmp.write_text(markdown(df, metrics))
    return df


def metric_names(metrics: Iterable[str]) -> dict[str, str]:
    """Column names of ``<file>:<key>`` metrics: the key alone, or the full name where two files share a key."""
    metrics = list(metrics)
    short = [m.split(":", 1)[-1] for m in metrics]
    return {m: s if short.count(s) == 1 else m for m, s in zip(metrics, short)}


def markdown(df: pl.DataFrame, metrics: list[str]) -> str:
    """A :func:`compare` table as markdown: the configuration's params, ``runs``, and ``mean ± std`` per metric."""
    keys = df.columns[:df.columns.index("runs")]
    names = list(metric_names(metrics).values())
    lines = ["| " + " | ".join([*keys, "runs", *names]) + " |", "|" + "---|" * (len(keys) + 1 + len(names))]
    for r in df.iter_rows(named=True):
        cells = [str(r[k]) for k in keys] + [str(r["runs"])]
        for n in names:
            m, s = r.get(f"{n} mean"), r.get(f"{n} std")
            cells.append("n/a" if m is None else f"{m:.4f} ± {s:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["DEFAULT_METRICS", "FeatureRecorder", "compare", "experiment_rows", "extract_features", "layer_table",
           "histogram_plot", "list_layers", "markdown", "metric_names", "pool_features", "feature_layout", "tsne_plot",
           "wait_for_queue"]
