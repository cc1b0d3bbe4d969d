"""Optimizers and the learning-rate schedule."""

import pytest
import torch

from dlm.training import optim
from dlm.training.optim import Muon, build_optimizer, lr_at, newton_schulz

from conftest import tiny_model


@pytest.mark.parametrize("bf16_units", [True, False])
@pytest.mark.parametrize("shape", [(4, 64, 16), (3, 16, 64), (1, 32, 32)])
def test_newton_schulz_orthogonalises(shape, bf16_units, monkeypatch):
    # in bfloat16 where the hardware has bf16 matrix units, else in float32 (emulated bf16 is ~150x slower)
    monkeypatch.setattr(optim, "bf16_is_fast", lambda device: bf16_units)
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    O = newton_schulz(G)
    assert O.dtype == (torch.bfloat16 if bf16_units else torch.float32)
    O = O.float()
    assert O.shape == G.shape
    s = torch.linalg.svdvals(O)
    assert s.min() > 0.6 and s.max() < 1.25, s  # the quintic iteration lands in ~[0.7, 1.2], not exactly 1
    # the same directions as the exact polar factor U V^T
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    cosine = (O * (U @ Vh)).sum((-2, -1)) / (O.norm(dim=(-2, -1)) * (U @ Vh).norm(dim=(-2, -1)))
    assert cosine.min() > 0.98


def test_muon_minimises_a_quadratic():
    torch.manual_seed(0)
    target = torch.randn(16, 8)
    w = torch.nn.Parameter(torch.zeros(16, 8))
    opt = Muon([w], lr=0.02)
    for _ in range(300):  # orthogonalised steps have a fixed size: a slow, steady descent
        opt.zero_grad()
        ((w - target) ** 2).sum().backward()
        opt.step()
    assert ((w - target) ** 2).mean() < 0.05 * (target ** 2).mean()


def test_muon_takes_hidden_matrices_and_adamw_the_rest():
    model = tiny_model(30)
    opt = build_optimizer(model, name="muon", lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99))
    adamw, muon = opt.optimizers
    muon_ids = {id(p) for g in muon.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in muon_ids) == (name.startswith("blocks.") and p.dim() == 2), name
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    plain = build_optimizer(model, name="adamw", lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99))
    assert isinstance(plain, torch.optim.AdamW)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer(model, name="sgd", lr=1e-3, weight_decay=0.0, betas=(0.9, 0.99))


def test_lr_schedule_warms_up_then_decays_to_its_floor():
    kw = dict(lr=1.0, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.55)
    assert lr_at(110, **kw) == pytest.approx(0.1) and lr_at(500, **kw) == pytest.approx(0.1)
