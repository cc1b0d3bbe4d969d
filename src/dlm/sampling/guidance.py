"""Classifier-free guidance as a Denoiser wrapper (Ho & Salimans, 2022; LLaDA's form, Nie et al.,
2025, eq. 16):

    logits = logits_u + (w + 1) (logits_c - logits_u)

logits_c is the denoiser on the canvas as it is; logits_u on the same canvas with the
condition (the prompt and any fixed text) replaced by a null input: the mask token for
token denoisers, the zero vector for a denoiser of embeddings (Diffusion-LM, where the
guided quantity is the x0 prediction). Both run in one batched forward pass, so a guided
step costs one (twice as wide) pass. Scale 0 returns the conditional output itself, exactly.
A model benefits when it was trained with condition dropout (it then knows the null input).

With a KV cache (block diffusion's exact cache: passes with ``positions``, ``mask``, ``cache``
and ``commit``) the two branches cannot share one cache, since the null branch caches the
masked prompt: the wrapper keeps a shadow cache for the null branch, committed with the same
columns and cropped to the sampler's cache, and runs the branches as two passes. The condition
is then found by logical position (the passes carry slices of the canvas), so give the
canvas's attention_mask when it has padding. Fast-dLLM's approximate caches rebuild their
cache outside the model (`BlockCache`); guidance refuses them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dlm.models.transformer import KVCache


class ClassifierFreeGuidance:
    def __init__(self, denoiser, condition: Tensor, *, scale: float, null_id: int,
                 attention_mask: Tensor | None = None):
        """condition (B, L) bool: the positions that condition the sample (prompt, fixed text,
        not padding); null_id: the token that stands for "no condition" (the mask token);
        attention_mask (B, L): the canvas's (False = padding), to find the condition by position."""
        if scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {scale}")
        self.denoiser, self.condition, self.scale, self.null_id = denoiser, condition, scale, null_id
        B, L = condition.shape
        real = torch.ones_like(condition) if attention_mask is None else attention_mask.to(condition.device)
        position = torch.where(real, real.long().cumsum(-1) - 1, L)  # (B, L): padding -> a spare column
        by_position = torch.zeros(B, L + 1, dtype=torch.bool, device=condition.device)
        self.condition_by_position = by_position.scatter(1, position, condition & real)[:, :L]  # (B, L)
        self.shadows: dict[int, tuple[object, KVCache]] = {}  # id(sampler's cache) -> (it, the null branch's)

    def __call__(self, x_t: Tensor, t: Tensor, *, attention_mask: Tensor | None = None, **structured) -> Tensor:
        if self.scale == 0:
            return self.denoiser(x_t, t, attention_mask=attention_mask, **structured)
        if structured:
            return self.cached(x_t, t, attention_mask=attention_mask, **structured)
        cond = self.condition.to(x_t.device)  # (B, L)
        if x_t.is_floating_point():  # (B, L, E) embeddings: the null input is the zero vector
            null = torch.where(cond[..., None], torch.zeros_like(x_t), x_t)
        else:
            null = torch.where(cond, self.null_id, x_t)  # (B, L)
        both = self.denoiser(torch.cat([x_t, null]), torch.cat([t, t]),
                             attention_mask=None if attention_mask is None else torch.cat([attention_mask] * 2))
        conditional, unconditional = both.float().chunk(2)  # 2 x (B, L, V) (or (B, L, E))
        return unconditional + (self.scale + 1.0) * (conditional - unconditional)

    def cached(self, x_t: Tensor, t: Tensor, *, attention_mask: Tensor | None, positions: Tensor,
               cache: KVCache | None = None, **structured) -> Tensor:
        """The two branches as two passes over a slice of the canvas, each with its own cache."""
        if x_t.is_floating_point():
            raise ValueError("guidance with a KV cache is for token denoisers (block diffusion)")
        cond = self.condition_by_position.to(x_t.device).gather(1, positions)  # (B, n)
        if attention_mask is not None:
            cond = cond & attention_mask
        null = torch.where(cond, self.null_id, x_t)  # (B, n)
        shadow = None
        if cache is not None:
            if not isinstance(cache, KVCache):
                raise ValueError("classifier-free guidance cannot follow this cache; use cache='none'")
            if id(cache) not in self.shadows and len(cache):
                raise ValueError("classifier-free guidance cannot follow a cache built outside the model "
                                 "(Fast-dLLM's prefix and dual caches); use cache='none'")
            owner, shadow = self.shadows.setdefault(id(cache), (cache, KVCache()))
            if len(cache) == 0 and len(shadow):  # the sampler started over with a cache at the same address
                shadow = KVCache()
                self.shadows[id(cache)] = (cache, shadow)
            shadow.crop(len(cache))  # the sampler crops its cache between passes (a sliding window)
        conditional = self.denoiser(x_t, t, attention_mask=attention_mask, positions=positions, cache=cache,
                                    **structured).float()  # (B, n, V)
        unconditional = self.denoiser(null, t, attention_mask=attention_mask, positions=positions, cache=shadow,
                                      **structured).float()
        return unconditional + (self.scale + 1.0) * (conditional - unconditional)

    def __getattr__(self, name):  # time_conditioned, config, embed_tokens, rounding_logits ...
        return getattr(self.denoiser, name)
