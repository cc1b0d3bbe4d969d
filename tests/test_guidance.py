"""Classifier-free guidance: scale 0 is the unguided sampler exactly; otherwise LLaDA's formula,
from one batched pass."""

from __future__ import annotations

import pytest
import torch

from dlm.processes import PROCESSES
from dlm.sampling import SAMPLERS, Canvas
from dlm.sampling.guidance import ClassifierFreeGuidance

from conftest import CountingDenoiser, build

GUIDED = [(p, s) for p in ("masked", "uniform", "gaussian", "block") for s in PROCESSES[p].samplers]


def prompt_canvas(tokenizer):
    return Canvas.for_generation([tokenizer.encode("To be"), tokenizer.encode("Whether")], 8,
                                 fill_id=tokenizer.mask_id, pad_id=tokenizer.pad_id)


@pytest.mark.parametrize("process_name,sampler_name", GUIDED)
def test_scale_zero_is_exactly_unguided(process_name, sampler_name, tokenizer):
    process, model = build(process_name, tokenizer)
    canvas = prompt_canvas(tokenizer)
    condition = ~canvas.editable & canvas.attention_mask
    run = lambda denoiser: SAMPLERS[sampler_name](denoiser, process, canvas, steps=8, temperature=1.0,  # noqa
                                                  generator=torch.Generator().manual_seed(2))
    plain = run(model)
    guided = run(ClassifierFreeGuidance(model, condition, scale=0.0, null_id=tokenizer.mask_id))
    assert torch.equal(plain.tokens, guided.tokens)


@pytest.mark.parametrize("process_name,sampler_name", GUIDED)
def test_guided_sampling_costs_one_pass_per_step(process_name, sampler_name, tokenizer):
    process, model = build(process_name, tokenizer)
    canvas = prompt_canvas(tokenizer)
    counted = CountingDenoiser(model)
    guided = ClassifierFreeGuidance(counted, ~canvas.editable & canvas.attention_mask, scale=1.5,
                                    null_id=tokenizer.mask_id)
    out = SAMPLERS[sampler_name](guided, process, canvas, steps=8, generator=torch.Generator().manual_seed(0))
    cached = process_name == "block"  # two passes, each with its own KV cache
    assert out.nfe * (2 if cached else 1) == counted.calls
    fixed = ~canvas.editable
    assert torch.equal(out.tokens[fixed], canvas.tokens[fixed])


def test_guidance_formula_and_null_input(tokenizer):
    """A denoiser that reports what it saw: the unconditional half has the prompt masked."""
    seen = []

    def denoiser(x, t, attention_mask=None):
        seen.append(x.clone())
        return x[..., None].float().expand(*x.shape, 3) * torch.tensor([1.0, 0.0, -1.0])

    x = torch.tensor([[5, 6, 0, 0]])
    condition = torch.tensor([[True, True, False, False]])
    out = ClassifierFreeGuidance(denoiser, condition, scale=2.0, null_id=0)(x, torch.zeros(1))
    assert torch.equal(seen[0], torch.tensor([[5, 6, 0, 0], [0, 0, 0, 0]])), "one pass: conditional, then null"
    c = x[..., None].float() * torch.tensor([1.0, 0.0, -1.0])
    torch.testing.assert_close(out, 3.0 * c)  # u = 0 here: u + (w + 1)(c - u) = 3c


def stirred_block_model(tokenizer):
    process, model = build("block", tokenizer, block_size=4)
    torch.manual_seed(0)
    with torch.no_grad():  # an initialised model's zero output projections ignore the context: stir them
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return process, model


def test_guided_block_diffusion_with_its_cache_equals_without(tokenizer):
    """The null branch keeps its own cache (the masked prompt's keys), committed with the
    sampler's: guided sampling gives the same tokens with and without the cache."""
    process, model = stirred_block_model(tokenizer)
    canvas = prompt_canvas(tokenizer)
    condition = ~canvas.editable & canvas.attention_mask
    runs = []
    for use_cache in (True, False):
        guided = ClassifierFreeGuidance(model, condition, scale=2.0, null_id=tokenizer.mask_id,
                                        attention_mask=canvas.attention_mask)
        runs.append(SAMPLERS["block"](guided, process, canvas, steps=8, use_cache=use_cache,
                                      generator=torch.Generator().manual_seed(0)))
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    unguided = SAMPLERS["block"](model, process, canvas, steps=8, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(runs[0].tokens, unguided.tokens)  # scale 2 changes the text


def test_the_null_branch_cache_follows_the_sliding_window(tokenizer):
    """With nothing to mask the two branches see the same text, so guidance must give the
    unguided tokens: it does only if the shadow cache is cropped with the sampler's."""
    process, model = stirred_block_model(tokenizer)
    canvas = prompt_canvas(tokenizer)
    nothing = torch.zeros_like(canvas.editable)
    guided = ClassifierFreeGuidance(model, nothing, scale=2.0, null_id=tokenizer.mask_id,
                                    attention_mask=canvas.attention_mask)
    run = lambda denoiser: SAMPLERS["block"](denoiser, process, canvas, steps=8, window=6,  # noqa: E731
                                             generator=torch.Generator().manual_seed(0)).tokens
    assert torch.equal(run(guided), run(model))


def test_guided_block_pass_masks_the_prompt_by_position(tokenizer):
    """With left padding the passes carry slices of the canvas; the null branch masks exactly the
    prompt's positions."""
    process, model = build("block", tokenizer, block_size=4)
    canvas = prompt_canvas(tokenizer)
    seen = []

    def recording(x, t, **kw):
        seen.append(x.clone())
        return model(x, t, **kw)

    guided = ClassifierFreeGuidance(recording, ~canvas.editable & canvas.attention_mask, scale=1.0,
                                    null_id=tokenizer.mask_id, attention_mask=canvas.attention_mask)
    SAMPLERS["block"](guided, process, canvas, steps=4, temperature=0.0)
    first_null = seen[1]  # the first pass: the prompt (with its padding) committed, the first block noisy
    prompt = ~canvas.editable & canvas.attention_mask
    width = first_null.shape[1]
    assert bool((first_null[:, :width][prompt[:, :width]] == tokenizer.mask_id).all())
    assert torch.equal(first_null[~canvas.attention_mask[:, :width]], seen[0][~canvas.attention_mask[:, :width]])


def test_guidance_refuses_the_approximate_caches(tokenizer):
    process, model = build("masked", tokenizer)
    canvas = prompt_canvas(tokenizer)
    guided = ClassifierFreeGuidance(model, ~canvas.editable & canvas.attention_mask, scale=1.0,
                                    null_id=tokenizer.mask_id, attention_mask=canvas.attention_mask)
    with pytest.raises(ValueError, match="cache='none'"):
        SAMPLERS["confidence"](guided, process, canvas, steps=8, block_length=4, cache="prefix")
