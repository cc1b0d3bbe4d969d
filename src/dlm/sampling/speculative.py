"""Diffusion drafts, AR verification, one forward pass per step (TiDAR, Liu et al., 2025, arXiv
2511.08923; speculative sampling, Leviathan et al., 2023, and Chen et al., 2023).

For a shifted block-diffusion model with a causal clean stream (`BlockDiffusion(shift=True,
clean="causal")`, e.g. adapted from an AR model and trained with the clean stream's AR loss), the
clean stream *is* an AR model: the hidden state of committed token i predicts token i + 1. A
block of b [MASK] slots after an anchor drafts the b tokens that follow it, in one pass. Each step
runs one pass over

    [u, d_1 .. d_k, masks after u, masks after d_1, ..., masks after d_k]      (k = b - 1)

where u is the last committed token (not yet in the KV cache), d_1..d_k the drafts of the previous
step, and each group of b masks is anchored on one possible accepted prefix (so whatever is
accepted, the next drafts are ready: TiDAR's pre-drafting). From that one pass:

1. verification: p(. | text, d_<a) at each draft (from the hidden state of the slot before it);
   d_a is accepted with probability min(1, p(d_a) / q(d_a)) (q: the distribution it was drawn
   from), left to right until the first rejection, which is replaced by a draw from
   norm(max(p - q, 0)); if all k are accepted, one more token is drawn from p after d_k. The
   text written is thus distributed exactly as the AR model's samples (greedy at temperature 0).
2. drafting: the masks anchored on the accepted prefix give the next step's k drafts (their first
   mask predicts the token just drawn, which is known; the next k are drafts).

So every pass writes between 1 and b tokens. Rows of a batch accept different numbers of drafts:
each keeps its own positions, and the keys of rejected drafts stay in the cache, marked invalid.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from dlm.models.transformer import KVCache
from dlm.processes.base import Denoiser, ForwardProcess, gumbel_noise
from dlm.sampling.block import generation_start, with_bos
from dlm.sampling.canvas import Canvas
from dlm.sampling.categorical import check_knobs, filter_logits
from dlm.sampling.result import Callback, SampleOutput, StepRecorder


def draw_from(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One draw per row of probabilities (..., V) by float64 Gumbel-max -> (...)."""
    g = gumbel_noise(tuple(probs.shape), generator=generator, device=probs.device)
    return (probs.double().clamp_min(1e-300).log() + g).argmax(-1)


def accept(p: Tensor, q: Tensor, drafts: Tensor, greedy: bool, generator: torch.Generator | None
           ) -> tuple[Tensor, Tensor]:
    """Speculative sampling's test of k drafts per row (Leviathan et al., 2023, alg. 1): p, q (B, k, V)
    the target and draft distributions at each draft, drafts (B, k) -> (how many leading drafts each row
    accepts (B,), and the distribution of the replacement of the first rejected one, norm(max(p - q, 0))
    (B, V); meaningless for rows that accept all k). `greedy`: accept a draft iff it is p's argmax."""
    B, k, _ = p.shape
    if greedy:
        ok = drafts == p.argmax(-1)  # (B, k)
    else:
        pd = p.gather(-1, drafts[..., None])[..., 0]  # (B, k)
        qd = q.gather(-1, drafts[..., None])[..., 0]
        u = torch.rand(B, k, generator=generator, device=p.device, dtype=torch.float64)
        ok = u * qd < pd  # accept with probability min(1, p/q)
    n = ok.long().cumprod(-1).sum(-1)  # (B,) leading accepts
    at = n.clamp(max=k - 1)  # the rejected draft's index (unused when n == k)
    pr, qr = p[torch.arange(B), at], q[torch.arange(B), at]  # (B, V)
    residual = (pr - qr).clamp_min(0.0)
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, pr)  # p == q: draw from p
    return n, residual / residual.sum(-1, keepdim=True)


@torch.no_grad()
def sample_speculative(denoiser: Denoiser, process: ForwardProcess, canvas: Canvas, *, steps: int | None = None,
                       temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                       generator: torch.Generator | None = None, callback: Callback | None = None,
                       record_history: bool = False, window: int | None = None) -> SampleOutput:
    """Fill the canvas's editable suffix left to right, drafting a block per pass and verifying it
    with the model's own AR stream (see the module docstring). `steps` is accepted for a uniform
    signature and ignored: the number of passes depends on how many drafts are accepted.
    `window`: the most cache entries a pass attends to (default: the model's max_len)."""
    if not getattr(process, "ar_stream", False):
        raise ValueError("speculative decoding verifies drafts with the model's causal clean stream: it needs a "
                         "block diffusion model trained with --logit-shift --clean-attention causal")
    check_knobs(temperature=temperature, top_k=top_k, top_p=top_p)
    start_time = time.perf_counter()
    b = process.block_size
    k = b - 1  # drafts verified per pass
    g = generation_start(canvas, "speculative decoding")
    ext = with_bos(canvas, process.bos_id)
    B, L = ext.shape
    g += 1
    device = canvas.tokens.device
    n_gen = L - g
    config = getattr(denoiser, "config", None)
    if window is None and config is not None:
        window = config.max_len
    x = ext.tokens.clone()
    greedy = temperature == 0
    record = StepRecorder(canvas, steps=max(n_gen, 1), callback=callback, record_history=record_history,
                          start=start_time)
    if n_gen <= 0:
        return record.output(canvas.tokens.clone(), nfe=0, steps=0)
    rows = torch.arange(B, device=device)

    def probs(logits: Tensor) -> Tensor:
        """The distribution a token is drawn from (temperature, top-k, top-p), float64; (..., V)."""
        if greedy:
            return torch.nn.functional.one_hot(process.x0_logits(logits).argmax(-1), logits.shape[-1]).double()
        return torch.softmax(filter_logits(process.x0_logits(logits), temperature=temperature, top_k=top_k,
                                           top_p=top_p).double(), dim=-1)

    def choose(p: Tensor) -> Tensor:
        return p.argmax(-1) if greedy else draw_from(p, generator)

    # 1. prefill: bos, prompt and one block of masks anchored on the prompt's last token
    cache = KVCache()
    places = (ext.attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)
    prompt = x[:, :g]  # (B, g)
    last = places[:, g - 1]  # (B,) position of the last committed token
    real = ext.attention_mask[:, :g]
    masks = torch.full((B, b), process.mask_id, dtype=torch.long, device=device)
    tokens = torch.cat([prompt, masks], dim=1)  # (B, g + b)
    pos = torch.cat([places[:, :g], last[:, None] + 1 + torch.arange(b, device=device)], dim=1)
    causal = torch.ones(g, g, dtype=torch.bool, device=device).tril() & real[:, None, :]  # (B, g, g)
    causal = causal | torch.eye(g, dtype=torch.bool, device=device)
    top = torch.cat([causal, torch.zeros(B, g, b, dtype=torch.bool, device=device)], dim=2)
    bottom = torch.cat([real[:, None, :].expand(B, b, g), torch.eye(b, dtype=torch.bool, device=device).expand(B, b, b)], 2)
    mask = torch.cat([top, bottom], dim=1)[:, None]  # (B, 1, g + b, g + b)
    shift_from = torch.cat([torch.arange(g, device=device), torch.arange(g - 1, g - 1 + b, device=device)])
    logits = denoiser(tokens, torch.zeros(B, device=device), positions=pos, mask=mask, cache=cache, commit=g,
                      attention_mask=torch.cat([real, torch.ones(B, b, dtype=torch.bool, device=device)], 1),
                      shift_from=shift_from)  # (B, g + b, V)
    nfe = 1
    block = probs(logits[:, g:])  # (B, b, V): the token after the prompt, then drafts
    u_tok = choose(block[:, 0])  # (B,) committed, not yet cached
    q = block[:, 1:]  # (B, k, V)
    drafts = choose(q)  # (B, k)
    done = torch.zeros(B, dtype=torch.long, device=device)  # generated tokens committed per row
    out = x.clone()

    def write(tokens_: Tensor, count: Tensor) -> Tensor:
        """Append each row's first count[r] of tokens_ (B, m) to its generated text -> what changed (B, L - 1)."""
        nonlocal done
        m = tokens_.shape[1]
        cols = g + done[:, None] + torch.arange(m, device=device)  # (B, m)
        keep = (torch.arange(m, device=device)[None] < count[:, None]) & (cols < L)
        out[rows[:, None].expand(-1, m)[keep], cols[keep]] = tokens_[keep]
        changed = torch.zeros(B, L, dtype=torch.bool, device=device)
        changed[rows[:, None].expand(-1, m)[keep], cols[keep]] = True
        done = done + count
        return changed[:, 1:]

    changed = write(u_tok[:, None], torch.ones(B, dtype=torch.long, device=device))
    record.step(1, out[:, 1:], changed, nfe=nfe, t=lambda: 1.0 - float(done.clamp(max=n_gen).float().mean()) / n_gen)
    u_pos = last + 1  # (B,)
    step = 1
    n = 1 + k + (k + 1) * b  # slots per pass
    # slot layout of a pass: 0 = u, 1..k = drafts, then groups a = 0..k of b masks anchored on slot a
    anchor = torch.arange(k + 1, device=device).repeat_interleave(b)  # (k+1)b: each mask's anchor slot
    inner = torch.arange(b, device=device).repeat(k + 1)  # its index in its group
    clean_rule = torch.ones(1 + k, 1 + k, dtype=torch.bool, device=device).tril()  # u, d: causal
    mask_rule = torch.arange(1 + k, device=device)[None, :] <= anchor[:, None]  # masks see u, d up to their anchor
    allowed = torch.zeros(n, n, dtype=torch.bool, device=device)
    allowed[:1 + k, :1 + k] = clean_rule
    allowed[1 + k:, :1 + k] = mask_rule
    allowed |= torch.eye(n, dtype=torch.bool, device=device)  # a mask slot sees only itself among masks
    shift_from = torch.cat([torch.arange(1 + k, device=device) - 1,  # a draft is verified from the slot before it
                            torch.where(inner == 0, anchor, 1 + k + torch.arange((k + 1) * b, device=device) - 1)])
    shift_from[0] = 0
    while int(done.min()) < n_gen:
        # 2. one pass: verify the k drafts, pre-draft after every possible accepted prefix
        tokens = torch.cat([u_tok[:, None], drafts, torch.full((B, (k + 1) * b), process.mask_id, dtype=torch.long,
                                                                device=device)], dim=1)  # (B, n)
        pos = torch.cat([u_pos[:, None] + torch.arange(1 + k, device=device),
                         u_pos[:, None] + anchor + 1 + inner], dim=1)  # (B, n)
        past = cache.valid  # (B, Lc)
        mask = torch.cat([past[:, None, :].expand(B, n, -1), allowed[None].expand(B, -1, -1)], dim=2)[:, None]
        logits = denoiser(tokens, torch.zeros(B, device=device), positions=pos, mask=mask, cache=cache, commit=1 + k,
                          attention_mask=torch.ones(B, n, dtype=torch.bool, device=device), shift_from=shift_from)
        nfe += 1
        step += 1
        p = probs(logits[:, 1:1 + k])  # (B, k, V): the AR stream at each draft
        accepted, residual = accept(p, q, drafts, greedy, generator)  # (B,), (B, V)
        groups = probs(logits[:, 1 + k:].view(B, k + 1, b, -1)[rows, accepted])  # (B, b, V): after the accepted prefix
        # the token after the accepted prefix: the rejection's replacement, or (all accepted) a draw from p
        nxt = torch.where(accepted == k, choose(groups[:, 0]), choose(residual))  # (B,)
        cache.valid[:, -k:] = torch.arange(k, device=device)[None] < accepted[:, None]  # rejected keys never seen
        if window is not None:
            cache.crop(window)
        written = torch.cat([drafts, nxt[:, None]], dim=1)  # (B, k + 1): the accepted drafts, then nxt
        written[rows, accepted] = nxt
        changed = write(written, accepted + 1)
        u_tok, u_pos = nxt, u_pos + accepted + 1
        q = groups[:, 1:]
        drafts = choose(q)
        record.step(step, out[:, 1:], changed, nfe=nfe,
                    t=lambda: 1.0 - float(done.clamp(max=n_gen).float().mean()) / n_gen)
    return record.output(out[:, 1:].clone(), nfe=nfe, steps=step)
