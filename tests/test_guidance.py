"""Classifier-free guidance: scale 0 is the unguided sampler exactly; otherwise LLaDA's formula,
from one batched pass."""

from __future__ import annotations

import pytest
import torch

from dlm.processes import PROCESSES
from dlm.sampling import SAMPLERS, Canvas
from dlm.sampling.guidance import ClassifierFreeGuidance

from conftest import CountingDenoiser, build

GUIDED = [(p, s) for p in ("masked", "uniform", "gaussian") for s in PROCESSES[p].samplers]


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
    assert out.nfe == counted.calls
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
