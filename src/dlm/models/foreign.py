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

Autoregressive models are starting points, not checkpoints: `load_ar_source` reads a Qwen2
(`model_type` "qwen2": Qwen2, Qwen2.5) or LLaMA (`model_type` "llama") causal LM in the same
layout into dlm's parameter names with causal attention, which computes their logits exactly
(RoPE on the two halves of each head, `rotate_half`, as dlm's `apply_rope`). A causal LM has no
mask token, so its tokenizer gains one; a run that starts from it (`dlm train --init-from`)
then trains its own process on those weights.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from dlm.data.tokenizer import MASK, Tokenizer
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

QWEN2_WEIGHTS = {
    "embed.weight": ("model.embed_tokens.weight",),
    "blocks.{i}.norm1.weight": ("model.layers.{i}.input_layernorm.weight",),
    "blocks.{i}.attn.qkv.weight": tuple(f"model.layers.{{i}}.self_attn.{p}_proj.weight" for p in "qkv"),
    "blocks.{i}.attn.qkv.bias": tuple(f"model.layers.{{i}}.self_attn.{p}_proj.bias" for p in "qkv"),
    "blocks.{i}.attn.out.weight": ("model.layers.{i}.self_attn.o_proj.weight",),
    "blocks.{i}.norm2.weight": ("model.layers.{i}.post_attention_layernorm.weight",),
    "blocks.{i}.ffn.gate_up.weight": ("model.layers.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.up_proj.weight"),
    "blocks.{i}.ffn.down.weight": ("model.layers.{i}.mlp.down_proj.weight",),
    "norm.weight": ("model.norm.weight",),
    "head.weight": ("lm_head.weight",),  # absent when tie_word_embeddings (then the model has no head either)
}
DREAM_WEIGHTS = QWEN2_WEIGHTS  # Dream keeps the names of the Qwen2 model it was adapted from
LLAMA_WEIGHTS = {ours: theirs for ours, theirs in QWEN2_WEIGHTS.items() if not ours.endswith(".bias")}  # no biases


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
        start = (f" (a {AR_ARCHITECTURES[found.lower()].name} causal LM is a starting point for training: "
                 f"`dlm train --init-from {folder}`)" if isinstance(found, str) and found.lower() in AR_ARCHITECTURES
                 else "")
        raise DlmError(f"{folder} holds a {found!r} model, which dlm cannot load; it loads its own checkpoints "
                       f"and these architectures: {supported}{start}")
    return arch


def first_id(value) -> int | None:
    """A token id from config.json, where eos may be a list of ids."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def their_special_ids(config: dict, folder: Path) -> dict[str, int | None]:
    """mask, eos, pad, bos ids from config.json (generation_config.json as a fallback); None where neither
    gives one."""
    extra = folder / "generation_config.json"
    generation = read_json(extra) if extra.exists() else {}

    def pick(key: str):
        return first_id(config.get(key) if config.get(key) is not None else generation.get(key))

    return {"mask": pick("mask_token_id"), "eos": pick("eos_token_id"), "pad": pick("pad_token_id"),
            "bos": pick("bos_token_id")}


def special_ids(config: dict, folder: Path) -> dict[str, int | None]:
    """mask, eos, pad, bos ids of a diffusion model's folder, which must give mask and eos."""
    ids = their_special_ids(config, folder)
    if ids["mask"] is None or ids["eos"] is None:
        missing = [k for k in ("mask", "eos") if ids[k] is None]
        raise DlmError(f"{folder / 'config.json'} does not give the {' and '.join(missing)} token id "
                       f"({', '.join(k + '_token_id' for k in missing)}); add it to config.json")
    return ids


def read_their_tokenizer(folder: Path, specials: dict[str, int | None]) -> Tokenizer:
    """tokenizer.json if there is one, else Qwen2's vocab.json + merges.txt, with these special ids."""
    if (folder / "tokenizer.json").exists():
        return Tokenizer.load(folder / "tokenizer.json", specials=specials)
    if (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        return Tokenizer.from_vocab_merges(folder, specials=specials)
    raise DlmError(f"{folder} has no tokenizer: it needs tokenizer.json, or vocab.json and merges.txt")


def load_tokenizer(folder: Path, config: dict) -> Tokenizer:
    """A diffusion model's tokenizer; special ids from config.json."""
    return read_their_tokenizer(folder, special_ids(config, folder))


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


# -- autoregressive starting points ------------------------------------------------------------
def causal_lm_model_config(config: dict, name: str, *, qkv_bias: bool, unsupported: dict) -> dict:
    """A Hugging Face causal LM's config.json (the keys Qwen2 and LLaMA share) -> ModelConfig fields, causal
    attention; `unsupported`: the architecture's own settings that dlm does not compute (key -> value)."""
    d_model, n_heads = need(config, "hidden_size"), need(config, "num_attention_heads")
    # transformers >= 5 writes RoPE's settings into rope_parameters; older files have rope_theta and rope_scaling
    rope = config.get("rope_parameters") or {}
    found = dict(unsupported)
    if config.get("rope_scaling"):
        found["rope_scaling"] = config["rope_scaling"]
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        found["rope_parameters"] = rope
    if config.get("hidden_act", "silu") != "silu":
        found["hidden_act"] = config["hidden_act"]
    if config.get("head_dim") not in (None, d_model // n_heads):  # dlm's heads are d_model / n_heads wide
        found["head_dim"] = config["head_dim"]
    refuse(name, found)
    return dict(vocab_size=need(config, "vocab_size"), d_model=d_model, n_layers=need(config, "num_hidden_layers"),
                n_heads=n_heads, n_kv_heads=config.get("num_key_value_heads") or n_heads,
                d_ff=need(config, "intermediate_size"), max_len=need(config, "max_position_embeddings"),
                rope_base=float(rope.get("rope_theta") or config.get("rope_theta") or 10000.0),
                norm_eps=float(config.get("rms_norm_eps") or 1e-6),
                tie_embeddings=bool(config.get("tie_word_embeddings", False)), qkv_bias=qkv_bias, attention="causal")


def qwen2_model_config(config: dict) -> dict:
    """Qwen2's config.json -> ModelConfig fields: biases on q/k/v; sliding-window layers refused."""
    layers = config.get("layer_types") or []
    unsupported = ({"use_sliding_window": True} if config.get("use_sliding_window") else {}) | (
        {"layer_types": sorted(set(layers))} if any(kind != "full_attention" for kind in layers) else {})
    return causal_lm_model_config(config, "Qwen2", qkv_bias=True, unsupported=unsupported)


def llama_model_config(config: dict) -> dict:
    """LLaMA's config.json -> ModelConfig fields: no biases anywhere (attention_bias, mlp_bias refused)."""
    biases = {k: config[k] for k in ("attention_bias", "mlp_bias") if config.get(k)}
    return causal_lm_model_config(config, "LLaMA", qkv_bias=False, unsupported=biases)


AR_ARCHITECTURES = {  # keyed by config.json's model_type, lower-cased
    "qwen2": Architecture("Qwen2", qwen2_model_config, QWEN2_WEIGHTS),
    "llama": Architecture("LLaMA", llama_model_config, LLAMA_WEIGHTS),
}


@dataclass
class ARSource:
    """An autoregressive model as a run's starting point: weights under dlm's names, and its tokenizer."""

    model_config: ModelConfig  # attention="causal", logit_shift=False, vocab_size == tokenizer.vocab_size
    state: dict[str, Tensor]  # dlm parameter names (Transformer.state_dict() keys), float32
    tokenizer: Tokenizer  # the folder's, plus a mask token when it had none
    architecture: str  # "Qwen2" or "LLaMA"
    config: dict  # their config.json

    def build(self, **options) -> Transformer:
        """dlm's Transformer holding these weights (it shares their tensors, so training changes `state`).
        `options` replace ModelConfig fields that no weight depends on: e.g. attention="bidirectional" and
        logit_shift=True for a diffusion model adapted from this AR one (position i - 1 then predicts
        token i, as in the AR model; Dream's recipe), or max_len; others raise DlmError."""
        config = replace(self.model_config, **options)
        with torch.device("meta"):  # no memory and no initialisation for weights about to be replaced
            model = Transformer(config)
        try:
            model.load_state_dict(self.state, strict=True, assign=True)
        except RuntimeError as e:
            raise DlmError(f"the model options {options} change the parameters of the {self.architecture} model "
                           f"({str(e).splitlines()[-1].strip()}); a run started from it keeps its weights, so only "
                           f"options such as attention, logit_shift and max_len may differ") from None
        return model


def ar_architecture(config: dict, folder: Path) -> Architecture:
    found = config.get("model_type")
    supported = " or ".join(f"{a.name} (model_type {key!r})" for key, a in AR_ARCHITECTURES.items())
    if config.get("format") == "dlm":
        raise DlmError(f"{folder} is a dlm checkpoint, not a Hugging Face causal LM: load it with load_checkpoint "
                       f"(or continue its run with --resume); a starting point is a {supported} folder")
    if isinstance(found, str) and found.lower() in ARCHITECTURES:
        raise DlmError(f"{folder} holds a {ARCHITECTURES[found.lower()].name} model, a diffusion model that dlm "
                       f"loads as a checkpoint (load_checkpoint, `dlm generate {folder}`), not as an "
                       f"autoregressive starting point; a starting point is a {supported} causal LM")
    if not isinstance(found, str) or found.lower() not in AR_ARCHITECTURES:
        raise DlmError(f"{folder} holds a {found!r} model; dlm starts training from a {supported} causal LM "
                       f"in the Hugging Face layout")
    return AR_ARCHITECTURES[found.lower()]


def ar_tokenizer(folder: Path, config: dict) -> tuple[Tokenizer, int, list[int]]:
    """The folder's tokenizer, with a mask token added unless config.json names one -> (tokenizer, the number
    of tokens the folder's own tokenizer has, the ids added here). eos is the first of a list; pad defaults
    to eos."""
    ids = their_special_ids(config, folder)
    if ids["eos"] is None:
        raise DlmError(f"{folder / 'config.json'} does not give the end-of-text token id (eos_token_id); add it "
                       f"to config.json or generation_config.json")
    # Qwen2 has no beginning-of-text token: a document starts after the <|endoftext|> that ends the one
    # before it, so end-of-text also begins one (the AR process prepends bos to every sequence).
    bos = ids["eos"] if ids["bos"] is None else ids["bos"]
    # Read with a stand-in mask id (eos) so that the other ids are checked against the folder's tokenizer.
    specials = {"mask": ids["eos"] if ids["mask"] is None else ids["mask"], "eos": ids["eos"], "pad": ids["pad"],
                "bos": bos}
    theirs = read_their_tokenizer(folder, specials)
    if ids["mask"] is not None:
        return theirs, theirs.vocab_size, []
    from tokenizers import AddedToken

    backend = theirs.backend
    # "<|mask|>", or the first free "<|mask_k|>" where the vocabulary already has that string as a token
    name = next(n for n in itertools.chain([MASK], (f"<|mask_{k}|>" for k in itertools.count(1)))
                if backend.token_to_id(n) is None)
    backend.add_special_tokens([AddedToken(name, special=True, normalized=False)])  # the next free id
    mask = backend.token_to_id(name)
    return Tokenizer(backend, theirs.kind, specials | {"mask": mask}), theirs.vocab_size, [mask]


def fit_vocabulary(weight: Tensor, size: int, known: int, added: list[int]) -> Tensor:
    """Rows of an embedding or output head (R, D) -> (size, D), one per tokenizer id: rows past the tokenizer
    dropped (no token reads or writes them), and the rows of tokens added here set to the mean of the
    rows of the folder's `known` tokens (whether or not the embedding had a spare row at that id)."""
    out = weight.new_empty(size, weight.shape[1])  # (size, D)
    kept = min(size, weight.shape[0])
    out[:kept] = weight[:kept]
    mean = weight[:known].mean(dim=0)  # (D,)
    out[kept:] = mean  # only added tokens lie past the embedding's rows
    out[added] = mean
    return out


def load_ar_source(folder: str | Path) -> ARSource:
    """A Qwen2 or LLaMA causal LM folder in the Hugging Face layout -> its weights under dlm's names, float32,
    for a Transformer with causal attention that computes the folder's next-token logits, and its tokenizer.

    The tokenizer gains a mask token, "<|mask|>" at the next free id (unless config.json names a
    mask_token_id). eos comes from config.json (generation_config.json as a fallback; the first of a
    list), bos likewise or eos when there is none (Qwen2), pad likewise or eos.
    The embedding (and an untied head) is cut to exactly tokenizer.vocab_size rows, as dlm's checkpoints
    require: rows past the folder's tokenizer (Qwen2.5 pads 151665 tokens to 151936 rows) are dropped, and
    the added mask token's row, appended or in place of a spare row, is the mean of the tokens' rows. Its
    head row scores a token that samplers ban, so it only matters as a starting value."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DlmError(f"no model folder at {folder}; give a Hugging Face Qwen2 or LLaMA folder (e.g. `hf download "
                       f"Qwen/Qwen2.5-0.5B --local-dir {folder}`)")
    if not (folder / "config.json").exists():
        raise DlmError(f"{folder} has no config.json; a Hugging Face model folder holds config.json, "
                       f"model.safetensors and the tokenizer files")
    config = read_json(folder / "config.json")
    arch = ar_architecture(config, folder)
    try:
        fields = arch.model_config(config)
    except KeyError as e:
        raise DlmError(f"{folder / 'config.json'} describes a {arch.name} model but lacks {e.args[0]!r}; "
                       f"the folder is incomplete or damaged") from None
    tokenizer, known, added = ar_tokenizer(folder, config)
    try:
        published = ModelConfig(**fields)  # as in the folder: vocab_size = its embedding rows
    except (TypeError, ValueError) as e:
        raise DlmError(f"{folder / 'config.json'} does not describe a {arch.name} model dlm can build ({e})") from None
    if known > published.vocab_size:
        raise DlmError(f"{folder}: the tokenizer has {known} tokens but the model {published.vocab_size} embeddings; "
                       f"the tokenizer files do not belong to this model")
    with torch.device("meta"):
        expected = Transformer(published).state_dict()
    state = read_weights(folder, {ours: their_names(ours, arch.weights) for ours in expected}, torch.float32)
    for ours, tensor in state.items():
        if tensor.shape != expected[ours].shape:
            raise DlmError(f"the tensor {' + '.join(their_names(ours, arch.weights))} in {folder} has shape "
                           f"{tuple(tensor.shape)}, but config.json implies {tuple(expected[ours].shape)}; the "
                           f"weights and config.json do not belong together")
    for name in ("embed.weight", "head.weight"):
        if name in state:
            state[name] = fit_vocabulary(state[name], tokenizer.vocab_size, known, added)
    model_config = replace(published, vocab_size=tokenizer.vocab_size)
    return ARSource(model_config=model_config, state=state, tokenizer=tokenizer, architecture=arch.name,
                    config=config)
