"""Batches on the device: :class:`ToDevice` turns a :class:`~facepipe.data.pipeline.FaceDataset` batch (uint8
images or encoded JPEGs, stored views) into the training batch: images as (B, 3, H, W) float32 normalised on the
device (JPEGs decoded there in one ``torchvision.io.decode_jpeg`` call: nvJPEG on CUDA), frequency views computed
there by :mod:`facepipe.freq.torch` from the final image (after augmentation) or moved from the shards, masks in
[0, 1], labels.
"""

from __future__ import annotations

import torch

from facepipe.data.pipeline import FaceDataset
from facepipe.errors import ConfigError


class ToDevice:
    """The training-process end of the pipeline (what :class:`facepipe.data.FaceLoader` applies to each batch).

    Args:
        dataset: the pipeline the batches come from; its ``cfg`` gives ``device``, ``views``, ``freq``, ``mean``
            and ``std``, and it says whether views are computed or stored.
    """

    def __init__(self, dataset: FaceDataset) -> None:
        cfg = dataset.cfg
        self.device = torch.device(cfg.device)
        self.views = tuple(cfg.views)
        self.compute_views = dataset.compute_views
        self.freq_cfg = cfg.freq
        self.image_size = cfg.image_size
        self.view_size = dataset.view_size
        self.mean = torch.tensor(cfg.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.std, device=self.device).view(1, 3, 1, 1)
        self._scale = 1.0 / (255.0 * self.std)
        self._shift = -self.mean / self.std

    def views_of(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The views of a batch of *normalised* images, computed as for the batches.

        Used by test-time augmentation: flip the image, then recompute every view from it (spectral
        views such as ``dct`` or ``fft`` must not be flipped themselves).

        Args:
            image: (B, 3, H, W) float, normalised with this mean and std; or a clip batch (B, T, 3, H, W).

        Returns:
            view name -> (B, C', H', W') float32 ((B, T, C', H', W') for clips).
        """
        from facepipe.freq import compute_views_torch

        if image.dim() == 5:  # a clip batch (B, T, 3, H, W): the views of every frame
            views = self.views_of(image.flatten(0, 1))
            return {k: v.unflatten(0, image.shape[:2]) for k, v in views.items()}
        return compute_views_torch(self.views, (image * self.std + self.mean).float(), self.freq_cfg)

    def _decode_jpegs(self, jpegs: list[torch.Tensor]) -> torch.Tensor:
        """nvJPEG on CUDA (libjpeg-turbo on the CPU), the whole batch in one call, resized to ``image_size``."""
        import warnings

        with warnings.catch_warnings():  # torchvision >= 0.29 points to torchcodec, which its API still equals
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_jpeg

            imgs = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=self.device)
        side = self.image_size
        out = torch.empty((len(imgs), 3, side or imgs[0].shape[1], side or imgs[0].shape[2]), device=self.device)
        for i, im in enumerate(imgs):
            if im.shape[1:] != out.shape[2:]:
                im = torch.nn.functional.interpolate(im[None].float(), size=tuple(out.shape[2:]), mode="bilinear",
                                                     antialias=True, align_corners=False)[0].clamp_(0, 255)
            out[i].copy_(im)
        return out

    def _images(self, b: dict) -> torch.Tensor:
        """The batch's images as (B, 3, H, W) float32 in [0, 255] on the device (one copy out of uint8)."""
        if "image_jpeg" in b:
            return self._decode_jpegs(b.pop("image_jpeg"))
        u8 = b.pop("image_u8").to(self.device, non_blocking=True)  # (B, H, W, 3) uint8
        out = torch.empty((u8.shape[0], 3, u8.shape[1], u8.shape[2]), device=self.device)
        return out.copy_(u8.permute(0, 3, 1, 2))

    def _stored_views(self, b: dict) -> None:
        for v in self.views:
            t = b[v].to(self.device, non_blocking=True).float()
            if self.view_size and t.shape[-1] != self.view_size and v != "block_dct":
                raise ConfigError(f"stored view {v} is {tuple(t.shape[-2:])}, the images {self.view_size}")
            b[v] = t

    def __call__(self, b: dict) -> dict:
        """``b`` with ``image`` (B, 3, H, W) float32 normalised, its views, ``mask`` and ``label`` on the device.
        Clip batches (``image_u8`` (B, T, H, W, 3)): ``image`` (B, T, 3, H, W), views (B, T, C, H, W) computed per
        frame, ``mask`` (B, T, 1, H, W)."""
        u8 = b.get("image_u8")
        if u8 is not None and u8.dim() == 5:
            return self._clips(b)
        return self._frames(b)

    def _clips(self, b: dict) -> dict:
        """A clip batch through :meth:`_frames` as B*T frames, then back to (B, T, ...)."""
        bsz, t = b["image_u8"].shape[:2]
        b["image_u8"] = b["image_u8"].flatten(0, 1)
        if "mask_u8" in b:
            b["mask_u8"] = b["mask_u8"].flatten(0, 1)
        b = self._frames(b)
        for k in ("image", "mask", *self.views):
            if k in b:
                b[k] = b[k].unflatten(0, (bsz, t))
        return b

    def _frames(self, b: dict) -> dict:
        from facepipe.freq import compute_views_torch

        x = self._images(b)
        need01 = self.compute_views and bool(self.views)
        if need01:
            x.div_(255.0)
            b.update(compute_views_torch(self.views, x, self.freq_cfg))
        else:
            self._stored_views(b)
        if "mask_u8" in b:
            b["mask"] = b.pop("mask_u8").to(self.device, non_blocking=True).unsqueeze(1).float().div_(255.0)
        if need01:  # views above were computed from the [0, 1] image before this
            b["image"] = x.sub_(self.mean).div_(self.std)
        else:  # (x / 255 - mean) / std in two passes
            b["image"] = x.mul_(self._scale).add_(self._shift)
        b["label"] = b["label"].to(self.device, non_blocking=True)
        return b


__all__ = ["ToDevice"]
