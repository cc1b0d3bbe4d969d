"""The autoregressive baseline as a process: no noise, a causal denoiser, the exact likelihood.

p(x_1..x_L) = prod_l p(x_l | bos, x_<l) (the chain rule; Bengio et al., 2003). The model reads
[bos, x_1 .. x_{L-1}] with causal attention and predicts x_1 .. x_L, so all L tokens of a
chunk are scored, as a diffusion bound scores them: the two figures are comparable.
It sits among the processes so that training, evaluation and the comparison run through the
same loop; it has no forward noising, so `corrupt` and `step` say so.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dlm.processes.base import Denoiser, LossOutput, Process, index_tensor, never_in_text


class Autoregressive(Process):
    name = "ar"
    bound = "exact -log p (autoregressive chain rule)"
    default_sampler = "autoregressive"
    samplers = ("autoregressive",)
    infills = False  # left to right only: a span cannot see the text after it
    absorbing = False
    extends_context = True  # the sampler slides a window over its cache: it can write past max_len
    exact = True  # nelbo is the exact -log p: one evaluation pass per chunk is enough
    TRAINING_DEFAULTS: dict = {}
    schedules: tuple[str, ...] = ()  # no noise

    def __init__(self, *, vocab_size: int, bos_id: int, banned_ids: tuple[int, ...] = ()):
        """bos_id starts every sequence; banned_ids (mask, pad, bos) never appear in data and get
        zero probability in samples."""
        if not 0 <= bos_id < vocab_size:
            raise ValueError(f"bos_id {bos_id} is outside the vocabulary of {vocab_size}")
        self.vocab_size = vocab_size
        self.bos_id = bos_id
        self.banned_ids = tuple(banned_ids)

    def __repr__(self) -> str:
        return "Autoregressive()"

    def model_options(self) -> dict:
        return {"attention": "causal", "time_conditioning": False}

    def config(self) -> dict:
        return {"name": self.name}

    @classmethod
    def from_config(cls, config: dict, *, vocab_size: int, special_ids: dict[str, int]) -> "Autoregressive":
        return cls(vocab_size=vocab_size, bos_id=special_ids["bos"], banned_ids=never_in_text(special_ids))

    def prior(self, shape: tuple[int, ...], *, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> Tensor:
        raise TypeError("an autoregressive model has no noise prior; sample it with the autoregressive sampler")

    def corrupt(self, x0: Tensor, t: Tensor, *, loss_mask: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        raise TypeError("an autoregressive model has no forward noising process")

    def step(self, x_t: Tensor, logits: Tensor, t: Tensor, s: Tensor, *,
             generator: torch.Generator | None = None) -> Tensor:
        raise TypeError("an autoregressive model has no reverse diffusion step; use the autoregressive sampler")

    def x0_logits(self, logits: Tensor) -> Tensor:
        """float32 logits of the next token, with the special tokens that never occur banned."""
        if not self.banned_ids:
            return logits.float()
        return logits.float().index_fill(-1, index_tensor(self.banned_ids, logits.device), float("-inf"))

    def shifted_input(self, x0: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """[bos, x_1 .. x_{L-1}] (B, L) and its attention mask (bos is always real)."""
        bos = torch.full_like(x0[:, :1], self.bos_id)
        inputs = torch.cat([bos, x0[:, :-1]], dim=1)  # (B, L)
        if attention_mask is None:
            return inputs, None
        return inputs, torch.cat([torch.ones_like(attention_mask[:, :1]), attention_mask[:, :-1]], dim=1)

    def token_nll(self, denoiser: Denoiser, x0: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """-log p(x_l | bos, x_<l) for every position, nats; x0 (B, L) -> (B, L) float64."""
        inputs, mask = self.shifted_input(x0, attention_mask)
        logits = denoiser(inputs, torch.zeros(x0.shape[0], device=x0.device), attention_mask=mask)  # (B, L, V)
        nll = F.cross_entropy(self.x0_logits(logits).flatten(0, 1), x0.flatten(), reduction="none")
        return nll.view(x0.shape).double()

    def loss(self, denoiser: Denoiser, x0: Tensor, *, loss_mask: Tensor | None = None,
             attention_mask: Tensor | None = None, t: Tensor | None = None,
             generator: torch.Generator | None = None) -> LossOutput:
        """Mean next-token cross-entropy over scored positions; nelbo (B,) is the exact -log p of
        each sequence's scored tokens given the rest before them (no Monte-Carlo noise)."""
        if loss_mask is None:
            loss_mask = torch.ones_like(x0, dtype=torch.bool)
        nll = self.token_nll(denoiser, x0, attention_mask) * loss_mask  # (B, L)
        num_tokens = loss_mask.sum(dim=1)
        per_seq = nll.sum(dim=1)  # (B,)
        return LossOutput(loss=(per_seq.sum() / num_tokens.sum().clamp(min=1)).float(), nelbo=per_seq,
                          num_tokens=num_tokens)

    def nelbo(self, denoiser: Denoiser, x0: Tensor, *, u: Tensor, loss_mask: Tensor | None = None,
              attention_mask: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Exact -log p of each sequence in nats (u is ignored: there is nothing to sample); (B,)."""
        return self.loss(denoiser, x0, loss_mask=loss_mask, attention_mask=attention_mask).nelbo
