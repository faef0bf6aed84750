"""Single-stream baselines on timm backbones: Xception (FF++), EfficientNet-B4 (DFDC winners), ResNet-18."""

from __future__ import annotations

from torch import nn

from facepipe.models._registry import ModelSpec, register_model, timm_backbone


class BackboneClassifier(nn.Module):
    """timm backbone -> dropout -> linear -> one logit.

    Args:
        timm_name: timm model name.
        pretrained: see :func:`facepipe.models.create_model`.
        freeze_backbone: train only the head (transfer-learning baseline).
        drop: dropout before the head.
    """

    def __init__(self, timm_name: str, pretrained=False, freeze_backbone: bool = False, drop: float = 0.2) -> None:
        super().__init__()
        self.backbone = timm_backbone(timm_name, pretrained)
        self.head = nn.Sequential(nn.Dropout(drop), nn.Linear(self.backbone.num_features, 1))
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    def forward(self, inputs: dict) -> "torch.Tensor":  # noqa: F821
        return self.head(self.backbone(inputs["image"])).squeeze(1)


@register_model(ModelSpec("xception", input_size=299, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                paper="Chollet, CVPR 2017; FF++ baseline (Rössler et al., ICCV 2019)",
                                timm_name="legacy_xception"))
def xception(pretrained=False, **kw) -> nn.Module:
    return BackboneClassifier("legacy_xception", pretrained, **kw)


@register_model(ModelSpec("efficientnet_b4", input_size=380,
                                paper="Tan & Le, ICML 2019; DFDC winning solutions (Seferbekov 2020)",
                                timm_name="efficientnet_b4"))
def efficientnet_b4(pretrained=False, **kw) -> nn.Module:
    return BackboneClassifier("efficientnet_b4", pretrained, **kw)


@register_model(ModelSpec("resnet18", input_size=224, paper="He et al., CVPR 2016 (transfer baseline)",
                                timm_name="resnet18"))
def resnet18(pretrained=False, **kw) -> nn.Module:
    return BackboneClassifier("resnet18", pretrained, **kw)
