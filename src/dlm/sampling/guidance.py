"""Classifier-free guidance as a Denoiser wrapper (Ho & Salimans, 2022; LLaDA's form, Nie et al.,
2025, eq. 16):

    logits = logits_u + (w + 1) (logits_c - logits_u)

logits_c is the denoiser on the canvas as it is; logits_u on the same canvas with the
condition (the prompt and any fixed text) replaced by a null input: the mask token for
token denoisers, the zero vector for a denoiser of embeddings (Diffusion-LM, where the
guided quantity is the x0 prediction). Both run in one batched forward pass, so a guided
step costs one (twice as wide) pass. Scale 0 returns the conditional output itself, exactly.
A model benefits when it was trained with condition dropout (it then knows the null input).
"""

from __future__ import annotations

import torch
from torch import Tensor


class ClassifierFreeGuidance:
    def __init__(self, denoiser, condition: Tensor, *, scale: float, null_id: int):
        """condition (B, L) bool: the positions that condition the sample (prompt, fixed text,
        not padding); null_id: the token that stands for "no condition" (the mask token)."""
        if scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {scale}")
        self.denoiser, self.condition, self.scale, self.null_id = denoiser, condition, scale, null_id

    def __call__(self, x_t: Tensor, t: Tensor, *, attention_mask: Tensor | None = None, **structured) -> Tensor:
        if self.scale == 0:
            return self.denoiser(x_t, t, attention_mask=attention_mask, **structured)
        if structured:
            raise ValueError("classifier-free guidance runs two canvases in one pass; it cannot share a KV cache "
                             "(use cache='none')")
        cond = self.condition.to(x_t.device)  # (B, L)
        if x_t.is_floating_point():  # (B, L, E) embeddings: the null input is the zero vector
            null = torch.where(cond[..., None], torch.zeros_like(x_t), x_t)
        else:
            null = torch.where(cond, self.null_id, x_t)  # (B, L)
        both = self.denoiser(torch.cat([x_t, null]), torch.cat([t, t]),
                             attention_mask=None if attention_mask is None else torch.cat([attention_mask] * 2))
        conditional, unconditional = both.float().chunk(2)  # 2 x (B, L, V) (or (B, L, E))
        return unconditional + (self.scale + 1.0) * (conditional - unconditional)

    def __getattr__(self, name):  # time_conditioned, config, embed_tokens, rounding_logits ...
        return getattr(self.denoiser, name)
