"""Every sampler x every schedule passes one contract; then what each sampler must prove."""

from __future__ import annotations

import collections
import math

import pytest
import torch

from dlm.errors import DlmError
from dlm.processes import PROCESSES, MaskedDiffusion
from dlm.sampling import SAMPLERS, Canvas, infill_canvas, parse_template, sample_ancestral, sample_confidence

from conftest import CountingDenoiser, build, tiny_model
from oracle import CHAIN, OracleDenoiser


def canvases(tokenizer):
    """Two kinds of canvas: prompts of different lengths (left padding), and spans inside text."""
    prompts = Canvas.for_generation([tokenizer.encode("To be"), tokenizer.encode("Whether 'tis nobler")], 12,
                                    fill_id=tokenizer.mask_id, pad_id=tokenizer.pad_id)
    spans = infill_canvas(parse_template("To <fill:3> or not <fill:4>, that is"), tokenizer, num_samples=2).canvas
    return {"prompts": prompts, "spans": spans}


CASES = [(p, s, sch) for p in sorted(PROCESSES) for s in PROCESSES[p].samplers
         for sch in (PROCESSES[p].schedules or (None,))]


@pytest.mark.parametrize("process_name,sampler_name,schedule", CASES)
@pytest.mark.parametrize("kind", ["prompts", "spans"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sampler_contract(process_name, sampler_name, schedule, kind, temperature, tokenizer):
    sampler = SAMPLERS[sampler_name]
    process, model = build(process_name, tokenizer, schedule)
    canvas = canvases(tokenizer)[kind]
    denoiser = CountingDenoiser(model)
    steps, seen = 16, []
    run = lambda seed: sampler(denoiser, process, canvas, steps=steps, temperature=temperature,  # noqa: E731
                               generator=torch.Generator().manual_seed(seed), callback=seen.append,
                               record_history=True)
    if kind == "spans" and not process.infills:
        with pytest.raises(DlmError, match="left to right"):
            run(0)
        return
    out = run(0)
    assert out.tokens.shape == canvas.shape
    fixed = ~canvas.editable
    assert torch.equal(out.tokens[fixed], canvas.tokens[fixed]), "prompt, fixed text and padding never change"
    written = out.tokens[canvas.editable]
    assert not (written == tokenizer.mask_id).any() and not (written == tokenizer.pad_id).any(), "no mask/pad left"
    assert out.nfe == denoiser.calls and 1 <= out.nfe <= steps
    assert [s.step for s in seen] == list(range(1, out.steps + 1)) and seen[-1].nfe == out.nfe
    assert len(out.history) == out.steps and torch.equal(out.history[-1], out.tokens)
    for info in seen:  # nothing outside the editable positions is ever written
        assert not (info.changed & fixed).any()
    assert out.generated == int(canvas.editable.sum(1).max()) and out.seconds >= 0
    seen.clear()
    assert torch.equal(run(0).tokens, out.tokens), "the same seed reproduces the sample"


# -- confidence sampler = LLaDA's published algorithm -------------------------------------
def llada_generate(model, prompt, *, steps, gen_length, block_length, mask_id):
    """LLaDA `generate.py` (Nie et al., 2025) at temperature 0 with low-confidence remasking,
    written out from the paper's Algorithm 5 and the released code, as the reference."""
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, :prompt.shape[1]] = prompt
    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length
    assert steps % num_blocks == 0
    steps_per_block = steps // num_blocks
    for b in range(num_blocks):
        lo, hi = prompt.shape[1] + b * block_length, prompt.shape[1] + (b + 1) * block_length
        block_masks = (x[:, lo:hi] == mask_id).sum(1, keepdim=True)
        base, remainder = block_masks // steps_per_block, block_masks % steps_per_block
        num_transfer = base.repeat(1, steps_per_block)
        for j in range(x.shape[0]):
            num_transfer[j, :remainder[j]] += 1
        for i in range(steps_per_block):
            mask_index = x == mask_id
            logits = model(x)
            x0 = logits.argmax(-1)
            p = torch.softmax(logits.double(), dim=-1)
            x0_p = torch.gather(p, -1, x0[..., None]).squeeze(-1)
            x0_p[:, hi:] = -float("inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -float("inf"))
            transfer = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(confidence.shape[0]):
                transfer[j, torch.topk(confidence[j], k=int(num_transfer[j, i])).indices] = True
            x[transfer] = x0[transfer]
    return x


@pytest.mark.parametrize("gen_length,block_length,steps", [
    (16, 16, 16), (16, 16, 8), (16, 16, 5), (16, 4, 8), (16, 8, 16), (24, 8, 6), (12, 3, 12)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confidence_sampler_reproduces_llada(gen_length, block_length, steps, seed):
    V, mask_id = 40, 0
    net = tiny_model(V, seed=seed)

    def model(x, t=None, *, attention_mask=None):
        logits = net(x)
        logits[..., mask_id] = -float("inf")  # a model that never predicts [MASK], as a trained one
        return logits

    g = torch.Generator().manual_seed(100 + seed)
    prompt = torch.randint(1, V, (2, 7), generator=g)  # a batch of two same-length prompts
    with torch.no_grad():
        expected = llada_generate(model, prompt.clone(), steps=steps, gen_length=gen_length,
                                  block_length=block_length, mask_id=mask_id)
    process = MaskedDiffusion(vocab_size=V, mask_id=mask_id)
    canvas = Canvas.for_generation(prompt.tolist(), gen_length, fill_id=mask_id, pad_id=1)
    out = sample_confidence(model, process, canvas, steps=steps, block_length=block_length, temperature=0.0)
    assert torch.equal(out.tokens, expected)
    assert out.nfe <= steps


def test_confidence_sampler_is_batch_and_padding_invariant(tokenizer, process):
    """At temperature 0 a prompt gets the same text alone, or left-padded in a batch of 8."""
    model = tiny_model(tokenizer.vocab_size, seed=3)
    prompts = ["To be", "Whether 'tis nobler in the", "The", "Or to take arms against", "No", "That flesh",
               "Devoutly to", "To sleep"]
    batch = Canvas.for_generation([tokenizer.encode(p) for p in prompts], 10, fill_id=tokenizer.mask_id,
                                  pad_id=tokenizer.pad_id)
    together = sample_confidence(model, process, batch, steps=5, block_length=5)
    for b, p in enumerate(prompts):
        alone = Canvas.for_generation([tokenizer.encode(p)], 10, fill_id=tokenizer.mask_id, pad_id=tokenizer.pad_id)
        single = sample_confidence(model, process, alone, steps=5, block_length=5)
        assert batch.generated(together.tokens, b) == alone.generated(single.tokens, 0), p


def test_confidence_sampler_refuses_too_few_steps(tokenizer, process, model):
    canvas = Canvas.for_generation([tokenizer.encode("To")], 8, fill_id=tokenizer.mask_id, pad_id=tokenizer.pad_id)
    with pytest.raises(ValueError, match="cannot cover 4 blocks"):
        sample_confidence(model, process, canvas, steps=3, block_length=2)


# -- ancestral sampler = exact samples, and its caching trick -----------------------------
def test_ancestral_sampler_with_exact_denoiser_samples_the_distribution():
    """With the true posterior as denoiser and enough steps that tokens are revealed one at a
    time, ancestral sampling draws from the data distribution itself. With one step every
    token is drawn at once from its marginal: the joint is lost (the factorisation error
    that parallel decoding trades for speed)."""
    L, N = 3, 4000
    oracle = OracleDenoiser(CHAIN, L)
    process = MaskedDiffusion(vocab_size=oracle.vocab_size, mask_id=oracle.mask_id)
    canvas = Canvas.from_segments([[L]] * N, fill_id=oracle.mask_id, pad_id=0)
    probs = CHAIN.log_prob(oracle.outcomes).exp()

    def total_variation(steps):
        out = sample_ancestral(oracle, process, canvas, steps=steps, generator=torch.Generator().manual_seed(0))
        counts = collections.Counter(map(tuple, out.tokens.tolist()))
        return 0.5 * sum(abs(counts.get(tuple(o), 0) / N - p.item()) for o, p in zip(oracle.outcomes.tolist(), probs)), out

    # What sampling noise alone gives: E|p_hat - p| = sqrt(2 p (1 - p) / (pi N)) per outcome.
    noise = 0.5 * sum(math.sqrt(2 * p * (1 - p) / (math.pi * N)) for p in probs.tolist())
    tv, _ = total_variation(128)
    assert tv < 2 * noise, (tv, noise)
    tv_one_step, _ = total_variation(1)
    assert tv_one_step > 0.2, tv_one_step


def test_ancestral_caching_saves_forward_passes_without_changing_samples(tokenizer, process, model):
    canvas = Canvas.for_generation([tokenizer.encode("To be")], 6, fill_id=tokenizer.mask_id, pad_id=tokenizer.pad_id)
    cached = CountingDenoiser(model, time_conditioned=False)
    uncached = CountingDenoiser(model, time_conditioned=True)
    a = sample_ancestral(cached, process, canvas, steps=64, generator=torch.Generator().manual_seed(0))
    b = sample_ancestral(uncached, process, canvas, steps=64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.tokens, b.tokens)
    assert b.nfe == 64 and a.nfe <= 6 + 1, "a forward pass only after a step that changed a token"
