"""A known distribution and its exact denoiser, for tests that check the maths.

A first-order Markov chain over V data tokens, sequences of length L (V^L outcomes, a few
hundred); the oracle returns the exact posterior p(x0_l | visible tokens) by enumeration,
which is the denoiser a perfectly trained masked-diffusion model converges to.
"""

from __future__ import annotations

import itertools
import math

import torch


class MarkovChain:
    def __init__(self, initial: list[float], transition: list[list[float]]):
        self.initial = torch.tensor(initial, dtype=torch.float64)
        self.transition = torch.tensor(transition, dtype=torch.float64)
        self.V = len(initial)

    def sample(self, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
        x = torch.empty(n, length, dtype=torch.long)
        x[:, 0] = torch.multinomial(self.initial.expand(n, -1), 1, generator=generator)[:, 0]
        for i in range(1, length):
            x[:, i] = torch.multinomial(self.transition[x[:, i - 1]], 1, generator=generator)[:, 0]
        return x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        lp = self.initial[x[:, 0]].log()
        for i in range(1, x.shape[1]):
            lp = lp + self.transition[x[:, i - 1], x[:, i]].log()
        return lp

    def entropy(self, length: int) -> float:
        """H(X_1..X_L) = H(X_1) + sum_k sum_i P(X_{k-1} = i) H(T_i), in nats."""
        def h(p):
            return -(p * p.clamp_min(1e-300).log()).sum(-1)
        marginal, total = self.initial, h(self.initial).item()
        row_entropy = h(self.transition)  # (V,)
        for _ in range(1, length):
            total += (marginal * row_entropy).sum().item()
            marginal = marginal @ self.transition
        return total


class OracleDenoiser:
    """Exact p(x0_l | x_t) for a MarkovChain; mask_id = V (the first id after the data tokens)."""

    time_conditioned = False

    def __init__(self, chain: MarkovChain, length: int):
        self.chain, self.length = chain, length
        self.mask_id = chain.V
        self.vocab_size = chain.V + 1
        self.outcomes = torch.tensor(list(itertools.product(range(chain.V), repeat=length)))  # (S, L)
        self.log_p = chain.log_prob(self.outcomes)  # (S,)
        self.one_hot = torch.nn.functional.one_hot(self.outcomes, chain.V).double()  # (S, L, V)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, *, attention_mask=None) -> torch.Tensor:
        visible = x_t != self.mask_id  # (B, L)
        agrees = (self.outcomes[None] == x_t[:, None]) | ~visible[:, None]  # (B, S, L)
        log_w = torch.where(agrees.all(-1), self.log_p[None], -math.inf)  # (B, S)
        w = torch.softmax(log_w, dim=-1)  # (B, S): posterior over complete sequences
        marginal = torch.einsum("bs,slv->blv", w, self.one_hot)  # (B, L, V)
        logits = marginal.clamp_min(1e-300).log()
        mask_column = torch.full((*logits.shape[:2], 1), -math.inf, dtype=logits.dtype)
        return torch.cat([logits, mask_column], dim=-1).float()  # (B, L, V + 1)


# A chain with strong dependence between neighbours (a product of marginals is far from it).
CHAIN = MarkovChain([0.5, 0.3, 0.2], [[0.1, 0.8, 0.1], [0.2, 0.1, 0.7], [0.7, 0.2, 0.1]])


class UniformOracleDenoiser:
    """Exact p(x0_l | x_t) for a MarkovChain under uniform-state noise at time t.

    Ids: the chain's data tokens 0..V-1, then mask_id = V and pad_id = V + 1 (never noise
    states), then any further ids in noise_ids (noise states that never occur in the data).
    The posterior over complete sequences is prior(x0) * prod_l q_t(x_t^l | x0^l), with
    q_t(y | c) = alpha_t 1{y = c} + (1 - alpha_t)/N and N = len(noise_ids); it is marginalised
    per position. The denoiser must be told t: noise looks like data.
    """

    time_conditioned = True

    def __init__(self, chain: MarkovChain, length: int, schedule, noise_ids):
        self.chain, self.length, self.schedule = chain, length, schedule
        self.mask_id, self.pad_id = chain.V, chain.V + 1
        self.noise_ids = sorted(int(i) for i in noise_ids)
        if not set(range(chain.V)) <= set(self.noise_ids) or {self.mask_id, self.pad_id} & set(self.noise_ids):
            raise ValueError(f"noise_ids must hold every data token and neither mask nor pad: {self.noise_ids}")
        self.num_states = len(self.noise_ids)
        self.vocab_size = max(chain.V + 2, max(self.noise_ids) + 1)
        self.outcomes = torch.tensor(list(itertools.product(range(chain.V), repeat=length)))  # (S, L)
        self.log_p = chain.log_prob(self.outcomes)  # (S,)
        self.one_hot = torch.nn.functional.one_hot(self.outcomes, chain.V).double()  # (S, L, V)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, *, attention_mask=None) -> torch.Tensor:
        a = self.schedule.alpha(t.double())[:, None, None]  # (B, 1, 1)
        b = (1.0 - a) / self.num_states
        same = (self.outcomes[None] == x_t[:, None]).double()  # (B, S, L)
        log_lik = (a * same + b).log().sum(-1)  # (B, S): log prod_l q_t(x_t^l | x0^l)
        w = torch.softmax(self.log_p[None] + log_lik, dim=-1)  # (B, S): posterior over complete sequences
        marginal = torch.einsum("bs,slv->blv", w, self.one_hot)  # (B, L, V)
        logits = torch.full((*x_t.shape, self.vocab_size), -math.inf, dtype=torch.float64)
        logits[..., : self.chain.V] = marginal.clamp_min(1e-300).log()
        return logits.float()  # (B, L, vocab_size)
