"""Shared fixtures: tiny tokenizers and models built in the test, never downloaded."""

from __future__ import annotations

import pytest
import torch

from dlm.data import train_char_tokenizer
from dlm.models import ModelConfig, Transformer
from dlm.processes import MaskedDiffusion

TEXT = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\n"
    "Or to take arms against a sea of troubles\n"
    "And by opposing end them. To die-to sleep,\n"
    "No more; and by a sleep to say we end\n"
    "The heart-ache and the thousand natural shocks\n"
    "That flesh is heir to: 'tis a consummation\n"
    "Devoutly to be wish'd. To die, to sleep;\n"
    "To sleep, perchance to dream-ay, there's the rub.\n"
)


@pytest.fixture(scope="session")
def tokenizer():
    return train_char_tokenizer([TEXT])


def tiny_model(vocab_size: int, *, seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    config = dict(vocab_size=vocab_size, d_model=32, n_layers=2, n_heads=2, max_len=128)
    config.update(overrides)
    return Transformer(ModelConfig(**config)).eval()


@pytest.fixture
def model(tokenizer):
    return tiny_model(tokenizer.vocab_size)


@pytest.fixture
def process(tokenizer):
    return MaskedDiffusion(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id)


def build(process_name: str, tokenizer, schedule: str | None = None, *, block_size: int = 4,
          options: dict | None = None, **model):
    """A process from the registry (with its `options`) and a tiny model of the kind it asks for."""
    from dlm.processes import PROCESSES

    settings = {"name": process_name, "block_size": block_size, **(options or {})}
    if schedule is not None:
        settings["schedule"] = {"name": schedule}
    process = PROCESSES[process_name].from_config(settings, vocab_size=tokenizer.vocab_size,
                                                  special_ids=tokenizer.specials)
    return process, tiny_model(tokenizer.vocab_size, **{**process.model_options(), **model})


class CountingDenoiser:
    """Wraps a denoiser and counts forward passes (a batched call counts once)."""

    def __init__(self, denoiser, time_conditioned: bool | None = None):
        self.denoiser = denoiser
        self.calls = 0
        self.time_conditioned = (getattr(denoiser, "time_conditioned", True) if time_conditioned is None
                                 else time_conditioned)

    def __call__(self, x_t, t, *, attention_mask=None, **structured):
        self.calls += 1
        return self.denoiser(x_t, t, attention_mask=attention_mask, **structured)

    def __getattr__(self, name):  # config, embed_tokens, rounding_logits ... of the wrapped model
        return getattr(self.denoiser, name)


def write_corpus(path, repeats: int = 40) -> str:
    """A small .txt corpus (about 25 KB) for training tests."""
    path.write_text(TEXT * repeats)
    return str(path)


def tiny_train_config(root, **overrides):
    """A TrainConfig of a few steps of the tiny preset on the small corpus (written under root),
    run folder root/run, fp32 and eager so that runs are exactly reproducible."""
    from dlm.training import TrainConfig

    settings = dict(out=str(root / "run"), data=write_corpus(root / "corpus.txt"), preset="tiny", seq_len=32,
                    batch_size=8, steps=6, warmup_steps=2, eval_every=3, eval_chunks=4, final_eval_chunks=8,
                    eval_samples=2, log_every=1, compile=False, precision="fp32")
    return TrainConfig(**{**settings, **overrides})


def train_tiny_run(root, *, seq_len: int = 32):
    """A run folder trained for 4 steps on the small corpus through `dlm train` (seconds): the
    checkpoint the command-line and server tests sample from."""
    from dlm.cli import main

    data = write_corpus(root / "corpus.txt")
    code = main(["train", "--data", data, "--out", str(root / "run"), "--steps", "4", "--seq-len", str(seq_len),
                 "--batch-size", "8", "--eval-every", "4", "--eval-chunks", "4", "--final-eval-chunks", "4",
                 "--warmup-steps", "2", "--no-compile", "--precision", "fp32", "--no-progress"])
    assert code == 0
    return root / "run"
