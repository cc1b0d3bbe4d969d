"""The masked (absorbing) process: corruption rates, what is scored, and the reverse step."""

import math

import pytest
import torch

from dlm.processes import MaskedDiffusion, low_discrepancy_times
from dlm.schedules import CosineSchedule


def test_corrupt_masks_at_rate_one_minus_alpha():
    p = MaskedDiffusion(vocab_size=10, mask_id=9, schedule=CosineSchedule())
    x0 = torch.randint(0, 9, (4, 20000), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.1, 0.4, 0.7, 0.95])
    x_t = p.corrupt(x0, t, generator=torch.Generator().manual_seed(1))
    rate = (x_t == 9).double().mean(1)
    torch.testing.assert_close(rate, 1 - p.schedule.alpha(t.double()), atol=0.01, rtol=0)
    kept = x_t != 9
    assert torch.equal(x_t[kept], x0[kept])  # unmasked tokens are carried over


def test_loss_mask_positions_are_never_noised_nor_scored():
    p = MaskedDiffusion(vocab_size=10, mask_id=9)
    x0 = torch.randint(0, 9, (8, 12), generator=torch.Generator().manual_seed(0))
    loss_mask = torch.ones_like(x0, dtype=torch.bool)
    loss_mask[:, :5] = False  # a prompt
    seen = []

    def denoiser(x_t, t, *, attention_mask=None):
        seen.append(x_t.clone())
        logits = torch.zeros(*x_t.shape, 10)
        logits[..., :5] = 5.0  # arbitrary predictions; the prompt must not count
        return logits

    out = p.loss(denoiser, x0, loss_mask=loss_mask, t=torch.full((8,), 0.99))
    assert torch.equal(seen[0][:, :5], x0[:, :5])
    assert torch.equal(out.num_tokens, torch.full((8,), 7))
    # A denoiser that is certain of the right token at scored positions has zero loss, whatever it says elsewhere.
    def perfect(x_t, t, *, attention_mask=None):
        logits = torch.full((*x_t.shape, 10), -1e4)
        logits.scatter_(-1, x0[..., None], 1e4)
        logits[:, :5] = 0.0
        return logits

    out = p.loss(perfect, x0, loss_mask=loss_mask, generator=torch.Generator().manual_seed(0))
    assert out.loss.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.all(out.nelbo.abs() < 1e-6)


def test_mask_token_gets_zero_probability():
    p = MaskedDiffusion(vocab_size=6, mask_id=2)
    logits = torch.randn(3, 4, 6)
    logits[..., 2] = 100.0  # a denoiser that loves [MASK]
    probs = p.x0_logits(logits).softmax(-1)
    assert torch.all(probs[..., 2] == 0)
    assert logits[..., 2].eq(100.0).all()  # the caller's tensor is untouched


def test_step_reveals_at_the_posterior_rate_and_keeps_visible_tokens():
    p = MaskedDiffusion(vocab_size=5, mask_id=4)
    x_t = torch.full((2, 50000), 4)
    x_t[:, :10] = 1  # visible tokens
    logits = torch.zeros(2, 50000, 5)
    t, s = torch.tensor([0.8, 0.5]), torch.tensor([0.6, 0.0])
    x_s = p.step(x_t, logits, t, s, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x_s[:, :10], x_t[:, :10])
    revealed = (x_s[:, 10:] != 4).double().mean(1)
    torch.testing.assert_close(revealed, p.unmask_probability(t, s), atol=0.01, rtol=0)
    assert revealed[1] == 1.0  # s = 0: everything is revealed
    assert not (x_s == 4).any(dim=1)[1]


def test_low_discrepancy_times_cover_the_interval():
    t = low_discrepancy_times(8, eps=1e-3, generator=torch.Generator().manual_seed(0))
    sorted_t = t.sort().values
    gaps = sorted_t[1:] - sorted_t[:-1]
    torch.testing.assert_close(gaps, torch.full((7,), (1 - 1e-3) / 8), atol=1e-5, rtol=0)
    assert bool(((t >= 1e-3) & (t <= 1)).all())


def test_objectives_against_the_exact_value():
    """With a context-free denoiser the NELBO is known in closed form: the mean cross-entropy of
    the data tokens. The exact objective is unbiased for it; the normalized one weights each
    sequence by L / (masked count) and scores nothing when no token is masked, so its
    expectation is the NELBO times P(some token masked) averaged over t: 1 - 1/(L + 1)."""
    B, L = 8192, 16
    x0 = torch.randint(0, 9, (B, L), generator=torch.Generator().manual_seed(0))
    logits_table = torch.randn(10, generator=torch.Generator().manual_seed(1))

    def denoiser(x_t, t, *, attention_mask=None):
        return logits_table.expand(*x_t.shape, 10)

    log_probs = logits_table[:9].log_softmax(-1)  # [MASK] (id 9) gets no probability
    exact = -log_probs[x0].double().mean().item()  # nats per token
    nelbo = MaskedDiffusion(vocab_size=10, mask_id=9, objective="nelbo").loss(
        denoiser, x0, generator=torch.Generator().manual_seed(2))
    per_token = nelbo.nelbo / L  # (B,)
    stderr = per_token.std().item() / B**0.5
    assert abs(nelbo.loss.item() - exact) < 3 * stderr
    assert abs(per_token.mean().item() - exact) < 3 * stderr
    normalized = MaskedDiffusion(vocab_size=10, mask_id=9, objective="normalized").loss(
        denoiser, x0, generator=torch.Generator().manual_seed(2))
    assert normalized.loss.item() == pytest.approx(exact * (1 - 1 / (L + 1)), rel=0.01)
    torch.testing.assert_close(normalized.nelbo, nelbo.nelbo)  # the reported NELBO is the same estimate


def test_bad_construction_is_refused():
    with pytest.raises(ValueError, match="outside the vocabulary"):
        MaskedDiffusion(vocab_size=5, mask_id=5)
    with pytest.raises(ValueError, match="objective"):
        MaskedDiffusion(vocab_size=5, mask_id=0, objective="mse")


def test_exact_count_nelbo_masks_exactly_m_of_the_scored_positions():
    p = MaskedDiffusion(vocab_size=10, mask_id=9)
    x0 = torch.randint(0, 9, (5, 12), generator=torch.Generator().manual_seed(0))
    loss_mask = torch.ones_like(x0, dtype=torch.bool)
    loss_mask[:, :4] = False  # 8 scored positions
    seen = []

    def denoiser(x_t, t, *, attention_mask=None):
        seen.append(x_t.clone())
        return torch.zeros(*x_t.shape, 10)

    u = torch.tensor([0.0, 0.2, 0.5, 0.8, 0.999])
    nelbo = p.nelbo(denoiser, x0, u=u, loss_mask=loss_mask, generator=torch.Generator().manual_seed(1))
    masked = seen[0] == 9
    assert masked.sum(1).tolist() == [1, 2, 5, 7, 8]  # m = 1 + floor(u N)
    assert not masked[:, :4].any()
    # uniform logits over the 9 clean tokens: every masked token costs log 9, and N/m * m of them = N log 9
    torch.testing.assert_close(nelbo, torch.full((5,), 8 * math.log(9), dtype=torch.float64))
