"""Confidence decoding (LLaDA, Nie et al., 2025, Algorithm 5 "low-confidence remasking" and
its `generate.py`): predict every masked position, commit the k most confident, keep the
rest masked; optionally left to right over semi-autoregressive blocks."""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from dlm.processes.base import Denoiser
from dlm.processes.masked import MaskedDiffusion
from dlm.sampling.canvas import Canvas
from dlm.sampling.categorical import check_knobs, draw
from dlm.sampling.result import Callback, SampleOutput, StepInfo


def transfer_counts(num_masked: Tensor, steps: int) -> Tensor:
    """Tokens to commit at each step: n // S per step, the remainder one each in the first
    steps (LLaDA's `get_num_transfer_tokens`, the linear schedule); (B,) -> (B, S)."""
    base = num_masked // steps  # (B,)
    remainder = num_masked % steps  # (B,)
    extra = torch.arange(steps, device=num_masked.device)[None] < remainder[:, None]  # (B, S)
    return base[:, None] + extra.long()


def block_steps(steps: int, num_blocks: int) -> list[int]:
    """Split the step budget over blocks: S // N each (as LLaDA), the remainder to the first blocks."""
    return [steps // num_blocks + (b < steps % num_blocks) for b in range(num_blocks)]


@torch.no_grad()
def sample_confidence(denoiser: Denoiser, process: MaskedDiffusion, canvas: Canvas, *, steps: int,
                      block_length: int | None = None, temperature: float = 0.0, top_k: int | None = None,
                      top_p: float | None = None, generator: torch.Generator | None = None,
                      callback: Callback | None = None, record_history: bool = False) -> SampleOutput:
    """Fill the canvas's editable positions in `steps` forward passes (or fewer, see below).

    Blocks are runs of `block_length` editable positions, counted left to right in each row
    (for a prompt followed by a generated region these are LLaDA's blocks exactly); blocks are
    decoded in order and each gets steps // num_blocks steps. In a step, every masked position
    gets a token drawn from p_theta (argmax at temperature 0, float64 Gumbel-max otherwise);
    its confidence is the probability of that token under the untempered p_theta; the
    `transfer_counts` most confident masked positions of the current block are committed.
    A step that would commit nothing in any row is skipped without a forward pass.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    check_knobs(temperature=temperature, top_k=top_k, top_p=top_p)
    start = time.perf_counter()
    B, L = canvas.shape
    mask_id = process.mask_id
    editable = canvas.editable
    x = torch.where(editable, mask_id, canvas.tokens)  # (B, L)
    rank = editable.long().cumsum(dim=1) - 1  # (B, L) index of each editable position in its row
    n_edit = int(editable.sum(dim=1).max()) if B else 0
    block_length = block_length or max(n_edit, 1)
    if block_length < 1:
        raise ValueError(f"block_length must be >= 1, got {block_length}")
    num_blocks = max(math.ceil(n_edit / block_length), 1)
    if steps < num_blocks:
        raise ValueError(f"{steps} steps cannot cover {num_blocks} blocks of {block_length} tokens: "
                         f"use at least {num_blocks} steps or a longer block length")

    nfe, history, step_index = 0, [], 0
    for b, steps_b in enumerate(block_steps(steps, num_blocks)):
        in_block = editable & (rank >= b * block_length) & (rank < (b + 1) * block_length)  # (B, L)
        counts = transfer_counts((in_block & (x == mask_id)).sum(dim=1), steps_b)  # (B, steps_b)
        for i in range(steps_b):
            step_index += 1
            still_masked = editable & (x == mask_id)  # (B, L)
            changed = torch.zeros_like(editable)
            confidence = None
            if int(counts[:, i].sum()) > 0:
                masked_fraction = still_masked.sum(1) / editable.sum(1).clamp(min=1)  # (B,) the current t
                logits = process.x0_logits(denoiser(x, masked_fraction.float(),
                                                    attention_mask=canvas.attention_mask))  # (B, L, V)
                nfe += 1
                x0 = draw(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)  # (B, L)
                p = torch.softmax(logits.double(), dim=-1)  # (B, L, V)
                confidence = p.gather(-1, x0[..., None]).squeeze(-1)  # (B, L)
                candidates = torch.where(still_masked & in_block, confidence, float("-inf"))  # (B, L)
                for row in range(B):  # per row, as LLaDA does, so that ties break the same way
                    k = int(counts[row, i])
                    if k:
                        changed[row, candidates[row].topk(k).indices] = True
                x = torch.where(changed, x0, x)
            if record_history:
                history.append(x.clone())
            if callback is not None:
                t = float(((editable & (x == mask_id)).sum() / editable.sum().clamp(min=1)))
                callback(StepInfo(step=step_index, steps=steps, tokens=x, changed=changed,
                                  confidence=confidence, t=t, nfe=nfe))
    return SampleOutput(tokens=x, nfe=nfe, steps=steps, seconds=time.perf_counter() - start,
                        generated=n_edit, history=history)
