"""Likelihood of a trained checkpoint on held-out text: NELBO bits/char and bits/token."""

from __future__ import annotations

import torch

from dlm.data.corpora import load_corpus
from dlm.data.packing import evenly_spaced, validation_chunks, validation_pairs
from dlm.errors import DlmError
from dlm.processes.likelihood import LikelihoodEstimate, estimate_likelihood
from dlm.training.checkpoint import Checkpoint


def evaluate_checkpoint(ckpt: Checkpoint, *, data: str | None = None, chunks: int = 0, samples: int = 4,
                        seed: int = 0, batch_size: int = 64) -> LikelihoodEstimate:
    """The NELBO on the validation split of `data` (default: the corpus the model was trained
    on), over `chunks` evenly spaced chunks of the model's context (0 = all of them), each with
    `samples` Monte-Carlo times. fp32 throughout."""
    spec = data or ckpt.config.get("train", {}).get("data")
    if not spec:
        raise DlmError("this checkpoint does not say what it was trained on; pass --data")
    corpus = load_corpus(spec)
    device = next(ckpt.model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    if corpus.is_pairs:  # the responses given their prompts
        rows, masks, tokens_per_char = validation_pairs(ckpt.tokenizer, corpus.validation_pairs,
                                                        ckpt.context_length)
        if rows.shape[0] == 0:
            raise DlmError(f"no validation pair of {spec!r} fits in the model's context of {ckpt.context_length}")
        return estimate_likelihood(ckpt.process, ckpt.model, evenly_spaced(rows, chunks).to(device),
                                   samples_per_chunk=samples, batch_size=batch_size,
                                   tokens_per_char=tokens_per_char, generator=generator,
                                   loss_masks=evenly_spaced(masks, chunks).to(device))
    all_chunks, tokens_per_char = validation_chunks(ckpt.tokenizer, corpus.validation, ckpt.context_length)
    if all_chunks.shape[0] == 0:
        raise DlmError(f"the validation split of {spec!r} is shorter than one context of "
                       f"{ckpt.context_length} tokens")
    return estimate_likelihood(ckpt.process, ckpt.model, evenly_spaced(all_chunks, chunks).to(device),
                               samples_per_chunk=samples, batch_size=batch_size,
                               tokens_per_char=tokens_per_char, generator=generator)
