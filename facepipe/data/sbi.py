"""Self-blended images (SBI; Shiohara & Yamasaki, "Detecting Deepfakes with Self-Blended Images", CVPR 2022) made
on the fly from real face crops and their 68 landmarks (``extract.landmarks68``), as the reference code
(mapooon/SelfBlendedImages, ``src/utils/sbi.py``, ``blend.py``; its masks from Face X-ray's ``DeepFakeMask.py``)
makes them:

1. ``source = target = crop``; with probability 1/2 the *source* gets the colour and frequency transforms
   (``RGBShift`` ±20 p 0.3, ``HueSaturationValue`` ±0.3, ``RandomBrightnessContrast`` ±0.1, then one of a random
   nearest-neighbour down-/up-scale by 2 or 4 and ``Sharpen``), else the *target* does;
2. the mask: with probability 1/4 the landmarks' first 68 points only (a no-op with 68-point landmarks), then one of
   four hull types drawn uniformly (``dfl_full``, ``extended``, ``components``, ``facehull``);
3. the source and the mask shifted and scaled together (``Affine`` translate x ±3 %, y ±1.5 %, scale 0.95–1/0.95);
   the mask alone elastically deformed (``ElasticTransform`` alpha 50, sigma 7);
4. the mask blurred (resized to a random 192–256 px side, Gaussian blur with an odd kernel of 5–25, normalised,
   everything below 1 set to 0, blurred again with an odd kernel of 5–25 and sigma 5–46, normalised, resized back)
   and scaled by a blend ratio drawn from (0.25, 0.5, 0.75, 1, 1, 1);
5. ``fake = mask * source + (1 - mask) * target``: it differs from the target only where the mask is non-zero.

The loader (``make_loader(..., sbi=SBIConfig(...))``) turns real samples into (target, fake) pairs (``mode: pair``,
the paper's batches of reals and their self-blended fakes) or replaces a real by its fake with probability ``p``
(``mode: replace``); fakes get ``label`` 1, ``label_source`` ``sbi`` and the blend mask as their localisation
target. Random choices come from a generator seeded per (seed, rank, worker, epoch) like the rest of the loader.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from facepipe.config import Section

BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
"""The blend ratios the reference draws from (``blend.py`` ``dynamic_blend``)."""

HULL_TYPES = ("dfl_full", "extended", "components", "facehull")
"""Face X-ray's mask types (``DeepFakeMask.py``) the reference draws uniformly (``random_get_hull``)."""


class SBIConfig(Section):
    """Self-blended images on the fly (``make_loader(sbi=...)``, ``train.sbi``).

    Attributes:
        mode: ``pair`` (every real sample is followed by its self-blended fake: the reference's batches of reals
            and their fakes) or ``replace`` (a real becomes its fake with probability ``p``).
        p: ``replace`` mode's probability.
        reals_only: leave the shard set's own fakes out (the paper trains on FF++ reals only).
    """

    mode: Literal["pair", "replace"] = "pair"
    p: float = Field(0.5, ge=0.0, le=1.0)
    reals_only: bool = True


def _hull(points: np.ndarray, shape: tuple[int, int], mask: np.ndarray | None = None) -> np.ndarray:
    """Fill the convex hull of ``points`` ((K, 2) x, y) into a (H, W) float32 mask."""
    out = np.zeros(shape, np.float32) if mask is None else mask
    cv2.fillConvexPoly(out, cv2.convexHull(np.round(points).astype(np.int32)), 1.0)
    return out


def _parts(lm: np.ndarray, kind: str) -> list[np.ndarray]:
    """Point groups of a Face X-ray mask type on iBUG-68 landmarks (``DeepFakeMask.py``: ``dfl_full``,
    ``components``, ``extended``)."""
    if kind == "dfl_full":
        jaw = np.concatenate([lm[0:17], lm[48:68], lm[[0, 8, 16]]])
        nose_ridge = np.concatenate([lm[27:31], lm[[33]]])
        eyes = np.concatenate([lm[17:27], lm[[0, 27, 16, 33]]])
        return [jaw, nose_ridge, eyes]
    if kind == "extended":  # components with the eyebrows raised by half their distance to the eyes' tops
        lm = lm.copy()
        ql = (lm[36] + (lm[36] + lm[0]) / 2) / 2  # a quarter of the way from the eye corner to the face side
        qr = (lm[45] + (lm[16] + lm[45]) / 2) / 2
        bot_l = np.stack([ql, lm[36], lm[37], lm[38], lm[39]])
        bot_r = np.stack([lm[42], lm[43], lm[44], lm[45], qr])
        lm[17:22] = lm[17:22] + (lm[17:22] - bot_l) / 2
        lm[22:27] = lm[22:27] + (lm[22:27] - bot_r) / 2
    r_jaw = np.concatenate([lm[0:9], lm[[17]]])
    l_jaw = np.concatenate([lm[8:17], lm[[26]]])
    r_cheek = np.concatenate([lm[17:20], lm[[8]]])
    l_cheek = np.concatenate([lm[24:27], lm[[8]]])
    nose_ridge = np.concatenate([lm[19:25], lm[[8]]])
    r_eye = np.concatenate([lm[17:22], lm[27:28], lm[31:36], lm[[8]]])
    l_eye = np.concatenate([lm[22:27], lm[27:28], lm[31:36], lm[[8]]])
    nose = np.concatenate([lm[27:31], lm[31:36]])
    return [r_jaw, l_jaw, r_cheek, l_cheek, nose_ridge, r_eye, l_eye, nose]


def hull_mask(landmarks: np.ndarray, shape: tuple[int, int], kind: str) -> np.ndarray:
    """The (H, W) float32 {0, 1} mask of one of :data:`HULL_TYPES` from (68 or more, 2) landmarks (x, y pixels):
    ``facehull`` the convex hull of all points, the others the union of their parts' hulls."""
    lm = np.asarray(landmarks, np.float64)
    if kind == "facehull":
        return _hull(lm, shape)
    mask = np.zeros(shape, np.float32)
    for part in _parts(lm[:68], kind):
        _hull(part, shape, mask)
    return mask


def _odd(rng: np.random.Generator, lo: int = 5, hi: int = 25) -> int:
    return int(rng.choice(np.arange(lo, hi + 1, 2)))


def blur_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The reference's ``get_blend_mask``: resize to a random 192–256 side, blur, cut below 1, blur again, back to
    the mask's size; (H, W) float32 in [0, 1]."""
    h, w = mask.shape
    size = (int(rng.integers(192, 257)), int(rng.integers(192, 257)))  # (width, height) for cv2
    m = cv2.resize(mask, size)
    k = _odd(rng)
    m = cv2.GaussianBlur(m, (k, k), 0)
    m = m / max(float(m.max()), 1e-6)
    m[m < 1] = 0
    k = _odd(rng)
    m = cv2.GaussianBlur(m, (k, k), float(rng.integers(5, 47)))
    m = m / max(float(m.max()), 1e-6)
    return cv2.resize(m, (w, h)).astype(np.float32)


def _colour_transform(seed: int):
    """The source (or target) transforms of the reference (``get_source_transforms``), albumentations."""
    import albumentations as A

    return A.Compose([
        A.Compose([
            A.RGBShift((-20, 20), (-20, 20), (-20, 20), p=0.3),
            A.HueSaturationValue(hue_shift_limit=(-0.3, 0.3), sat_shift_limit=(-0.3, 0.3),
                                 val_shift_limit=(-0.3, 0.3), p=1),
            A.RandomBrightnessContrast(brightness_limit=(-0.1, 0.1), contrast_limit=(-0.1, 0.1), p=1),
        ], p=1),
        A.OneOf([_downscale_class()(p=1), A.Sharpen(alpha=(0.2, 0.5), lightness=(0.5, 1.0), p=1)], p=1),
    ], p=1, seed=seed)


@lru_cache(maxsize=1)
def _downscale_class():
    """The reference's ``RandomDownScale`` as an albumentations transform (defined on first use: albumentations is
    imported lazily)."""
    import albumentations as A

    class RandomDownScale(A.ImageOnlyTransform):
        """Down-scale by 2 or 4 (nearest neighbour) and back up (bilinear)."""

        def get_params_dependent_on_data(self, params, data):
            return {"ratio": int(self.py_random.choice([2, 4]))}

        def apply(self, img, ratio=2, **params):
            h, w = img.shape[:2]
            small = cv2.resize(img, (max(1, w // ratio), max(1, h // ratio)), interpolation=cv2.INTER_NEAREST)
            return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)

    return RandomDownScale


def _geometry(seed: int):
    """The source and mask's shared shift / scale, and the mask's own elastic deformation (``randaffine``)."""
    import albumentations as A

    affine = A.Compose([A.Affine(translate_percent={"x": (-0.03, 0.03), "y": (-0.015, 0.015)},
                                 scale=(0.95, 1 / 0.95), fit_output=False, p=1)], seed=seed)
    elastic = A.Compose([A.ElasticTransform(alpha=50, sigma=7, p=1)], seed=seed + 1)
    return affine, elastic


class SelfBlender:
    """Makes self-blended images with a seeded generator (the loader reseeds it per sample: :meth:`reseed`).

    Args:
        seed: seeds every random choice (numpy and albumentations).
    """

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.colour = _colour_transform(int(self.rng.integers(2**31)))
        self.affine, self.elastic = _geometry(int(self.rng.integers(2**31)))

    def reseed(self, seed: int) -> None:
        """Restart every random choice from ``seed`` (the loader seeds each sample by its place in the stream, so a
        resumed pass blends each sample as an uninterrupted one would)."""
        self.rng = np.random.default_rng(seed)
        self.colour.set_random_seed(int(self.rng.integers(2**31)))
        s = int(self.rng.integers(2**31))
        self.affine.set_random_seed(s)
        self.elastic.set_random_seed(s + 1)

    def __call__(self, image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One self-blended image.

        Args:
            image: (H, W, 3) uint8 RGB face crop.
            landmarks: (68, 2) (or 81) float landmarks in the crop's pixels, iBUG order.

        Returns:
            (target (H, W, 3) uint8 — the crop, colour-transformed when the draw gave the transforms to the target;
            fake (H, W, 3) uint8 — differs from the target only where the mask is non-zero; mask (H, W) float32 in
            [0, 1], the blend weight of the source).
        """
        img = np.ascontiguousarray(image)
        lm = np.asarray(landmarks, np.float64)
        if len(lm) > 68 and self.rng.random() < 0.25:
            lm = lm[:68]
        mask = hull_mask(lm, img.shape[:2], HULL_TYPES[int(self.rng.integers(len(HULL_TYPES)))])
        source, target = img.copy(), img.copy()
        if self.rng.random() < 0.5:
            source = self.colour(image=source)["image"]
        else:
            target = self.colour(image=target)["image"]
        moved = self.affine(image=source, mask=mask)
        source, mask = moved["image"], moved["mask"]
        mask = self.elastic(image=source, mask=mask)["mask"]
        mask = blur_mask(mask.astype(np.float32), self.rng) * float(self.rng.choice(BLEND_RATIOS))
        m = mask[..., None]
        fake = np.clip(m * source.astype(np.float32) + (1 - m) * target.astype(np.float32), 0, 255)
        return target, fake.astype(np.uint8), mask


__all__ = ["BLEND_RATIOS", "HULL_TYPES", "SBIConfig", "SelfBlender", "blur_mask", "hull_mask"]
