"""AR-to-diffusion adaptation: the shifted block process keeps the AR model's likelihood at block
size 1, its masks are the ones the papers describe, and its curriculum moves as configured."""

from __future__ import annotations

import pytest
import torch

from dlm.processes import Autoregressive, BlockDiffusion
from dlm.processes.block import anchored_layout, anchored_mask, training_mask, warmup_sizes

from conftest import tiny_model


def text_batch(tokenizer, B: int = 3, L: int = 24) -> torch.Tensor:
    ids = torch.tensor(tokenizer.encode("To be, or not to be, that is the question: whether 'tis nobler in the"))
    return torch.stack([ids[i:i + L] for i in range(B)])


def ar_and_block(tokenizer, block_size: int, clean: str = "causal", seed: int = 0):
    """An AR model and a shifted block process whose model carries the same weights."""
    ar_model = tiny_model(tokenizer.vocab_size, attention="causal", seed=seed)
    ar = Autoregressive.from_config({}, vocab_size=tokenizer.vocab_size, special_ids=tokenizer.specials)
    block = BlockDiffusion.from_config({"block_size": block_size, "shift": True, "clean": clean},
                                       vocab_size=tokenizer.vocab_size, special_ids=tokenizer.specials)
    model = tiny_model(tokenizer.vocab_size, seed=seed + 1, **block.model_options())
    model.load_state_dict(ar_model.state_dict())
    return ar, ar_model, block, model


@pytest.mark.parametrize("clean", ["causal", "block"])
def test_shifted_block_size_one_is_the_ar_likelihood(tokenizer, clean):
    """Blocks of one token: every token masked alone and predicted from the clean prefix through the
    AR model's own head, so the NELBO is the AR model's exact -log p before any training."""
    ar, ar_model, block, model = ar_and_block(tokenizer, 1, clean)
    x0 = text_batch(tokenizer)
    exact = ar.nelbo(ar_model, x0, u=torch.rand(3))
    for seed in range(3):
        u = torch.rand(3, generator=torch.Generator().manual_seed(seed))
        got = block.nelbo(model, x0, u=u, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(got, exact, rtol=1e-5, atol=1e-5)


def test_shifted_block_first_token_of_a_block_reads_its_anchor(tokenizer):
    """With every noisy token masked, the first token of every block is predicted from its anchor, a copy
    of the clean token before it that sees no [MASK]: its loss is the AR model's -log p of that token
    (the others are predicted from [MASK] slots and differ)."""
    ar, ar_model, block, model = ar_and_block(tokenizer, 4)
    x0 = text_batch(tokenizer, B=2, L=16)
    nll = ar.token_nll(ar_model, x0)  # (B, L) nats
    x_t = torch.full_like(x0, tokenizer.mask_id)  # every noisy token masked
    logits = block.denoise(model, x_t, x0, None)  # (B, L, V)
    ce = torch.nn.functional.cross_entropy(block.x0_logits(logits).flatten(0, 1), x0.flatten(),
                                           reduction="none").view_as(x0).double()
    first = torch.arange(16) % 4 == 0
    torch.testing.assert_close(ce[:, first], nll[:, first], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ce[:, ~first], nll[:, ~first]), "later tokens of a block see [MASK]s, not text"


def test_anchored_layout_puts_the_token_before_each_block_first():
    L, b = 7, 3
    layout = anchored_layout(L, b, torch.device("cpu"))
    assert layout.text.tolist() == [-1, 0, 1, 2, 2, 3, 4, 5, 5, 6]  # anchors: bos, text 2, text 5
    assert layout.anchor.tolist() == [True, False, False, False, True, False, False, False, True, False]
    assert layout.rows.tolist() == [1, 2, 3, 5, 6, 7, 9]
    n = layout.text.numel()
    assert layout.shift_from[:n].tolist() == [0, 0, 1, 2, 4, 4, 5, 6, 8, 8], "each token from the slot before it"
    assert layout.shift_from[n:].tolist() == [n] + [n + j for j in range(L)], "clean j from clean j - 1, bos first"


def test_anchored_mask_hides_masks_and_the_anchors_original():
    L, b = 6, 3
    layout = anchored_layout(L, b, torch.device("cpu"))
    n = layout.text.numel()  # 8
    hidden = torch.tensor([[False, True, False, True, True, False]])  # text 1, 3, 4 are [MASK]
    mask = anchored_mask(layout, hidden, clean="causal", block_size=b)[0, 0]  # (n + 1 + L, n + 1 + L)
    bos, clean = n, slice(n + 1, n + 1 + L)
    block1 = slice(4, 8)  # anchor (text 2), text 3, 4, 5
    assert mask[block1, clean].int().tolist() == [[1, 1, 0, 0, 0, 0]] * 4, "clean text before the anchor's original"
    assert mask[block1, bos].all() and not mask[0:4, bos].any(), "the first block's anchor is bos itself"
    assert mask[4, 4:8].tolist() == [True, False, False, True], "anchor sees its block but no [MASK]"
    assert mask[1, 0:4].tolist() == [True, True, False, True], "a [MASK] slot sees only itself among masks"
    assert torch.equal(mask[clean, clean], torch.ones(L, L, dtype=torch.bool).tril())
    assert not mask[clean, 0:n].any() and mask[bos].sum() == 1


def test_annealed_mask_starts_causal_inside_a_block():
    L, b = 8, 4
    closed = training_mask(L, b, ahead=torch.zeros(L, L, dtype=torch.bool))[0, 0, :L, :L]  # the unshifted layout
    blk = torch.arange(L) // b
    assert torch.equal(closed, (blk[:, None] == blk[None, :]) & torch.ones(L, L, dtype=torch.bool).tril())
    opened = training_mask(L, b, ahead=torch.ones(L, L, dtype=torch.bool))[0, 0, :L, :L]
    assert torch.equal(opened, blk[:, None] == blk[None, :])


def test_curriculum_grows_the_block_and_opens_attention(tokenizer):
    block = BlockDiffusion.from_config({"block_size": 8, "shift": True, "anneal_steps": 10, "warmup_steps": 40},
                                       vocab_size=tokenizer.vocab_size, special_ids=tokenizer.specials)
    assert warmup_sizes(8) == [1, 2, 4, 8] and warmup_sizes(6) == [1, 2, 4, 6] and warmup_sizes(1) == [1]
    assert [block.for_step(s).block_size for s in (0, 9, 10, 25, 39, 40, 1000)] == [1, 1, 2, 4, 8, 8, 8]
    assert block.for_step(0).ahead_probability == pytest.approx(0.1)
    assert block.for_step(9).ahead_probability == 1.0 and block.for_step(500).ahead_probability == 1.0
    assert block.block_size == 8 and block.ahead_probability == 1.0, "the process itself is not changed"
    plain = BlockDiffusion(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id, block_size=4)
    assert plain.for_step(3) is plain


def test_shifted_process_config_round_trips(tokenizer):
    block = BlockDiffusion.from_config({"block_size": 4, "shift": True, "clean": "causal", "anneal_steps": 5},
                                       vocab_size=tokenizer.vocab_size, special_ids=tokenizer.specials)
    again = BlockDiffusion.from_config(block.config(), vocab_size=tokenizer.vocab_size,
                                       special_ids=tokenizer.specials)
    assert again.config() == block.config() and block.model_options()["logit_shift"] is True
    old = BlockDiffusion.from_config({"name": "block", "block_size": 4}, vocab_size=tokenizer.vocab_size,
                                     special_ids=tokenizer.specials)
    assert not old.shift and old.clean == "block", "checkpoints saved before these options load as before"


# -- sampling ------------------------------------------------------------------------------
def prompts_canvas(tokenizer, length: int):
    from dlm.sampling import Canvas

    return Canvas.for_generation([tokenizer.encode("To be"), tokenizer.encode("Whether 'tis nobler")], length,
                                 fill_id=tokenizer.mask_id, pad_id=tokenizer.pad_id)


@pytest.mark.parametrize("clean", ["causal", "block"])
def test_shifted_block_size_one_samples_the_ar_models_tokens(tokenizer, clean):
    """Greedy block sampling with blocks of one token writes exactly what the AR model writes."""
    from dlm.sampling import sample_autoregressive, sample_blocks

    ar, ar_model, block, model = ar_and_block(tokenizer, 1, clean)
    canvas = prompts_canvas(tokenizer, 12)
    want = sample_autoregressive(ar_model, ar, canvas, temperature=0.0)
    got = sample_blocks(model, block, canvas, steps=12, temperature=0.0)
    assert torch.equal(got.tokens, want.tokens)
    assert got.nfe == want.nfe == 12


@pytest.mark.parametrize("knobs", [{}, {"confidence": "prob"}, {"threshold": 0.05}, {"factor": 1.0, "sub_block": 2},
                                   {"confidence": "margin", "sub_block": 3}])
def test_shifted_block_sampler_cache_changes_nothing(tokenizer, knobs):
    from dlm.sampling import sample_blocks

    _, _, block, model = ar_and_block(tokenizer, 4)
    canvas = prompts_canvas(tokenizer, 10)
    cached = sample_blocks(model, block, canvas, steps=10, temperature=0.0,
                           generator=torch.Generator().manual_seed(0), **knobs)
    plain = sample_blocks(model, block, canvas, steps=10, temperature=0.0, use_cache=False,
                          generator=torch.Generator().manual_seed(0), **knobs)
    assert torch.equal(cached.tokens, plain.tokens)
    assert not (cached.tokens[canvas.editable] == tokenizer.mask_id).any()
    assert torch.equal(cached.tokens[~canvas.editable], canvas.tokens[~canvas.editable]), "the prompt is kept"


def test_block_threshold_commits_several_tokens_per_pass(tokenizer):
    """A threshold of 0 commits every masked position of the (sub-)block at once: one pass per
    block (or sub-block); a threshold of 1 commits one token per pass."""
    from dlm.sampling import sample_blocks

    _, _, block, model = ar_and_block(tokenizer, 4)
    canvas = prompts_canvas(tokenizer, 12)
    assert sample_blocks(model, block, canvas, steps=12, temperature=0.0, threshold=0.0).nfe == 3
    assert sample_blocks(model, block, canvas, steps=12, temperature=0.0, threshold=0.0, sub_block=2).nfe == 6
    assert sample_blocks(model, block, canvas, steps=12, temperature=0.0, threshold=1.0).nfe == 12


def test_block_sampler_refuses_bad_parallel_knobs(tokenizer):
    from dlm.sampling import sample_blocks

    _, _, block, model = ar_and_block(tokenizer, 4)
    canvas = prompts_canvas(tokenizer, 8)
    for knobs, message in (({"threshold": 0.5, "factor": 1.0}, "either"), ({"threshold": 2.0}, r"\[0, 1\]"),
                           ({"confidence": "loud"}, "confidence must be"), ({"sub_block": 0}, "sub_block"),
                           ({"sub_block": 1, "threshold": 0.9}, "sub-blocks")):
        with pytest.raises(ValueError, match=message):
            sample_blocks(model, block, canvas, steps=4, **knobs)


# -- speculative decoding: diffusion drafts, AR verification ------------------------------------
def test_speculative_greedy_writes_what_the_ar_stream_writes(tokenizer):
    """At temperature 0, drafting and verifying gives the clean stream's greedy text, which is the
    block sampler's text at blocks of one token, in fewer passes when drafts are accepted."""
    from dlm.sampling import sample_blocks, sample_speculative

    _, _, block, model = ar_and_block(tokenizer, 4)
    one = BlockDiffusion.from_config({**block.config(), "block_size": 1}, vocab_size=tokenizer.vocab_size,
                                     special_ids=tokenizer.specials)
    canvas = prompts_canvas(tokenizer, 14)
    want = sample_blocks(model, one, canvas, steps=14, temperature=0.0)
    got = sample_speculative(model, block, canvas, temperature=0.0)
    assert torch.equal(got.tokens, want.tokens)
    assert got.nfe <= 14


def test_speculative_samples_follow_the_ar_streams_distribution():
    """Speculative sampling is exact: over many samples of three tokens from a three-token vocabulary,
    the empirical distribution matches the AR stream's joint distribution, enumerated."""
    import itertools

    from dlm.sampling import Canvas, sample_speculative

    V, MASK, BOS = 5, 3, 4  # tokens 0, 1, 2; [MASK]; bos
    block = BlockDiffusion(vocab_size=V, mask_id=MASK, bos_id=BOS, block_size=3, shift=True, clean="causal")
    model = tiny_model(V, seed=7, **block.model_options())
    with torch.no_grad():  # sharpen the untrained model a little, so that drafts are sometimes rejected
        model.embed.weight.mul_(8.0)
    ar = BlockDiffusion(vocab_size=V, mask_id=MASK, bos_id=BOS, block_size=1, shift=True, clean="causal")
    prompt = [0, 2]

    @torch.no_grad()
    def joint(seq):  # p(seq | prompt) under the clean stream: blocks of one token are its AR predictions
        x0 = torch.tensor([prompt + list(seq)])
        logits = ar.denoise(model, torch.full_like(x0, MASK), x0, None)  # (1, L, V): b = 1, each from the AR stream
        logp = torch.log_softmax(ar.x0_logits(logits).double(), -1)[0]
        return float(sum(logp[len(prompt) + i, t] for i, t in enumerate(seq)).exp())

    exact = {seq: joint(seq) for seq in itertools.product(range(3), repeat=3)}
    n = 4000
    canvas = Canvas.for_generation([prompt] * n, 3, fill_id=MASK, pad_id=MASK)
    out = sample_speculative(model, block, canvas, temperature=1.0, generator=torch.Generator().manual_seed(0))
    got = out.tokens[:, len(prompt):]
    for seq, p in exact.items():
        freq = float((got == torch.tensor(seq)).all(1).float().mean())
        assert abs(freq - p) <= 4 * (p * (1 - p) / n) ** 0.5 + 1e-3, (seq, freq, p)
    assert out.nfe <= 3
