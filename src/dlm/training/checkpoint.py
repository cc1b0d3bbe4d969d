"""Checkpoint folders: config.json, model.safetensors, tokenizer.json (+ training_state.pt).

A run folder holds one or more checkpoint folders (``checkpoint-000500``) and a ``latest``
file naming the newest. A checkpoint is written into a temporary folder, renamed into place
(atomic on one file system), and only then does ``latest`` move to it (atomic replace), so a
run killed at any moment leaves a complete checkpoint behind. Loading accepts either a
checkpoint folder or a run folder. Nothing is unpickled from untrusted files: weights are
safetensors, and training state is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dlm import __version__
from dlm.data.tokenizer import Tokenizer
from dlm.errors import DlmError
from dlm.models import foreign, hf_format
from dlm.models.transformer import ModelConfig, Transformer
from dlm.processes import PROCESSES

FORMAT = "dlm"
FORMAT_VERSION = 1
LATEST = "latest"


@dataclass
class Checkpoint:
    path: Path  # the checkpoint folder itself
    model: Transformer
    process: object  # a ForwardProcess
    tokenizer: Tokenizer
    config: dict  # the whole config.json
    step: int = 0
    metrics: dict = field(default_factory=dict)

    @property
    def context_length(self) -> int:
        return self.model.config.max_len


def resolve(path: str | Path) -> Path:
    """The checkpoint folder meant by `path` (a checkpoint folder, or a run folder with `latest`)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DlmError(f"no checkpoint at {path}: the folder does not exist (train one with "
                       f"`dlm train --out {path}`)")
    if not path.is_dir():
        raise DlmError(f"{path} is a file; a checkpoint is a folder with config.json, model.safetensors "
                       f"and tokenizer.json")
    if (path / "config.json").exists():
        return path
    if (path / LATEST).exists():
        name = (path / LATEST).read_text().strip()
        target = path / name
        if not name or not (target / "config.json").exists():
            raise DlmError(f"{path / LATEST} points to {name!r}, which is not a complete checkpoint; "
                           f"the run folder is damaged")
        return target
    raise DlmError(f"{path} is not a dlm checkpoint: it has no config.json (and no `latest` file "
                   f"pointing to one)")


def read_config(folder: Path, config: dict | None = None) -> dict:
    """The config.json of a dlm checkpoint folder (`config`: already read), checked to be dlm's."""
    if config is None:
        config = foreign.read_json(folder / "config.json")
    if config.get("format") != FORMAT:
        kind = config.get("model_type") or config.get("architectures")
        hint = f" (it looks like a {kind!r} model from another library)" if kind else ""
        raise DlmError(f"{folder} is not a dlm checkpoint{hint}: its config.json has no \"format\": \"dlm\"")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise DlmError(f"{folder} was written by a newer dlm (format {config['format_version']}); upgrade dlm")
    return config


def read_tokenizer(folder: Path, config: dict) -> Tokenizer:
    """The tokenizer.json of a dlm checkpoint folder whose config.json is `config`. Its special ids are
    the ones config.json's "tokenizer" entry stores: a run started from another model's tokenizer (a
    Qwen2 or LLaMA folder) has none of dlm's special strings to look up. A config.json written before
    that entry existed holds a dlm-made tokenizer, whose ids are looked up by those strings."""
    if not (folder / "tokenizer.json").exists():
        raise DlmError(f"{folder} has no tokenizer.json; the checkpoint is incomplete (a folder written by "
                       f"transformers' model.save_pretrained also needs tokenizer.save_pretrained)")
    stored = config.get("tokenizer")
    specials = None
    if isinstance(stored, dict) and stored.get("mask") is not None and stored.get("eos") is not None:
        specials = {k: stored.get(k) for k in ("mask", "eos", "pad", "bos")}
    return Tokenizer.load(folder / "tokenizer.json", specials=specials)


def load_checkpoint(path: str | Path, *, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None) -> Checkpoint:
    """Load the model (EMA weights when trained with EMA), process and tokenizer of a checkpoint;
    a LLaDA or Dream folder in its published layout loads into the same Transformer (models/foreign.py).
    `dtype` (e.g. torch.bfloat16) casts the weights; None keeps float32."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = resolve(path)
    config = foreign.read_json(folder / "config.json")
    if foreign.is_foreign(config):
        loaded = foreign.load_foreign(folder, device=device, dtype=dtype, config=config)
        return Checkpoint(path=folder, model=loaded.model, process=loaded.process, tokenizer=loaded.tokenizer,
                          config=loaded.config)
    config = read_config(folder, config)
    tokenizer = read_tokenizer(folder, config)
    try:
        model_config = ModelConfig(**config["model"])
        process_config = dict(config["process"])
        process_cls = PROCESSES[process_config["name"]]
    except (KeyError, TypeError, ValueError) as e:
        raise DlmError(f"{folder / 'config.json'} does not describe a dlm model ({e!r})") from None
    if model_config.vocab_size != tokenizer.vocab_size:
        raise DlmError(f"{folder}: the model has {model_config.vocab_size} token embeddings but tokenizer.json "
                       f"has {tokenizer.vocab_size} tokens; they do not belong together")
    model = Transformer(model_config)
    weights = folder / "model.safetensors"
    try:
        state = load_file(str(weights))
    except FileNotFoundError:
        raise DlmError(f"{folder} has no model.safetensors; the checkpoint is incomplete") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise DlmError(f"{weights} is corrupt ({e}); the checkpoint cannot be used") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise DlmError(f"the weights in {weights} do not match the model in config.json: "
                       f"{str(e).splitlines()[0]} ...") from None
    process = process_cls.from_config(process_config, vocab_size=tokenizer.vocab_size,
                                      special_ids=tokenizer.specials)
    model.to(device=device, dtype=dtype).eval()
    return Checkpoint(path=folder, model=model, process=process, tokenizer=tokenizer, config=config,
                      step=config.get("step", 0), metrics=config.get("metrics", {}))


def save_checkpoint(run_dir: str | Path, *, step: int, model: nn.Module, process, tokenizer: Tokenizer,
                    train_config: dict, training_state: dict | None = None, metrics: dict | None = None,
                    keep: int = 1) -> Path:
    """Write run_dir/checkpoint-{step:06d} atomically, point run_dir/latest at it, and delete
    older checkpoints beyond the newest `keep`. `model` holds the weights to publish."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = f"checkpoint-{step:06d}"
    final, tmp = run_dir / name, run_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "dlm_version": __version__, "step": step,
              "model": model.config.to_dict(), "process": process.config(),
              "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size, **tokenizer.specials},
              "train": train_config, "metrics": metrics or {},
              **hf_format.config_fields(model.config)}  # so transformers' Auto classes read it too
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save(tmp / "tokenizer.json")
    hf_tokenizer = hf_format.tokenizer_config(tokenizer, model.config.max_len)  # for transformers' AutoTokenizer
    (tmp / "tokenizer_config.json").write_text(json.dumps(hf_tokenizer, indent=2) + "\n")
    if training_state is not None:
        torch.save(training_state, tmp / "training_state.pt")
    _fsync([*tmp.iterdir(), tmp])
    if final.exists():  # re-saving the same step (e.g. interrupted right after a save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = run_dir / f".{LATEST}.tmp"
    latest_tmp.write_text(name + "\n")
    os.replace(latest_tmp, run_dir / LATEST)
    _fsync([run_dir])
    old = sorted(p for p in run_dir.glob("checkpoint-*") if p.is_dir() and p.name != name)
    for p in old[: max(len(old) - (keep - 1), 0)]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def load_training_state(folder: Path) -> dict:
    path = folder / "training_state.pt"
    if not path.exists():
        raise DlmError(f"{folder} has no training_state.pt, so training cannot resume from it "
                       f"(it holds published weights only)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DlmError(f"{path} is corrupt or not a dlm training state ({e.__class__.__name__}); "
                       f"it cannot be resumed") from None


def _fsync(paths) -> None:
    """Flush files and folder entries to disk, so a rename never publishes half-written data."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:  # some file systems cannot fsync a folder
            pass
        finally:
            os.close(fd)
