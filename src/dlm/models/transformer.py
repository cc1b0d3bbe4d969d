"""One readable transformer for every process: RMSNorm, RoPE, SwiGLU, SDPA attention.

Bidirectional by default (a denoiser sees the whole canvas), causal by flag (the AR
baseline); a process that needs another pattern (block diffusion) passes its own mask and
positions. Optional time conditioning through adaLN-Zero (Peebles & Xie, DiT, 2023): off by
default, because a masked-diffusion denoiser can read the noise level off the canvas
(Sahoo et al., MDLM, 2024, sec. 3.2; Ou et al., RADD, 2024).

The module is a Denoiser: ``model(x_t, t, attention_mask=...) -> logits (B, L, V)``. With
``embed_dim > 0`` it is a denoiser of *vectors* instead (Diffusion-LM): x_t (B, L, E) noisy
embeddings -> (B, L, E) predicted clean embeddings; ``embed_tokens`` and ``rounding_logits``
give the process the learned embedding and its tied rounding head. A ``KVCache`` keeps the
keys and values of committed tokens for the AR and block samplers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ATTENTION_KINDS = ("bidirectional", "causal")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    d_model: int = 128
    n_layers: int = 6
    n_heads: int = 4
    d_ff: int = 0  # SwiGLU hidden width; 0 = 8/3 d_model rounded up to a multiple of 32
    max_len: int = 256  # the context the model is trained for (RoPE itself has no limit)
    attention: str = "bidirectional"  # or "causal" (the AR baseline)
    time_conditioning: bool = False  # adaLN-Zero on t; a masked denoiser needs none
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True  # output head shares the token embedding matrix
    embed_dim: int = 0  # > 0: continuous input/output of this width (embedding diffusion); 0: token ids
    # Options that checkpoints of other architectures need (models/foreign.py); the defaults are dlm's own.
    n_kv_heads: int = 0  # grouped-query attention: key/value heads, each shared by n_heads / n_kv_heads; 0 = n_heads
    qkv_bias: bool = False  # biases on the query, key and value projections (Qwen2, hence Dream)
    logit_shift: bool = False  # the logits for token i come from position i - 1 (Dream, adapted from an AR model)
    output_size: int = 0  # tokens the head scores (the first rows); 0 = vocab_size. Rows past it pad the embedding
    dropout: float = 0.0  # in training: on the embedding and on each sub-layer's output before the residual add

    def __post_init__(self):
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"d_model={self.d_model} must split into n_heads={self.n_heads} heads of even width"
            )
        if self.n_kv_heads < 0 or self.n_heads % (self.n_kv_heads or self.n_heads):
            raise ValueError(f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} (0 = n_heads)")
        if not 0 <= self.output_size <= self.vocab_size:
            raise ValueError(f"output_size={self.output_size} must be in [0, vocab_size={self.vocab_size}]")
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.embed_dim < 0:
            raise ValueError(f"embed_dim must be >= 0, got {self.embed_dim}")
        if self.vocab_size < 1 or self.n_layers < 1 or self.max_len < 1:
            raise ValueError(f"vocab_size, n_layers and max_len must be positive: {self}")

    @property
    def ffn_width(self) -> int:
        return self.d_ff or 32 * math.ceil(8 * self.d_model / 3 / 32)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def num_outputs(self) -> int:
        """Logits per position: the tokenizer's tokens (an embedding may have more rows than that)."""
        return self.output_size or self.vocab_size

    def to_dict(self) -> dict:
        return asdict(self)


# name -> (d_model, n_layers, n_heads); the vocabulary comes from the tokenizer.
PRESETS: dict[str, dict] = {
    "tiny": dict(d_model=128, n_layers=6, n_heads=4),  # ~1.2M parameters
    "small": dict(d_model=384, n_layers=6, n_heads=6),  # ~10.7M
    "base": dict(d_model=512, n_layers=12, n_heads=8),  # ~38M
}


def preset_config(name: str, *, vocab_size: int, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(ModelConfig(vocab_size=vocab_size, **PRESETS[name]), **overrides)


def rope_angles(positions: Tensor, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """The rotary angles' cos and signed sin (Su et al., RoFormer, eq. 34) for `apply_rope`; positions
    (B, L) -> two (B, L, 1, hd), to broadcast over the heads of a (B, L, heads, hd) tensor. The sin's
    first half is negated (see apply_rope)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[..., None] * inv_freq  # (B, L, hd/2)
    sin = angles.sin()
    return torch.cat([angles, angles], dim=-1).cos()[:, :, None], torch.cat([-sin, sin], dim=-1)[:, :, None]


def apply_rope(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """Rotate pairs (x_i, x_{i+hd/2}) by the position's angle; x (B, L, heads, hd), cos and signed_sin
    (B, L, 1, hd) from rope_angles.

    x * cos + rotate_half(x) * sin with rotate_half(x) = [-x_2, x_1] is written as the two halves
    swapped, [x_2, x_1], times the sin with its first half negated: the same products bit for bit (a
    sign flip is exact), in four kernels instead of five (a roll also swaps the halves, but measured
    up to 2x slower than the concatenation at (8, 256) on CPU)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([x[..., half:], x[..., :half]], dim=-1) * signed_sin


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        """x / sqrt(mean(x^2) + eps) * w (Zhang & Sennrich, 2019, eq. 4); (..., D) -> (..., D)."""
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
    """softmax(q k^T / sqrt(hd) + mask) v written out (Vaswani et al., 2017, eq. 1); (B, H, L, hd)."""
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, L, L)
    if mask is None and causal:
        L = q.shape[-2]
        mask = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
    # q (B, H, Lq, hd); k, v (B, H, Lk, hd); mask broadcastable to (B, H, Lq, Lk), True = attend
    """SDPA, except in bf16 training on CPU at L <= 512, where PyTorch's flash-attention
    backward runs at about half the speed of the explicit product (measured on a 2-core AMX
    CPU, B=64 H=4 L=256: 73 ms against 35 ms forward+backward; SDPA wins in every other case)."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_grad_enabled() and q.shape[-2] <= 512:
        return explicit_attention(q, k, v, mask, causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)


def buffer_with(like: Tensor, dim: int, size: int, part: Tensor) -> Tensor:
    """A new buffer shaped as `like` but `size` long along `dim`, starting with `part` (the rest unset)."""
    shape = list(like.shape)
    shape[dim] = size
    out = like.new_empty(shape)
    out.narrow(dim, 0, part.shape[dim]).copy_(part)
    return out


class KVCache:
    """Rotated keys and values of committed tokens, per layer, each (B, Hkv, Lc, hd), and which of
    those Lc positions are real tokens (B, Lc).

    A forward pass with ``cache=`` attends to the cached tokens before its own (through the mask
    its caller builds, usually from ``valid``); with ``commit=n`` it also appends the keys, values
    and attention_mask of its first n tokens. ``crop(n)`` keeps the last n tokens:
    RoPE attention depends only on relative positions, so a window of at most the trained
    context lets a model generate past it.

    Storage is preallocated and written in place: each layer's buffer (B, Hkv, capacity, hd)
    holds the committed keys in its first Lc columns, and a pass writes its own keys right after
    them, so attention reads one contiguous slice and committing n tokens only moves the length
    (no copy). The capacity is given (a sampler passes its canvas) or grows by doubling.

    A model with ``logit_shift`` predicts token i from position i - 1, so a cached call's first
    token needs the final hidden state of the token before it: committing also stores the final
    hidden states (``hidden``), and ``before`` is the one the next call continues from (the last
    committed token; after ``select`` drops a span, the token just before that span)."""

    def __init__(self, capacity: int = 0):
        self.capacity = capacity  # columns to allocate at the first pass (at least what it needs)
        self._keys: list[Tensor] = []  # (B, Hkv, capacity, hd) per layer, allocated by the first pass
        self._values: list[Tensor] = []
        self._valid: Tensor | None = None  # (B, capacity) bool: False for cached padding
        self._hidden: Tensor | None = None  # (B, capacity, D) final hidden states (logit_shift models only)
        self.length = 0  # committed columns
        self.before: Tensor | None = None  # (B, D) the hidden state a cached call's first token is predicted from

    def __len__(self) -> int:
        return self.length

    # the committed part, as views of the buffers (writes to them write the cache)
    @property
    def keys(self) -> list[Tensor]:
        return [k[:, :, :self.length] for k in self._keys]

    @property
    def values(self) -> list[Tensor]:
        return [v[:, :, :self.length] for v in self._values]

    @property
    def valid(self) -> Tensor | None:
        return None if self._valid is None else self._valid[:, :self.length]

    @property
    def hidden(self) -> Tensor | None:
        return None if self._hidden is None else self._hidden[:, :self.length]

    def _room(self, columns: int) -> int:
        """Grow every buffer to hold at least `columns` (doubling); -> the capacity."""
        have = self._valid.shape[1]
        if columns <= have:
            return have
        size = max(columns, 2 * have)
        n = self.length
        self._keys = [buffer_with(k, 2, size, k[:, :, :n]) for k in self._keys]
        self._values = [buffer_with(v, 2, size, v[:, :, :n]) for v in self._values]
        self._valid = buffer_with(self._valid, 1, size, self._valid[:, :n])
        if self._hidden is not None:
            self._hidden = buffer_with(self._hidden, 1, size, self._hidden[:, :n])
        return size

    def join(self, i: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Layer i: write this pass's keys and values (B, Hkv, n, hd) after the committed ones and
        return all of them, (B, Hkv, Lc + n, hd) each, as views of the buffer."""
        B, H, n, hd = k.shape
        end = self.length + n
        if self._valid is None:
            self._valid = torch.zeros(B, max(self.capacity, end), dtype=torch.bool, device=k.device)
        elif i == 0:
            self._room(end)
        if i == len(self._keys):  # the first pass allocates each layer's buffers
            size = self._valid.shape[1]
            self._keys.append(k.new_empty(B, H, size, hd))
            self._values.append(v.new_empty(B, H, size, hd))
        keys, values = self._keys[i], self._values[i]
        keys[:, :, self.length:end] = k
        values[:, :, self.length:end] = v
        return keys[:, :, :end].to(k.dtype), values[:, :, :end].to(v.dtype)

    def commit(self, real: Tensor, hidden: Tensor | None = None) -> None:
        """Keep the first n columns of the last pass: their keys (already written by `join`), which are
        real (B, n) and, for a logit_shift model, their final hidden states (B, n, D)."""
        n = real.shape[1]
        end = self.length + n
        self._valid[:, self.length:end] = real
        if hidden is not None:
            if self._hidden is None:
                self._hidden = hidden.new_empty(hidden.shape[0], self._valid.shape[1], hidden.shape[2])
            self._hidden[:, self.length:end] = hidden
            self.before = hidden[:, -1]
        self.length = end

    def select(self, columns: Tensor) -> "KVCache":
        """A new cache holding only the given cached positions (a (Lc,) bool or index tensor). The
        next call is taken to fill the first dropped span, so it continues from the token before it."""
        out = KVCache()
        keys, values, valid, hidden = self.keys, self.values, self.valid, self.hidden
        kept = valid[:, columns]  # (B, Lk)
        out.length = kept.shape[1]
        room = self._valid.shape[1]  # as much room as this cache: the next passes fill the dropped columns
        out._keys = [buffer_with(k, 2, room, k[:, :, columns]) for k in keys]
        out._values = [buffer_with(v, 2, room, v[:, :, columns]) for v in values]
        out._valid = buffer_with(self._valid, 1, room, kept)
        if hidden is not None:
            kept = torch.zeros(len(self), dtype=torch.bool, device=hidden.device)
            kept[columns] = True
            dropped = (~kept).nonzero()
            out._hidden = buffer_with(self._hidden, 1, room, hidden[:, columns])
            if not len(dropped):
                out.before = self.before
            elif int(dropped[0]) > 0:
                out.before = hidden[:, int(dropped[0]) - 1]
        return out

    def crop(self, n: int) -> None:
        """Keep the last n cached positions (moved to the front of the buffers)."""
        if len(self) <= n:
            return
        lo = self.length - n
        for t in self._keys + self._values:
            t[:, :, :n] = t[:, :, lo:self.length].clone()
        self._valid[:, :n] = self._valid[:, lo:self.length].clone()
        if self._hidden is not None:
            self._hidden[:, :n] = self._hidden[:, lo:self.length].clone()
        self.length = n


class Attention(nn.Module):
    """Multi-head attention; with n_kv_heads < n_heads, grouped-query attention (Ainslie et al., 2023):
    query head h reads key/value head h // (n_heads / n_kv_heads)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads = cfg.n_heads, cfg.kv_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, (cfg.n_heads + 2 * cfg.kv_heads) * self.head_dim, bias=cfg.qkv_bias)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, causal: bool,
                past: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None) -> Tensor:
        """-> output (B, L, D). `past`, for a KV cache, takes this call's rotated keys and values
        (B, Hkv, L, hd) and returns the cached ones before them, (B, Hkv, Lc + L, hd) each."""
        B, L, D = x.shape
        kv = self.n_kv_heads * self.head_dim
        qk, v = self.qkv(x).split([D + kv, kv], dim=-1)  # (B, L, D + Hkv * hd), (B, L, Hkv * hd)
        # queries and keys rotated together: one RoPE over their H + Hkv heads
        qk = apply_rope(qk.view(B, L, self.n_heads + self.n_kv_heads, self.head_dim), cos.to(qk.dtype),
                        sin.to(qk.dtype))  # (B, L, H + Hkv, hd)
        q = qk[:, :, :self.n_heads].transpose(1, 2)  # (B, H, L, hd)
        k = qk[:, :, self.n_heads:].transpose(1, 2)  # (B, Hkv, L, hd)
        v = v.view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, L, hd)
        k_all, v_all = (k, v) if past is None else past(k, v)
        if self.n_kv_heads != self.n_heads:
            group = self.n_heads // self.n_kv_heads
            k_all = k_all.repeat_interleave(group, dim=1)  # (B, H, Lc + L, hd)
            v_all = v_all.repeat_interleave(group, dim=1)  # (B, H, Lc + L, hd)
        y = attention(q, k_all, v_all, mask, causal)  # (B, H, L, hd)
        return self.out(y.transpose(1, 2).reshape(B, L, D))  # (B, L, D)


class SwiGLU(nn.Module):
    """FFN(x) = W_2 (silu(W_1 x) * W_3 x)  (Shazeer, 2020, eq. 6)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up = nn.Linear(cfg.d_model, 2 * cfg.ffn_width, bias=False)
        self.down = nn.Linear(cfg.ffn_width, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # 2 x (B, L, F)
        return self.down(F.silu(gate) * up)


def dropout(h: Tensor, p: float, training: bool) -> Tensor:
    """Residual and embedding dropout (Vaswani et al., 2017, sec. 5.4): the identity, with no kernel,
    unless training with p > 0."""
    return F.dropout(h, p, training=True) if p and training else h


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = SwiGLU(cfg)
        # adaLN-Zero: shift, scale, gate for each sub-layer, zero-initialised so that a
        # time-conditioned block starts as the identity (DiT, sec. 3.2).
        self.modulation = nn.Linear(cfg.d_model, 6 * cfg.d_model) if cfg.time_conditioning else None
        self.dropout = cfg.dropout

    def drop(self, y: Tensor) -> Tensor:
        return dropout(y, self.dropout, self.training)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, causal: bool,
                temb: Tensor | None, past: Callable | None = None) -> Tensor:
        """-> (B, L, D); `past` as for Attention."""
        if self.modulation is None:
            x = x + self.drop(self.attn(self.norm1(x), cos, sin, mask, causal, past))
            return x + self.drop(self.ffn(self.norm2(x)))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(temb)[:, None].chunk(6, dim=-1)  # (B, 1, D)
        x = x + gate1 * self.drop(self.attn(self.norm1(x) * (1 + scale1) + shift1, cos, sin, mask, causal, past))
        return x + gate2 * self.drop(self.ffn(self.norm2(x) * (1 + scale2) + shift2))


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of t in [0, 1] (Vaswani et al., 2017, sec. 3.5); (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs  # (B, half)
    return torch.cat([args.cos(), args.sin()], dim=-1)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        # Token ids in: the embedding is the model's input (and tied head). Vectors in (embed_dim > 0):
        # the embedding is Diffusion-LM's learned E (V x E), projected in and out of the d_model stream.
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim or cfg.d_model)
        if cfg.embed_dim:
            self.input_proj = nn.Linear(cfg.embed_dim, cfg.d_model)
            self.output_proj = nn.Linear(cfg.d_model, cfg.embed_dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = None if cfg.tie_embeddings or cfg.embed_dim else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.time_conditioning:
            self.time_mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_model), nn.SiLU(),
                                          nn.Linear(cfg.d_model, cfg.d_model))
            self.final_modulation = nn.Linear(cfg.d_model, 2 * cfg.d_model)
        self.reset_parameters()

    @property
    def time_conditioned(self) -> bool:
        """Whether the logits depend on t (samplers may reuse logits when they do not)."""
        return self.config.time_conditioning

    def reset_parameters(self) -> None:
        # GPT-2 initialisation: N(0, 0.02), residual outputs scaled by 1/sqrt(2 n_layers).
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for module in self.modules():
            if isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        if self.config.embed_dim:
            nn.init.normal_(self.embed.weight, std=1.0)  # Diffusion-LM's E starts at unit scale, like the noise
        for block in self.blocks:
            nn.init.normal_(block.attn.out.weight, std=residual_std)
            nn.init.normal_(block.ffn.down.weight, std=residual_std)
            if block.modulation is not None:
                nn.init.zeros_(block.modulation.weight)
                nn.init.zeros_(block.modulation.bias)
        if self.config.time_conditioning:
            nn.init.zeros_(self.final_modulation.weight)
            nn.init.zeros_(self.final_modulation.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def embed_tokens(self, ids: Tensor) -> Tensor:
        """(B, L) token ids -> (B, L, E) their learned embeddings (the vector-input mode's x_0)."""
        return self.embed(ids)

    def rounding_logits(self, x: Tensor) -> Tensor:
        """(B, L, E) vectors -> (B, L, V): x . E_v, the rounding head tied to the embedding (Diffusion-LM)."""
        return F.linear(x, self.embed.weight)

    def forward(self, x_t: Tensor, t: Tensor | None = None, *, attention_mask: Tensor | None = None,
                positions: Tensor | None = None, mask: Tensor | None = None, cache: KVCache | None = None,
                commit: int = 0, shift_from: Tensor | None = None) -> Tensor:
        """x_t (B, L) token ids (or (B, L, E) vectors when embed_dim > 0), t (B,) noise level in [0, 1],
        attention_mask (B, L) bool (False = padding) -> logits (B, L, V) (or vectors (B, L, E)).

        For structured attention (block diffusion, cached decoding) pass `positions` (B, L) and
        `mask` (B or 1, 1, L, Lc + L) bool (True = may attend; the first Lc keys are the cache's).
        `cache` adds cached keys/values before this call's; `commit` = n appends the keys/values of
        this call's first n tokens to it (the clean tokens of a call that also denoises others).
        `shift_from` (L,) long, for a `logit_shift` model: the position whose final hidden state predicts
        each position, where the layout is not one sequence (block diffusion's [x_t, bos, x_0]); default i - 1."""
        cfg = self.config
        B, L = x_t.shape[:2]
        causal = cfg.attention == "causal"
        if mask is not None:
            causal = False  # the caller's mask says everything
            if positions is None:
                raise ValueError("an explicit attention mask needs explicit positions")
        elif cache is not None and len(cache):
            raise ValueError("attending to a KV cache needs an explicit mask and positions")
        elif attention_mask is not None:
            mask = attention_mask[:, None, None, :]  # (B, 1, 1, L): keys that may be attended to
            if causal:
                mask = mask & torch.ones(L, L, dtype=torch.bool, device=x_t.device).tril()  # (B, 1, L, L)
        if positions is None:
            if attention_mask is None:
                positions = torch.arange(L, device=x_t.device).expand(B, L)  # (B, L)
            else:
                # Count positions over real tokens only, so that left padding does not move them.
                positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)
        cos, sin = rope_angles(positions, cfg.d_model // cfg.n_heads, cfg.rope_base)

        temb = None
        if cfg.time_conditioning:
            if t is None:
                raise ValueError("this model is time-conditioned: pass t (B,) in [0, 1]")
            temb = timestep_embedding(t, cfg.d_model).to(self.time_mlp[0].weight.dtype)  # (B, D), in the weights' dtype
            temb = F.silu(self.time_mlp(temb))  # (B, D)

        if cfg.embed_dim:
            if not x_t.is_floating_point():
                raise ValueError(f"this model denoises vectors (B, L, {cfg.embed_dim}); embed token ids first")
            h = self.input_proj(x_t)  # (B, L, D)
        else:
            h = self.embed(x_t)  # (B, L, D)
        h = dropout(h, cfg.dropout, self.training)  # (B, L, D)
        for i, block in enumerate(self.blocks):
            past = None if cache is None else functools.partial(cache.join, i)
            h = block(h, cos, sin, mask, causal, temb, past)
        h = self.norm(h)
        before = None if cache is None else cache.before  # (B, D) or None: read before this call commits
        if commit:
            real = attention_mask if attention_mask is not None else torch.ones(B, L, dtype=torch.bool, device=h.device)
            cache.commit(real[:, :commit], h[:, :commit] if cfg.logit_shift else None)  # (B, commit)
        if cfg.logit_shift:
            if shift_from is not None:
                h = h[:, shift_from]  # (B, L, D)
            else:
                # Token i is predicted from position i - 1 (the AR model Dream was adapted from); the first
                # position keeps its own, unless a cache holds the token before it.
                first = h[:, :1] if before is None else before[:, None].to(h.dtype)  # (B, 1, D)
                h = torch.cat([first, h[:, :-1]], dim=1)  # (B, L, D)
        if temb is not None:
            shift, scale = self.final_modulation(temb)[:, None].chunk(2, dim=-1)  # (B, 1, D)
            h = h * (1 + scale) + shift
        if cfg.embed_dim:
            return self.output_proj(h)  # (B, L, E): the predicted clean embeddings
        weight = self.embed.weight if self.head is None else self.head.weight
        if cfg.output_size:
            weight = weight[:cfg.output_size]  # rows past the tokenizer's tokens are never predicted
        return F.linear(h, weight)  # (B, L, V)
