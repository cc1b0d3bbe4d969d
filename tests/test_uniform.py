"""Uniform-state diffusion proves its maths on a distribution we know exactly.

With the exact posterior as denoiser, the reverse process with rates r_theta is the exact
time reversal of the forward process, so the continuous-time NELBO of a sequence is -log p(x)
(up to the O(eps) left out near t = 0) and its mean over sampled sequences is the entropy.
For a denoiser that is *not* the optimum, the continuous-time NELBO must still be the limit of
D3PM's discrete-time bound, computed here exactly from Bayes' rule; this checks the formula
away from the optimum, where terms that vanish at r_theta = r would otherwise go unseen.
"""

from __future__ import annotations

import collections
import itertools
import math
from dataclasses import dataclass

import pytest
import torch

from dlm.processes.likelihood import estimate_likelihood
from dlm.processes.uniform import UniformDiffusion
from dlm.sampling import Canvas, sample_ancestral
from dlm.schedules import SCHEDULES, LinearSchedule, make_schedule

from conftest import CountingDenoiser, tiny_model
from oracle import CHAIN, UniformOracleDenoiser

L = 4
NOISE = list(range(CHAIN.V))  # the data tokens; mask = 3 and pad = 4 are not noise states
EXACT = CHAIN.entropy(L) / L  # nats per token


def setup(schedule=None, noise_ids=NOISE, length=L):
    schedule = schedule or LinearSchedule()
    oracle = UniformOracleDenoiser(CHAIN, length, schedule, noise_ids)
    return oracle, UniformDiffusion(vocab_size=oracle.vocab_size, noise_ids=oracle.noise_ids, schedule=schedule)


@pytest.fixture(scope="module")
def data():
    """Many sequences: the estimator is heavy-tailed (a token replaced at small t scores O(1/t) with
    probability O(t)), so its standard error is trustworthy only with thousands of samples."""
    return CHAIN.sample(20000, L, torch.Generator().manual_seed(0))


def time_sampled_nelbo(process, denoiser, data, seed=1):
    """Mean and standard error of the NELBO per token that training's loss reports."""
    out = process.loss(denoiser, data, generator=torch.Generator().manual_seed(seed))
    per_token = out.nelbo / data.shape[1]
    return per_token.mean().item(), per_token.std().item() / len(data) ** 0.5


# -- the bound on the exact denoiser ------------------------------------------------------
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_training_loss_nelbo_of_exact_denoiser_equals_entropy(schedule, data):
    oracle, process = setup(make_schedule(schedule))
    mean, stderr = time_sampled_nelbo(process, oracle, data)
    assert stderr < 0.03 * EXACT  # the test has power
    assert abs(mean - EXACT) < 3 * stderr, (mean, stderr, EXACT)


def test_evaluation_estimate_of_exact_denoiser_equals_entropy(data):
    oracle, process = setup(make_schedule("cosine"))
    est = estimate_likelihood(process, oracle, data, samples_per_chunk=2, batch_size=1024,
                              generator=torch.Generator().manual_seed(1))
    assert est.chunks_stderr_nats_per_token < 0.03 * EXACT
    assert abs(est.nats_per_token - EXACT) < 3 * est.chunks_stderr_nats_per_token, (est, EXACT)


def test_a_noise_state_absent_from_the_data_keeps_the_bound_exact(data):
    """N = 4 with id 5 never in the data: corruption, oracle and score entropy must agree on N."""
    oracle, process = setup(noise_ids=NOISE + [5])
    assert process.num_states == 4
    mean, stderr = time_sampled_nelbo(process, oracle, data)
    assert abs(mean - EXACT) < 3 * stderr, (mean, stderr, EXACT)


def test_per_sequence_nelbo_is_its_negative_log_likelihood():
    """For one fixed sequence, E[NELBO] = -log p(x): the bound is tight pointwise, not just on average."""
    oracle, process = setup()
    x = torch.tensor([[0, 1, 2, 0]])
    est = estimate_likelihood(process, oracle, x, samples_per_chunk=4000, batch_size=4000,
                              generator=torch.Generator().manual_seed(2))
    exact = -CHAIN.log_prob(x).item() / L
    assert est.stderr_nats_per_token < 0.05 * exact
    assert abs(est.nats_per_token - exact) < 3 * est.stderr_nats_per_token, (est, exact)


# -- wrong denoisers and wrong weights are seen -------------------------------------------
@dataclass(frozen=True)
class WrongDerivative(LinearSchedule):
    """alpha' off by a factor of 2: the rate beta(t) is wrong, the NELBO must show it."""

    def alpha_prime(self, t):
        return 2 * super().alpha_prime(t)


def test_wrong_denoisers_and_weights_are_detected(data):
    oracle, process = setup()
    late = lambda x_t, t, attention_mask=None: oracle(x_t, 0.25 * t)  # noqa: E731  (believes there is less noise)
    mean, stderr = time_sampled_nelbo(process, late, data)
    assert mean - EXACT > 10 * stderr, (mean, stderr, EXACT)
    tempered = lambda x_t, t, attention_mask=None: 0.5 * oracle(x_t, t)  # noqa: E731
    mean, stderr = time_sampled_nelbo(process, tempered, data)
    assert mean - EXACT > 10 * stderr, (mean, stderr, EXACT)

    # Uniform logits: the model is then uniform over N^L sequences, so the bound is at least log N.
    flat = lambda x_t, t, attention_mask=None: torch.zeros(*x_t.shape, oracle.vocab_size)  # noqa: E731
    mean, stderr = time_sampled_nelbo(process, flat, data)
    assert mean > math.log(CHAIN.V) - 3 * stderr and mean - EXACT > 10 * stderr, (mean, stderr)

    _, wrong = setup(WrongDerivative())
    mean, stderr = time_sampled_nelbo(wrong, UniformOracleDenoiser(CHAIN, L, WrongDerivative(), NOISE), data)
    assert abs(mean - EXACT) > 10 * stderr, (mean, stderr, EXACT)


# -- the formulas against their definitions -----------------------------------------------
def exact_integrand(process, denoiser, x0: list[int], t: torch.Tensor) -> torch.Tensor:
    """E_{x_t ~ q_t(. | x0)} sum_l (beta(t)/N) DSE_l, by enumerating every x_t; t (T,) -> (T,)."""
    N, length = process.num_states, len(x0)
    states = torch.tensor(list(itertools.product(range(N), repeat=length)))  # (M, L) every x_t
    M = len(states)
    a = process.schedule.alpha(t)  # (T,)
    same = (states == torch.tensor(x0)).double()  # (M, L)
    weight = (a[:, None, None] * same + (1 - a[:, None, None]) / N).prod(-1)  # (T, M) q(x_t | x0)
    log_p = process.noise_log_probs(denoiser(states.repeat(len(t), 1), t.repeat_interleave(M).float()))
    dse = process.score_entropy(log_p.view(-1, N), states.repeat(len(t), 1).flatten(),
                                torch.tensor(x0).repeat(len(t) * M), a.repeat_interleave(M * length))
    return (weight * dse.view(len(t), M, length).sum(-1)).sum(-1) * process.rate(t) / N  # (T,)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_nelbo_integral_of_exact_denoiser_is_minus_log_p(schedule):
    """No Monte Carlo: the integrand by enumeration, integrated by quadrature in log t. From t = 0 it
    is -log p(x) to quadrature accuracy; from eps = 1e-3 it is a little less (the integrand grows
    like log(1/t) near 0), which is the part the estimator leaves out."""
    oracle, process = setup(make_schedule(schedule), length=2)
    for x0 in ([0, 1], [2, 2]):
        exact = -CHAIN.log_prob(torch.tensor([x0])).item()
        for lo in (1e-10, process.time_eps):
            t = torch.logspace(math.log10(lo), 0, 4001, dtype=torch.float64)  # (T,)
            integral = torch.trapezoid(exact_integrand(process, oracle, x0, t) * t, t.log()).item()
            if lo < 1e-9:
                assert integral == pytest.approx(exact, rel=1e-4), (x0, integral, exact)
            else:
                assert 0 < exact - integral < 0.02 * exact, (x0, integral, exact)


def test_time_proposal_weights_integrate_exactly():
    """E_u[g(t)/density(t)] = int_eps^1 g for u on a fine midpoint grid: for g = 1 and for g = 1/t."""
    process = UniformDiffusion(vocab_size=5, noise_ids=[0, 1, 2], time_eps=1e-3)
    u = (torch.arange(200000, dtype=torch.float64) + 0.5) / 200000
    t = process.times(u)
    assert float(t.min()) >= process.time_eps and float(t.max()) <= 1.0
    w = 1.0 / process.time_density(t)
    assert (w.mean().item(), (w / t).mean().item()) == pytest.approx((1 - 1e-3, math.log(1e3)), rel=1e-4)
    assert float(w.max()) <= 2.0


def bayes_posterior(a_t: torch.Tensor, a_s: torch.Tensor, N: int) -> torch.Tensor:
    """q(x_s = k | x_t = i, x0 = j) from Bayes' rule with explicit transition matrices; a_t, a_s (T,)
    -> (T, j, i, k). Q[j, k] = q(k | j) = alpha 1{j = k} + (1 - alpha)/N for each marginal and step."""
    eye = torch.eye(N, dtype=torch.float64)

    def Q(a):
        return a[:, None, None] * eye + (1 - a[:, None, None]) / N  # (T, N, N)

    Q_s, Q_t, Q_ts = Q(a_s), Q(a_t), Q(a_t / a_s)  # x0 -> x_s, x0 -> x_t, x_s -> x_t
    joint = Q_s[:, :, None, :] * Q_ts.transpose(1, 2)[:, None, :, :]  # (T, j, i, k): q(k | j) q(i | k)
    return joint / Q_t[:, :, :, None]


def test_score_entropy_matches_its_definition():
    """sum_{y != i} r_theta - r + r log(r / r_theta), with r_theta = sum_j p_j q_t(y|j)/q_t(i|j), by brute force."""
    g = torch.Generator().manual_seed(0)
    N, n = 5, 40
    process = UniformDiffusion(vocab_size=N + 2, noise_ids=list(range(N)))
    log_p = torch.randn(n, N, generator=g, dtype=torch.float64).mul(3).log_softmax(-1)
    current, clean = torch.randint(N, (n,), generator=g), torch.randint(N, (n,), generator=g)
    clean[: n // 2] = current[: n // 2]  # both cases: token still clean, token replaced
    alpha = torch.rand(n, generator=g, dtype=torch.float64) * 0.98 + 0.01
    got = process.score_entropy(log_p, current, clean, alpha)
    p = log_p.exp()
    for row in range(n):
        a, i, c = alpha[row].item(), current[row].item(), clean[row].item()
        q = lambda y, x0: a * (y == x0) + (1 - a) / N  # noqa: E731
        want = 0.0
        for y in range(N):
            if y == i:
                continue
            r = q(y, c) / q(i, c)
            r_theta = sum(p[row, j].item() * q(y, j) / q(i, j) for j in range(N))
            want += r_theta - r + r * math.log(r / r_theta)
        assert got[row].item() == pytest.approx(want, rel=1e-9, abs=1e-12), row


def test_reverse_step_is_the_d3pm_posterior_mixture():
    """p(x_s | x_t) = sum_j p_j q(x_s | x_t, x0 = j); rows sum to 1; at s = 0 it is p itself."""
    g = torch.Generator().manual_seed(0)
    noise = [0, 1, 3, 5]  # mask = 2 and pad = 4 are not noise states
    V, N = 6, len(noise)
    process = UniformDiffusion(vocab_size=V, noise_ids=noise, schedule=make_schedule("cosine"))
    x_t = torch.tensor(noise)[torch.randint(N, (2, 5), generator=g)]  # (B, L)
    logits = process.x0_logits(torch.randn(2, 5, V, generator=g) * 2)  # (B, L, V)
    t, s = torch.tensor([0.7, 0.3], dtype=torch.float64), torch.tensor([0.45, 0.1], dtype=torch.float64)
    got = process.reverse_probs(x_t, logits, t, s)  # (B, L, N)

    p = logits[..., noise].double().softmax(-1)  # (B, L, N)
    post = bayes_posterior(process.schedule.alpha(t), process.schedule.alpha(s), N)  # (B, j, i, k)
    i = torch.tensor([noise.index(v) for v in x_t.flatten().tolist()]).view(2, 5)
    want = torch.einsum("blj,bjlk->blk", p, post[torch.arange(2)[:, None], :, i].transpose(1, 2))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 5, dtype=torch.float64))

    zero = torch.zeros(2, dtype=torch.float64)
    torch.testing.assert_close(process.reverse_probs(x_t, logits, t, zero), p, rtol=1e-10, atol=1e-12)
    greedy = torch.full_like(logits, float("-inf")).scatter_(-1, logits.argmax(-1, keepdim=True), 0.0)
    x0 = process.step(x_t, greedy, t, zero, generator=g)
    assert torch.equal(x0, logits.argmax(-1)), "at s = 0 no noise is left: a greedy step returns the argmax"


def test_continuous_nelbo_is_the_limit_of_the_d3pm_bound():
    """A denoiser that is not the optimum (the oracle's logits halved): the Monte-Carlo continuous-time
    NELBO equals D3PM's discrete-time bound L_vb (Austin et al., 2021) with T -> infinity steps,
    computed exactly by enumerating x_t, on the grid eps = t_0 < ... < t_T = 1 the estimator integrates."""
    length, x0 = 2, [1, 2]
    oracle, process = setup(length=length)
    N, eps = process.num_states, process.time_eps

    def tempered(x_t, t, attention_mask=None):
        return 0.5 * oracle(x_t, t)

    states = torch.tensor(list(itertools.product(range(N), repeat=length)))  # (M, L) every x_t
    clean = torch.tensor(x0)

    def d3pm_bound(T):
        grid = eps ** (1 - torch.arange(T + 1, dtype=torch.float64) / T)  # geometric: fine where t is small
        t, s = grid[1:], grid[:-1]  # (T,) each step t -> s
        a_t, a_s = process.schedule.alpha(t), process.schedule.alpha(s)
        M = len(states)
        same = (states == clean).double()  # (M, L)
        weight = (a_t[:, None, None] * same + (1 - a_t[:, None, None]) / N).prod(-1)  # (T, M) q(x_t | x0)
        logits = tempered(states.repeat(T, 1), t.repeat_interleave(M).float())  # (T M, L, V)
        p = logits[..., :N].double().softmax(-1).view(T, M, length, N)  # (T, M, L, j)
        post = bayes_posterior(a_t, a_s, N)[:, :, states]  # (T, j, M, L, k)
        true = torch.stack([post[:, x0[l], :, l] for l in range(length)], dim=2)  # (T, M, L, k)
        model = torch.einsum("tmlj,tjmlk->tmlk", p, post)  # (T, M, L, k)
        kl = (true * (true.log() - model.log())).sum(-1).sum(-1)  # (T, M): the positions factorise
        return (weight * kl).sum().item() + length * process.prior_kl().item()

    fine, coarse = d3pm_bound(2000), d3pm_bound(1000)
    K = 100000
    u = (torch.rand(1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
         + torch.arange(K, dtype=torch.float64) / K) % 1.0
    # the integral from eps (the training loss's nelbo) ...
    est = process.loss(tempered, clean.expand(K, -1), t=process.times(u),
                       generator=torch.Generator().manual_seed(1)).nelbo
    mean, stderr = est.mean().item(), est.std().item() / K**0.5  # (conservative for stratified u)
    nll = -CHAIN.log_prob(clean[None]).item()
    assert fine - nll > 10 * (stderr + abs(fine - coarse)), "the denoiser must be far enough from the optimum"
    assert abs(mean - fine) < 3 * stderr + 2 * abs(fine - coarse), (mean, stderr, fine, coarse)
    # ... and the evaluation adds D3PM's L_0 = E_{x_eps ~ q(. | x0)} -log p_theta(x0 | x_eps), here enumerated
    a = process.schedule.alpha(torch.tensor(eps, dtype=torch.float64))
    q_eps = (a * (states == clean).double() + (1 - a) / N).prod(-1)  # (M,)
    log_p = tempered(states, torch.full((len(states),), eps))[..., :N].double().log_softmax(-1)  # (M, L, N)
    l0 = (q_eps * -log_p.gather(-1, clean.expand(len(states), -1)[..., None])[..., 0].sum(-1)).sum().item()
    full = process.nelbo(tempered, clean.expand(K, -1), u=u, generator=torch.Generator().manual_seed(1))
    mean_full, stderr_full = full.mean().item(), full.std().item() / K**0.5
    assert abs(mean_full - (fine + l0)) < 3 * stderr_full + 2 * abs(fine - coarse), (mean_full, fine, l0)


# -- sampling -------------------------------------------------------------------------------
def test_ancestral_sampler_with_exact_denoiser_samples_the_distribution():
    """With the true posterior and 64 steps (few tokens change per step), ancestral sampling draws
    from the data distribution. With one step every token is drawn at once from its marginal
    at t = 1: the product of marginals, far from the chain's joint."""
    length, n = 3, 4000
    oracle, process = setup(length=length)
    canvas = Canvas.from_segments([[length]] * n, fill_id=oracle.mask_id, pad_id=oracle.pad_id)
    probs = CHAIN.log_prob(oracle.outcomes).exp()  # (S,)

    def total_variation(steps):
        out = sample_ancestral(oracle, process, canvas, steps=steps, generator=torch.Generator().manual_seed(0))
        counts = collections.Counter(map(tuple, out.tokens.tolist()))
        assert sum(counts.get(tuple(o), 0) for o in oracle.outcomes.tolist()) == n  # no mask, no pad
        return 0.5 * sum(abs(counts.get(tuple(o), 0) / n - p.item()) for o, p in zip(oracle.outcomes.tolist(), probs))

    # What sampling noise alone gives: E|p_hat - p| = sqrt(2 p (1 - p) / (pi n)) per outcome.
    noise = 0.5 * sum(math.sqrt(2 * p * (1 - p) / (math.pi * n)) for p in probs.tolist())
    assert total_variation(64) < 2 * noise, noise

    marginals = torch.stack([oracle.one_hot[:, l].T @ probs for l in range(length)])  # (L, V)
    product = torch.stack([marginals[l][oracle.outcomes[:, l]] for l in range(length)]).prod(0)  # (S,)
    product_tv = 0.5 * (product - probs).abs().sum().item()
    assert product_tv > 0.25 and total_variation(1) > product_tv - 2 * noise, product_tv


def test_ancestral_sampler_runs_a_time_conditioned_transformer(tokenizer):
    """The existing sampler works unchanged: a forward pass every step (the model reads t), the
    prompt kept, only noise states written."""
    process = UniformDiffusion.from_config({"name": "uniform", "objective": "normalized", "block_size": 4},
                                           vocab_size=tokenizer.vocab_size, special_ids=tokenizer.specials)
    model = CountingDenoiser(tiny_model(tokenizer.vocab_size, **process.model_options()))
    prompt = tokenizer.encode("To be")
    canvas = Canvas.for_generation([prompt, prompt[:2]], 6, fill_id=tokenizer.mask_id, pad_id=tokenizer.pad_id)
    out = sample_ancestral(model, process, canvas, steps=8, generator=torch.Generator().manual_seed(0))
    assert out.nfe == 8 == model.calls
    assert out.tokens[0, : len(prompt)].tolist() == prompt
    written = out.tokens[canvas.editable]
    assert not bool(((written == tokenizer.mask_id) | (written == tokenizer.pad_id)).any())
    assert torch.equal(out.tokens[~canvas.editable], canvas.tokens[~canvas.editable])


# -- forward process, prior, logits, objective plumbing -------------------------------------
def test_corrupt_keeps_each_token_with_probability_alpha_plus_one_over_n():
    noise = [0, 1, 3, 5]
    N, n = len(noise), 40000
    process = UniformDiffusion(vocab_size=6, noise_ids=noise, schedule=make_schedule("cosine"))
    x0 = torch.full((3, n), 3)
    t = torch.tensor([0.2, 0.5, 0.9])
    x_t = process.corrupt(x0, t, generator=torch.Generator().manual_seed(0))
    a = process.schedule.alpha(t.double())
    for k, v in enumerate(noise):  # P(x_t = c) = alpha + (1 - alpha)/N, every other state (1 - alpha)/N
        want = (1 - a) / N + a * (v == 3)
        got = (x_t == v).double().mean(1)
        assert bool(((got - want).abs() < 5 * (want * (1 - want) / n).sqrt()).all()), (v, got, want)
    assert not bool(((x_t == 2) | (x_t == 4)).any())

    loss_mask = torch.rand(3, n, generator=torch.Generator().manual_seed(1)) < 0.5
    x0 = torch.full((3, n), 4)  # padding where nothing is scored must survive
    x0[loss_mask] = 1
    x_t = process.corrupt(x0, t, loss_mask=loss_mask, generator=torch.Generator().manual_seed(2))
    assert torch.equal(x_t[~loss_mask], x0[~loss_mask])
    assert bool((x_t[loss_mask] != 1).any())


def test_prior_is_uniform_over_the_noise_states():
    process = UniformDiffusion(vocab_size=6, noise_ids=[0, 1, 3, 5])
    x = process.prior((200, 500), generator=torch.Generator().manual_seed(0))
    assert x.shape == (200, 500) and x.dtype == torch.long
    n = x.numel()
    for v in range(6):
        want = 0.25 if v in (0, 1, 3, 5) else 0.0
        assert abs((x == v).double().mean().item() - want) < 5 * math.sqrt(0.25 * 0.75 / n)
    again = process.prior((200, 500), generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, again)


def test_x0_logits_bans_mask_pad_and_bos(tokenizer):
    process = UniformDiffusion.from_config({"name": "uniform"}, vocab_size=tokenizer.vocab_size,
                                           special_ids=tokenizer.specials)
    logits = torch.randn(2, 3, tokenizer.vocab_size, dtype=torch.float64)
    out = process.x0_logits(logits)
    assert out.dtype == torch.float32
    banned = [tokenizer.mask_id, tokenizer.pad_id, tokenizer.specials["bos"]]
    assert bool(torch.isinf(out[..., banned]).all())
    keep = [v for v in range(tokenizer.vocab_size) if v not in banned]
    assert torch.equal(out[..., keep], logits[..., keep].float())
    assert process.num_states == tokenizer.vocab_size - 3
    with pytest.raises(ValueError, match="vocabulary"):
        process.x0_logits(torch.zeros(1, 1, tokenizer.vocab_size + 1))


def test_loss_trains_a_transformer_and_never_noises_unscored_positions(tokenizer):
    process = UniformDiffusion.from_config({"name": "uniform", "schedule": {"name": "cosine"}},
                                           vocab_size=tokenizer.vocab_size, special_ids=tokenizer.specials)
    model = tiny_model(tokenizer.vocab_size, **process.model_options()).train()
    seen = []

    def recording(x_t, t, attention_mask=None):
        seen.append(x_t.clone())
        return model(x_t, t, attention_mask=attention_mask)

    x0 = torch.tensor([tokenizer.encode("To be, or not to be")] * 4)
    loss_mask = torch.ones_like(x0, dtype=torch.bool)
    loss_mask[:, :3] = False
    x0[:, :2] = tokenizer.pad_id  # unscored padding is allowed and carried over
    out = process.loss(recording, x0, loss_mask=loss_mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(seen[0][~loss_mask], x0[~loss_mask])
    assert out.nelbo.shape == (4,) and torch.equal(out.num_tokens, loss_mask.sum(1))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss.double(), out.nelbo.sum() / loss_mask.sum(), rtol=1e-6, atol=0)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    assert any(bool(g.abs().sum() > 0) for g in grads)

    with pytest.raises(ValueError, match="outside the noise states"):
        process.loss(model, x0, generator=torch.Generator().manual_seed(0))  # padding scored


def test_config_round_trip_and_bad_construction(tokenizer):
    process = UniformDiffusion.from_config({"name": "uniform", "schedule": {"name": "polynomial", "power": 3.0},
                                            "time_eps": 1e-4}, vocab_size=tokenizer.vocab_size,
                                           special_ids=tokenizer.specials)
    config = process.config()
    assert config == {"name": "uniform", "schedule": {"name": "polynomial", "power": 3.0}, "time_eps": 1e-4}
    again = UniformDiffusion.from_config(config, vocab_size=tokenizer.vocab_size, special_ids=tokenizer.specials)
    assert again.schedule == process.schedule and torch.equal(again.noise_ids, process.noise_ids)
    assert process.model_options() == {"attention": "bidirectional", "time_conditioning": True}
    assert (UniformDiffusion.name, UniformDiffusion.default_sampler, UniformDiffusion.samplers) == (
        "uniform", "ancestral", ("ancestral",))
    for bad in ([], [0, 0, 1], [0, 7]):
        with pytest.raises(ValueError):
            UniformDiffusion(vocab_size=7, noise_ids=bad)
    with pytest.raises(ValueError, match="time_eps"):
        UniformDiffusion(vocab_size=7, noise_ids=[0, 1], time_eps=0.0)
