"""A trained model kept in a run folder between invocations: reused when it is finished with
the same settings, resumed when it was cut short, trained afresh otherwise. `dlm demo` and
`dlm bench` keep their models this way."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from dlm.errors import DlmError
from dlm.training.checkpoint import Checkpoint, load_checkpoint
from dlm.training.config import RESUME_MAY_CHANGE, TrainConfig
from dlm.training.performance import resolve_device


def what_it_computes(config: TrainConfig) -> dict:
    """The settings that decide a run's weights: how it executes (compile, threads, FSDP) does not."""
    return {k: v for k, v in config.to_dict().items() if k not in RESUME_MAY_CHANGE}


def ensure_trained(config: TrainConfig, *, progress: bool = False, log: Callable[[str], None] = lambda text: None,
                   what: str = "model", device: torch.device | str | None = None) -> tuple[Checkpoint, str]:
    """The run in config.out, finished with exactly these settings, loaded on `device` (default:
    where it trains, a GPU when there is one); -> (checkpoint, "cached" | "resumed" | "trained").
    A cached run with other settings, or a damaged one, is replaced; `log` hears which case it is."""
    from dlm.training.loop import train

    run_dir = Path(config.out)
    device = resolve_device(device)
    if (run_dir / "latest").exists():
        try:
            ckpt = load_checkpoint(run_dir, device=device)
            # through from_dict, so that a setting added since the run was trained counts at its default
            same = what_it_computes(TrainConfig.from_dict(ckpt.config.get("train") or {})) == what_it_computes(config)
        except DlmError:
            same, ckpt = False, None
        if same and ckpt.metrics.get("final"):
            log(f"using the cached {what} in {run_dir}")
            return ckpt, "cached"
        if same:
            log(f"resuming the interrupted training of the {what} in {run_dir}")
            train(config, resume=True, progress=progress)
            return load_checkpoint(run_dir, device=device), "resumed"
        log(f"the cached {what} in {run_dir} was trained with other settings (or is damaged): training it afresh")
        shutil.rmtree(run_dir)
    budget = f"{config.minutes:g} minutes" if config.minutes else f"{config.steps or 'the default number of'} steps"
    log(f"training the {what} ({budget} on this machine; cached in {run_dir})")
    train(config, progress=progress)
    return load_checkpoint(run_dir, device=device), "trained"
