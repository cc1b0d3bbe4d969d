"""Every sampler x every schedule passes one contract; then what each sampler must prove."""

from __future__ import annotations

import collections
import math

import pytest
import torch

from dlm.errors import DlmError
from dlm.processes import PROCESSES, MaskedDiffusion
from dlm.sampling import SAMPLERS, Canvas, infill_canvas, parse_template, sample_ancestral, sample_confidence

from conftest import CountingDenoiser, build, tiny_model
from oracle import CHAIN, OracleDenoiser


def canvases(tokenizer):
    """Two kinds of canvas: prompts of different lengths (left padding), and spans inside text."""
    prompts = Canvas.for_generation([tokenizer.encode("To be"), tokenizer.encode("Whether 'tis nobler")], 12,
                                    fill_id=tokenizer.mask_id, pad_id=tokenizer.pad_id)
    spans = infill_canvas(parse_template("To <fill:3> or not <fill:4>, that is"), tokenizer, num_samples=2).canvas
    return {"prompts": prompts, "spans": spans}


# Samplers that a process offers only under some of its options: (process, options, samplers added).
OPTIONAL = [("block", {"shift": True, "clean": "causal"}, ("speculative",))]
CASES = [(p, s, sch, None) for p in sorted(PROCESSES) for s in PROCESSES[p].samplers
         for sch in (PROCESSES[p].schedules or (None,))] + [
    (p, s, sch, options) for p, options, added in OPTIONAL for s in added for sch in (PROCESSES[p].schedules or (None,))]


def test_optional_samplers_follow_the_options(tokenizer):
    """A process lists a sampler only when its options make it usable."""
    for p, options, added in OPTIONAL:
        plain, _ = build(p, tokenizer)
        opted, _ = build(p, tokenizer, options=options)
        assert not set(added) & set(plain.samplers) and set(added) <= set(opted.samplers)


@pytest.mark.parametrize("process_name,sampler_name,schedule,options", CASES)
@pytest.mark.parametrize("kind", ["prompts", "spans"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sampler_contract(process_name, sampler_name, schedule, options, kind, temperature, tokenizer):
    sampler = SAMPLERS[sampler_name]
    process, model = build(process_name, tokenizer, schedule, options=options)
    canvas = canvases(tokenizer)[kind]
    denoiser = CountingDenoiser(model)
    steps, seen = 16, []
    run = lambda seed: sampler(denoiser, process, canvas, steps=steps, temperature=temperature,  # noqa: E731
                               generator=torch.Generator().manual_seed(seed), callback=seen.append,
                               record_history=True)
    if kind == "spans" and not process.infills:
        with pytest.raises(DlmError, match="left to right"):
            run(0)
        return
    out = run(0)
    assert out.tokens.shape == canvas.shape
    fixed = ~canvas.editable
    assert torch.equal(out.tokens[fixed], canvas.tokens[fixed]), "prompt, fixed text and padding never change"
    written = out.tokens[canvas.editable]
    assert not (written == tokenizer.mask_id).any() and not (written == tokenizer.pad_id).any(), "no mask/pad left"
    assert out.nfe == denoiser.calls and 1 <= out.nfe <= steps
    assert [s.step for s in seen] == list(range(1, out.steps + 1)) and seen[-1].nfe == out.nfe
    assert len(out.history) == out.steps and torch.equal(out.history[-1], out.tokens)
    for info in seen:  # nothing outside the editable positions is ever written
        assert not (info.changed & fixed).any()
    assert out.generated == int(canvas.editable.sum(1).max()) and out.seconds >= 0
    seen.clear()
    assert torch.equal(run(0).tokens, out.tokens), "the same seed reproduces the sample"


# -- confidence sampler = LLaDA's published algorithm -------------------------------------
def llada_generate(model, prompt, *, steps, gen_length, block_length, mask_id):
    """LLaDA `generate.py` (Nie et al., 2025) at temperature 0 with low-confidence remasking,
    written out from the paper's Algorithm 5 and the released code, as the reference."""
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, :prompt.shape[1]] = prompt
    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length
    assert steps % num_blocks == 0
    steps_per_block = steps // num_blocks
    for b in range(num_blocks):
        lo, hi = prompt.shape[1] + b * block_length, prompt.shape[1] + (b + 1) * block_length
        block_masks = (x[:, lo:hi] == mask_id).sum(1, keepdim=True)
        base, remainder = block_masks // steps_per_block, block_masks % steps_per_block
        num_transfer = base.repeat(1, steps_per_block)
        for j in range(x.shape[0]):
            num_transfer[j, :remainder[j]] += 1
        for i in range(steps_per_block):
            mask_index = x == mask_id
            logits = model(x)
            x0 = logits.argmax(-1)
            p = torch.softmax(logits.double(), dim=-1)
            x0_p = torch.gather(p, -1, x0[..., None]).squeeze(-1)
            x0_p[:, hi:] = -float("inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -float("inf"))
            transfer = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(confidence.shape[0]):
                transfer[j, torch.topk(confidence[j], k=int(num_transfer[j, i])).indices] = True
            x[transfer] = x0[transfer]
    return x


@pytest.mark.parametrize("gen_length,block_length,steps", [
    (16, 16, 16), (16, 16, 8), (16, 16, 5), (16, 4, 8), (16, 8, 16), (24, 8, 6), (12, 3, 12)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confidence_sampler_reproduces_llada(gen_length, block_length, steps, seed):
    V, mask_id = 40, 0
    net = tiny_model(V, seed=seed)

    def model(x, t=None, *, attention_mask=None):
        logits = net(x)
        logits[..., mask_id] = -float("inf")  # a model that never predicts [MASK], as a trained one
        return logits

    g = torch.Generator().manual_seed(100 + seed)
    prompt = torch.randint(1, V, (2, 7), generator=g)  # a batch of two same-length prompts
    with torch.no_grad():
        expected = llada_generate(model, prompt.clone(), steps=steps, gen_length=gen_length,
                                  block_length=block_length, mask_id=mask_id)
    process = MaskedDiffusion(vocab_size=V, mask_id=mask_id)
    canvas = Canvas.for_generation(prompt.tolist(), gen_length, fill_id=mask_id, pad_id=1)
    out = sample_confidence(model, process, canvas, steps=steps, block_length=block_length, temperature=0.0)
    assert torch.equal(out.tokens, expected)
    assert out.nfe <= steps


def padded_canvas(prompts: list[list[int]], length: int, tokenizer, side: str) -> Canvas:
    """Prompt + `length` positions to generate per row, padded on the left or the right."""
    if side == "left":
        return Canvas.for_generation(prompts, length, fill_id=tokenizer.mask_id, pad_id=tokenizer.pad_id)
    width = max(len(p) for p in prompts) + length
    tokens = torch.full((len(prompts), width), tokenizer.pad_id)
    editable = torch.zeros(len(prompts), width, dtype=torch.bool)
    for b, p in enumerate(prompts):
        tokens[b, :len(p)] = torch.tensor(p, dtype=torch.long)
        tokens[b, len(p):len(p) + length] = tokenizer.mask_id
        editable[b, len(p):len(p) + length] = True
    return Canvas(tokens, editable, tokens != tokenizer.pad_id)


BATCH_PROMPTS = ["To be", "Whether 'tis nobler in the", "The", "Or to take arms against", "No", "That flesh",
                 "Devoutly to", "To sleep"]


@pytest.mark.parametrize("side", ["left", "right", "none"])
@pytest.mark.parametrize("knobs", [{}, {"threshold": 0.5}, {"factor": 2.0, "confidence": "margin"}])
def test_confidence_sampler_is_batch_and_padding_invariant(tokenizer, process, side, knobs):
    """At temperature 0 a prompt gets the same text alone, or padded in a batch of 8."""
    model = tiny_model(tokenizer.vocab_size, seed=3)
    prompts = [tokenizer.encode(p) for p in (BATCH_PROMPTS if side != "none" else ["To be", "Or to"] * 4)]
    batch = padded_canvas(prompts, 10, tokenizer, side)
    together = sample_confidence(model, process, batch, steps=5, block_length=5, **knobs)
    for b, p in enumerate(prompts):
        alone = padded_canvas([p], 10, tokenizer, side)
        single = sample_confidence(model, process, alone, steps=5, block_length=5, **knobs)
        assert batch.generated(together.tokens, b) == alone.generated(single.tokens, 0), tokenizer.decode(p)


def test_autoregressive_sampler_is_batch_and_padding_invariant(tokenizer):
    process, model = build("ar", tokenizer)
    prompts = [tokenizer.encode(p) for p in BATCH_PROMPTS]
    batch = padded_canvas(prompts, 10, tokenizer, "left")
    together = SAMPLERS["autoregressive"](model, process, batch, temperature=0.0)
    for b, p in enumerate(prompts):
        alone = padded_canvas([p], 10, tokenizer, "left")
        single = SAMPLERS["autoregressive"](model, process, alone, temperature=0.0)
        assert batch.generated(together.tokens, b) == alone.generated(single.tokens, 0), tokenizer.decode(p)


def test_confidence_sampler_stops_when_every_row_has_ended(tokenizer, process):
    """With eos_id, blocks after the one where every row wrote end-of-text cost no forward pass."""
    eos = tokenizer.specials["eos"]

    def ends_at_once(x, t, attention_mask=None):  # always sure the text is over
        logits = torch.zeros(*x.shape, tokenizer.vocab_size)
        logits[..., eos] = 10.0
        return logits

    canvas = Canvas.for_generation([tokenizer.encode("To")] * 2, 12, fill_id=tokenizer.mask_id,
                                   pad_id=tokenizer.pad_id)
    full = sample_confidence(CountingDenoiser(ends_at_once), process, canvas, steps=12, block_length=4)
    counted = CountingDenoiser(ends_at_once)
    early = sample_confidence(counted, process, canvas, steps=12, block_length=4, eos_id=eos)
    assert torch.equal(early.tokens, full.tokens) and (early.tokens[canvas.editable] == eos).all()
    assert early.nfe == counted.calls == 4 < full.nfe == 12


def test_confidence_sampler_refuses_too_few_steps(tokenizer, process, model):
    canvas = Canvas.for_generation([tokenizer.encode("To")], 8, fill_id=tokenizer.mask_id, pad_id=tokenizer.pad_id)
    with pytest.raises(ValueError, match="cannot cover 4 blocks"):
        sample_confidence(model, process, canvas, steps=3, block_length=2)


# -- ancestral sampler = exact samples, and its caching trick -----------------------------
def test_ancestral_sampler_with_exact_denoiser_samples_the_distribution():
    """With the true posterior as denoiser and enough steps that tokens are revealed one at a
    time, ancestral sampling draws from the data distribution itself. With one step every
    token is drawn at once from its marginal: the joint is lost (the factorisation error
    that parallel decoding trades for speed)."""
    L, N = 3, 4000
    oracle = OracleDenoiser(CHAIN, L)
    process = MaskedDiffusion(vocab_size=oracle.vocab_size, mask_id=oracle.mask_id)
    canvas = Canvas.from_segments([[L]] * N, fill_id=oracle.mask_id, pad_id=0)
    probs = CHAIN.log_prob(oracle.outcomes).exp()

    def total_variation(steps):
        out = sample_ancestral(oracle, process, canvas, steps=steps, generator=torch.Generator().manual_seed(0))
        counts = collections.Counter(map(tuple, out.tokens.tolist()))
        return 0.5 * sum(abs(counts.get(tuple(o), 0) / N - p.item()) for o, p in zip(oracle.outcomes.tolist(), probs)), out

    # What sampling noise alone gives: E|p_hat - p| = sqrt(2 p (1 - p) / (pi N)) per outcome.
    noise = 0.5 * sum(math.sqrt(2 * p * (1 - p) / (math.pi * N)) for p in probs.tolist())
    tv, _ = total_variation(128)
    assert tv < 2 * noise, (tv, noise)
    tv_one_step, _ = total_variation(1)
    assert tv_one_step > 0.2, tv_one_step


def test_ancestral_caching_saves_forward_passes_without_changing_samples(tokenizer, process, model):
    canvas = Canvas.for_generation([tokenizer.encode("To be")], 6, fill_id=tokenizer.mask_id, pad_id=tokenizer.pad_id)
    cached = CountingDenoiser(model, time_conditioned=False)
    uncached = CountingDenoiser(model, time_conditioned=True)
    a = sample_ancestral(cached, process, canvas, steps=64, generator=torch.Generator().manual_seed(0))
    b = sample_ancestral(uncached, process, canvas, steps=64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.tokens, b.tokens)
    assert b.nfe == 64 and a.nfe <= 6 + 1, "a forward pass only after a step that changed a token"


# -- parallel decoding (Fast-dLLM) ------------------------------------------------------------
def test_factor_rule_counts_the_largest_prefix():
    from dlm.sampling.confidence import factor_counts

    scores = torch.tensor([[0.99, 0.95, 0.5, 0.0], [0.2, 0.1, 0.0, 0.0]], dtype=torch.float64)
    candidates = torch.tensor([[True, True, True, False], [True, True, False, False]])
    # row 0: 2(0.01) < 1, 3(0.05) < 1, 4(0.5) >= 1 -> 2; row 1: 2(0.8) >= 1 -> at least one
    assert factor_counts(scores, candidates, 1.0).tolist() == [2, 1]


def test_commits_are_each_rows_own_topk_ties_included():
    """Rows grouped by their count into batched topk calls pick what one topk per row (LLaDA's loop)
    picks, also where scores tie (a sort would break those ties another way)."""
    from dlm.sampling.confidence import select_commits

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (6, 40), generator=g).double() / 3  # many exact ties
    open_positions = torch.rand(6, 40, generator=g) < 0.7
    k_rows = torch.tensor([0, 3, 3, 7, 40, 1])  # 40: more than a row has open -> all of them
    changed = select_commits(scores, open_positions, k_rows)
    for row in range(6):
        candidates = torch.where(open_positions[row], scores[row], float("-inf"))
        k = min(int(k_rows[row]), int(open_positions[row].sum()))
        expected = torch.zeros(40, dtype=torch.bool)
        expected[candidates.topk(k).indices] = True
        assert torch.equal(changed[row], expected), row
    # a threshold adds every open position surer than it, however small the row's budget
    sure = select_commits(scores, open_positions, torch.zeros(6, dtype=torch.long), threshold=0.5)
    assert torch.equal(sure, open_positions & (scores > 0.5))


@pytest.mark.parametrize("rule", ["prob", "margin", "entropy", "random"])
def test_threshold_decoding_trades_forward_passes_for_parallelism(tokenizer, process, model, rule):
    canvas = Canvas.for_generation([tokenizer.encode("To be")] * 2, 16, fill_id=tokenizer.mask_id,
                                   pad_id=tokenizer.pad_id)
    run = lambda **kw: sample_confidence(CountingDenoiser(model), process, canvas, steps=16, confidence=rule,  # noqa
                                         generator=torch.Generator().manual_seed(0), **kw)
    plain = run()
    never = run(threshold=2.0)  # nothing is that sure: one token per step, exactly the plain sampler
    assert torch.equal(never.tokens, plain.tokens) and never.nfe == plain.nfe == 16
    always = run(threshold=-1e9)  # everything is: the whole canvas in one pass
    assert always.nfe == 1 and always.tokens_per_forward == 16
    assert not (always.tokens[canvas.editable] == tokenizer.mask_id).any()
    blocks = run(threshold=-1e9, block_length=4)
    assert blocks.nfe == 4, "one pass per semi-autoregressive block"
    assert run(factor=1e-9).nfe == 16 and run(factor=1e9).nfe == 1


def test_threshold_decoding_commits_what_clears_the_threshold(tokenizer, process):
    """A denoiser whose confidence is known: position l is sure with probability q_l."""
    V, L = tokenizer.vocab_size, 6
    sure = torch.tensor([0.95, 0.2, 0.97, 0.2, 0.2, 0.99])

    def denoiser(x, t, attention_mask=None):
        probs = torch.full((x.shape[0], x.shape[1], V), 1e-9)
        probs[..., 5] = 1 - sure[-x.shape[1]:] - 1e-9 * (V - 2)  # the rest of the mass on token 5
        probs[..., 7] = sure[-x.shape[1]:]  # token 7 is the confident choice
        return probs.log()

    canvas = Canvas.for_generation([[]], L, fill_id=tokenizer.mask_id, pad_id=tokenizer.pad_id)
    seen = []
    sample_confidence(denoiser, process, canvas, steps=L, threshold=0.9, callback=seen.append)
    first = seen[0].changed[0].tolist()
    assert first == [True, False, True, False, False, True], "the three sure positions, in the first pass"


# -- approximate caches for bidirectional denoisers (Fast-dLLM) -------------------------------------
class LengthRecorder(CountingDenoiser):
    """Counts passes and the tokens each one re-runs."""

    def __init__(self, denoiser):
        super().__init__(denoiser)
        self.lengths = []

    def __call__(self, x_t, t, **kwargs):
        self.lengths.append(x_t.shape[1])
        return super().__call__(x_t, t, **kwargs)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_block_caches_rerun_less_and_are_exact_at_each_blocks_first_pass(tokenizer, process, model, mode):
    canvas = Canvas.for_generation([tokenizer.encode("To be"), tokenizer.encode("Whether 'tis")], 12,
                                   fill_id=tokenizer.mask_id, pad_id=tokenizer.pad_id)
    exact = sample_confidence(model, process, canvas, steps=3, block_length=4)
    one_pass_per_block = sample_confidence(model, process, canvas, steps=3, block_length=4, cache=mode)
    assert torch.equal(one_pass_per_block.tokens, exact.tokens), "a block's first pass is computed in full"
    recorder = LengthRecorder(model)
    out = sample_confidence(recorder, process, canvas, steps=12, block_length=4, cache=mode)
    L = canvas.shape[1]
    start = L - 12
    expected = []
    for b in range(3):  # per block: one full pass, then three that re-run the block (and, for prefix, the rest)
        expected += [L] + [(L - start - 4 * b) if mode == "prefix" else 4] * 3
    assert recorder.lengths == expected
    assert out.nfe == 12 and not (out.tokens[canvas.editable] == tokenizer.mask_id).any()


def test_block_caches_need_aligned_blocks(tokenizer, process, model):
    canvas = Canvas.from_segments([[tokenizer.encode("To"), 3], [tokenizer.encode("To"), 6]],
                                  fill_id=tokenizer.mask_id, pad_id=tokenizer.pad_id)
    with pytest.raises(ValueError, match="same columns"):
        sample_confidence(model, process, canvas, steps=6, block_length=2, cache="prefix")


def test_a_top_p_that_rounds_to_zero_keeps_the_most_likely_token(tokenizer):
    from dlm.sampling.categorical import filter_logits

    logits = torch.randn(3, 5, tokenizer.vocab_size, generator=torch.Generator().manual_seed(0))
    kept = filter_logits(logits, top_p=1e-46).isfinite()  # 1e-46 is 0 in float32: it used to drop every token
    assert torch.equal(kept, torch.nn.functional.one_hot(logits.argmax(-1), tokenizer.vocab_size).bool())
    process, model = build("masked", tokenizer)
    canvas = Canvas.for_generation([tokenizer.encode("To be")], 6, fill_id=process.mask_id, pad_id=tokenizer.pad_id)
    out = sample_ancestral(model, process, canvas, steps=3, top_p=1e-46, generator=torch.Generator().manual_seed(0))
    assert not (out.tokens == process.mask_id).any()  # every position written: never an empty completion
