"""Self-distillation through time: the target is the teacher's two-step composition exactly, the
divergences are the KLs they say, and the objective trains a student."""

from __future__ import annotations

import itertools

import pytest
import torch

from dlm.processes import BlockDiffusion, MaskedDiffusion
from dlm.processes.distillation import SelfDistillation, divergence, two_step_target
from dlm.schedules import make_schedule

from conftest import tiny_model

V, MASK = 4, 3  # three tokens and [MASK]: every intermediate state can be enumerated


def tiny_teacher(process, seed: int = 0):
    return tiny_model(V, seed=seed, **process.model_options())


@torch.no_grad()
def enumerate_two_steps(process, teacher, x0, z_t, t, dt):
    """By enumeration of every first-step outcome z_s: E[target] and, independently, the distribution
    of the token the teacher writes at each position within its two steps, given that it writes one."""
    L = z_t.shape[1]
    tok_t = torch.full((1, L), t, dtype=torch.float64)
    rho1 = process.unmask_probability(tok_t, tok_t - dt)
    rho2 = process.unmask_probability(tok_t - dt, tok_t - 2 * dt)

    def probs(z):
        logits = process.predict(teacher, z, x0, torch.full((1,), t), attention_mask=None)
        return torch.softmax(process.x0_logits(logits).double(), -1)[0]  # (L, V)

    p_t = probs(z_t)
    masked = (z_t[0] == MASK).nonzero()[:, 0].tolist()
    expected = torch.zeros(L, V, dtype=torch.float64)
    written = torch.zeros(L, V, dtype=torch.float64)
    for outcome in itertools.product(range(V), repeat=len(masked)):  # V - 1 tokens, or MASK (= stays masked)
        z_s, weight = z_t.clone(), 1.0
        for i, v in zip(masked, outcome):
            z_s[0, i] = v
            weight *= float(1 - rho1[0, i]) if v == MASK else float(rho1[0, i] * p_t[i, v])
        p_s = probs(z_s)
        revealed = (z_s != MASK) & (z_t == MASK)
        target = two_step_target(p_t[None], p_s[None], revealed, rho1, rho2)[0]
        expected += weight * target
        for i in masked:  # the oracle: simulate the two steps
            if z_s[0, i] != MASK:
                written[i, z_s[0, i]] += weight  # written by step 1
            else:
                written[i] += weight * rho2[0, i] * p_s[i]  # written by step 2
    total = rho1 + (1 - rho1) * rho2  # (1, L)
    return expected[masked], (written / total[0, :, None])[masked], masked


@pytest.mark.parametrize("schedule,t,steps", [("linear", 0.8, 4), ("polynomial", 0.55, 8), ("cosine", 1.0, 16),
                                              ("linear", 0.5, 4)])
def test_round_zero_target_is_the_teachers_two_step_composition(schedule, t, steps):
    process = MaskedDiffusion(vocab_size=V, mask_id=MASK, schedule=make_schedule(name=schedule))
    teacher = tiny_teacher(process)
    x0 = torch.tensor([[0, 1, 2, 0, 1]])
    z_t = torch.tensor([[0, MASK, MASK, 0, MASK]])
    expected, composition, _ = enumerate_two_steps(process, teacher, x0, z_t, t, 1.0 / steps)
    torch.testing.assert_close(expected, composition, rtol=0, atol=1e-12)
    torch.testing.assert_close(expected.sum(-1), torch.ones(3, dtype=torch.float64))
    assert (expected[:, MASK] == 0).all(), "the target never writes [MASK]"


def test_block_target_is_the_two_step_composition_inside_a_block():
    process = BlockDiffusion(vocab_size=V, mask_id=MASK, bos_id=2, block_size=3, shift=True, clean="causal")
    teacher = tiny_teacher(process, seed=3)
    x0 = torch.tensor([[0, 1, 2, 0, 1, 1]])
    z_t = torch.tensor([[0, 1, 2, MASK, 1, MASK]])  # the second block is being denoised
    expected, composition, _ = enumerate_two_steps(process, teacher, x0, z_t, 0.7, 0.25)
    torch.testing.assert_close(expected, composition, rtol=0, atol=1e-12)


def test_sampled_targets_average_to_the_composition():
    """The objective's own draws of the teacher's first step (Monte Carlo) average to the exact target."""
    process = MaskedDiffusion(vocab_size=V, mask_id=MASK)
    teacher = tiny_teacher(process)
    x0 = torch.tensor([[0, 1, 2, 0, 1]])
    z_t = torch.tensor([[0, MASK, MASK, 0, MASK]])
    expected, _, masked = enumerate_two_steps(process, teacher, x0, z_t, 0.6, 0.25)
    sdtt = SelfDistillation(process, teacher, teacher_steps=4)
    n = 4000
    out = sdtt.targets(x0.expand(n, -1), t=torch.full((n,), 0.6, dtype=torch.float64), x_t=z_t.expand(n, -1),
                       generator=torch.Generator().manual_seed(0))[3]  # (n, L, V)
    mean, err = out.mean(0)[masked], out.std(0)[masked] / n ** 0.5
    assert ((mean - expected).abs() <= 5 * err + 1e-9).all()


def test_sdtt_target_weights_the_first_step_by_its_reveal_probability():
    p_t = torch.tensor([[[0.7, 0.2, 0.1, 0.0]]], dtype=torch.float64)
    p_s = torch.tensor([[[0.1, 0.1, 0.8, 0.0]]], dtype=torch.float64)
    rho1 = rho2 = torch.full((1, 1), 0.25, dtype=torch.float64)
    revealed, hidden = torch.ones(1, 1, dtype=torch.bool), torch.zeros(1, 1, dtype=torch.bool)
    assert torch.equal(two_step_target(p_t, p_s, revealed, rho1, rho2, target="sdtt"), p_t)
    assert torch.equal(two_step_target(p_t, p_s, hidden, rho1, rho2, target="sdtt"), p_s)
    # composition: w = 0.25 / (0.25 + 0.75 * 0.25) = 4/7 on p_t in expectation over the first step
    mix = 0.25 * two_step_target(p_t, p_s, revealed, rho1, rho2) + 0.75 * two_step_target(p_t, p_s, hidden, rho1, rho2)
    torch.testing.assert_close(mix, 4 / 7 * p_t + 3 / 7 * p_s)


def test_divergences_are_the_kls():
    logits = torch.tensor([[2.0, 0.5, -1.0]])
    target = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    s = torch.softmax(logits, -1).double()
    torch.testing.assert_close(divergence(logits, target, "reverse_kl").double(),
                               (s * (s / target).log()).sum(-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(divergence(logits, target, "forward_kl").double(),
                               (target * (target / s).log()).sum(-1), rtol=1e-5, atol=1e-6)
    assert divergence(logits, s, "reverse_kl").abs().max() < 1e-5


def test_distillation_loss_trains_a_student(tokenizer):
    from conftest import build

    process, teacher = build("masked", tokenizer)
    student = tiny_model(tokenizer.vocab_size, seed=5)
    sdtt = SelfDistillation(process, teacher, teacher_steps=8)
    x0 = torch.tensor(tokenizer.encode("To be, or not to be, that is the question:"))[None].expand(4, -1)
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        out = sdtt.loss(student, x0, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert out.nelbo.shape == (4,) and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), "the student moves towards its teacher's targets"


def test_distillation_refuses_what_it_cannot_distil(tokenizer):
    from dlm.processes import Autoregressive

    ar = Autoregressive.from_config({}, vocab_size=tokenizer.vocab_size, special_ids=tokenizer.specials)
    with pytest.raises(ValueError, match="masked or block"):
        SelfDistillation(ar, tiny_model(tokenizer.vocab_size), teacher_steps=8)
    process = MaskedDiffusion(vocab_size=V, mask_id=MASK)
    with pytest.raises(ValueError, match="at least 2"):
        SelfDistillation(process, tiny_teacher(process), teacher_steps=1)
