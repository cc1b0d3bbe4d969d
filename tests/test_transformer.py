"""The transformer: shapes, what each position may see, padding, time conditioning, presets."""

import pytest
import torch

from dlm.models import PRESETS, ModelConfig, Transformer, preset_config
from dlm.models.transformer import KVCache, RMSNorm, apply_rope, explicit_attention, rope_angles

from conftest import tiny_model

V = 30


def test_logits_shape():
    m = tiny_model(V)
    x = torch.randint(0, V, (3, 17))
    assert m(x, torch.rand(3)).shape == (3, 17, V)


def influence(model, x, j):
    """Which positions' logits change when token j changes."""
    y = x.clone()
    y[0, j] = (y[0, j] + 1) % V
    with torch.no_grad():
        return (model(x)[0] - model(y)[0]).abs().amax(-1) > 1e-6  # (L,)


def test_causal_attention_sees_only_the_past():
    m = tiny_model(V, attention="causal")
    x = torch.randint(0, V, (1, 12), generator=torch.Generator().manual_seed(0))
    changed = influence(m, x, 5)
    assert not changed[:5].any() and changed[5:].all()


def test_bidirectional_attention_sees_everything():
    m = tiny_model(V)
    x = torch.randint(0, V, (1, 12), generator=torch.Generator().manual_seed(0))
    assert influence(m, x, 5).all()


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_left_and_right_padding_do_not_change_logits(attention):
    m = tiny_model(V, attention=attention)
    x = torch.randint(0, V, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        alone = m(x)[0]
        left = torch.cat([torch.zeros(1, 4, dtype=torch.long), x], 1)
        left_mask = torch.cat([torch.zeros(1, 4, dtype=torch.bool), torch.ones(1, 9, dtype=torch.bool)], 1)
        right = torch.cat([x, torch.zeros(1, 4, dtype=torch.long)], 1)
        right_mask = left_mask.flip(1)
        torch.testing.assert_close(m(left, attention_mask=left_mask)[0, 4:], alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m(right, attention_mask=right_mask)[0, :9], alone, atol=1e-5, rtol=1e-5)


def test_rms_norm_is_the_formula():
    """RMSNorm(x) = x / sqrt(mean(x^2) + eps) * w over the last dimension (Zhang & Sennrich, 2019, eq. 4)."""
    g = torch.Generator().manual_seed(0)
    norm = RMSNorm(48, 1e-5)
    norm.weight.data = torch.randn(48, generator=g)
    for shape in [(1, 1, 48), (3, 17, 48)]:
        x = torch.randn(shape, generator=g) * 3
        expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
        torch.testing.assert_close(norm(x), expected, atol=1e-6, rtol=1e-6)
    assert norm.to(torch.bfloat16)(torch.randn(2, 5, 48, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_rope_is_the_rotate_half_formula_bit_for_bit():
    """apply_rope's swapped halves and signed sin give x cos + rotate_half(x) sin exactly (RoFormer, eq. 34),
    with positions that need not be 0..L-1, and keep each pair's norm."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 7, 5, 16, generator=g)  # (B, L, heads, hd)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [3, 3, 4, 9, 10, 200, 201]])
    cos, signed_sin = rope_angles(positions, 16, 10000.0)
    inv_freq = 10000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float32) / 16)
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat([angles, angles], -1)[:, :, None]  # (B, L, 1, hd)
    rotate_half = torch.cat([-x[..., 8:], x[..., :8]], dim=-1)
    expected = x * angles.cos() + rotate_half * angles.sin()
    assert torch.equal(apply_rope(x, cos, signed_sin), expected)
    pair_norm = lambda t: t[..., :8] ** 2 + t[..., 8:] ** 2  # noqa: E731
    assert torch.allclose(pair_norm(apply_rope(x, cos, signed_sin)), pair_norm(x), atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_explicit_attention_matches_sdpa(causal):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g) for _ in range(3))
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[0, ..., :2] = False
    for m in (None, mask):
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal and m is None)
        if m is not None and causal:
            continue
        torch.testing.assert_close(explicit_attention(q, k, v, m, causal), expected, atol=1e-5, rtol=1e-5)


def test_bf16_training_path_matches_fp32():
    """On CPU the model uses the explicit attention product in bf16 training: same function."""
    m = tiny_model(V)
    x = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0))
    m.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = m(x).float()
    with torch.no_grad():
        high = m(x)
    assert (low - high).abs().max() < 0.1 * high.abs().max()


def test_time_conditioning_starts_as_identity_and_then_uses_t():
    m = tiny_model(V, time_conditioning=True)
    x = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(m(x, torch.tensor([0.1, 0.1])), m(x, torch.tensor([0.9, 0.9])))
        for block in m.blocks:
            block.modulation.weight.normal_(std=0.1)
        assert not torch.allclose(m(x, torch.tensor([0.1, 0.1])), m(x, torch.tensor([0.9, 0.9])))
    with pytest.raises(ValueError, match="time-conditioned"):
        m(x)
    assert m.time_conditioned and not tiny_model(V).time_conditioned


@pytest.mark.parametrize("name,low,high", [("tiny", 0.8e6, 1.5e6), ("small", 8e6, 13e6), ("base", 30e6, 50e6)])
def test_preset_sizes(name, low, high):
    n = Transformer(preset_config(name, vocab_size=88)).num_parameters()
    assert low <= n <= high, f"{name}: {n:,} parameters"
    assert set(PRESETS) == {"tiny", "small", "base"}


def test_config_validation():
    with pytest.raises(ValueError, match="heads"):
        ModelConfig(vocab_size=10, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="attention"):
        ModelConfig(vocab_size=10, attention="sideways")


@pytest.mark.parametrize("capacity", [0, 3, 64])
def test_kv_cache_written_in_place_holds_what_concatenation_would(capacity):
    """join/commit against a plain list of committed columns, through growth, crop and select."""
    g = torch.Generator().manual_seed(0)
    cache, ref_k, ref_v, ref_valid = KVCache(capacity), [], [], []

    def new(n):
        return (torch.randn(2, 2, n, 4, generator=g), torch.randn(2, 2, n, 4, generator=g),
                torch.rand(2, n, generator=g) > 0.3)

    for n, commit in ((5, 5), (3, 0), (4, 2), (1, 1), (7, 7), (2, 0)):
        k, v, real = new(n)
        for layer in range(2):
            k_all, v_all = cache.join(layer, k + layer, v - layer)
            before = torch.cat(ref_k + [k[:, :, :0]], 2) if ref_k else k[:, :, :0]
            assert torch.equal(k_all, torch.cat([before + layer, k + layer], 2))  # the cache, then this pass
            assert torch.equal(v_all[:, :, -n:], v - layer)
        if commit:
            cache.commit(real[:, :commit])
            ref_k.append(k[:, :, :commit])
            ref_v.append(v[:, :, :commit])
            ref_valid.append(real[:, :commit])
        assert len(cache) == sum(t.shape[2] for t in ref_k)
        assert torch.equal(cache.keys[1], torch.cat(ref_k, 2) + 1)
        assert torch.equal(cache.values[0], torch.cat(ref_v, 2))
        assert torch.equal(cache.valid, torch.cat(ref_valid, 1))
    keys, valid = torch.cat(ref_k, 2), torch.cat(ref_valid, 1)
    columns = torch.tensor([0, 2, 3, 9, 14])
    chosen = cache.select(columns)
    assert torch.equal(chosen.keys[0], keys[:, :, columns]) and torch.equal(chosen.valid, valid[:, columns])
    k, v, _ = new(4)  # a pass after a selection attends to the kept columns, then its own
    assert torch.equal(chosen.join(0, k, v)[0], torch.cat([keys[:, :, columns], k], 2))
    cache.crop(6)
    assert torch.equal(cache.keys[0], keys[:, :, -6:]) and torch.equal(cache.valid, valid[:, -6:])
    cache.valid[:, 0] = False  # a view: writing it writes the cache (draft-and-verify hides rejected keys)
    assert not cache.valid[:, 0].any()


def test_dropout_acts_only_in_training_and_changes_no_weights():
    torch.manual_seed(0)
    plain = Transformer(preset_config("tiny", vocab_size=V, n_layers=2, d_model=32, n_heads=2))
    dropped = Transformer(preset_config("tiny", vocab_size=V, n_layers=2, d_model=32, n_heads=2, dropout=0.3))
    dropped.load_state_dict(plain.state_dict())  # dropout adds no parameters or buffers
    x = torch.randint(0, V, (2, 9))
    plain.eval(), dropped.eval()
    assert torch.equal(plain(x), dropped(x))  # evaluation is deterministic and unchanged
    dropped.train()
    a, b = dropped(x), dropped(x)
    assert not torch.equal(a, b) and not torch.equal(a, plain(x))
    with pytest.raises(ValueError, match="dropout"):
        preset_config("tiny", vocab_size=V, dropout=1.0)
