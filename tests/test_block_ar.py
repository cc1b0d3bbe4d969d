"""Block diffusion and the AR baseline: their limits agree, and their caches change nothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dlm.errors import DlmError
from dlm.processes import Autoregressive, BlockDiffusion, MaskedDiffusion
from dlm.processes.block import training_mask
from dlm.sampling import Canvas, infill_canvas, parse_template, sample_autoregressive, sample_blocks

from conftest import CountingDenoiser, tiny_model
from oracle import CHAIN


def prompts_canvas(tokenizer, length: int):
    """Two prompts of different lengths (left padding) and `length` positions to generate."""
    return Canvas.for_generation([tokenizer.encode("To be"), tokenizer.encode("Whether 'tis nobler")], length,
                                 fill_id=tokenizer.mask_id, pad_id=tokenizer.pad_id)


def batch(tokenizer, B: int = 3, L: int = 24) -> torch.Tensor:
    ids = torch.tensor(tokenizer.encode("To be, or not to be, that is the question: whether 'tis nobler"))
    return torch.stack([ids[i:i + L] for i in range(B)])


# -- exact caches -------------------------------------------------------------------------
@pytest.mark.parametrize("length", [1, 7, 20])
def test_autoregressive_kv_cache_gives_the_same_tokens(tokenizer, length):
    process = Autoregressive.from_config({}, vocab_size=tokenizer.vocab_size, special_ids=tokenizer.specials)
    model = CountingDenoiser(tiny_model(tokenizer.vocab_size, attention="causal"))
    canvas = prompts_canvas(tokenizer, length)
    cached = sample_autoregressive(model, process, canvas, temperature=0.0)
    plain = sample_autoregressive(model, process, canvas, temperature=0.0, use_cache=False)
    assert torch.equal(cached.tokens, plain.tokens)
    assert cached.nfe == plain.nfe == length, "one forward pass per token, prefill included"


@pytest.mark.parametrize("block_size,length,steps", [(4, 12, 12), (4, 10, 6), (3, 9, 9), (8, 8, 4), (1, 5, 5)])
def test_block_sampler_kv_cache_gives_the_same_tokens(tokenizer, block_size, length, steps):
    process = BlockDiffusion(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id, block_size=block_size)
    model = CountingDenoiser(tiny_model(tokenizer.vocab_size))
    canvas = prompts_canvas(tokenizer, length)
    cached = sample_blocks(model, process, canvas, steps=steps, temperature=0.0)
    calls = model.calls
    plain = sample_blocks(model, process, canvas, steps=steps, temperature=0.0, use_cache=False)
    assert torch.equal(cached.tokens, plain.tokens)
    assert cached.nfe == calls <= steps, "committing a block rides on the next block's first pass"
    assert not (cached.tokens == tokenizer.mask_id).any()


def test_block_sampler_writes_past_the_trained_context(tokenizer):
    process = BlockDiffusion(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id, block_size=4)
    model = tiny_model(tokenizer.vocab_size, max_len=16)
    canvas = prompts_canvas(tokenizer, 40)  # 19 + 40 tokens, context 16
    out = sample_blocks(model, process, canvas, steps=20, generator=torch.Generator().manual_seed(0))
    assert not (out.tokens[canvas.editable] == tokenizer.mask_id).any() and out.nfe <= 20


def test_autoregressive_sampler_writes_past_the_trained_context(tokenizer):
    process = Autoregressive.from_config({}, vocab_size=tokenizer.vocab_size, special_ids=tokenizer.specials)
    model = tiny_model(tokenizer.vocab_size, attention="causal", max_len=16)
    canvas = prompts_canvas(tokenizer, 30)
    out = sample_autoregressive(model, process, canvas, generator=torch.Generator().manual_seed(0))
    written = out.tokens[canvas.editable]
    assert out.nfe == 30 and not any((written == i).any() for i in process.banned_ids)


@pytest.mark.parametrize("sampler", [sample_autoregressive, sample_blocks])
def test_left_to_right_samplers_refuse_a_span_with_text_after_it(tokenizer, sampler):
    process = (Autoregressive.from_config({}, vocab_size=tokenizer.vocab_size, special_ids=tokenizer.specials)
               if sampler is sample_autoregressive else
               BlockDiffusion(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id, block_size=4))
    canvas = infill_canvas(parse_template("To <fill:3> or not"), tokenizer).canvas
    with pytest.raises(DlmError, match="left to right"):
        sampler(tiny_model(tokenizer.vocab_size), process, canvas, steps=4)


# -- block diffusion's two limits ------------------------------------------------------------
def model_ar_nll(model, x0: torch.Tensor, mask_id: int) -> torch.Tensor:
    """sum_l -log p(x_l | x_<l, [MASK] at l), computed one position at a time with a causal mask:
    what block diffusion with blocks of one token must equal exactly; -> (B,)."""
    B, L = x0.shape
    total = torch.zeros(B, dtype=torch.float64)
    for l in range(L):
        x = torch.cat([x0[:, :l], torch.full((B, 1), mask_id)], dim=1)  # (B, l + 1)
        causal = torch.ones(l + 1, l + 1, dtype=torch.bool).tril()[None, None]
        logits = model(x, torch.zeros(B), positions=torch.arange(l + 1).expand(B, -1), mask=causal)[:, -1]
        logits = logits.float().index_fill(-1, torch.tensor([mask_id]), float("-inf"))
        total += F.cross_entropy(logits, x0[:, l], reduction="none").double()
    return total


def test_block_size_one_is_the_autoregressive_likelihood(tokenizer):
    model = tiny_model(tokenizer.vocab_size)
    process = BlockDiffusion(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id, block_size=1)
    x0 = batch(tokenizer, L=12)
    exact = model_ar_nll(model, x0, tokenizer.mask_id)
    with torch.no_grad():
        for seed in range(3):  # every draw masks the single token of each block: no noise at all
            u = torch.rand(x0.shape[0], generator=torch.Generator().manual_seed(seed))
            got = process.nelbo(model, x0, u=u, generator=torch.Generator().manual_seed(seed))
            torch.testing.assert_close(got, exact, rtol=1e-4, atol=1e-4)
        # the time-sampled training estimate integrates its 1/t weights to the same value
        draws = torch.stack([process.loss(model, x0, generator=torch.Generator().manual_seed(s)).nelbo
                             for s in range(400)])  # (400, B)
    mean, stderr = draws.mean(0), draws.std(0) / 400 ** 0.5
    assert ((mean - exact).abs() < 4 * stderr + 1e-6).all(), (mean, exact, stderr)


def test_block_size_of_the_whole_sequence_is_masked_diffusion(tokenizer):
    model = tiny_model(tokenizer.vocab_size)
    x0 = batch(tokenizer, L=16)
    block = BlockDiffusion(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id, block_size=16)
    masked = MaskedDiffusion(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id)
    u = torch.tensor([0.1, 0.5, 0.9])
    t = torch.tensor([0.2, 0.6, 0.95])
    with torch.no_grad():
        a = block.nelbo(model, x0, u=u, generator=torch.Generator().manual_seed(1))
        b = masked.nelbo(model, x0, u=u, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        la = block.loss(model, x0, t=t[:, None], generator=torch.Generator().manual_seed(2))
        lb = masked.loss(model, x0, t=t, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(la.nelbo, lb.nelbo, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(la.loss, lb.loss, rtol=1e-4, atol=1e-4)


def test_block_training_mask_is_block_causal():
    m = training_mask(6, 2)[0, 0]  # (12, 12): [noisy | clean]
    noisy_q, clean_q = m[:6], m[6:]
    assert noisy_q[2, :6].tolist() == [False, False, True, True, False, False], "noisy sees its own block"
    assert noisy_q[2, 6:].tolist() == [True, True, False, False, False, False], "and clean earlier blocks"
    assert not clean_q[:, :6].any(), "clean tokens never see noise"
    assert clean_q[3, 6:].tolist() == [True, True, True, True, False, False], "clean is block-causal"


# -- the AR baseline -----------------------------------------------------------------------
class ChainNextToken:
    """Exact next-token logits of the test Markov chain for [bos, x_1 .. x_{L-1}] inputs."""

    def __init__(self, bos_id: int, vocab_size: int):
        self.bos_id, self.vocab_size = bos_id, vocab_size

    def __call__(self, x, t, *, attention_mask=None):
        probs = torch.zeros(*x.shape, self.vocab_size, dtype=torch.float64)
        probs[..., :CHAIN.V] = torch.where((x == self.bos_id)[..., None], CHAIN.initial,
                                           CHAIN.transition[x.clamp(max=CHAIN.V - 1)])
        return probs.clamp_min(1e-300).log()


def test_autoregressive_nelbo_is_the_exact_negative_log_likelihood():
    specials = {"mask": 3, "pad": 4, "bos": 5}
    process = Autoregressive.from_config({}, vocab_size=6, special_ids=specials)
    x0 = CHAIN.sample(64, 5, torch.Generator().manual_seed(0))
    got = process.nelbo(ChainNextToken(5, 6), x0, u=torch.zeros(64))
    torch.testing.assert_close(got, -CHAIN.log_prob(x0))
