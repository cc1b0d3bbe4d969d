"""Device and precision: every process's loss and NELBO and every sampler run with the model in
bfloat16 (what `--dtype bfloat16` loads) and, where there is a GPU, on CUDA.

A dtype mismatch (a float32 tensor fed to bf16 weights, bf16 logits mixed into float32 in place)
fails on the CPU as it would on the GPU, so the bf16 tests run everywhere. A tensor or generator
left on the host while the model is on the GPU only fails on CUDA: those tests are skipped
without one, and the samplers create nothing on the host that meets the canvas's tensors.
"""

from __future__ import annotations

import pytest
import torch

from dlm.processes import PROCESSES
from dlm.sampling import SAMPLERS, Canvas, infill_canvas, parse_template
from dlm.sampling.guidance import ClassifierFreeGuidance
from dlm.sampling.result import elapsed

from conftest import build

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SAMPLER_CASES = [(p, s) for p in sorted(PROCESSES) for s in PROCESSES[p].samplers]
# sampler options that take other code paths (Fast-dLLM caches and thresholds, no KV cache)
EXTRA_OPTIONS = {"confidence": [{"block_length": 4, "cache": "prefix"}, {"block_length": 4, "cache": "dual"},
                                {"threshold": 0.5, "confidence": "margin"}],
                 "block": [{"use_cache": False}], "autoregressive": [{"use_cache": False}],
                 "remdm": [{"schedule": "loop"}], "ddim": [{"eta": 0.5}]}


def rows(tokenizer, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x0 (2, 16), a loss mask that leaves the second row's first four tokens unscored (a
    prompt), and an attention mask with the first row's first two positions as padding."""
    ids = torch.tensor(tokenizer.encode("To be, or not to be, that is the question"), device=device)
    x0 = torch.stack([ids[:16], ids[3:19]])
    loss_mask = torch.ones_like(x0, dtype=torch.bool)
    loss_mask[1, :4] = False
    attention = torch.ones_like(loss_mask)
    attention[0, :2] = False
    loss_mask &= attention
    return x0, loss_mask, attention


def canvases(tokenizer, device) -> list[Canvas]:
    """Prompts of different lengths (left padding), and spans inside fixed text."""
    prompts = Canvas.for_generation([tokenizer.encode("To be"), tokenizer.encode("Whether 'tis")], 8,
                                    fill_id=tokenizer.mask_id, pad_id=tokenizer.pad_id, device=device)
    spans = infill_canvas(parse_template("To <fill:3> or not <fill:2>, that"), tokenizer, num_samples=2,
                          device=device).canvas
    return [prompts, spans]


def check_losses(process_name, tokenizer, device, dtype):
    process, model = build(process_name, tokenizer)
    model.to(device=device, dtype=dtype)
    x0, loss_mask, attention = rows(tokenizer, device)
    for kwargs in ({}, {"loss_mask": loss_mask, "attention_mask": attention}):
        model.zero_grad()
        out = process.loss(model, x0, generator=torch.Generator(device=device).manual_seed(0), **kwargs)
        assert out.loss.dtype == torch.float32 and out.loss.device.type == torch.device(device).type
        assert torch.isfinite(out.loss) and torch.isfinite(out.nelbo).all()
        out.loss.backward()  # training in the weights' own precision (no autocast)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(g.dtype == dtype and torch.isfinite(g).all() for g in grads)
        with torch.no_grad():
            u = torch.tensor([0.25, 0.75], device=device)
            nelbo = process.nelbo(model, x0, u=u, generator=torch.Generator(device=device).manual_seed(1), **kwargs)
        assert nelbo.shape == (2,) and nelbo.dtype == torch.float64 and torch.isfinite(nelbo).all()
        assert (nelbo > 0).all()


def check_sampler(process_name, sampler_name, tokenizer, device, dtype, options=None):
    process, model = build(process_name, tokenizer)
    model.to(device=device, dtype=dtype)
    for canvas in canvases(tokenizer, device):
        if not process.infills and not bool(canvas.editable[:, -1].all()):
            continue  # a left-to-right process cannot fill a span with text after it
        for temperature in (0.0, 1.0):
            generator = torch.Generator(device=canvas.tokens.device).manual_seed(0)
            out = SAMPLERS[sampler_name](model, process, canvas, steps=8, temperature=temperature,
                                         generator=generator, **(options or {}))
            assert out.tokens.device == canvas.tokens.device and out.tokens.shape == canvas.shape
            fixed = ~canvas.editable
            assert torch.equal(out.tokens[fixed], canvas.tokens[fixed])
            written = out.tokens[canvas.editable]
            assert not (written == tokenizer.mask_id).any() and not (written == tokenizer.pad_id).any()
            assert out.seconds >= 0


def check_guidance(process_name, sampler_name, tokenizer, device, dtype):
    process, model = build(process_name, tokenizer)
    model.to(device=device, dtype=dtype)
    canvas = canvases(tokenizer, device)[0]
    guided = ClassifierFreeGuidance(model, ~canvas.editable & canvas.attention_mask, scale=1.5,
                                    null_id=tokenizer.mask_id, attention_mask=canvas.attention_mask)
    out = SAMPLERS[sampler_name](guided, process, canvas, steps=8,
                                 generator=torch.Generator(device=device).manual_seed(0))
    assert torch.equal(out.tokens[~canvas.editable], canvas.tokens[~canvas.editable])


# -- bfloat16 weights, on the CPU -----------------------------------------------------------
@pytest.mark.parametrize("process_name", sorted(PROCESSES))
def test_losses_run_with_bfloat16_weights(process_name, tokenizer):
    check_losses(process_name, tokenizer, "cpu", torch.bfloat16)


@pytest.mark.parametrize("process_name,sampler_name", SAMPLER_CASES)
def test_samplers_run_with_bfloat16_weights(process_name, sampler_name, tokenizer):
    check_sampler(process_name, sampler_name, tokenizer, "cpu", torch.bfloat16)
    for options in EXTRA_OPTIONS.get(sampler_name, []):
        check_sampler(process_name, sampler_name, tokenizer, "cpu", torch.bfloat16, options)


@pytest.mark.parametrize("process_name,sampler_name", [("masked", "ancestral"), ("block", "block"),
                                                       ("gaussian", "ddim")])
def test_guidance_runs_with_bfloat16_weights(process_name, sampler_name, tokenizer):
    check_guidance(process_name, sampler_name, tokenizer, "cpu", torch.bfloat16)


def test_elapsed_counts_seconds_on_the_cpu():
    import time

    start = time.perf_counter()
    assert 0 <= elapsed(start, torch.zeros(2)) < 60


# -- CUDA (skipped without a GPU) ------------------------------------------------------------
@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("process_name", sorted(PROCESSES))
def test_losses_run_on_cuda(process_name, dtype, tokenizer):
    check_losses(process_name, tokenizer, "cuda", dtype)


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("process_name,sampler_name", SAMPLER_CASES)
def test_samplers_run_on_cuda(process_name, sampler_name, dtype, tokenizer):
    check_sampler(process_name, sampler_name, tokenizer, "cuda", dtype)
    for options in EXTRA_OPTIONS.get(sampler_name, []):
        check_sampler(process_name, sampler_name, tokenizer, "cuda", dtype, options)


@CUDA
@pytest.mark.parametrize("process_name,sampler_name", [("masked", "ancestral"), ("block", "block"),
                                                       ("gaussian", "ddim")])
def test_guidance_runs_on_cuda(process_name, sampler_name, tokenizer):
    check_guidance(process_name, sampler_name, tokenizer, "cuda", torch.bfloat16)


@CUDA
def test_likelihood_and_length_search_run_on_cuda(tokenizer):
    from dlm.processes.likelihood import estimate_likelihood
    from dlm.sampling.length import infill_lengths

    process, model = build("masked", tokenizer)
    model.to("cuda")
    x0, _, _ = rows(tokenizer, "cuda")
    est = estimate_likelihood(process, model, x0, samples_per_chunk=2,
                              generator=torch.Generator(device="cuda").manual_seed(0))
    assert est.bits_per_token > 0
    pieces = parse_template("To <fill:2-4> or not")
    fill = lambda canvas: SAMPLERS["confidence"](model, process, canvas, steps=4)  # noqa: E731
    search = infill_lengths(fill, model, process, pieces, tokenizer, device="cuda", score_samples=2)
    assert len(search.texts) == 1
