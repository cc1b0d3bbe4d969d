"""Tiny random-weight LLaDA, Dream, Qwen2 and LLaMA checkpoints in their published layout, written in the test.

The config.json keys and tensor names are those of GSAI-ML/LLaDA-8B-Base (an OLMo-style config,
`model.transformer.*` tensors, sharded with model.safetensors.index.json, a tokenizer.json) and
Dream-org/Dream-v0-Base-7B (Qwen2's keys and `model.layers.*` tensors, and Qwen2's vocab.json +
merges.txt + tokenizer_config.json instead of a tokenizer.json); the autoregressive starting points
follow Qwen/Qwen2.5-0.5B (vocab.json + merges.txt, an embedding padded past the tokenizer, no mask
token) and meta-llama/Meta-Llama-3-8B (tokenizer.json, a bos token, untied head, no biases); only the
sizes are tiny. Weights are drawn at a scale that gives non-trivial logits, so that a wrong map shows
up in a comparison.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

TEXT = ("The quick brown fox jumps over the lazy dog. Diffusion language models write by denoising "
        "a masked canvas, 1234567890 times over; they unmask tokens in parallel!\n") * 4

LLADA_SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>"]
DREAM_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", "<|mask|>"]
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|eot_id|>"]


def bpe_backend(vocab_size: int):
    """A byte-level BPE trained on TEXT (no special tokens yet)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    backend.train_from_iterator([TEXT], trainer)
    return backend


def draw(shape, generator: torch.Generator, scale: float) -> torch.Tensor:
    return torch.randn(*shape, generator=generator) * scale


def linear(out_dim: int, in_dim: int, g: torch.Generator) -> torch.Tensor:
    return draw((out_dim, in_dim), g, 1.0 / math.sqrt(in_dim))


def norm(dim: int, g: torch.Generator) -> torch.Tensor:
    return 1.0 + draw((dim,), g, 0.2)


def save_shards(folder: Path, state: dict[str, torch.Tensor], shards: int, dtype: torch.dtype) -> None:
    """model.safetensors, or model-0000k-of-0000n.safetensors + model.safetensors.index.json (as published)."""
    from safetensors.torch import save_file

    state = {k: v.to(dtype).contiguous() for k, v in state.items()}
    if shards == 1:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    names = sorted(state)
    weight_map = {}
    for k in range(shards):
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n] for n in names[k::shards]}
        save_file(part, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    total = sum(v.numel() * v.element_size() for v in state.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def write_llada(folder: str | Path, *, d_model: int = 64, n_layers: int = 2, n_heads: int = 4, n_kv_heads: int = 0,
                mlp_hidden_size: int = 96, tokens: int = 300, embedding_size: int = 384, max_len: int = 128,
                seed: int = 0, shards: int = 2, dtype: torch.dtype = torch.float32, **config_overrides) -> Path:
    """A LLaDA-8B-Base-shaped folder with `tokens` tokenizer entries and `embedding_size` embedding rows
    (LLaDA-8B has n_kv_heads = n_heads; its code also allows fewer, 0 here meaning n_heads)."""
    from tokenizers import AddedToken

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    backend = bpe_backend(tokens - len(LLADA_SPECIALS))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLADA_SPECIALS])
    backend.save(str(folder / "tokenizer.json"))
    ids = {t: backend.token_to_id(t) for t in LLADA_SPECIALS}
    config = {  # the keys of GSAI-ML/LLaDA-8B-Base's config.json, sizes shrunk
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM", "AutoModel": "modeling_llada.LLaDAModelLM"},
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": d_model,
        "embedding_dropout": 0.0, "embedding_size": embedding_size, "eos_token_id": ids["<|endoftext|>"],
        "flash_attention": False, "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None,
        "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False,
        "layer_norm_type": "rms", "layer_norm_with_affine": True, "mask_token_id": ids["<|mdm_mask|>"],
        "max_sequence_length": max_len, "mlp_hidden_size": mlp_hidden_size, "mlp_ratio": 4, "model_type": "llada",
        "multi_query_attention": None, "n_heads": n_heads, "n_kv_heads": n_kv_heads or n_heads, "n_layers": n_layers,
        "pad_token_id": ids["<|endoftext|>"], "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": 1e-05,
        "rope": True, "rope_full_precision": True, "rope_theta": 500000.0, "scale_logits": False,
        "transformers_version": "4.46.3", "use_cache": False, "vocab_size": embedding_size, "weight_tying": False,
    }
    config.update(config_overrides)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": False, "add_eos_token": False, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2))

    g = torch.Generator().manual_seed(seed)
    V, D, F = embedding_size, d_model, mlp_hidden_size
    KV = (n_kv_heads or n_heads) * (d_model // n_heads)
    p = "model.transformer."
    state = {p + "wte.weight": draw((V, D), g, 1.0), p + "ln_f.weight": norm(D, g),
             p + "ff_out.weight": linear(V, D, g)}
    for i in range(n_layers):
        b = f"{p}blocks.{i}."
        state.update({b + "attn_norm.weight": norm(D, g), b + "ff_norm.weight": norm(D, g),
                      b + "q_proj.weight": linear(D, D, g), b + "k_proj.weight": linear(KV, D, g),
                      b + "v_proj.weight": linear(KV, D, g), b + "attn_out.weight": linear(D, D, g),
                      b + "ff_proj.weight": linear(F, D, g), b + "up_proj.weight": linear(F, D, g),
                      b + "ff_out.weight": linear(D, F, g)})
    save_shards(folder, state, shards, dtype)
    return folder


def write_dream(folder: str | Path, *, hidden_size: int = 64, n_layers: int = 2, n_heads: int = 4, n_kv_heads: int = 2,
                intermediate_size: int = 96, tokens: int = 300, vocab_size: int = 320, max_len: int = 128,
                seed: int = 0, shards: int = 2, dtype: torch.dtype = torch.float32, **config_overrides) -> Path:
    """A Dream-v0-Base-7B-shaped folder (GQA when n_kv_heads < n_heads), tokenizer as vocab.json + merges.txt."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    backend = bpe_backend(tokens - len(DREAM_SPECIALS))
    backend.model.save(str(folder))  # vocab.json + merges.txt, as Qwen2 publishes them
    base = backend.get_vocab_size()
    ids = {t: base + k for k, t in enumerate(DREAM_SPECIALS)}  # the added tokens follow the BPE vocabulary
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for t, i in ids.items()}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added,
        "bos_token": "<|beginoftext|>", "eos_token": "<|endoftext|>", "errors": "replace", "mask_token": "<|mask|>",
        "model_max_length": max_len, "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "DreamTokenizer", "unk_token": None}, indent=2))
    config = {  # the keys of Dream-org/Dream-v0-Base-7B's config.json, sizes shrunk
        "architectures": ["DreamModel"], "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|endoftext|>"], "hidden_act": "silu",
        "hidden_size": hidden_size, "initializer_range": 0.02, "intermediate_size": intermediate_size,
        "mask_token_id": ids["<|mask|>"], "max_position_embeddings": max_len, "max_window_layers": n_layers,
        "model_type": "Dream", "num_attention_heads": n_heads, "num_hidden_layers": n_layers,
        "num_key_value_heads": n_kv_heads, "pad_token_id": ids["<|endoftext|>"], "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.46.2", "use_cache": False, "use_sliding_window": False,
        "vocab_size": vocab_size,
    }
    config.update(config_overrides)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|endoftext|>"], "mask_token_id": ids["<|mask|>"],
        "pad_token_id": ids["<|endoftext|>"], "transformers_version": "4.46.2"}, indent=2))

    g = torch.Generator().manual_seed(seed)
    V, D, F = vocab_size, hidden_size, intermediate_size
    KV = n_kv_heads * (hidden_size // n_heads)
    state = {"model.embed_tokens.weight": draw((V, D), g, 1.0), "model.norm.weight": norm(D, g),
             "lm_head.weight": linear(V, D, g)}
    for i in range(n_layers):
        b = f"model.layers.{i}."
        state.update({b + "input_layernorm.weight": norm(D, g), b + "post_attention_layernorm.weight": norm(D, g),
                      b + "self_attn.q_proj.weight": linear(D, D, g), b + "self_attn.q_proj.bias": draw((D,), g, 0.5),
                      b + "self_attn.k_proj.weight": linear(KV, D, g), b + "self_attn.k_proj.bias": draw((KV,), g, 0.5),
                      b + "self_attn.v_proj.weight": linear(KV, D, g), b + "self_attn.v_proj.bias": draw((KV,), g, 0.5),
                      b + "self_attn.o_proj.weight": linear(D, D, g), b + "mlp.gate_proj.weight": linear(F, D, g),
                      b + "mlp.up_proj.weight": linear(F, D, g), b + "mlp.down_proj.weight": linear(D, F, g)})
    save_shards(folder, state, shards, dtype)
    return folder


def causal_lm_weights(*, vocab_size: int, hidden_size: int, n_layers: int, n_heads: int, n_kv_heads: int,
                      intermediate_size: int, qkv_bias: bool, tie: bool, seed: int) -> dict[str, torch.Tensor]:
    """Random tensors under the names of transformers' Qwen2ForCausalLM / LlamaForCausalLM."""
    g = torch.Generator().manual_seed(seed)
    V, D, F = vocab_size, hidden_size, intermediate_size
    KV = n_kv_heads * (hidden_size // n_heads)
    state = {"model.embed_tokens.weight": draw((V, D), g, 1.0), "model.norm.weight": norm(D, g)}
    if not tie:
        state["lm_head.weight"] = linear(V, D, g)
    for i in range(n_layers):
        b = f"model.layers.{i}."
        state.update({b + "input_layernorm.weight": norm(D, g), b + "post_attention_layernorm.weight": norm(D, g),
                      b + "self_attn.q_proj.weight": linear(D, D, g), b + "self_attn.k_proj.weight": linear(KV, D, g),
                      b + "self_attn.v_proj.weight": linear(KV, D, g), b + "self_attn.o_proj.weight": linear(D, D, g),
                      b + "mlp.gate_proj.weight": linear(F, D, g), b + "mlp.up_proj.weight": linear(F, D, g),
                      b + "mlp.down_proj.weight": linear(D, F, g)})
        if qkv_bias:
            state.update({b + "self_attn.q_proj.bias": draw((D,), g, 0.5),
                          b + "self_attn.k_proj.bias": draw((KV,), g, 0.5),
                          b + "self_attn.v_proj.bias": draw((KV,), g, 0.5)})
    return state


def write_qwen2(folder: str | Path, *, hidden_size: int = 64, n_layers: int = 2, n_heads: int = 4, n_kv_heads: int = 2,
                intermediate_size: int = 96, tokens: int = 300, vocab_size: int = 320, tie: bool = False,
                max_len: int = 128, seed: int = 0, shards: int = 1, dtype: torch.dtype = torch.float32,
                **config_overrides) -> Path:
    """A Qwen2.5-0.5B-shaped causal LM folder: vocab.json + merges.txt + tokenizer_config.json (`tokens`
    tokens, no mask), `vocab_size` embedding rows (more than `tokens`, as Qwen2.5 pads), GQA when
    n_kv_heads < n_heads, biases on q/k/v, tie_word_embeddings = `tie` (then no lm_head tensor)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    backend = bpe_backend(tokens - len(QWEN2_SPECIALS))
    backend.model.save(str(folder))  # vocab.json + merges.txt, as Qwen2 publishes them
    base = backend.get_vocab_size()
    ids = {t: base + k for k, t in enumerate(QWEN2_SPECIALS)}  # the added tokens follow the BPE vocabulary
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for t, i in ids.items()}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "bos_token": None,
        "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>", "errors": "replace",
        "model_max_length": max_len, "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}, indent=2))
    eos = ids["<|endoftext|>"]
    config = {  # the keys of Qwen/Qwen2.5-0.5B's config.json, sizes shrunk
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": eos, "eos_token_id": eos,
        "hidden_act": "silu", "hidden_size": hidden_size, "initializer_range": 0.02,
        "intermediate_size": intermediate_size, "max_position_embeddings": max_len, "max_window_layers": n_layers,
        "model_type": "qwen2", "num_attention_heads": n_heads, "num_hidden_layers": n_layers,
        "num_key_value_heads": n_kv_heads, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": max_len,
        "tie_word_embeddings": tie, "torch_dtype": "bfloat16", "transformers_version": "4.40.1", "use_cache": True,
        "use_mrope": False, "use_sliding_window": False, "vocab_size": vocab_size,
    }
    config.update(config_overrides)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({
        "bos_token_id": eos, "do_sample": False, "eos_token_id": eos, "max_new_tokens": 2048,
        "transformers_version": "4.37.0"}, indent=2))
    state = causal_lm_weights(vocab_size=vocab_size, hidden_size=hidden_size, n_layers=n_layers, n_heads=n_heads,
                              n_kv_heads=n_kv_heads, intermediate_size=intermediate_size, qkv_bias=True, tie=tie,
                              seed=seed)
    save_shards(folder, state, shards, dtype)
    return folder


def write_llama(folder: str | Path, *, hidden_size: int = 64, n_layers: int = 2, n_heads: int = 4, n_kv_heads: int = 2,
                intermediate_size: int = 96, tokens: int = 300, vocab_size: int = 300, tie: bool = False,
                max_len: int = 128, seed: int = 1, shards: int = 2, dtype: torch.dtype = torch.float32,
                **config_overrides) -> Path:
    """A Meta-Llama-3-8B-shaped causal LM folder: tokenizer.json with a bos token (no mask), as many
    embedding rows as tokens (as Llama 3), untied head unless `tie`, no biases, sharded weights."""
    from tokenizers import AddedToken

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    backend = bpe_backend(tokens - len(LLAMA_SPECIALS))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA_SPECIALS])
    backend.save(str(folder / "tokenizer.json"))
    ids = {t: backend.token_to_id(t) for t in LLAMA_SPECIALS}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|begin_of_text|>", "clean_up_tokenization_spaces": True, "eos_token": "<|end_of_text|>",
        "model_input_names": ["input_ids", "attention_mask"], "model_max_length": max_len,
        "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2))
    bos, eos = ids["<|begin_of_text|>"], ids["<|end_of_text|>"]
    config = {  # the keys of meta-llama/Meta-Llama-3-8B's config.json, sizes shrunk
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": bos, "eos_token_id": eos, "hidden_act": "silu", "hidden_size": hidden_size,
        "initializer_range": 0.02, "intermediate_size": intermediate_size, "max_position_embeddings": max_len,
        "mlp_bias": False, "model_type": "llama", "num_attention_heads": n_heads, "num_hidden_layers": n_layers,
        "num_key_value_heads": n_kv_heads, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
        "rope_theta": 500000.0, "tie_word_embeddings": tie, "torch_dtype": "bfloat16",
        "transformers_version": "4.40.0.dev0", "use_cache": True, "vocab_size": vocab_size,
    }
    config.update(config_overrides)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({
        "bos_token_id": bos, "eos_token_id": eos, "transformers_version": "4.40.0.dev0"}, indent=2))
    state = causal_lm_weights(vocab_size=vocab_size, hidden_size=hidden_size, n_layers=n_layers, n_heads=n_heads,
                              n_kv_heads=n_kv_heads, intermediate_size=intermediate_size, qkv_bias=False, tie=tie,
                              seed=seed)
    save_shards(folder, state, shards, dtype)
    return folder
