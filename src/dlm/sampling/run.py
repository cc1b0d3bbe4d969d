"""Run a sampler by name with user-given knobs: the one place that checks a request against the
sampler's signature, wraps the model for guidance and banned tokens, and turns the sampler's
complaints into messages. `dlm generate`/`dlm infill` and `dlm serve` both go through it."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from dlm.errors import DlmError
from dlm.sampling import SAMPLERS
from dlm.sampling.canvas import Canvas
from dlm.sampling.editing import BannedTokens
from dlm.sampling.guidance import ClassifierFreeGuidance

DEFAULT_TEMPERATURE = {"confidence": 0.0}  # LLaDA decodes greedily; every other sampler samples at 1


@dataclass(frozen=True)
class SamplerRequest:
    sampler: str | None = None  # None: the process's default
    steps: int | None = None  # None: one per generated token
    temperature: float | None = None  # None: DEFAULT_TEMPERATURE for the sampler, else 1
    seed: int = 0
    knobs: dict = field(default_factory=dict)  # sampler keywords: block_length, top_k, top_p, threshold, ...
    cfg: float = 0.0  # classifier-free guidance scale (0 = none)
    ban: str | None = None  # text whose tokens are never written
    stop_at_eos: bool = False  # let samplers that can stop once every row has written end-of-text


def check_fits(ckpt, total: int, what: str) -> None:
    """Refuse a canvas longer than the model's context, unless its sampler slides a window."""
    if getattr(ckpt.process, "extends_context", False):
        return
    if total > ckpt.context_length:
        raise DlmError(f"{what} need {total} tokens, more than the model's context of {ckpt.context_length}; "
                       f"shorten the text or generate fewer tokens")


def run_sampler(ckpt, canvas: Canvas, request: SamplerRequest, *, generated: int, callback=None,
                option: Callable[[str], str] = lambda knob: knob):
    """Sample `canvas` with the checkpoint's model -> (SampleOutput, sampler name, temperature).
    `option` names a knob in messages the way the caller's user typed it (e.g. "--block-length")."""
    process, tok = ckpt.process, ckpt.tokenizer
    name = request.sampler or process.default_sampler
    if name not in process.samplers:
        raise DlmError(f"the {name} sampler cannot sample a {process.name} model; use "
                       f"{' or '.join(option('sampler') + ' ' + s for s in process.samplers)}")
    sampler = SAMPLERS[name]
    knobs = {k: v for k, v in request.knobs.items() if v is not None}
    accepted = inspect.signature(sampler).parameters
    refused = [k for k in knobs if k not in accepted]
    if refused:
        raise DlmError(f"the {name} sampler does not take {', '.join(option(k) for k in refused)}")
    if "eos_id" in accepted and request.stop_at_eos:
        knobs["eos_id"] = tok.specials["eos"]  # stop once every sample has ended
    top_p = knobs.get("top_p")
    if top_p is not None and not 0 < top_p <= 1:
        raise DlmError(f"{option('top_p')} must be in (0, 1], got {top_p}")
    steps = request.steps or max(generated, 1)
    temperature = DEFAULT_TEMPERATURE.get(name, 1.0) if request.temperature is None else request.temperature
    generator = torch.Generator(device=canvas.tokens.device).manual_seed(request.seed)
    model = ckpt.model
    if request.cfg:
        if knobs.get("cache", "none") != "none":
            raise DlmError(f"{option('cfg')} cannot be combined with {option('cache')} {knobs['cache']} (an "
                           f"approximate cache built outside the model); leave out {option('cache')}")
        condition = ~canvas.editable & canvas.attention_mask  # the prompt and any fixed text
        model = ClassifierFreeGuidance(model, condition, scale=request.cfg, null_id=tok.mask_id,
                                       attention_mask=canvas.attention_mask)
    if request.ban:
        model = BannedTokens(model, tok.encode(request.ban))
    try:
        return sampler(model, process, canvas, steps=steps, temperature=temperature, generator=generator,
                       callback=callback, **knobs), name, temperature
    except ValueError as e:  # knob combinations the sampler rejects (e.g. fewer steps than blocks)
        raise DlmError(str(e)) from None
