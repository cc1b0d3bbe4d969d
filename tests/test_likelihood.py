"""The NELBO proves itself on a distribution we know exactly.

With the exact posterior as denoiser, the masked-diffusion NELBO of a sequence equals
-log p(x) (it averages the chain rule over random orders, each exact), so its Monte-Carlo
mean over sampled sequences must match the entropy. This catches wrong weights, a wrong
alpha', or an off-by-one in time: for the evaluation estimator (exact mask counts) and for
the training loss's time-sampled estimator under every schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from dlm.processes import MaskedDiffusion
from dlm.processes.likelihood import LikelihoodEstimate, estimate_likelihood
from dlm.schedules import SCHEDULES, LinearSchedule, make_schedule

from oracle import CHAIN, OracleDenoiser

L = 6
EXACT = CHAIN.entropy(L) / L  # nats per token


@pytest.fixture(scope="module")
def oracle():
    return OracleDenoiser(CHAIN, L)


@pytest.fixture(scope="module")
def data():
    return CHAIN.sample(3000, L, torch.Generator().manual_seed(0))


def process_for(oracle, schedule=None):
    return MaskedDiffusion(vocab_size=oracle.vocab_size, mask_id=oracle.mask_id, schedule=schedule)


def test_evaluation_estimate_of_exact_denoiser_equals_entropy(oracle, data):
    est = estimate_likelihood(process_for(oracle), oracle, data, samples_per_chunk=2, batch_size=1024,
                              generator=torch.Generator().manual_seed(1))
    # Sampled sequences: the error bar against the entropy includes sequence-to-sequence variation.
    assert est.chunks_stderr_nats_per_token < 0.02 * EXACT  # the test has power
    assert abs(est.nats_per_token - EXACT) < 3 * est.chunks_stderr_nats_per_token, (est, EXACT)
    assert 0 < est.stderr_nats_per_token < est.chunks_stderr_nats_per_token


def time_sampled_nelbo(process, oracle, data, seed=1):
    """The NELBO that training's loss reports: one time per sequence, weight -alpha'/(1 - alpha)."""
    out = process.loss(oracle, data, generator=torch.Generator().manual_seed(seed))
    per_token = out.nelbo / L
    return per_token.mean().item(), per_token.std().item() / len(data) ** 0.5


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_training_loss_nelbo_of_exact_denoiser_equals_entropy(schedule, oracle, data):
    mean, stderr = time_sampled_nelbo(process_for(oracle, make_schedule(schedule)), oracle, data)
    assert stderr < 0.05 * EXACT
    assert abs(mean - EXACT) < 3 * stderr, (mean, stderr, EXACT)


@dataclass(frozen=True)
class WrongDerivative(LinearSchedule):
    """alpha' off by a factor of 2: the weights are wrong, the NELBO must show it."""

    def alpha_prime(self, t):
        return 2 * super().alpha_prime(t)


def test_wrong_weights_are_detected(oracle, data):
    mean, stderr = time_sampled_nelbo(process_for(oracle, WrongDerivative()), oracle, data)
    assert abs(mean - EXACT) > 10 * stderr


def test_exact_count_estimator_has_lower_variance(oracle, data):
    """Both estimate the same NELBO; the exact-count one (used for evaluation) is much less noisy."""
    process = process_for(oracle)
    _, time_stderr = time_sampled_nelbo(process, oracle, data)
    u = torch.rand(len(data), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    count = process.nelbo(oracle, data, u=u, generator=torch.Generator().manual_seed(4)) / L
    assert count.std().item() / len(data) ** 0.5 < 0.8 * time_stderr


def test_per_sequence_nelbo_is_its_negative_log_likelihood(oracle):
    """For one fixed sequence, E[NELBO] = -log p(x): the identity holds pointwise, not just on average."""
    x = torch.tensor([[0, 1, 2, 0, 1, 2]])
    est = estimate_likelihood(process_for(oracle), oracle, x, samples_per_chunk=3000, batch_size=3000,
                              generator=torch.Generator().manual_seed(2))
    exact = -CHAIN.log_prob(x).item() / L
    assert abs(est.nats_per_token - exact) < 3 * est.stderr_nats_per_token + 1e-9


def test_bits_per_char_conversion():
    est = LikelihoodEstimate(nats_per_token=math.log(2) * 3, stderr_nats_per_token=math.log(2) * 0.1,
                             chunks_stderr_nats_per_token=math.log(2) * 0.2, num_chunks=10, samples_per_chunk=1,
                             tokens_per_char=0.5)
    assert est.bits_per_token == pytest.approx(3)
    assert est.bits_per_char == pytest.approx(1.5)
    assert est.stderr == pytest.approx(0.05) and est.stderr_chunks == pytest.approx(0.1)
