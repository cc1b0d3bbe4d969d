"""ReMDM remasking: sigma = 0 is the ancestral sampler; remasking keeps the data distribution."""

from __future__ import annotations

import collections
import math

import pytest
import torch

from dlm.processes import MaskedDiffusion
from dlm.sampling import Canvas, sample_ancestral
from dlm.sampling.remasking import loop_alphas, sample_remdm
from dlm.schedules import make_schedule

from conftest import CountingDenoiser
from oracle import CHAIN, OracleDenoiser


def test_without_remasking_it_is_the_ancestral_sampler(tokenizer, process, model):
    canvas = Canvas.for_generation([tokenizer.encode("To be"), tokenizer.encode("The")], 12,
                                   fill_id=tokenizer.mask_id, pad_id=tokenizer.pad_id)
    a = sample_remdm(model, process, canvas, steps=12, eta=0.0, generator=torch.Generator().manual_seed(4))
    b = sample_ancestral(model, process, canvas, steps=12, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.tokens, b.tokens)


def test_remasking_revisits_committed_tokens(tokenizer, process, model):
    canvas = Canvas.for_generation([tokenizer.encode("To be")], 16, fill_id=tokenizer.mask_id,
                                   pad_id=tokenizer.pad_id)
    seen = []
    counted = CountingDenoiser(model)
    out = sample_remdm(counted, process, canvas, steps=64, schedule="loop", eta=0.3, callback=seen.append,
                       generator=torch.Generator().manual_seed(0))
    remasked = sum(int((info.changed & (info.tokens == tokenizer.mask_id)).sum()) for info in seen)
    assert remasked > 0, "committed tokens went back to [MASK]"
    assert out.nfe == counted.calls == 64 and not (out.tokens[canvas.editable] == tokenizer.mask_id).any()
    fixed = ~canvas.editable
    assert torch.equal(out.tokens[fixed], canvas.tokens[fixed])


def test_loop_schedule_holds_the_noise_level():
    grid = torch.linspace(1.0, 0.0, 21, dtype=torch.float64)
    alpha = make_schedule("linear").alpha
    a = loop_alphas(alpha, grid, 0.55, 0.05)
    assert a[0] == 0 and a[-1] == 1 and bool((a[1:] >= a[:-1] - 1e-12).all()), "noise only decreases"
    held = (grid <= 0.55) & (grid >= 0.05)
    assert torch.allclose(a[held], torch.full_like(a[held], 0.45))


@pytest.mark.parametrize("schedule,eta", [("cap", 0.1), ("loop", 0.1)])
def test_remasking_with_the_exact_denoiser_samples_the_distribution(schedule, eta):
    """ReMDM's step keeps the forward process's marginals, so with the exact posterior the
    samples follow the data distribution (as the ancestral sampler's do) -- as long as few
    tokens are revealed in one step: tokens revealed together are drawn independently from
    their marginals (the factorisation error of every parallel step), which a large eta in the
    loop phase makes visible, and so does a last phase (t_off -> 0) of only a few steps, which must
    reveal half the tokens (the defaults t_on = 0.55, t_off = 0.05 over 64 steps give a total
    variation of about 0.07 on this chain)."""
    L, N = 3, 4000
    oracle = OracleDenoiser(CHAIN, L)
    process = MaskedDiffusion(vocab_size=oracle.vocab_size, mask_id=oracle.mask_id)
    canvas = Canvas.from_segments([[L]] * N, fill_id=oracle.mask_id, pad_id=0)
    probs = CHAIN.log_prob(oracle.outcomes).exp()
    out = sample_remdm(oracle, process, canvas, steps=64, schedule=schedule, eta=eta, t_on=0.7, t_off=0.3,
                       generator=torch.Generator().manual_seed(0))
    counts = collections.Counter(map(tuple, out.tokens.tolist()))
    tv = 0.5 * sum(abs(counts.get(tuple(o), 0) / N - p.item()) for o, p in zip(oracle.outcomes.tolist(), probs))
    noise = 0.5 * sum(math.sqrt(2 * p * (1 - p) / (math.pi * N)) for p in probs.tolist())
    assert tv < 2 * noise, (tv, noise)


def test_bad_remasking_settings_are_refused(tokenizer, process, model):
    canvas = Canvas.for_generation([[]], 4, fill_id=tokenizer.mask_id, pad_id=tokenizer.pad_id)
    with pytest.raises(ValueError, match="schedule"):
        sample_remdm(model, process, canvas, steps=4, schedule="sometimes")
    with pytest.raises(ValueError, match="t_off"):
        sample_remdm(model, process, canvas, steps=4, schedule="loop", t_on=0.1, t_off=0.5)
