"""Every registered detector: forward and backward on a tiny batch; registry behaviour; model parts."""

from __future__ import annotations

import pytest
import torch

from facepipe.errors import ConfigError
from facepipe.models import create_model, get_spec, list_models
from facepipe.models.multipole import LocalWindowAttention, MultipoleAttention

SMALL = {"f3net": {"backbone": "resnet18", "input_size": 64}}


@pytest.mark.parametrize("name", list_models())
def test_forward_and_backward(name):
    torch.manual_seed(0)
    model = create_model(name, **SMALL.get(name, {}))
    spec = get_spec(name)
    inputs = {"image": torch.randn(2, 3, 64, 64)}
    for v in spec.views:
        inputs[v] = torch.randn(2, 3, 64, 64)
    out = model(inputs)
    assert out.shape == (2,) and torch.isfinite(out).all()
    torch.nn.functional.binary_cross_entropy_with_logits(out, torch.tensor([0.0, 1.0])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.spec.name == name


def test_registry_errors_and_freezing():
    with pytest.raises(ConfigError, match="did you mean xception"):
        create_model("xceptoin")
    with pytest.raises(ConfigError, match="bad options"):
        create_model("resnet18", no_such_option=1)
    frozen = create_model("resnet18", freeze_backbone=True)
    trainable = [n for n, p in frozen.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("head.") for n in trainable)
    assert get_spec("two_stream_srm").views == ("srm",) and get_spec("xception").views == ()


def test_pretrained_without_local_weights_falls_back_offline(caplog, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache: nothing to load, nothing downloaded
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with caplog.at_level("WARNING"):
        m = create_model("resnet18", pretrained=True)
    assert "no local pretrained weights for resnet18" in caplog.text
    assert m({"image": torch.randn(2, 3, 64, 64)}).shape == (2,)
    with pytest.raises(ConfigError, match="weights file not found"):
        create_model("resnet18", pretrained=str(tmp_path / "nope.pth"))


def test_pretrained_from_a_given_file_loads_those_weights(tmp_path):
    import timm

    src = timm.create_model("resnet18", num_classes=0)
    torch.nn.init.constant_(src.conv1.weight, 0.123)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    m = create_model("resnet18", pretrained=str(tmp_path / "w.pth"))
    assert torch.allclose(m.backbone.conv1.weight, torch.full_like(m.backbone.conv1.weight, 0.123))


def test_local_window_attention_keeps_shape_and_locality():
    torch.manual_seed(0)
    attn = LocalWindowAttention(16, window=5, heads=2).eval()
    x = torch.randn(1, 16, 13, 11)
    y = attn(x)
    assert y.shape == x.shape
    x2 = x.clone()
    x2[0, 0, 0, 0] += 10.0  # a change in one channel at one corner...
    y2 = attn(x2)
    assert torch.allclose(y[..., 8:, 6:], y2[..., 8:, 6:], atol=1e-6)  # ...does not reach the far corner
    far = MultipoleAttention(16, levels=3, window=5, heads=2).eval()
    assert not torch.allclose(far(x)[..., 8:, 6:], far(x2)[..., 8:, 6:], atol=1e-6)  # coarse levels do


def test_fad_bands_start_as_the_partition():
    from facepipe.models.frequency import FAD

    fad = FAD(32)
    with torch.no_grad():
        fad.learnable.zero_()  # 2*sigmoid(0)-1 = 0: the fixed masks, which sum back to the image
    x = torch.rand(2, 3, 32, 32)
    b = fad(x)
    assert b.shape == (2, 9, 32, 32)
    assert torch.allclose(b[:, 0:3] + b[:, 3:6] + b[:, 6:9], x, atol=1e-5)
