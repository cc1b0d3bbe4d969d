"""The Canvas: the one place that knows which positions are prompt, fixed text, padding or editable."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Segment = Sequence[int] | int  # fixed token ids, or the number of positions to generate


@dataclass(frozen=True)
class Canvas:
    tokens: Tensor  # (B, L) int64: fixed tokens; editable positions hold a placeholder
    editable: Tensor  # (B, L) bool: True where the sampler writes; False for prompt, fixed text, padding
    attention_mask: Tensor  # (B, L) bool: False for padding

    def __post_init__(self):
        if self.tokens.dim() != 2 or self.tokens.shape != self.editable.shape != self.attention_mask.shape:
            raise ValueError(f"canvas tensors must share one (B, L) shape: tokens {tuple(self.tokens.shape)}, "
                             f"editable {tuple(self.editable.shape)}, attention_mask {tuple(self.attention_mask.shape)}")
        if self.editable.dtype != torch.bool or self.attention_mask.dtype != torch.bool:
            raise ValueError("canvas editable and attention_mask must be bool tensors")
        if bool((self.editable & ~self.attention_mask).any()):
            raise ValueError("a padding position cannot be editable")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.tokens.shape)

    @classmethod
    def from_segments(cls, rows: Sequence[Sequence[Segment]], *, fill_id: int, pad_id: int,
                      device: torch.device | str = "cpu") -> "Canvas":
        """One row per sample, each a list of segments: token ids kept as they are, or an int n
        for n positions to generate (filled with `fill_id` until a sampler writes them).
        Rows are left-padded with `pad_id` to a common length, so generated text ends together."""
        flat_rows, edit_rows = [], []
        for segments in rows:
            tokens, edit = [], []
            for seg in segments:
                if isinstance(seg, int):
                    if seg < 0:
                        raise ValueError(f"a span cannot have a negative length ({seg})")
                    tokens += [fill_id] * seg
                    edit += [True] * seg
                else:
                    tokens += list(seg)
                    edit += [False] * len(seg)
            flat_rows.append(tokens)
            edit_rows.append(edit)
        L = max((len(r) for r in flat_rows), default=0)
        tokens = torch.full((len(rows), L), pad_id, dtype=torch.long)
        editable = torch.zeros((len(rows), L), dtype=torch.bool)
        attention = torch.zeros((len(rows), L), dtype=torch.bool)
        for b, (row, edit) in enumerate(zip(flat_rows, edit_rows)):
            if row:
                tokens[b, L - len(row):] = torch.tensor(row)
                editable[b, L - len(row):] = torch.tensor(edit)
                attention[b, L - len(row):] = True
        return cls(tokens.to(device), editable.to(device), attention.to(device))

    @classmethod
    def for_generation(cls, prompts: Sequence[Sequence[int]], length: int, *, fill_id: int, pad_id: int,
                       device: torch.device | str = "cpu") -> "Canvas":
        """Each row: left padding, its prompt, then `length` positions to generate."""
        return cls.from_segments([[list(p), length] for p in prompts], fill_id=fill_id, pad_id=pad_id,
                                 device=device)

    def generated(self, tokens: Tensor, row: int) -> list[int]:
        """The editable positions of one row of a sampled canvas, left to right."""
        return tokens[row][self.editable[row]].tolist()
