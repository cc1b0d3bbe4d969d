"""Run a checked plan (dlm.sampling.registry.resolve) with a checkpoint: wrap the model for
guidance and banned tokens, seed the generator, call the sampler's function. `dlm generate`,
`dlm infill`, `dlm serve`, the bench and the lm-eval adapter all go through here."""

from __future__ import annotations

from collections.abc import Callable

import torch

from dlm.errors import DlmError
from dlm.sampling.canvas import Canvas
from dlm.sampling.editing import BannedTokens
from dlm.sampling.guidance import ClassifierFreeGuidance
from dlm.sampling.registry import Plan, SamplerRequest, resolve

__all__ = ["Plan", "SamplerRequest", "check_fits", "run_plan", "run_sampler"]


def check_fits(ckpt, total: int, what: str) -> None:
    """Refuse a canvas longer than the model's context, unless its sampler slides a window."""
    if ckpt.process.extends_context:
        return
    if total > ckpt.context_length:
        raise DlmError(f"{what} need {total} tokens, more than the model's context of {ckpt.context_length}; "
                       f"shorten the text or generate fewer tokens")


def run_plan(ckpt, canvas: Canvas, plan: Plan, *, seed: int | None = None, callback=None):
    """Sample `canvas` with the checkpoint's model as `plan` says -> SampleOutput. `seed` overrides
    the plan's (a server batch of unseeded requests draws one)."""
    tok = ckpt.tokenizer
    seed = plan.seed if seed is None else seed
    generator = torch.Generator(device=canvas.tokens.device).manual_seed(0 if seed is None else seed)
    knobs = plan.keywords()
    if plan.stop_at_eos and plan.record.stops_at_eos:
        knobs["eos_id"] = tok.specials["eos"]  # stop once every sample has ended
    model = ckpt.model
    if plan.cfg:
        condition = ~canvas.editable & canvas.attention_mask  # the prompt and any fixed text
        model = ClassifierFreeGuidance(model, condition, scale=plan.cfg, null_id=tok.mask_id,
                                       attention_mask=canvas.attention_mask)
    if plan.ban:
        model = BannedTokens(model, tok.encode(plan.ban))
    try:
        return plan.record.function(model, ckpt.process, canvas, steps=plan.steps, temperature=plan.temperature,
                                    generator=generator, callback=callback, **knobs)
    except ValueError as e:  # what only the canvas can tell (e.g. a cache over blocks that rows do not share)
        raise DlmError(str(e)) from None


def run_sampler(ckpt, canvas: Canvas, request: SamplerRequest, *, generated: int, callback=None,
                option: Callable[[str], str] = lambda knob: knob):
    """resolve + run_plan -> (SampleOutput, sampler name, temperature). `option` names a knob in
    messages the way the caller's user typed it (e.g. "--block-length")."""
    plan = resolve(ckpt.process, request, generated=generated, spell=option)
    return run_plan(ckpt, canvas, plan, callback=callback), plan.sampler, plan.temperature
