"""Packing: documents -> one token stream with eos between documents -> fixed-length chunks.

Training draws random windows of the stream (every offset is a fresh example); evaluation
cuts it into consecutive, non-overlapping chunks so that each token is scored once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def pack(docs: Sequence[Sequence[int]], eos_id: int) -> Tensor:
    """Token ids of each document, joined by one eos: [d0, eos, d1, eos, ...]; -> (N,) int64."""
    stream: list[int] = []
    for doc in docs:
        stream.extend(doc)
        stream.append(eos_id)
    return torch.tensor(stream, dtype=torch.long)


def chunk(stream: Tensor, length: int) -> Tensor:
    """Consecutive chunks (N // length, length); a last partial chunk is dropped."""
    n = stream.numel() // length
    return stream[: n * length].view(n, length)


def random_windows(stream: Tensor, batch_size: int, length: int, *, generator: torch.Generator) -> Tensor:
    """`batch_size` windows of `length` tokens at uniformly random offsets; -> (B, length)."""
    if stream.numel() < length:
        raise ValueError(f"stream of {stream.numel()} tokens is shorter than one window of {length}")
    starts = torch.randint(0, stream.numel() - length + 1, (batch_size,), generator=generator)  # (B,)
    return stream[starts[:, None] + torch.arange(length)]  # (B, length)


def pack_text(tokenizer, docs: Sequence[str]) -> tuple[Tensor, int]:
    """Encode and pack documents; -> (stream (N,), characters it stands for, eos counted as one)."""
    stream = pack(tokenizer.encode_batch(docs), tokenizer.eos_id)
    return stream, sum(map(len, docs)) + len(docs)


def validation_chunks(tokenizer, docs: Sequence[str], length: int) -> tuple[Tensor, float]:
    """Held-out documents as consecutive chunks (N, length), and tokens per character of that text."""
    stream, chars = pack_text(tokenizer, docs)
    return chunk(stream, length), stream.numel() / max(chars, 1)


def evenly_spaced(chunks: Tensor, n: int) -> Tensor:
    """n chunks spread evenly over the set (all of them when n is 0 or too large)."""
    if n <= 0 or n >= chunks.shape[0]:
        return chunks
    return chunks[torch.linspace(0, chunks.shape[0] - 1, n).round().long()]


def pack_pairs(tokenizer, pairs: Sequence[tuple[str, str]], length: int) -> tuple[Tensor, Tensor, int]:
    """Prompt/response pairs as rows of `length` tokens for conditional training (LLaDA's SFT):
    prompt, response, then end-of-text up to the end, so that the model learns where to stop.
    -> tokens (N, length), loss_mask (N, length) (True on the response and its end-of-text
    padding, never on the prompt), and the characters the scored tokens stand for (each row's
    response plus one for its end). A response that does not fit is cut; a pair whose prompt
    leaves no room for a response is skipped."""
    rows, masks, chars = [], [], 0
    for prompt, response in pairs:
        p, r = tokenizer.encode(prompt), tokenizer.encode(response)
        if len(p) >= length:
            continue
        r = r[:length - len(p)]
        rows.append(p + r + [tokenizer.eos_id] * (length - len(p) - len(r)))
        masks.append([False] * len(p) + [True] * (length - len(p)))
        chars += len(tokenizer.decode(r)) + 1
    if not rows:
        return torch.zeros(0, length, dtype=torch.long), torch.zeros(0, length, dtype=torch.bool), 0
    return torch.tensor(rows, dtype=torch.long), torch.tensor(masks), chars


def validation_pairs(tokenizer, pairs: Sequence[tuple[str, str]], length: int) -> tuple[Tensor, Tensor, float]:
    """Held-out pairs as rows and loss masks (pack_pairs), and scored tokens per character."""
    rows, masks, chars = pack_pairs(tokenizer, pairs, length)
    return rows, masks, int(masks.sum()) / max(chars, 1)
