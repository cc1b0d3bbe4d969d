"""Checkpoints of other diffusion language models, loaded into dlm's own Transformer.

Two published architectures are masked (absorbing-state) diffusion models that dlm's
transformer computes exactly, given a few options (see ModelConfig):

- LLaDA (Nie et al., 2025; GSAI-ML/LLaDA-8B-Base, -Instruct; `model_type` "llada"): a LLaMA
  block (RMSNorm, RoPE, SwiGLU), bidirectional, untied output head, an embedding padded
  past the tokenizer (126464 rows). Trained with mask probability t (linear schedule).
- Dream (Ye et al., 2025; Dream-org/Dream-v0-Base-7B, -Instruct; `model_type` "Dream"): Qwen2
  (grouped-query attention, biases on q/k/v), bidirectional, and adapted from an AR model:
  the logits that predict token i come from position i - 1 (`logit_shift`).

A folder in their published layout holds config.json, the weights (model.safetensors, or
shards listed in model.safetensors.index.json) and the tokenizer (tokenizer.json, or
Qwen2's vocab.json + merges.txt + tokenizer_config.json). Their names map onto ours through
one table per architecture; q/k/v and gate/up are concatenated into dlm's fused projections.
Special ids (mask, eos, pad, bos) come from their config.json, never from this file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dlm.data.tokenizer import Tokenizer
from dlm.errors import DlmError
from dlm.models.transformer import ModelConfig, Transformer
from dlm.processes.masked import MaskedDiffusion
from dlm.schedules import LinearSchedule

# name of ours -> names of theirs, concatenated along dim 0; "{i}" is the layer.
LLADA_WEIGHTS = {
    "embed.weight": ("model.transformer.wte.weight",),
    "blocks.{i}.norm1.weight": ("model.transformer.blocks.{i}.attn_norm.weight",),
    "blocks.{i}.attn.qkv.weight": tuple(f"model.transformer.blocks.{{i}}.{p}_proj.weight" for p in "qkv"),
    "blocks.{i}.attn.qkv.bias": tuple(f"model.transformer.blocks.{{i}}.{p}_proj.bias" for p in "qkv"),
    "blocks.{i}.attn.out.weight": ("model.transformer.blocks.{i}.attn_out.weight",),
    "blocks.{i}.norm2.weight": ("model.transformer.blocks.{i}.ff_norm.weight",),
    # LLaDA's LLaMA block: ff_out(act(ff_proj(x)) * up_proj(x)); ff_proj is the gate
    "blocks.{i}.ffn.gate_up.weight": ("model.transformer.blocks.{i}.ff_proj.weight",
                                      "model.transformer.blocks.{i}.up_proj.weight"),
    "blocks.{i}.ffn.down.weight": ("model.transformer.blocks.{i}.ff_out.weight",),
    "norm.weight": ("model.transformer.ln_f.weight",),
    "head.weight": ("model.transformer.ff_out.weight",),
}

DREAM_WEIGHTS = {
    "embed.weight": ("model.embed_tokens.weight",),
    "blocks.{i}.norm1.weight": ("model.layers.{i}.input_layernorm.weight",),
    "blocks.{i}.attn.qkv.weight": tuple(f"model.layers.{{i}}.self_attn.{p}_proj.weight" for p in "qkv"),
    "blocks.{i}.attn.qkv.bias": tuple(f"model.layers.{{i}}.self_attn.{p}_proj.bias" for p in "qkv"),
    "blocks.{i}.attn.out.weight": ("model.layers.{i}.self_attn.o_proj.weight",),
    "blocks.{i}.norm2.weight": ("model.layers.{i}.post_attention_layernorm.weight",),
    "blocks.{i}.ffn.gate_up.weight": ("model.layers.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.up_proj.weight"),
    "blocks.{i}.ffn.down.weight": ("model.layers.{i}.mlp.down_proj.weight",),
    "norm.weight": ("model.norm.weight",),
    "head.weight": ("lm_head.weight",),
}


def need(config: dict, *keys: str):
    """The first of `keys` present in config.json (several spellings of one setting)."""
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    raise KeyError(keys[0])


def refuse(name: str, found: dict) -> None:
    """A DlmError naming the settings of config.json that dlm does not compute (found: key -> value)."""
    if found:
        settings = ", ".join(f"{k}={v!r}" for k, v in found.items())
        raise DlmError(f"this {name} checkpoint uses {settings}, which dlm does not implement; dlm loads the published "
                       f"{name} layout only")


def llada_model_config(config: dict) -> dict:
    """LLaDA's config.json (an OLMo ModelConfig) -> ModelConfig fields; `published` holds the settings of
    the released models, and any other value of them changes the computation."""
    published = {"block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms", "alibi": False,
                 "rope": True, "include_bias": False, "bias_for_layer_norm": False, "attention_layer_norm": False,
                 "scale_logits": False, "input_emb_norm": False, "block_group_size": 1, "layer_norm_with_affine": True}
    refuse("LLaDA", {k: config[k] for k, ok in published.items() if k in config and config[k] not in (ok, None)})
    d_model, n_heads = need(config, "d_model"), need(config, "n_heads")
    n_kv_heads = 1 if config.get("multi_query_attention") else (config.get("n_kv_heads") or n_heads)
    return dict(vocab_size=need(config, "embedding_size", "vocab_size"), d_model=d_model,
                n_layers=need(config, "n_layers"), n_heads=n_heads, n_kv_heads=n_kv_heads,
                d_ff=config.get("mlp_hidden_size") or config.get("mlp_ratio", 4) * d_model,
                max_len=need(config, "max_sequence_length"), rope_base=float(config.get("rope_theta", 10000.0)),
                norm_eps=float(config.get("rms_norm_eps", 1e-5)), tie_embeddings=bool(config.get("weight_tying")),
                qkv_bias=bool(config.get("include_qkv_bias")))


def dream_model_config(config: dict) -> dict:
    """Dream's config.json (Qwen2's keys) -> ModelConfig fields."""
    refuse("Dream", {k: config[k] for k in ("rope_scaling", "use_sliding_window") if config.get(k)}
           | ({"hidden_act": config["hidden_act"]} if config.get("hidden_act", "silu") != "silu" else {}))
    n_heads = need(config, "num_attention_heads")
    return dict(vocab_size=need(config, "vocab_size"), d_model=need(config, "hidden_size"),
                n_layers=need(config, "num_hidden_layers"), n_heads=n_heads,
                n_kv_heads=config.get("num_key_value_heads") or n_heads, d_ff=need(config, "intermediate_size"),
                max_len=need(config, "max_position_embeddings"), rope_base=float(config.get("rope_theta", 10000.0)),
                norm_eps=float(config.get("rms_norm_eps", 1e-6)),
                tie_embeddings=bool(config.get("tie_word_embeddings", False)), qkv_bias=True, logit_shift=True)


@dataclass(frozen=True)
class Architecture:
    name: str  # as users know it
    model_config: Callable[[dict], dict]  # their config.json -> ModelConfig fields (vocab_size = embedding rows)
    weights: dict[str, tuple[str, ...]]  # our parameter -> their tensors


ARCHITECTURES = {  # keyed by config.json's model_type, lower-cased
    "llada": Architecture("LLaDA", llada_model_config, LLADA_WEIGHTS),
    "dream": Architecture("Dream", dream_model_config, DREAM_WEIGHTS),
}


@dataclass
class ForeignModel:
    model: Transformer
    process: MaskedDiffusion
    tokenizer: Tokenizer
    config: dict  # their config.json
    architecture: str


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DlmError(f"{path} is corrupt ({e}); the checkpoint cannot be used") from None
    if not isinstance(data, dict):
        raise DlmError(f"{path} is not a JSON object; the checkpoint cannot be used")
    return data


def is_foreign(config: dict) -> bool:
    """Whether config.json belongs to another library's model (a `model_type` and no dlm format)."""
    kind = config.get("model_type") or config.get("architectures")
    return config.get("format") != "dlm" and bool(kind) and str(kind).lower() != "dlm"


def architecture(config: dict, folder: Path) -> Architecture:
    found = config.get("model_type") or config.get("architectures")
    arch = ARCHITECTURES.get(str(found).lower()) if isinstance(found, str) else None
    if arch is None:
        supported = ", ".join(f"{a.name} (model_type {key!r})" for key, a in ARCHITECTURES.items())
        raise DlmError(f"{folder} holds a {found!r} model, which dlm cannot load; it loads its own checkpoints "
                       f"and these architectures: {supported}")
    return arch


def first_id(value) -> int | None:
    """A token id from config.json, where eos may be a list of ids."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def special_ids(config: dict, folder: Path) -> dict[str, int | None]:
    """mask, eos, pad, bos ids from config.json (generation_config.json as a fallback)."""
    extra = folder / "generation_config.json"
    generation = read_json(extra) if extra.exists() else {}

    def pick(key: str):
        return first_id(config.get(key) if config.get(key) is not None else generation.get(key))

    ids = {"mask": pick("mask_token_id"), "eos": pick("eos_token_id"), "pad": pick("pad_token_id"),
           "bos": pick("bos_token_id")}
    if ids["mask"] is None or ids["eos"] is None:
        missing = [k for k in ("mask", "eos") if ids[k] is None]
        raise DlmError(f"{folder / 'config.json'} does not give the {' and '.join(missing)} token id "
                       f"({', '.join(k + '_token_id' for k in missing)}); add it to config.json")
    return ids


def load_tokenizer(folder: Path, config: dict) -> Tokenizer:
    """tokenizer.json if there is one, else Qwen2's vocab.json + merges.txt; special ids from config.json."""
    specials = special_ids(config, folder)
    if (folder / "tokenizer.json").exists():
        return Tokenizer.load(folder / "tokenizer.json", specials=specials)
    if (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        return Tokenizer.from_vocab_merges(folder, specials=specials)
    raise DlmError(f"{folder} has no tokenizer: it needs tokenizer.json, or vocab.json and merges.txt")


def weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file that holds it (one file, or shards named by the index)."""
    from safetensors import SafetensorError, safe_open

    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise DlmError(f"{index} has no weight_map; the checkpoint is damaged")
        return {name: folder / file for name, file in weight_map.items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise DlmError(f"{folder} has no weights: it needs model.safetensors (or shards with "
                       f"model.safetensors.index.json)")
    where = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                where.update(dict.fromkeys(f.keys(), file))
        except (SafetensorError, OSError) as e:
            raise DlmError(f"{file} is corrupt ({e}); the checkpoint cannot be used") from None
    return where


def their_names(ours: str, table: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The tensors of theirs that make our parameter `ours` (blocks.3.attn.qkv.weight -> 3 names)."""
    layer = re.fullmatch(r"blocks\.(\d+)\.(.+)", ours)
    key = f"blocks.{{i}}.{layer[2]}" if layer else ours
    if key not in table:
        raise KeyError(ours)
    return tuple(name.format(i=layer[1] if layer else "") for name in table[key])


def read_weights(folder: Path, names: dict[str, tuple[str, ...]], dtype: torch.dtype) -> dict[str, Tensor]:
    """Our state dict from their files: each tensor read once, cast to dtype, fused where we fuse."""
    from safetensors import SafetensorError, safe_open

    where = weight_files(folder)
    missing = sorted({n for theirs in names.values() for n in theirs if n not in where})
    if missing:
        raise DlmError(f"the weights in {folder} lack {len(missing)} tensors that config.json implies, e.g. "
                       f"{missing[0]!r}; the checkpoint is incomplete or its config.json describes another model")
    handles, state = {}, {}
    try:
        for ours, theirs in names.items():
            parts = []
            for name in theirs:
                file = where[name]
                if file not in handles:
                    if not file.exists():
                        raise DlmError(f"{file} is missing; the checkpoint is incomplete")
                    handles[file] = safe_open(str(file), framework="pt")
                parts.append(handles[file].get_tensor(name).to(dtype))
            try:
                state[ours] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
            except RuntimeError:
                raise DlmError(f"the tensors {', '.join(theirs)} in {folder} have shapes "
                               f"{[tuple(p.shape) for p in parts]} that do not fit the model in config.json") from None
    except (SafetensorError, OSError) as e:
        raise DlmError(f"the weights in {folder} are corrupt ({e}); the checkpoint cannot be used") from None
    return state


def load_foreign(folder: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                 config: dict | None = None) -> ForeignModel:
    """A LLaDA or Dream folder -> dlm's Transformer with their weights, a masked process and their
    tokenizer; `config`: its config.json, when already read."""
    folder = Path(folder)
    config = read_json(folder / "config.json") if config is None else config
    arch = architecture(config, folder)
    try:
        fields = arch.model_config(config)
    except KeyError as e:
        raise DlmError(f"{folder / 'config.json'} describes a {arch.name} model but lacks {e.args[0]!r}; "
                       f"the checkpoint is incomplete or damaged") from None
    tokenizer = load_tokenizer(folder, config)
    if not isinstance(fields["vocab_size"], int) or tokenizer.vocab_size > fields["vocab_size"]:
        raise DlmError(f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens but the model "
                       f"{fields['vocab_size']!r} embeddings; the tokenizer files do not belong to this model")
    try:
        model_config = ModelConfig(**fields, output_size=tokenizer.vocab_size)
    except (TypeError, ValueError) as e:
        raise DlmError(f"{folder / 'config.json'} does not describe a {arch.name} model dlm can build ({e})") from None
    with torch.device("meta"):  # no memory and no initialisation for weights about to be replaced
        model = Transformer(model_config)
    names = {ours: their_names(ours, arch.weights) for ours in model.state_dict()}
    state = read_weights(folder, names, dtype or torch.float32)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise DlmError(f"the weights in {folder} do not match the model in its config.json: "
                       f"{str(e).splitlines()[-1].strip()}") from None
    model.to(device).eval()
    eos = tokenizer.eos_id
    # Masked diffusion with mask probability t (LLaDA sec. 2.1; Dream likewise). Padding and bos get zero
    # probability, unless they are the end-of-text token itself (LLaDA pads with eos; Dream's bos is eos).
    process = MaskedDiffusion(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id,
                              pad_id=tokenizer.pad_id if tokenizer.pad_id != eos else None,
                              bos_id=tokenizer.bos_id if tokenizer.bos_id != eos else None, schedule=LinearSchedule())
    return ForeignModel(model=model, process=process, tokenizer=tokenizer, config=config, architecture=arch.name)
