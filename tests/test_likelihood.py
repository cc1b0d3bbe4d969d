"""The NELBO proves itself on a distribution we know exactly.

With the exact posterior as denoiser, the masked-diffusion NELBO of a sequence equals
-log p(x) (it averages the chain rule over random orders, each exact), so its Monte-Carlo
mean over sampled sequences must match the entropy. This catches wrong weights, a wrong
alpha', or an off-by-one in time, for every schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from dlm.processes import MaskedDiffusion
from dlm.processes.likelihood import estimate_likelihood
from dlm.schedules import SCHEDULES, LinearSchedule, make_schedule

from oracle import CHAIN, OracleDenoiser

L = 6


@pytest.fixture(scope="module")
def oracle():
    return OracleDenoiser(CHAIN, L)


@pytest.fixture(scope="module")
def data():
    return CHAIN.sample(3000, L, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_nelbo_of_exact_denoiser_equals_entropy(schedule, oracle, data):
    process = MaskedDiffusion(vocab_size=oracle.vocab_size, mask_id=oracle.mask_id, schedule=make_schedule(schedule))
    est = estimate_likelihood(process, oracle, data, samples_per_chunk=2, batch_size=1024,
                              generator=torch.Generator().manual_seed(1))
    exact = CHAIN.entropy(L) / L  # nats per token
    assert est.stderr_nats_per_token < 0.02 * exact  # the test has power
    assert abs(est.nats_per_token - exact) < 3 * est.stderr_nats_per_token, (est, exact)


@dataclass(frozen=True)
class WrongDerivative(LinearSchedule):
    """alpha' off by a factor of 2: the weights are wrong, the NELBO must show it."""

    def alpha_prime(self, t):
        return 2 * super().alpha_prime(t)


def test_wrong_weights_are_detected(oracle, data):
    process = MaskedDiffusion(vocab_size=oracle.vocab_size, mask_id=oracle.mask_id, schedule=WrongDerivative())
    est = estimate_likelihood(process, oracle, data, samples_per_chunk=2, batch_size=1024,
                              generator=torch.Generator().manual_seed(1))
    exact = CHAIN.entropy(L) / L
    assert abs(est.nats_per_token - exact) > 10 * est.stderr_nats_per_token


def test_per_sequence_nelbo_is_log_likelihood_in_expectation(oracle):
    """For one fixed sequence, E_t[NELBO] = -log p(x): the identity holds pointwise, not just on average."""
    x = torch.tensor([[0, 1, 2, 0, 1, 2]])
    process = MaskedDiffusion(vocab_size=oracle.vocab_size, mask_id=oracle.mask_id)
    est = estimate_likelihood(process, oracle, x, samples_per_chunk=4000, batch_size=2000,
                              generator=torch.Generator().manual_seed(2))
    exact = -CHAIN.log_prob(x).item() / L
    assert abs(est.nats_per_token - exact) < 3 * est.stderr_nats_per_token + 1e-9


def test_bits_per_char_conversion():
    from dlm.processes.likelihood import LikelihoodEstimate

    est = LikelihoodEstimate(nats_per_token=math.log(2) * 3, stderr_nats_per_token=math.log(2) * 0.1,
                             num_chunks=10, samples_per_chunk=1, tokens_per_char=0.5)
    assert est.bits_per_token == pytest.approx(3)
    assert est.bits_per_char == pytest.approx(1.5)
    assert est.stderr == pytest.approx(0.05)
