"""Frequency-aware detectors: F3Net (FAD + LFS + MixBlock on two Xceptions), its FAD-only variant, and the SRM
two-stream network of Luo et al. — both on timm's ``legacy_xception`` (the Cadene/FF++ Xception).

Implemented from the papers and their reference code (yyk-wew/F3Net ``models.py``; the SRM authors'
crywang/face-forgery-detection ``model_core.py``, also in DeepfakeBench); see each class for what differs.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from facepipe.freq.functional import LUMA, SRM_KERNELS
from facepipe.freq.torch import dct_matrix
from facepipe.models._builders import FrozenAwareModule, timm_backbone
from facepipe.models._registry import HALF, ModelSpec, register_model

XCEPTION = "legacy_xception"


# ------------------------------------------------------------------------------------------------------------------
# F3Net


def band_mask(size: int, start: float, end: float) -> torch.Tensor:
    """F3Net's band: 1 where ``start <= i + j <= end`` (both ends included, as the reference's
    ``generate_filter``), else 0. (size, size) float32."""
    i = torch.arange(size)[:, None]
    j = torch.arange(size)[None, :]
    return ((i + j >= start) & (i + j <= end)).float()


class FreqFilter(nn.Module):
    """F3Net's ``Filter``: ``base + (2 sigmoid(w) - 1)`` with a fixed band ``base`` and learnable ``w`` ~ N(0, 0.1)
    over the whole grid; with ``norm`` the filtered values are divided by the band's cell count."""

    def __init__(self, size: int, start: float, end: float, learnable: bool = True, norm: bool = False) -> None:
        super().__init__()
        self.register_buffer("base", band_mask(size, start, end))
        self.learnable = nn.Parameter(torch.randn(size, size) * 0.1) if learnable else None
        self.norm = norm
        self.register_buffer("ft_num", self.base.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        filt = self.base if self.learnable is None else self.base + (2 * torch.sigmoid(self.learnable) - 1)
        y = x * filt
        return y / self.ft_num if self.norm else y


class FAD(nn.Module):
    """Frequency-aware decomposition (F3Net Sec. 3.2; reference ``FAD_Head``): the image's DCT is filtered by four
    learnable bands — low ``[0, N // 2.82]``, middle ``[N // 2.82, N // 2]``, high ``[N // 2, 2N]``, all ``[0, 2N]``
    on the anti-diagonal ``i + j``, ends included (so the diagonals at N//2.82 and N//2 are in two bands, as in the
    reference) — and each is inverse-transformed. (B, 3, N, N) -> (B, 12, N, N), order low, middle, high, all.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        edges = [(0, size // 2.82), (size // 2.82, size // 2), (size // 2, size * 2), (0, size * 2)]
        self.filters = nn.ModuleList(FreqFilter(size, a, b) for a, b in edges)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.size, self.size):
            raise ValueError(f"FAD built for {self.size}x{self.size} inputs, got {tuple(x.shape[-2:])}")
        d = dct_matrix(self.size, x.device, torch.float32)
        spec = d @ x.float() @ d.T
        return torch.cat([d.T @ f(spec) @ d for f in self.filters], dim=1).to(x.dtype)


class LFS(nn.Module):
    """Local frequency statistics (F3Net Sec. 3.3; reference ``LFS_Head``): on the grey image scaled to [0, 245]
    (``(x + 1) * 122.5`` of a [-1, 1] input), 10x10 windows at stride 2 (zero padding 4) are DCT-transformed;
    ``log10(|DCT| + 1e-15)`` is averaged over each of M = 6 learnable bands ``[20 m / M, 20 (m + 1) / M]`` on
    ``i + j``. (B, 3, N, N) -> (B, 6, L, L) with ``L = (N - 2) // 2 + 1`` (149 for 299). As the reference code; its
    paper applies log10 after summing the band energy instead.
    """

    def __init__(self, window: int = 10, stride: int = 2, bands: int = 6) -> None:
        super().__init__()
        self.window, self.stride = window, stride
        self.unfold = nn.Unfold(window, stride=stride, padding=4)
        self.filters = nn.ModuleList(FreqFilter(window, window * 2.0 / bands * m, window * 2.0 / bands * (m + 1),
                                                norm=True) for m in range(bands))
        self.register_buffer("luma", torch.tensor(LUMA).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        grey = ((x.float() * self.luma).sum(1, keepdim=True) + 1.0) * 122.5
        patches = self.unfold(grey).transpose(1, 2).reshape(b, -1, self.window, self.window)  # (B, L, 10, 10)
        d = dct_matrix(self.window, x.device, torch.float32)
        logs = torch.log10((d @ patches @ d.T).abs() + 1e-15)
        side = (h + 8 - self.window) // self.stride + 1
        out = [f(logs).sum(dim=(2, 3)).view(b, 1, side, -1) for f in self.filters]
        return torch.cat(out, dim=1).to(x.dtype)


class MixBlock(nn.Module):
    """F3Net's cross-attention between the FAD and LFS streams (reference ``MixBlock``): per channel, an energy
    from both streams' 1x1-conv queries and keys, a softmax attention map applied to the other stream (element-wise)
    and scaled by ``2 sigmoid(gamma) - 1`` (zero at start: identity), added back through a depthwise 1x1 conv + BN.
    Needs square maps of equal size. (B, C, W, W) x 2 -> (B, C, W, W) x 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fad_query, self.lfs_query = nn.Conv2d(channels, channels, 1), nn.Conv2d(channels, channels, 1)
        self.fad_key, self.lfs_key = nn.Conv2d(channels, channels, 1), nn.Conv2d(channels, channels, 1)
        self.fad_gamma, self.lfs_gamma = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
        self.fad_conv = nn.Conv2d(channels, channels, 1, groups=channels)
        self.lfs_conv = nn.Conv2d(channels, channels, 1, groups=channels)
        self.fad_bn, self.lfs_bn = nn.BatchNorm2d(channels), nn.BatchNorm2d(channels)

    def forward(self, x_fad: torch.Tensor, x_lfs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, w, h = x_fad.shape
        if x_lfs.shape != x_fad.shape or w != h:
            raise ValueError(f"MixBlock needs equal square maps, got {tuple(x_fad.shape)} and {tuple(x_lfs.shape)}")
        q = torch.cat([self.fad_query(x_fad).view(-1, w, h), self.lfs_query(x_lfs).view(-1, w, h)], dim=2)
        k = torch.cat([self.fad_key(x_fad).view(-1, w, h).transpose(1, 2),
                       self.lfs_key(x_lfs).view(-1, w, h).transpose(1, 2)], dim=1)
        attention = torch.softmax(torch.bmm(q, k), dim=-1).view(b, c, w, w)
        att_lfs = x_lfs * attention * (torch.sigmoid(self.lfs_gamma) * 2.0 - 1.0)
        att_fad = x_fad * attention * (torch.sigmoid(self.fad_gamma) * 2.0 - 1.0)
        return x_fad + self.fad_bn(self.fad_conv(att_lfs)), x_lfs + self.lfs_bn(self.lfs_conv(att_fad))


def xception_with_input(pretrained, in_chans: int, stride: int) -> nn.Module:
    """timm Xception whose first conv takes ``in_chans`` channels at ``stride``; the pretrained RGB kernel is
    repeated over the channel groups and divided by their number (as F3Net initialises its 12- and 6-channel
    convs)."""
    net = timm_backbone(XCEPTION, pretrained)
    w = net.conv1.weight.data
    reps = in_chans // 3
    net.conv1 = nn.Conv2d(in_chans, 32, 3, stride, 0, bias=False)
    net.conv1.weight.data = torch.cat([w / reps] * reps, dim=1)
    return net


def xception_blocks(net: nn.Module, x: torch.Tensor, first: int, last: int) -> torch.Tensor:
    for i in range(first, last + 1):
        x = getattr(net, f"block{i}")(x)
    return x


def xception_stem(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net.act2(net.bn2(net.conv2(net.act1(net.bn1(net.conv1(x))))))


def xception_tail(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """conv3-bn3-act3-conv4-bn4 (no final ReLU: the heads apply it)."""
    return net.bn4(net.conv4(net.act3(net.bn3(net.conv3(x)))))


class F3Net(FrozenAwareModule):
    """F3Net (Qian et al., "Thinking in Frequency: Face Forgery Detection by Mining Frequency-aware Clues",
    ECCV 2020): an Xception on the 12 FAD channels (first conv 12->32, stride 2) and an Xception on the 6 LFS
    channels (first conv 6->32, stride 1), joined by a :class:`MixBlock` after block 7 (728 channels) and after
    block 12 (1024); each stream's features ReLU + global average pooled (2048 each), concatenated, dropout 0.2,
    a linear head. ``mix=False`` gives the reference's 'Both' model (no MixBlock).

    Differs from the reference: one logit with BCE (the reference's ``num_classes=1`` BCE too); the reference
    repository never wires MixBlock into a model ("Mix is unavailable yet"), so its placement follows the paper.
    Input: [-1, 1] (mean = std = 0.5), ``input_size`` square (299 in the paper; any size for which both streams
    reach equal maps, e.g. 128, 256, 299).
    """

    def __init__(self, pretrained=False, input_size: int = 299, mix: bool = True, drop: float = 0.2) -> None:
        super().__init__()
        self.fad = FAD(input_size)
        self.lfs = LFS()
        self.fad_net = xception_with_input(pretrained, 12, 2)
        self.lfs_net = xception_with_input(pretrained, 6, 1)
        self.mix7 = MixBlock(728) if mix else None
        self.mix12 = MixBlock(1024) if mix else None
        self.head = nn.Sequential(nn.Dropout(drop), nn.Linear(2 * self.fad_net.num_features, 1))

    def forward_features(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The two streams' (B, 2048, h, w) maps."""
        x = inputs["image"]
        a = xception_blocks(self.fad_net, xception_stem(self.fad_net, self.fad(x)), 1, 7)
        b = xception_blocks(self.lfs_net, xception_stem(self.lfs_net, self.lfs(x)), 1, 7)
        if self.mix7 is not None:
            a, b = self.mix7(a, b)
        a, b = xception_blocks(self.fad_net, a, 8, 12), xception_blocks(self.lfs_net, b, 8, 12)
        if self.mix12 is not None:
            a, b = self.mix12(a, b)
        return xception_tail(self.fad_net, a), xception_tail(self.lfs_net, b)

    def forward(self, inputs: dict) -> torch.Tensor:
        a, b = self.forward_features(inputs)
        pooled = torch.cat([F.adaptive_avg_pool2d(F.relu(a), 1).flatten(1),
                            F.adaptive_avg_pool2d(F.relu(b), 1).flatten(1)], dim=1)
        return self.head(pooled).squeeze(1)

    def branches(self) -> dict[str, nn.Module]:
        return {"fad": nn.ModuleList([self.fad, self.fad_net]), "lfs": nn.ModuleList([self.lfs, self.lfs_net]),
                "mix": nn.ModuleList([m for m in (self.mix7, self.mix12) if m is not None]), "head": self.head}


class F3NetFAD(FrozenAwareModule):
    """F3Net's FAD branch alone on one Xception (12-channel first conv), dropout 0.5, linear head — the variant
    DeepfakeBench reports as F3Net ("we replicate the results by solely utilizing the FAD branch")."""

    def __init__(self, pretrained=False, input_size: int = 299, drop: float = 0.5) -> None:
        super().__init__()
        self.fad = FAD(input_size)
        self.net = xception_with_input(pretrained, 12, 2)
        self.head = nn.Sequential(nn.Dropout(drop), nn.Linear(self.net.num_features, 1))

    def forward_features(self, inputs: dict) -> torch.Tensor:
        net = self.net
        return xception_tail(net, xception_blocks(net, xception_stem(net, self.fad(inputs["image"])), 1, 12))

    def forward(self, inputs: dict) -> torch.Tensor:
        f = self.forward_features(inputs)
        return self.head(F.adaptive_avg_pool2d(F.relu(f), 1).flatten(1)).squeeze(1)


_F3 = dict(mean=HALF, std=HALF, family="frequency", timm_name=XCEPTION, size_options=("input_size",))


@register_model(ModelSpec("f3net", input_size=299, **_F3,
                          paper="F3Net: Qian et al., ECCV 2020 (FAD + LFS + MixBlock, two Xceptions)",
                          faithful="FAD (4 learnable bands, reference edges N//2.82 and N//2, ends included), LFS "
                                   "(10x10 DCT, stride 2, log10, 6 bands, as the reference code), MixBlock after "
                                   "blocks 7 and 12 (the paper's placement; the reference repo never wires it)",
                          target_layer="fad_net.bn4"))
def f3net(pretrained=False, **kw) -> F3Net:
    return F3Net(pretrained, **kw)


@register_model(ModelSpec("f3net_fad", input_size=299, **_F3,
                          paper="F3Net FAD branch only (the variant DeepfakeBench reports as F3Net)",
                          faithful="FAD as in f3net on one Xception, dropout 0.5 (DeepfakeBench's configuration)",
                          target_layer="net.bn4"))
def f3net_fad(pretrained=False, **kw) -> F3NetFAD:
    return F3NetFAD(pretrained, **kw)


# ------------------------------------------------------------------------------------------------------------------
# SRM two-stream (Luo et al., CVPR 2021)


def _srm_bank() -> torch.Tensor:
    return torch.from_numpy(SRM_KERNELS.copy())  # (3, 5, 5)


class SRMConv(nn.Module):
    """``SRMConv2d_simple``: each of the three SRM kernels on the sum over input channels, truncated to [-3, 3].
    (B, C, H, W) -> (B, 3, H, W)."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.register_buffer("weight", _srm_bank()[:, None].repeat(1, in_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardtanh(F.conv2d(x, self.weight.to(x.dtype), padding=2), -3.0, 3.0)


class SRMSeparate(nn.Module):
    """``SRMConv2d_Separate``: the SRM kernels on the RGB stream's intermediate features (grouped conv; as the
    authors' code, output channel k sees input channel k // 3 through kernel k // C), truncated, then a 1x1 conv
    to ``out_channels`` + BN + ReLU. (B, C, H, W) -> (B, out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.inc = in_channels
        self.register_buffer("weight", _srm_bank().repeat_interleave(in_channels, dim=0)[:, None])  # (3C, 1, 5, 5)
        self.out = nn.Sequential(nn.Conv2d(3 * in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                                 nn.ReLU(inplace=True))
        nn.init.kaiming_normal_(self.out[0].weight, a=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.hardtanh(F.conv2d(x, self.weight.to(x.dtype), padding=2, groups=self.inc), -3.0, 3.0)
        return self.out(y)


class SRMPixelAttention(nn.Module):
    """SRM-guided spatial attention: SRM -> conv 3->32 (stride 2) -> conv 32->64 -> spatial attention
    (mean and max over channels, 7x7 conv, sigmoid). (B, 3, H, W) -> (B, 1, h, w) at the RGB stem's size."""

    def __init__(self) -> None:
        super().__init__()
        self.srm = SRMConv(3)
        self.conv = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 0, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
                                  nn.Conv2d(32, 64, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        self.sa = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(self.srm(x))
        return torch.sigmoid(self.sa(torch.cat([f.mean(1, keepdim=True), f.amax(1, keepdim=True)], dim=1)))


class DualCrossModalAttention(nn.Module):
    """Dual cross-modality attention (DCMA) between the RGB (x) and SRM (y) streams: an energy between shared
    1/8-width keys of both, a linear layer over positions and a softmax per direction, each stream receiving the
    other's values, scaled by zero-initialised ``gamma``. Sized for (B, C, size, size) maps."""

    def __init__(self, channels: int, size: int, ratio: int = 8) -> None:
        super().__init__()
        c8 = channels // ratio
        self.key1, self.key2 = nn.Conv2d(channels, c8, 1), nn.Conv2d(channels, c8, 1)
        self.key_share = nn.Conv2d(c8, c8, 1)
        self.linear1, self.linear2 = nn.Linear(size * size, size * size), nn.Linear(size * size, size * size)
        self.value1, self.value2 = nn.Conv2d(channels, channels, 1), nn.Conv2d(channels, channels, 1)
        self.gamma1, self.gamma2 = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_normal_(m.weight, gain=0.02)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        k1 = self.key_share(self.key1(x)).flatten(2).transpose(1, 2)  # (B, HW, C/8)
        k2 = self.key_share(self.key2(y)).flatten(2)                  # (B, C/8, HW)
        energy = torch.bmm(k1, k2)                                     # (B, HW, HW)
        att1 = torch.softmax(self.linear1(energy), dim=-1)
        att2 = torch.softmax(self.linear2(energy.transpose(1, 2)), dim=-1)
        out_x = torch.bmm(self.value2(y).flatten(2), att1.transpose(1, 2)).view(b, c, h, w)
        out_y = torch.bmm(self.value1(x).flatten(2), att2.transpose(1, 2)).view(b, c, h, w)
        return self.gamma1 * out_x + x, self.gamma2 * out_y + y


class FeatureFusion(nn.Module):
    """Concatenate both streams (4096) -> 1x1 conv to 2048 + BN + ReLU -> F; channel attention (avg and max pooled,
    shared 2048 -> 128 -> 2048 MLP, sigmoid); ``F + F * CA(F)`` (the authors' code)."""

    def __init__(self, channels: int = 2048, ratio: int = 16) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(2 * channels, channels, 1, bias=False), nn.BatchNorm2d(channels),
                                    nn.ReLU(inplace=True))
        self.mlp = nn.Sequential(nn.Conv2d(channels, channels // ratio, 1, bias=False), nn.ReLU(inplace=True),
                                 nn.Conv2d(channels // ratio, channels, 1, bias=False))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        f = self.reduce(torch.cat([x, y], dim=1))
        ca = torch.sigmoid(self.mlp(F.adaptive_avg_pool2d(f, 1)) + self.mlp(F.adaptive_max_pool2d(f, 1)))
        return f + f * ca


class SRMTwoStream(FrozenAwareModule):
    """Luo et al., "Generalizing Face Forgery Detection with High-frequency Features", CVPR 2021: an RGB Xception and
    an SRM Xception. Multi-scale high-frequency features: SRM residuals of the image feed the SRM stream and SRM
    filters of the RGB stream's first two conv stages are added into it; SRM-guided spatial attention reweights
    the RGB stem (``x * att + x``); dual cross-modality attention after blocks 3 and 7; both streams to the end,
    fused with channel attention, ReLU, average pooled, dropout 0.5, a linear head.

    Differs from the authors' code and DeepfakeBench: one logit with facepipe's BCE instead of the AM-softmax loss
    (m 0.45, s 30). Input: [-1, 1] (mean = std = 0.5), ``input_size`` (256 in the authors' setup).
    """

    def __init__(self, pretrained=False, input_size: int = 256, drop: float = 0.5) -> None:
        super().__init__()
        self.rgb = timm_backbone(XCEPTION, pretrained)
        self.srm_net = copy.deepcopy(self.rgb) if pretrained else timm_backbone(XCEPTION, False)
        self.srm0 = SRMConv(3)
        self.srm1, self.srm2 = SRMSeparate(32, 32), SRMSeparate(64, 64)
        self.pixel_attention = SRMPixelAttention()
        self.post = nn.Sequential(nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        with torch.no_grad():
            probe = xception_blocks(self.rgb, xception_stem(self.rgb, torch.zeros(1, 3, input_size, input_size)), 1, 3)
            size3 = probe.shape[-1]
            size7 = xception_blocks(self.rgb, probe, 4, 7).shape[-1]
        self.dcma0, self.dcma1 = DualCrossModalAttention(728, size3), DualCrossModalAttention(728, size7)
        self.fusion = FeatureFusion(self.rgb.num_features)
        self.head = nn.Sequential(nn.Dropout(drop), nn.Linear(self.rgb.num_features, 1))

    def forward_features(self, inputs: dict) -> torch.Tensor:
        """The fused (B, 2048, h, w) map."""
        image = inputs["image"]
        r, s = self.rgb, self.srm_net
        srm = self.srm0(image)
        x = r.act1(r.bn1(r.conv1(image)))
        y = F.relu(s.act1(s.bn1(s.conv1(srm))) + self.srm1(x))
        x = r.act2(r.bn2(r.conv2(x)))
        y = F.relu(s.act2(s.bn2(s.conv2(y))) + self.srm2(x))
        x = self.post(x * self.pixel_attention(srm) + x)
        x, y = self.dcma0(xception_blocks(r, x, 1, 3), xception_blocks(s, y, 1, 3))
        x, y = self.dcma1(xception_blocks(r, x, 4, 7), xception_blocks(s, y, 4, 7))
        x, y = xception_blocks(r, x, 8, 12), xception_blocks(s, y, 8, 12)
        return self.fusion(xception_tail(r, x), xception_tail(s, y))

    def forward(self, inputs: dict) -> torch.Tensor:
        f = self.forward_features(inputs)
        return self.head(F.adaptive_avg_pool2d(F.relu(f), 1).flatten(1)).squeeze(1)

    def branches(self) -> dict[str, nn.Module]:
        return {"rgb": self.rgb, "srm": nn.ModuleList([self.srm_net, self.srm1, self.srm2, self.pixel_attention]),
                "attention": nn.ModuleList([self.dcma0, self.dcma1]), "head": nn.ModuleList([self.fusion, self.head])}


@register_model(ModelSpec("srm", input_size=256, mean=HALF, std=HALF, family="frequency", timm_name=XCEPTION,
                          size_options=("input_size",),
                          paper="Luo et al., CVPR 2021 (SRM-guided two-stream Xception with DCMA)",
                          faithful="as the authors' code (crywang/face-forgery-detection): multi-scale SRM, SRM "
                                   "pixel attention, DCMA after blocks 3 and 7, fusion F + F*CA(F); BCE on one logit "
                                   "instead of AM-softmax", target_layer="fusion.reduce"))
def srm(pretrained=False, **kw) -> SRMTwoStream:
    return SRMTwoStream(pretrained, **kw)


__all__ = ["DualCrossModalAttention", "F3Net", "F3NetFAD", "FAD", "LFS", "MixBlock", "SRMConv", "SRMSeparate",
           "SRMTwoStream", "band_mask"]
