"""Effort (issue 24 item 2): the SVD split leaves the tower's function unchanged at initialisation, only the residuals
and the head train, the orthogonality and singular-value losses are the reference's formulas and reach the training
log."""

from __future__ import annotations

import pytest
import torch

from facepipe.models import create_model
from facepipe.models.effort import SVDResidual
from tests.test_models import TINY_CLIP


def _effort():
    torch.manual_seed(0)
    return create_model("effort", **TINY_CLIP)


def test_the_decomposition_keeps_the_towers_function_and_trains_only_residuals():
    from facepipe.models.clip import clip_tower

    torch.manual_seed(0)
    plain = clip_tower(False, TINY_CLIP["clip_model"], None, TINY_CLIP["clip_kwargs"]).eval()
    m = _effort().eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m.clip(x), plain(x), atol=1e-4)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    n_blocks = len(m.clip.blocks)
    assert len(trainable) == n_blocks * 4 * 3 + 2  # q, k, v, out per block: U_res, S_res, V_res; the head
    assert all(n.startswith("head.") or n.rsplit(".", 1)[-1] in ("U_res", "S_res", "V_res") for n in trainable)
    part = m.clip.blocks[0].attn.qkv.q
    assert part.U_res.shape == (32, 1) and part.S_res.shape == (1,) and part.V_res.shape == (1, 32)  # r = width - 1


def test_orthogonality_and_singular_value_losses_are_the_references_formulas():
    """The complement form equals 0.5 ||[U_r U_res][U_r U_res]^T - I||_F + 0.5 ||[V_r; V_res][V_r; V_res]^T - I||_F
    after the residual moved; both losses are ~0 at initialisation."""
    torch.manual_seed(1)
    w = torch.randn(16, 16)
    part = SVDResidual(w, 14)
    assert part.orth_loss() < 1e-2 and part.ksv_loss() < 1e-3
    u, s, vh = torch.linalg.svd(w)
    with torch.no_grad():
        part.U_res.add_(0.1 * torch.randn_like(part.U_res))
        part.V_res.add_(0.1 * torch.randn_like(part.V_res))
        part.S_res.mul_(1.5)
    uf = torch.cat([u[:, :14], part.U_res], 1)
    vf = torch.cat([vh[:14], part.V_res], 0)
    direct = 0.5 * torch.linalg.norm(uf @ uf.T - torch.eye(16)) + 0.5 * torch.linalg.norm(vf @ vf.T - torch.eye(16))
    assert part.orth_loss().item() == pytest.approx(direct.item(), rel=1e-4)
    cur = (u[:, :14] * s[:14]) @ vh[:14] + (part.U_res * part.S_res) @ part.V_res
    assert part.ksv_loss().item() == pytest.approx(abs((cur ** 2).sum() - (w ** 2).sum()).item(), rel=1e-4)


def test_a_training_step_logs_both_loss_terms():
    from facepipe.train.engine import train_step

    m = _effort().train()
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    batch = {"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0, 1, 0, 1])}
    for _ in range(3):
        r = train_step(m, batch, opt, loss_weights={"orth": 1.0, "ksv": 1.0})
    assert {"bce", "orth", "ksv"} <= set(r.losses) and r.losses["orth"] > 0 and r.losses["ksv"] > 0
