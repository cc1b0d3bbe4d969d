"""Gaussian embedding diffusion (Diffusion-LM): schedules, the VDM bound against a denoiser whose
posterior we know exactly, the DDPM/DDIM updates against closed forms, and the sampler contract."""

from __future__ import annotations

import math

import pytest
import torch

from dlm.models import ModelConfig, Transformer
from dlm.processes.gaussian import (GAUSSIAN_SCHEDULES, CosineSchedule, GaussianDiffusion, SqrtSchedule,
                                    make_gaussian_schedule)
from dlm.sampling import Canvas, infill_canvas, parse_template
from dlm.sampling.gaussian import ddim_update, ddpm_posterior, ddpm_update, sample_ddim, sample_ddpm

from conftest import tiny_model

SAMPLERS = {"ddpm": sample_ddpm, "ddim": sample_ddim}


class MixtureOracle:
    """Tokens i.i.d. at every position, w ~ `prior` over the rows of a fixed embedding `table`.

    Returns the exact posterior mean E[E(w) | z_t] (the optimal x0 predictor), and as rounding
    head the exact posterior q(w | z_0) read at z_0 = alpha_0 x, so that the bound's decoder
    softmax(rounding_logits(z_0 / alpha_0)) is the true one: with both, the VDM bound is tight."""

    def __init__(self, process: GaussianDiffusion, table: torch.Tensor, prior: list[float]):
        self.process = process
        self.table = table.double()  # (V, E)
        self.log_prior = torch.tensor(prior, dtype=torch.float64).log()  # (V,): -inf for tokens never seen

    def log_posterior(self, z: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        """log q(w | z) + const for z ~ N(sqrt(ab) E(w), (1 - ab) I); z (B, L, E), ab (B, 1, 1) -> (B, L, V)."""
        d2 = ((z[..., None, :] - ab[..., None].sqrt() * self.table) ** 2).sum(-1)  # (B, L, V)
        return self.log_prior - d2 / (2 * (1 - ab))

    def __call__(self, x_t, t, *, attention_mask=None):
        ab = self.process.alpha_bar(t)[:, None, None]  # (B, 1, 1)
        w = self.log_posterior(x_t.double(), ab).softmax(-1)  # (B, L, V)
        return (w @ self.table).float()  # (B, L, E)

    def embed_tokens(self, ids):
        return self.table[ids].float()

    def rounding_logits(self, x):
        ab0 = self.process.alpha_bar(torch.zeros(1)).view(1, 1, 1)
        return self.log_posterior(ab0.sqrt() * x.double(), ab0).float()


class Recording:
    """Wraps an embedding denoiser and keeps every x_t it is called with."""

    def __init__(self, denoiser):
        self.denoiser, self.inputs, self.calls = denoiser, [], 0

    def __call__(self, x_t, t, *, attention_mask=None):
        self.inputs.append(x_t.clone())
        self.calls += 1
        return self.denoiser(x_t, t, attention_mask=attention_mask)

    def embed_tokens(self, ids):
        return self.denoiser.embed_tokens(ids)

    def rounding_logits(self, x):
        return self.denoiser.rounding_logits(x)


# A vocabulary of two data tokens (0, 1) and two specials that never occur (2 = mask, 3 = pad).
TABLE = torch.tensor([[1.0, 0.5, 0.0], [-0.5, 0.0, 1.0], [0.0, 0.0, 0.0], [0.3, 0.3, 0.3]])
SPECIALS = {"mask": 2, "pad": 3}


def toy_process(schedule: str = "sqrt") -> GaussianDiffusion:
    return GaussianDiffusion.from_config({"name": "gaussian", "schedule": schedule, "embed_dim": 3},
                                         vocab_size=4, special_ids=SPECIALS)


# -- schedules ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(GAUSSIAN_SCHEDULES))
def test_schedule_is_decreasing_with_finite_log_snr_and_exact_derivative_and_inverse(name):
    schedule = make_gaussian_schedule(name)
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    ab = schedule.alpha_bar(t)
    assert (ab.diff() < 0).all() and 0 < ab[-1] < ab[0] < 1
    assert ab[-1].item() == pytest.approx(1e-4, rel=1e-9)  # alpha_bar(1) = alpha_bar_min exactly
    lam_min, lam_max = schedule.log_snr_range()
    assert math.isfinite(lam_min) and math.isfinite(lam_max) and lam_min < -9 < 4 < lam_max
    inner = t[1:-1]
    h = 1e-6
    numeric = (schedule.alpha_bar(inner + h) - schedule.alpha_bar(inner - h)) / (2 * h)
    torch.testing.assert_close(schedule.alpha_bar_prime(inner), numeric, rtol=1e-5, atol=1e-8)
    numeric_snr = (schedule.log_snr(inner + h).exp() - schedule.log_snr(inner - h).exp()) / (2 * h)
    torch.testing.assert_close(schedule.snr_prime(inner), numeric_snr, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(schedule.t_of_log_snr(schedule.log_snr(t)), t, rtol=0, atol=1e-9)


def test_sqrt_schedule_is_diffusion_lm_up_to_the_time_scaling():
    s = SqrtSchedule()
    t = torch.tensor([0.0, 0.3, 0.7], dtype=torch.float64)
    torch.testing.assert_close(s.alpha_bar(t), 1 - torch.sqrt(t * (1 - 1e-4) ** 2 + 1e-4 * (1 - t)))
    assert s.alpha_bar(torch.zeros(1, dtype=torch.float64)).item() == pytest.approx(0.99)  # sigma_0 = 0.1
    c = CosineSchedule()
    assert 1 - c.alpha_bar(torch.zeros(1, dtype=torch.float64)).item() == pytest.approx(
        math.sin(math.pi / 2 * 0.008 / 1.008) ** 2)


# -- configuration ------------------------------------------------------------------------------
def test_config_round_trip_defaults_and_errors():
    specials = {"mask": 5, "pad": 6, "eos": 7, "bos": 8}
    p = GaussianDiffusion.from_config({"name": "gaussian", "objective": "nelbo", "block_size": 4},
                                      vocab_size=10, special_ids=specials)
    assert isinstance(p.schedule, SqrtSchedule) and p.embed_dim == 16 and p.time_eps == 0.0
    assert p.banned_ids == (5, 6, 8)  # mask, pad, bos never occur in data; eos does
    for spec in ("cosine", {"name": "cosine"}):
        assert isinstance(GaussianDiffusion.from_config({"schedule": spec}, vocab_size=10, special_ids=specials)
                          .schedule, CosineSchedule)
    for spec in (None, "", {"name": ""}):
        assert isinstance(make_gaussian_schedule(spec), SqrtSchedule)
    q = GaussianDiffusion(vocab_size=10, embed_dim=8, schedule=CosineSchedule(), time_eps=0.01, banned_ids=(5,))
    r = GaussianDiffusion.from_config(q.config(), vocab_size=10, special_ids=specials)
    assert r.config() == q.config()
    assert q.model_options() == {"attention": "bidirectional", "time_conditioning": True, "embed_dim": 8}
    assert (p.name, p.default_sampler, p.samplers, p.infills) == ("gaussian", "ddim", ("ddpm", "ddim"), True)
    with pytest.raises(ValueError, match="unknown Gaussian noise schedule 'linear'"):
        GaussianDiffusion.from_config({"schedule": {"name": "linear"}}, vocab_size=10, special_ids=specials)
    with pytest.raises(TypeError, match="sample_ddpm or sample_ddim"):
        p.step(torch.zeros(1, 2), torch.zeros(1, 2, 10), torch.ones(1), torch.zeros(1))


def test_x0_logits_bans_the_special_tokens_in_float32():
    p = toy_process()
    logits = p.x0_logits(torch.zeros(2, 3, 4, dtype=torch.bfloat16))
    assert logits.dtype == torch.float32
    assert torch.isinf(logits[..., 2:]).all() and torch.isfinite(logits[..., :2]).all()


# -- forward process -----------------------------------------------------------------------------
def test_corrupt_has_the_forward_marginal_and_keeps_unscored_positions_clean():
    p = toy_process()
    x0 = TABLE[torch.tensor([[0, 1] * 20000])]  # (1, 40000, 3)
    t = torch.tensor([0.3])
    z = p.corrupt(x0, t, generator=torch.Generator().manual_seed(0))
    ab = p.alpha_bar(t).item()
    residual = (z - math.sqrt(ab) * x0) / math.sqrt(1 - ab)  # should be N(0, I)
    assert abs(residual.mean().item()) < 0.01 and abs(residual.var().item() - 1) < 0.02
    keep = torch.zeros(1, 40000, dtype=torch.bool)
    keep[:, :10] = True
    z = p.corrupt(x0, t, loss_mask=keep, generator=torch.Generator().manual_seed(0))
    assert torch.equal(z[:, 10:], x0[:, 10:]) and not torch.equal(z[:, :10], x0[:, :10])
    assert p.prior((2, 5), generator=torch.Generator().manual_seed(0)).shape == (2, 5, 3)


# -- the variational bound -------------------------------------------------------------------------
def test_nelbo_of_a_point_mass_is_the_prior_kl():
    """One possible token: the exact denoiser is always right (no diffusion term) and the decoder is
    certain (no reconstruction term), so the bound is exactly KL(q(z_1 | w) || N(0, I))."""
    p = toy_process()
    oracle = MixtureOracle(p, TABLE, [1.0, 0.0, 0.0, 0.0])
    w = torch.zeros(64, 5, dtype=torch.long)
    u = torch.rand(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    nelbo = p.nelbo(oracle, w, u=u, generator=torch.Generator().manual_seed(1))
    ab1, sq, d = 1e-4, TABLE[0].pow(2).sum().item(), 3
    kl = 0.5 * (ab1 * sq + d * (1 - ab1) - d - d * math.log(1 - ab1))  # KL(N(sqrt(ab1) e, (1-ab1) I) || N(0, I))
    torch.testing.assert_close(nelbo, torch.full((64,), 5 * kl, dtype=torch.float64), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(p.loss(oracle, w, generator=torch.Generator().manual_seed(2)).nelbo, nelbo,
                               rtol=1e-6, atol=1e-9)


def bound_samples(p, denoiser, w, estimator, seed=0):
    """One draw per row: `nelbo` (uniform log-SNR, stratified) or the loss's (uniform t, eq. 17)."""
    gen = torch.Generator().manual_seed(seed)
    if estimator == "nelbo":
        n = w.shape[0]
        u = (torch.rand((), generator=gen, dtype=torch.float64) + torch.arange(n) / n) % 1.0
        return p.nelbo(denoiser, w, u=u, generator=gen)
    return p.loss(denoiser, w, generator=gen).nelbo


SCHEDULES = {"sqrt": SqrtSchedule(), "cosine": CosineSchedule(),
             "noisy": SqrtSchedule(s=0.09)}  # ab(0) = 0.7: the decoder works at sigma_0 / alpha_0 = 0.65


class Baseline:
    """x0_hat = 0 ("constant") or z_t / sqrt(ab_t) ("identity"): wrong denoisers whose diffusion
    term has a closed form: 1/2 |E(w)|^2 (SNR(0) - SNR(1)), and dim/2 (lambda(0) - lambda(1)) per position."""

    def __init__(self, process, kind):
        self.process, self.kind = process, kind

    def __call__(self, x_t, t, *, attention_mask=None):
        if self.kind == "constant":
            return torch.zeros_like(x_t)
        return (x_t.double() / self.process.alpha_bar(t)[:, None, None].sqrt()).float()

    def embed_tokens(self, ids):
        return TABLE[ids]

    def rounding_logits(self, x):
        return torch.zeros(*x.shape[:-1], 4)  # with tokens 1..3 banned or impossible: certain


@pytest.mark.parametrize("kind", ["constant", "identity"])
def test_diffusion_term_of_simple_denoisers_has_its_closed_form(kind):
    """This catches wrong weights and wrong ends of the log-SNR range, where the exact denoiser
    (whose error vanishes at both ends) cannot. (The loss's uniform-t estimator is unbiased here
    too, but with these denoisers its weight -SNR'(t)/2 ~ (s + t)^(-3/2) near t = 0 gives it a heavy
    tail: the reason `nelbo` samples the log-SNR instead.)"""
    p = GaussianDiffusion(vocab_size=4, embed_dim=3, banned_ids=(1, 2, 3))
    w = torch.zeros(20000, 2, dtype=torch.long)
    samples = bound_samples(p, Baseline(p, kind), w, "nelbo")
    lam_min, lam_max = p.schedule.log_snr_range()
    ab1, e2, d = 1e-4, TABLE[0].pow(2).sum().item(), 3
    kl = 0.5 * (ab1 * e2 - d * ab1 - d * math.log(1 - ab1))
    diffusion = (0.5 * e2 * (math.exp(lam_max) - math.exp(lam_min)) if kind == "constant"
                 else 0.5 * d * (lam_max - lam_min))
    exact = 2 * (kl + diffusion)
    mean, stderr = samples.mean().item(), samples.std().item() / math.sqrt(len(samples))
    assert stderr < 0.03 * exact, "the test has power"
    assert abs(mean - exact) < 3 * stderr, (mean, stderr, exact)


@pytest.mark.parametrize("estimator", ["nelbo", "loss"])
def test_the_decoder_reads_z0_over_alpha0(estimator):
    """p(w | z_0) = softmax(rounding_logits(z_0 / alpha_0)): its input is E(w) + sqrt(1/SNR(0)) eps."""
    p = GaussianDiffusion(vocab_size=4, embed_dim=3, schedule=SCHEDULES["noisy"], banned_ids=(2, 3))
    seen = []
    oracle = MixtureOracle(p, TABLE, [0.3, 0.7, 0.0, 0.0])
    rounding = oracle.rounding_logits
    oracle.rounding_logits = lambda x: seen.append(x) or rounding(x)
    w = torch.tensor([[0, 1]]).expand(20000, 2)
    bound_samples(p, oracle, w, estimator)
    noise = (seen[0] - TABLE[w]) * math.exp(0.5 * p.schedule.log_snr_range()[1])  # should be N(0, I)
    assert noise.mean().abs() < 0.01 and (noise.var() - 1).abs() < 0.01


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("estimator", ["nelbo", "loss"])
def test_bound_of_the_exact_denoiser_equals_minus_log_p(schedule, estimator):
    """With the exact posterior mean as denoiser and the exact posterior as decoder, the model's
    path measure is q's (up to q(z_1) vs N(0, I), ~1e-4 nats here), so the continuous-time bound
    of every sequence is -log p(w): both estimators (uniform log-SNR for evaluation, uniform t
    with VDM's eq. 17 weight in the loss) must hit it within their standard error."""
    p = GaussianDiffusion(vocab_size=4, embed_dim=3, schedule=SCHEDULES[schedule], banned_ids=(2, 3))
    probs = [0.3, 0.7, 0.0, 0.0]
    oracle = MixtureOracle(p, TABLE, probs)
    w = torch.tensor([[0, 1, 1, 0]]).expand(20000, 4)
    exact = -2 * math.log(0.3) - 2 * math.log(0.7)
    samples = bound_samples(p, oracle, w, estimator)
    mean, stderr = samples.mean().item(), samples.std().item() / math.sqrt(len(samples))
    assert stderr < 0.03 * exact, "the test has power"
    assert abs(mean - exact) < 3 * stderr, (mean, stderr, exact)


def test_loss_mask_positions_are_clean_and_unscored():
    p = toy_process()
    oracle = Recording(MixtureOracle(p, TABLE, [0.3, 0.7, 0.0, 0.0]))
    w = torch.tensor([[0, 1, 1, 0, 1]] * 6)
    scored = torch.tensor([[False, False, True, True, True]] * 6)
    out = p.loss(oracle, w, loss_mask=scored, generator=torch.Generator().manual_seed(0))
    assert torch.equal(oracle.inputs[0][:, :2], TABLE[w[:, :2]])  # the prompt stays clean in z_t
    assert torch.equal(out.num_tokens, torch.full((6,), 3))

    def wrong_on_prompt(x_t, t, *, attention_mask=None):  # right on scored positions, wrong elsewhere
        x0 = oracle(x_t, t)
        x0[:, :2] = 100.0
        return x0
    wrong_on_prompt.embed_tokens, wrong_on_prompt.rounding_logits = oracle.embed_tokens, oracle.rounding_logits
    u = torch.linspace(0, 0.99, 6, dtype=torch.float64)
    a = p.nelbo(oracle, w, u=u, loss_mask=scored, generator=torch.Generator().manual_seed(1))
    b = p.nelbo(wrong_on_prompt, w, u=u, loss_mask=scored, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)


def test_loss_trains_a_tiny_transformer_end_to_end():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=10, d_model=32, n_layers=1, n_heads=2, max_len=32, embed_dim=8,
                                    time_conditioning=True))
    p = GaussianDiffusion.from_config({"embed_dim": 8}, vocab_size=10, special_ids={"mask": 8, "pad": 9})
    x0 = torch.tensor([[0, 1, 2, 3] * 4] * 8)  # (8, 16): a repetitive toy batch
    t_eval = torch.linspace(0.05, 0.95, 8)

    def evaluate():
        return p.loss(model, x0, t=t_eval, generator=torch.Generator().manual_seed(0)).loss

    first = evaluate()
    assert torch.isfinite(first)
    first.backward()
    grad = model.embed.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad[:4].abs().sum() > 0  # E is trained end to end
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    for _ in range(40):
        opt.zero_grad()
        out = p.loss(model, x0, generator=gen)
        assert torch.isfinite(out.loss) and torch.isfinite(out.nelbo).all() and out.nelbo.shape == (8,)
        out.loss.backward()
        opt.step()
    with torch.no_grad():
        last = evaluate()
    assert last < 0.7 * first.detach(), (first.item(), last.item())


# -- the updates ---------------------------------------------------------------------------------
def test_ddpm_posterior_is_the_gaussian_conditional_of_the_forward_process():
    """q(x_s | x_t, x_0) by conditioning the joint Gaussian of (x_s, x_t) given x_0:
    x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s) e1, x_t = sqrt(ab_t/ab_s) x_s + sqrt(1 - ab_t/ab_s) e2."""
    g = torch.Generator().manual_seed(0)
    x0, x_t = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    ab_t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    ab_s = torch.tensor([0.3, 0.6, 0.99], dtype=torch.float64)
    mean, var = ddpm_posterior(x_t, x0, ab_t, ab_s)
    a_t, a_s = ab_t[:, None, None], ab_s[:, None, None]
    cov = (a_t / a_s).sqrt() * (1 - a_s)  # Cov(x_s, x_t) per coordinate
    want_mean = a_s.sqrt() * x0.double() + cov / (1 - a_t) * (x_t.double() - a_t.sqrt() * x0.double())
    want_var = (1 - a_s) - cov ** 2 / (1 - a_t)
    torch.testing.assert_close(mean, want_mean)
    torch.testing.assert_close(var, want_var)
    z = torch.randn(3, 4, 5, generator=g)
    torch.testing.assert_close(ddpm_update(x_t, x0, ab_t, ab_s, z), (mean + var.sqrt() * z.double()).float())
    # DDIM with eta = 1 is the same draw; with eta = 0 it keeps the implied noise eps_hat.
    torch.testing.assert_close(ddim_update(x_t, x0, ab_t, ab_s, z, eta=1.0), ddpm_update(x_t, x0, ab_t, ab_s, z))
    eps_hat = (x_t.double() - a_t.sqrt() * x0.double()) / (1 - a_t).sqrt()
    torch.testing.assert_close(ddim_update(x_t, x0, ab_t, ab_s, z, eta=0.0),
                               (a_s.sqrt() * x0.double() + (1 - a_s).sqrt() * eps_hat).float())


def tiny_setup(tokenizer):
    model = tiny_model(tokenizer.vocab_size, embed_dim=8, time_conditioning=True)
    process = GaussianDiffusion.from_config({"name": "gaussian", "embed_dim": 8}, vocab_size=tokenizer.vocab_size,
                                            special_ids=tokenizer.specials)
    return model, process


def canvases(tokenizer):
    prompts = Canvas.for_generation([tokenizer.encode("To be"), tokenizer.encode("Whether 'tis nobler")], 12,
                                    fill_id=tokenizer.mask_id, pad_id=tokenizer.pad_id)
    spans = infill_canvas(parse_template("To <fill:3> or not <fill:4>, that is"), tokenizer, num_samples=2).canvas
    return {"prompts": prompts, "spans": spans}


@pytest.mark.parametrize("clamp", [True, False])
def test_ddim_with_eta_one_follows_the_ddpm_trajectory(tokenizer, clamp):
    model, process = tiny_setup(tokenizer)
    canvas = canvases(tokenizer)["prompts"]
    a, b = Recording(model), Recording(model)
    out_a = sample_ddpm(a, process, canvas, steps=10, generator=torch.Generator().manual_seed(3), clamp=clamp)
    out_b = sample_ddim(b, process, canvas, steps=10, eta=1.0, generator=torch.Generator().manual_seed(3),
                        clamp=clamp)
    assert torch.equal(out_a.tokens, out_b.tokens)
    assert len(a.inputs) == len(b.inputs) == 10
    for xa, xb in zip(a.inputs, b.inputs):
        torch.testing.assert_close(xa, xb, rtol=1e-5, atol=1e-5)


def test_ddim_with_eta_zero_is_deterministic_given_the_start_noise(tokenizer):
    model, process = tiny_setup(tokenizer)
    canvas = canvases(tokenizer)["spans"]
    start = process.prior(canvas.shape, generator=torch.Generator().manual_seed(0))

    class FixedStart(GaussianDiffusion):
        def prior(self, shape, *, generator=None, device="cpu"):
            return start.clone()

    fixed = FixedStart.from_config(process.config(), vocab_size=tokenizer.vocab_size, special_ids=tokenizer.specials)

    def run(seed, eta):
        rec = Recording(model)
        out = sample_ddim(rec, fixed, canvas, steps=8, eta=eta, temperature=0.0,
                          generator=torch.Generator().manual_seed(seed))
        return out.tokens, torch.stack(rec.inputs)

    (tok1, x1), (tok2, x2) = run(1, 0.0), run(2, 0.0)
    assert torch.equal(tok1, tok2) and torch.equal(x1, x2)
    _, x3 = run(2, 1.0)
    assert not torch.allclose(x1, x3), "with eta = 1 the seed matters (the test has power)"


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_samplers_recover_a_single_point_and_follow_the_forward_marginal_at_fixed_positions(sampler):
    """Point-mass data: the exact denoiser returns E(w) at every step, so every position rounds to w;
    under DDIM eta = 0 the path is x_t = sqrt(ab_t) E(w) + sqrt(1 - ab_t) eps_1, eps_1 the start
    noise implied at t = 1 (Song et al. eq. 12 keeps eps_hat): at fixed positions, which start at a
    draw of q(x_1 | E(w)), that is the start noise itself (replacement conditioning)."""
    p = toy_process()
    oracle = Recording(MixtureOracle(p, TABLE, [1.0, 0.0, 0.0, 0.0]))
    editable = torch.tensor([[False, True, True, False, True]] * 3)
    canvas = Canvas(tokens=torch.where(editable, 2, 0), editable=editable,
                    attention_mask=torch.ones(3, 5, dtype=torch.bool))
    out = SAMPLERS[sampler](oracle, p, canvas, steps=6, generator=torch.Generator().manual_seed(0), clamp=False)
    assert (out.tokens == 0).all()
    if sampler == "ddim":
        start = p.prior((3, 5), generator=torch.Generator().manual_seed(0))  # the sampler's first draw
        e, ab_1 = TABLE[0], p.alpha_bar(torch.ones(1)).item()
        eps = torch.where(editable[..., None], (start - math.sqrt(ab_1) * e) / math.sqrt(1 - ab_1), start)
        grid = torch.linspace(1, 0, 7, dtype=torch.float64)
        for x, t in zip(oracle.inputs, grid):
            ab = p.alpha_bar(t.view(1)).item()
            torch.testing.assert_close(x, math.sqrt(ab) * e + math.sqrt(1 - ab) * eps, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_fixed_positions_hold_a_draw_of_the_forward_process_whatever_the_denoiser_says(sampler):
    """Replacement conditioning: at a fixed position x_t ~ q(x_t | E(w)) at every step, even where
    the denoiser's x0_hat is wrong (here it believes token 0 or 1 with probabilities 0.3 / 0.7)."""
    p = toy_process()
    oracle = Recording(MixtureOracle(p, TABLE, [0.3, 0.7, 0.0, 0.0]))
    editable = torch.tensor([[True, False, False, True]]).expand(4000, 4)
    tokens = torch.tensor([[2, 0, 1, 2]]).expand(4000, 4)
    canvas = Canvas(tokens=tokens, editable=editable, attention_mask=torch.ones(4000, 4, dtype=torch.bool))
    out = SAMPLERS[sampler](oracle, p, canvas, steps=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.tokens[:, 1:3], tokens[:, 1:3])
    grid = torch.linspace(1, 0, 6, dtype=torch.float64)
    for x, t in zip(oracle.inputs, grid):
        ab = p.alpha_bar(t.view(1)).item()
        eps = (x[:, 1:3] - math.sqrt(ab) * TABLE[tokens[:, 1:3]]) / math.sqrt(1 - ab)  # (4000, 2, 3): N(0, I)?
        assert eps.mean(0).abs().max() < 0.07 and (eps.var(0) - 1).abs().max() < 0.1, (t, eps.mean(0), eps.var(0))
        if sampler == "ddim":  # eta = 0: the start noise is kept exactly
            torch.testing.assert_close(eps, oracle.inputs[0][:, 1:3] - math.sqrt(1e-4) * TABLE[tokens[:, 1:3]],
                                       rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler,eta", [("ddpm", None), ("ddim", 0.0), ("ddim", 0.5)])
def test_samplers_draw_the_data_distribution_with_the_exact_denoiser(sampler, eta):
    """Two tokens with probabilities 0.3 / 0.7 at every position: with the exact posterior mean (no
    clamping) DDPM, the DDIM ODE and DDIM in between must all reproduce the frequencies."""
    p = toy_process()
    oracle = MixtureOracle(p, TABLE, [0.3, 0.7, 0.0, 0.0])
    canvas = Canvas(tokens=torch.full((2000, 2), 2), editable=torch.ones(2000, 2, dtype=torch.bool),
                    attention_mask=torch.ones(2000, 2, dtype=torch.bool))
    kwargs = {} if eta is None else {"eta": eta}
    out = SAMPLERS[sampler](oracle, p, canvas, steps=100, temperature=0.0, clamp=False,
                            generator=torch.Generator().manual_seed(0), **kwargs)
    assert set(out.tokens.unique().tolist()) <= {0, 1}
    freq = (out.tokens == 0).double().mean().item()
    assert abs(freq - 0.3) < 0.03, freq  # 4000 tokens: 4 standard errors of a 0.3 frequency is 0.029


# -- the sampler contract ---------------------------------------------------------------------------
@pytest.mark.parametrize("sampler_name", sorted(SAMPLERS))
@pytest.mark.parametrize("kind", ["prompts", "spans"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_gaussian_sampler_contract(sampler_name, kind, temperature, tokenizer):
    sampler = SAMPLERS[sampler_name]
    model, process = tiny_setup(tokenizer)
    canvas = canvases(tokenizer)[kind]
    steps, seen = 6, []
    denoiser = Recording(model)
    run = lambda seed: sampler(denoiser, process, canvas, steps=steps, temperature=temperature,  # noqa: E731
                               generator=torch.Generator().manual_seed(seed), callback=seen.append,
                               record_history=True)
    out = run(0)
    assert out.tokens.shape == canvas.shape and out.tokens.dtype == torch.long
    fixed = ~canvas.editable
    assert torch.equal(out.tokens[fixed], canvas.tokens[fixed]), "prompt, fixed text and padding never change"
    written = out.tokens[canvas.editable]
    assert ((written >= 0) & (written < tokenizer.vocab_size)).all()
    for special in (tokenizer.mask_id, tokenizer.pad_id, tokenizer.bos_id):
        assert not (written == special).any()
    assert out.nfe == denoiser.calls == steps
    assert [s.step for s in seen] == list(range(1, steps + 1)) and seen[-1].nfe == out.nfe and seen[-1].t == 0.0
    assert len(out.history) == steps and torch.equal(out.history[-1], out.tokens)
    for info in seen:
        assert not (info.changed & fixed).any() and torch.equal(info.tokens[fixed], canvas.tokens[fixed])
    assert out.generated == int(canvas.editable.sum(1).max()) and out.seconds >= 0
    seen.clear()
    assert torch.equal(run(0).tokens, out.tokens), "the same seed reproduces the sample"


def test_samplers_refuse_a_token_denoiser_and_bad_knobs(tokenizer):
    model, process = tiny_setup(tokenizer)
    canvas = canvases(tokenizer)["prompts"]
    with pytest.raises(TypeError, match="denoiser of embeddings"):
        sample_ddpm(lambda x, t, attention_mask=None: x, process, canvas, steps=2)
    with pytest.raises(ValueError, match="eta"):
        sample_ddim(model, process, canvas, steps=2, eta=1.5)
    with pytest.raises(ValueError, match="steps"):
        sample_ddim(model, process, canvas, steps=0)
