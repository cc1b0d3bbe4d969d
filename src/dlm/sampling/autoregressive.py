"""Autoregressive sampling, one token per forward pass, with an exact KV cache.

The model reads [bos, prompt, tokens so far] with causal attention and the next token is
drawn from its last position's distribution (temperature, top-k, top-p as for the diffusion
samplers). With the cache, the prompt is read once (prefill) and each later pass reads one
token; without it every pass rereads the whole prefix. Both give the same tokens.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from dlm.models.transformer import KVCache
from dlm.processes.base import Denoiser, ForwardProcess, sample_categorical
from dlm.sampling.block import generation_start
from dlm.sampling.canvas import Canvas
from dlm.sampling.categorical import check_knobs, filter_logits
from dlm.sampling.result import Callback, SampleOutput, StepRecorder


def causal_mask(query_real: Tensor, key_real: Tensor, offset: int) -> Tensor:
    """(B, 1, Lq, Lk) bool: query i (at key index offset + i) sees real keys up to itself."""
    Lq, Lk = query_real.shape[1], key_real.shape[1]
    order = torch.arange(Lk, device=key_real.device)[None, :] <= torch.arange(offset, offset + Lq,
                                                                               device=key_real.device)[:, None]
    mask = order[None] & key_real[:, None, :]  # (B, Lq, Lk)
    mask |= torch.arange(Lk, device=key_real.device)[None, None, :] == (offset + torch.arange(
        Lq, device=key_real.device))[None, :, None]  # every query sees itself: no empty rows at padding
    return mask[:, None]


@torch.no_grad()
def sample_autoregressive(denoiser: Denoiser, process: ForwardProcess, canvas: Canvas, *, steps: int | None = None,
                          temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                          generator: torch.Generator | None = None, callback: Callback | None = None,
                          record_history: bool = False, use_cache: bool = True) -> SampleOutput:
    """Fill the canvas's editable suffix left to right. One step per token: `steps` is accepted
    for a uniform signature and ignored. A model trained on max_len tokens keeps a sliding
    window of its last max_len positions, so it can write past its context."""
    check_knobs(temperature=temperature, top_k=top_k, top_p=top_p)
    start_time = time.perf_counter()
    B, L = canvas.shape
    device = canvas.tokens.device
    g = generation_start(canvas, "an autoregressive model")
    config = getattr(denoiser, "config", None)
    window = config.max_len if config is not None else None
    bos = torch.full((B, 1), process.bos_id, dtype=torch.long, device=device)
    x = torch.cat([bos, canvas.tokens], dim=1)  # (B, 1 + L): column j + 1 is canvas column j
    real = torch.cat([torch.ones_like(bos, dtype=torch.bool), canvas.attention_mask], dim=1)  # (B, 1 + L)
    positions = real.long().cumsum(-1) - 1  # (B, 1 + L): bos at 0, padding does not count
    t = torch.zeros(B, device=device)
    cache = KVCache(capacity=1 + L) if use_cache else None  # preallocated to the canvas
    nfe = 0
    record = StepRecorder(canvas, steps=L - g, callback=callback, record_history=record_history, start=start_time)

    def next_logits(c: int) -> Tensor:
        """Logits for canvas column c (input columns < c + 1), (B, V)."""
        if not use_cache:
            lo = max(0, c + 1 - window) if window is not None else 0
            mask = causal_mask(real[:, lo:c + 1], real[:, lo:c + 1], 0)
            return denoiser(x[:, lo:c + 1], t, positions=positions[:, lo:c + 1], mask=mask)[:, -1]
        # prefill [bos, prompt] once (its last `window` tokens), then one token per pass
        lo = c if c > g else (max(0, c + 1 - window) if window is not None else 0)
        past = cache.valid if len(cache) else torch.zeros(B, 0, dtype=torch.bool, device=device)
        keys = torch.cat([past, real[:, lo:c + 1]], dim=1)
        mask = causal_mask(real[:, lo:c + 1], keys, past.shape[1])
        logits = denoiser(x[:, lo:c + 1], t, positions=positions[:, lo:c + 1], mask=mask, cache=cache,
                          commit=c + 1 - lo, attention_mask=real[:, lo:c + 1])[:, -1]
        if window is not None:
            cache.crop(window - 1)
        return logits

    for step, c in enumerate(range(g, L), start=1):
        logits = next_logits(c)  # (B, V)
        nfe += 1
        proposal = filter_logits(process.x0_logits(logits), temperature=temperature, top_k=top_k, top_p=top_p)
        token = sample_categorical(proposal, generator=generator)  # (B,)
        x[:, c + 1] = torch.where(canvas.editable[:, c], token, x[:, c + 1])
        changed = torch.zeros_like(canvas.editable)
        changed[:, c] = canvas.editable[:, c]
        record.step(step, x[:, 1:], changed, nfe=nfe, t=1.0 - step / (L - g))
    return record.output(x[:, 1:].clone(), nfe=nfe, steps=L - g)
