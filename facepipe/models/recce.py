"""Reconstruction-classification detectors: RECCE (Cao et al., CVPR 2022) on Xception, and the researcher's Swin-T
autoencoder-classifier (``shared/seeds/001``), both trained with auxiliary losses through the model contract.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import nn

from facepipe.models._builders import FrozenAwareModule, timm_backbone
from facepipe.models._registry import HALF, ModelSpec, register_model
from facepipe.models.frequency import XCEPTION, xception_blocks, xception_stem, xception_tail

_XC = importlib.import_module("timm.models.xception")  # SeparableConv2d and Block of the Xception RECCE uses


def _up_sep(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.UpsamplingNearest2d(scale_factor=2), _XC.SeparableConv2d(cin, cout, 3, 1, 1),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class GraphReasoning(nn.Module):
    """RECCE's multi-scale graph reasoning: each position of the encoder map (node a) aggregates the 2x2 decoder
    positions of ``out_d2`` (nodes b) and the 4x4 of ``out_d4`` (nodes c) it covers, weighted by a softmax over
    those sub-nodes of ``Linear([a, b] -> 1) + ReLU``, gated by ``1 - sigmoid(W a)``; ``[agg_b, agg_c, a]`` goes
    through a sigmoid and a 1x1-conv reprojection to the encoder width (+ dropout). Vectorised over positions
    (the reference loops over them). (B, 728, h, w), (B, 256, 2h, 2w), (B, 128, 4h, 4w) -> (B, 728, h, w).
    """

    def __init__(self, va: int = 728, vb: int = 256, vc: int = 128, width: int = 256, drop: float = 0.2) -> None:
        super().__init__()
        self.va_embedding = nn.Sequential(nn.Conv2d(va, width, 1, bias=False), nn.ReLU(True),
                                          nn.Conv2d(width, width, 1, bias=False))
        self.gate_b = nn.Conv2d(va, width, 1, bias=False)
        self.gate_c = nn.Conv2d(va, width, 1, bias=False)
        self.vb_embedding = nn.Sequential(nn.Linear(vb, width, bias=False), nn.ReLU(True),
                                          nn.Linear(width, width, bias=False))
        self.vc_embedding = nn.Sequential(nn.Linear(vc, width, bias=False), nn.ReLU(True),
                                          nn.Linear(width, width, bias=False))
        self.reweight_ab = nn.Sequential(nn.Linear(2 * width, 1, bias=False), nn.ReLU(True))
        self.reweight_ac = nn.Sequential(nn.Linear(2 * width, 1, bias=False), nn.ReLU(True))
        self.reproject = nn.Sequential(nn.Conv2d(3 * width, va, 1, bias=False), nn.ReLU(True),
                                       nn.Conv2d(va, va, 1, bias=False), nn.Dropout(drop))

    @staticmethod
    def _nodes(feat: torch.Tensor, k: int, n: int, emb: nn.Module) -> torch.Tensor:
        b, c = feat.shape[:2]
        cols = F.unfold(feat, k, stride=k).view(b, c, k * k, n).permute(0, 3, 2, 1)  # (B, N, k*k, c)
        return emb(cols)

    def _aggregate(self, a: torch.Tensor, nodes: torch.Tensor, reweight: nn.Module, gate: torch.Tensor) -> torch.Tensor:
        pairs = torch.cat([a[:, :, None].expand(-1, -1, nodes.shape[2], -1), nodes], dim=-1)
        w = torch.softmax(reweight(pairs), dim=2)  # (B, N, k*k, 1): over the sub-nodes
        return (nodes * w).sum(2) * gate.transpose(1, 2)  # (B, N, width)

    def forward(self, emb: torch.Tensor, out_d2: torch.Tensor, out_d4: torch.Tensor) -> torch.Tensor:
        b, _, h, w = emb.shape
        n = h * w
        a = self.va_embedding(emb).flatten(2).transpose(1, 2)  # (B, N, width)
        gate_b = 1 - torch.sigmoid(self.gate_b(emb)).flatten(2)
        gate_c = 1 - torch.sigmoid(self.gate_c(emb)).flatten(2)
        agg_b = self._aggregate(a, self._nodes(out_d2, 2, n, self.vb_embedding), self.reweight_ab, gate_b)
        agg_c = self._aggregate(a, self._nodes(out_d4, 4, n, self.vc_embedding), self.reweight_ac, gate_c)
        out = torch.sigmoid(torch.cat([agg_b, agg_c, a], dim=2)).transpose(1, 2).reshape(b, -1, h, w)
        return self.reproject(out)


class GuidedAttention(nn.Module):
    """RECCE's reconstruction-guided attention: the residual ``|x - x_hat|`` (resized to the map) through
    conv3x3 + ReLU + conv1x1 + sigmoid weights ``h(emb)`` (1x1 conv + BN + ReLU); ``out = att * h(emb) + drop(emb)``."""

    def __init__(self, depth: int = 728, drop: float = 0.2) -> None:
        super().__init__()
        self.gated = nn.Sequential(nn.Conv2d(3, 3, 3, 1, 1, bias=False), nn.ReLU(True), nn.Conv2d(3, 1, 1, bias=False),
                                   nn.Sigmoid())
        self.h = nn.Sequential(nn.Conv2d(depth, depth, 1, bias=False), nn.BatchNorm2d(depth), nn.ReLU(True))
        self.dropout = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, recons: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        residual = F.interpolate((x - recons).abs(), size=emb.shape[-2:], mode="bilinear", align_corners=True)
        return self.gated(residual) * self.h(emb) + self.dropout(emb)


def metric_loss(features: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """RECCE's metric loss: for each feature map, the correlation ``(e e^T + 1) / 2`` of L2-normalised pooled
    features; ``max(1 - mean corr(real, real, i != j) + mean corr(real, fake), 0)``, summed over the maps. Batches
    without two reals or without both classes contribute 0."""
    real = labels == 0
    if real.sum() < 2 or real.all():
        return features[0].sum() * 0.0
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    rr = real[:, None] & real[None, :] & ~eye
    rf = real[:, None] ^ real[None, :]
    total = features[0].new_zeros(())
    for f in features:
        e = F.normalize(F.adaptive_avg_pool2d(f, 1).flatten(1), dim=1)
        corr = (e @ e.T + 1) / 2
        total = total + F.relu(1 - corr[rr].mean() + corr[rf].mean())
    return total


class RECCE(FrozenAwareModule):
    """RECCE (Cao et al., "End-to-End Reconstruction-Classification Learning for Face Forgery Detection", CVPR
    2022; VISION-SJTU/RECCE): an Xception encoder (to block 4) whose features a decoder reconstructs the face from
    (trained on real faces only), graph reasoning over encoder and decoder scales fused into the encoder path after
    block 7, reconstruction-guided attention after block 8, then the rest of the Xception and a linear head.

    Losses (the contract's ``losses``): ``recon`` = mean |x_hat - x| over the real faces of the batch, and
    ``metric`` (:func:`metric_loss`) on the block-4, ``out_d2`` and ``out_d4`` features; the paper's weights 0.1 each.
    Differs from the reference: no loss flooding (|loss - 0.04| + 0.04); the white-noise input augmentation
    (N(0, 1e-6) on half the batch) is kept.

    Inputs: ``image`` in [-1, 1] (mean = std = 0.5), 299 px (any size divisible through the Xception stages).
    """

    def __init__(self, pretrained=False, drop: float = 0.2, noise_std: float = 1e-6) -> None:
        super().__init__()
        self.encoder = timm_backbone(XCEPTION, pretrained)
        self.noise_std = noise_std
        self.drop = nn.Dropout(drop)
        self.decoder1 = _up_sep(728, 256)
        self.decoder2 = _XC.Block(256, 256, 3, 1)
        self.decoder3 = _up_sep(256, 128)
        self.decoder4 = _XC.Block(128, 128, 3, 1)
        self.decoder5 = _up_sep(128, 64)
        self.decoder6 = nn.Sequential(nn.Conv2d(64, 3, 1, bias=False), nn.Tanh())
        self.reasoning = GraphReasoning(728, 256, 128, 256, drop)
        self.attention = GuidedAttention(728, drop)
        self.head = nn.Sequential(nn.Dropout(drop), nn.Linear(self.encoder.num_features, 1))

    def reconstruct(self, embedding: torch.Tensor, size) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d2 = self.decoder2(self.decoder1(self.drop(embedding)))
        d4 = self.decoder4(self.decoder3(d2))
        recons = self.decoder6(self.decoder5(d4))
        return F.interpolate(recons, size=size, mode="bilinear", align_corners=True), d2, d4

    def forward(self, inputs: dict):
        x = inputs["image"]
        enc = self.encoder
        noisy = x
        if self.training and self.noise_std > 0:
            add = (torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5).to(x.dtype)
            noisy = (x + add * torch.randn_like(x) * self.noise_std).clamp(-1, 1)
        embedding = xception_blocks(enc, xception_stem(enc, noisy), 1, 4)
        recons, d2, d4 = self.reconstruct(embedding, x.shape[-2:])
        emb = xception_blocks(enc, embedding, 5, 7)
        emb = xception_blocks(enc, self.reasoning(emb, d2, d4) + emb, 8, 8)
        emb = xception_blocks(enc, self.attention(x, recons, emb), 9, 12)
        feat = F.relu(xception_tail(enc, emb))
        self.last_features = feat
        logit = self.head(F.adaptive_avg_pool2d(feat, 1).flatten(1)).squeeze(1)
        out = {"logit": logit, "features": feat, "reconstruction": recons, "losses": {}}
        if self.training and "label" in inputs:
            real = inputs["label"] == 0
            out["losses"]["recon"] = ((recons - x).abs()[real].mean() if real.any() else recons.sum() * 0.0)
            out["losses"]["metric"] = metric_loss([embedding, d2, d4], inputs["label"])
        return out

    def branches(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder,
                "decoder": nn.ModuleList([self.decoder1, self.decoder2, self.decoder3, self.decoder4, self.decoder5,
                                          self.decoder6]),
                "reasoning": self.reasoning, "attention": self.attention, "head": self.head}


@register_model(ModelSpec("recce", input_size=299, mean=HALF, std=HALF, family="reconstruction", timm_name=XCEPTION,
                          uses_labels=True, loss_weights={"recon": 0.1, "metric": 0.1},
                          paper="RECCE: Cao et al., CVPR 2022 (reconstruction-classification learning)",
                          faithful="as VISION-SJTU/RECCE: Xception encoder to block 4, decoder (upsampling separable "
                                   "convs, tanh), graph reasoning, guided attention, L1 reconstruction on reals and the "
                                   "metric loss at 0.1 each; no loss flooding", target_layer="encoder.block12"))
def recce(pretrained=False, **kw) -> RECCE:
    return RECCE(pretrained, **kw)


class DecoderBlock(nn.Module):
    """The seed's decoder block: ConvTranspose(2, stride 2) then conv3x3 + BN + GELU, or a plain conv3x3 for the
    last block (its output must reach the normalised input's full range)."""

    def __init__(self, cin: int, cout: int, last: bool = False) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(cin, cin, 2, 2)
        self.block = (nn.Conv2d(cin, cout, 3, 1, 1) if last else
                      nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.GELU()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.upsample(x))


class SwinAutoencoderClassifier(FrozenAwareModule):
    """The researcher's reconstruction-classification autoencoder (``shared/seeds/001``, after RECCE): a Swin-T
    encoder (768 x 7 x 7 at 224 px), a decoder 768 -> 384 -> 192 -> 96 -> 64 -> 3 (ConvTranspose 2x + conv3x3 + BN +
    GELU; the last block a plain conv so it can reach the normalised input range), multi-scale fusion of the decoder
    maps (14, 28, 56 px, pooled to 7) multiplied into the encoder features, a second Swin-T on the residual
    ``x - x_hat`` gating them (``f * r + f``), max- and average-pooled, a linear head.

    Loss ``recon``: the reconstruction error of the REAL faces of the batch (``recon_loss``: ``mse`` as the seed's
    ``AELoss``, or ``l1``), weight 1 by default.

    Args:
        encoder: timm Swin name. residual_encoder: build the second Swin on ``x - x_hat`` (the seed's design).
        encoder_kwargs: ``timm.create_model`` overrides (tiny test configs).
    """

    def __init__(self, pretrained=False, encoder: str = "swin_tiny_patch4_window7_224", residual_encoder: bool = True,
                 recon_loss: str = "mse", encoder_kwargs: dict | None = None) -> None:
        super().__init__()
        kw = dict(encoder_kwargs or {})
        self.encoder = timm_backbone(encoder, pretrained, global_pool="", **kw)
        c = self.encoder.num_features
        widths = [c // 2, c // 4, c // 8, max(8, c // 12)]
        self.decoder = nn.ModuleList([DecoderBlock(c, widths[0]), DecoderBlock(widths[0], widths[1]),
                                      DecoderBlock(widths[1], widths[2]), DecoderBlock(widths[2], widths[3]),
                                      DecoderBlock(widths[3], 3, last=True)])
        q = c // 4
        self.fuse1 = nn.MaxPool2d(2, 2)
        self.fuse2 = nn.Sequential(nn.Conv2d(widths[1], q, 3, 2, 1), nn.BatchNorm2d(q), nn.GELU(), nn.MaxPool2d(2, 2))
        self.fuse3 = nn.Sequential(nn.Conv2d(widths[2], q, 3, 2, 1), nn.BatchNorm2d(q), nn.GELU(),
                                   nn.Conv2d(q, q, 3, 2, 1), nn.BatchNorm2d(q), nn.GELU(), nn.MaxPool2d(2, 2))
        self.residual_encoder = (timm_backbone(encoder, pretrained, global_pool="", **kw) if residual_encoder else None)
        if recon_loss not in ("mse", "l1"):
            raise ValueError(f"recon_loss must be mse or l1, got {recon_loss!r}")
        self.recon_loss = recon_loss
        self.head = nn.Linear(2 * c, 1)

    def _map(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return net(x).permute(0, 3, 1, 2)  # Swin gives (B, h, w, C)

    def forward(self, inputs: dict):
        x = inputs["image"]
        f = self._map(self.encoder, x)
        d1 = self.decoder[0](f)
        d2 = self.decoder[1](d1)
        d3 = self.decoder[2](d2)
        recons = self.decoder[4](self.decoder[3](d3))
        fused = torch.cat([self.fuse1(d1), self.fuse2(d2), self.fuse3(d3)], dim=1) * f
        if self.residual_encoder is not None:
            fused = fused * self._map(self.residual_encoder, x - recons) + fused
        pooled = torch.cat([F.adaptive_max_pool2d(fused, 1), F.adaptive_avg_pool2d(fused, 1)], dim=1).flatten(1)
        out = {"logit": self.head(pooled).squeeze(1), "features": fused, "reconstruction": recons, "losses": {}}
        if self.training and "label" in inputs:
            real = inputs["label"] == 0
            err = (recons - x) ** 2 if self.recon_loss == "mse" else (recons - x).abs()
            out["losses"]["recon"] = err[real].mean() if real.any() else recons.sum() * 0.0
        return out

    def branches(self) -> dict[str, nn.Module]:
        out = {"encoder": self.encoder, "decoder": self.decoder,
               "fusion": nn.ModuleList([self.fuse2, self.fuse3]), "head": self.head}
        if self.residual_encoder is not None:
            out["residual_encoder"] = self.residual_encoder
        return out


@register_model(ModelSpec("recce_swin", input_size=224, family="reconstruction",
                          timm_name="swin_tiny_patch4_window7_224", uses_labels=True, loss_weights={"recon": 1.0},
                          paper="a Swin-T autoencoder-classifier from a researcher's design notes, after RECCE",
                          faithful="the design notes' shapes and fusion; reconstruction loss on real faces only "
                                   "(the notes "
                                   "reconstructs every face) and a linear last decoder block",
                          target_layer="encoder.layers.-1"))
def recce_swin(pretrained=False, **kw) -> SwinAutoencoderClassifier:
    return SwinAutoencoderClassifier(pretrained, **kw)


__all__ = ["DecoderBlock", "GraphReasoning", "GuidedAttention", "RECCE", "SwinAutoencoderClassifier", "metric_loss"]
