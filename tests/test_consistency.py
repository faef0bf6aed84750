"""Global-local multi-view consistency (issue 24 item 4): local crops inside their images, the loss against the
seed's formula written out, the term in a training step's log, the refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from facepipe.errors import ConfigError
from facepipe.models import create_model
from facepipe.train.consistency import ConsistencyConfig, consistency_loss, local_views
from facepipe.train.engine import train_step


def test_local_views_are_crops_of_their_own_image():
    """Each image constant c_b: its crops are constant c_b too (a crop never reaches another image or outside)."""
    img = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 64, 64).contiguous()
    v = local_views(img, ConsistencyConfig(views=3, size=24), torch.Generator().manual_seed(0))
    assert v.shape == (3, 4, 3, 24, 24)
    for b in range(4):
        assert torch.allclose(v[:, b], torch.full_like(v[:, b], float(b)), atol=1e-5)
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64).contiguous()
    w = local_views(ramp, ConsistencyConfig(views=8, scale=(0.3, 0.3), size=16), torch.Generator().manual_seed(1))
    spans = (w[..., -1] - w[..., 0]).flatten()
    assert torch.allclose(spans, spans[:1].expand_as(spans), atol=0.02) and 0.2 < spans[0] < 0.35  # 30 % crops


def test_the_loss_is_the_seeds_global_local_infonce():
    torch.manual_seed(0)
    g, loc = torch.randn(5, 8), torch.randn(2, 5, 8)
    cfg = ConsistencyConfig(temperature=0.1)
    ref = []
    for lk in loc:  # seed 004: CE(normalize(g) @ normalize(l).T / T, arange(B))
        sim = F.normalize(g, dim=-1) @ F.normalize(lk, dim=-1).T / 0.1
        ref.append(F.cross_entropy(sim, torch.arange(5)))
    assert consistency_loss(g, loc, cfg).item() == pytest.approx(torch.stack(ref).mean().item(), rel=1e-5)
    assert consistency_loss(g, g[None].repeat(2, 1, 1), ConsistencyConfig(loss="cosine")).item() == pytest.approx(
        0.0, abs=1e-6)


def test_a_training_step_logs_the_consistency_term_and_other_models_are_refused():
    torch.manual_seed(0)
    m = create_model("resnet18")
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    batch = {"image": torch.randn(4, 3, 64, 64), "label": torch.tensor([0, 1, 0, 1])}
    r = train_step(m, batch, opt, consistency=ConsistencyConfig(size=32, weight=0.5))
    assert {"bce", "consistency"} == set(r.losses) and r.losses["consistency"] > 0
    assert r.loss == pytest.approx(r.losses["bce"] + 0.5 * r.losses["consistency"], rel=1e-4)
    from tests.test_models import TINY

    f3 = create_model("multipole", **TINY["multipole"][0])
    with pytest.raises(ConfigError, match="head\\(pooled\\(image\\)\\)"):
        train_step(f3, batch, torch.optim.Adam(f3.parameters()), consistency=ConsistencyConfig(size=32))
