"""What a person looks at: per face the map over the crop (``<key>_real.png`` / ``<key>_fake.png``) and the
comparison figure (``<key>_comparison.png``), and ``gallery.html``, one card per face rendered from the Jinja2
template ``templates/gallery.html.j2`` (shipped as package data; autoescaped)."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl

from facepipe._io import atomic_path
from facepipe.errors import InputError

TEMPLATE = "gallery.html.j2"
"""The gallery's template in ``facepipe/explain/templates`` (part of the explain stage's code closure)."""


def _overlay(rgb01: np.ndarray, cam: np.ndarray) -> np.ndarray:
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(rgb01.astype(np.float32), cam.astype(np.float32), use_rgb=True, image_weight=0.5)


def _save_png(path: Path, rgb_u8: np.ndarray) -> None:
    import cv2

    with atomic_path(path) as tmp:
        ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb_u8, cv2.COLOR_RGB2BGR))
        if not ok:
            raise InputError(f"{path}: PNG encoding failed")
        tmp.write_bytes(buf.tobytes())


def _comparison(path: Path, rgb01, real, fake, caption: str, rollout: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(13, 3.8))
    panels = [(rgb01, "crop"), (_overlay(rgb01, real), "real map (-logit)"), (_overlay(rgb01, fake), "fake map (logit)")]
    for a, (img, title) in zip(ax, panels):
        a.imshow(img)
        a.set_title(title, fontsize=9)
    diff = fake - real
    lim = float(np.abs(diff).max()) or 1.0
    im = ax[3].imshow(diff, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax[3].set_title("fake - real" + (" (rollout: class-agnostic)" if rollout else ""), fontsize=9)
    fig.colorbar(im, ax=ax[3], fraction=0.046)
    for a in ax:
        a.axis("off")
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _defined(v: float | None) -> bool:
    return v is not None and not math.isnan(v)


def _card(r: dict) -> dict[str, str]:
    """One face's card: the texts and attributes of a :data:`~facepipe.explain.scores.SUMMARY_SCHEMA` row (the
    template escapes them)."""
    fm = f"{r['face_mass']:.3f}" if _defined(r["face_mass"]) else ""
    chance = r.get("face_mass_chance")
    extra = ""
    if r["has_mask"]:
        extra = (f" · pointing {int(r['pointing_hit'])} (chance {r['pointing_chance']:.3f})"
                 f" · IoU {r['iou_top']:.3f}")
    return {"score_attr": f"{r['score']:.6f}", "label": str(r["label"]), "facemass_attr": fm or "-1",
            "key": r["key"], "comparison_png": r["comparison_png"], "real_png": r["real_png"],
            "fake_png": r["fake_png"], "score": f"{r['score']:.3f}", "label_name": "fake" if r["label"] else "real",
            "method": str(r["method"]), "dataset": r["dataset"], "face_mass": fm or "n/a",
            "face_mass_chance": f" (chance {chance:.3f})" if fm and _defined(chance) else "", "extra": extra}


@lru_cache(maxsize=1)
def _template():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("facepipe.explain", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    return env.get_template(TEMPLATE)


def render_gallery(summary: pl.DataFrame, means: dict) -> str:
    """The HTML of ``gallery.html`` for a :data:`~facepipe.explain.scores.SUMMARY_SCHEMA` frame and its
    ``summary.json`` means."""
    return _template().render(
        title=f"facepipe explain: {means['model']} ({means['explain_method']})", n=means["n"],
        n_masked=means["n_masked"], face_mass=_fmt(means["face_mass"]),
        face_mass_chance=_fmt(means.get("face_mass_chance")), pointing_game=_fmt(means["pointing_game"]),
        pointing_game_chance=_fmt(means.get("pointing_game_chance")),
        cards=[_card(r) for r in summary.iter_rows(named=True)])


def write_gallery(out: Path, summary: pl.DataFrame, means: dict) -> Path:
    """``gallery.html``: one card per sample (comparison image, real and fake maps, caption), sortable by score,
    face label and face mass; a status line counts the images that loaded (``data-loaded`` / ``data-failed`` on
    ``<body>``)."""
    with atomic_path(out / "gallery.html") as tmp:
        tmp.write_text(render_gallery(summary, means), encoding="utf-8")
    return out / "gallery.html"
