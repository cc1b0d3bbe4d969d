"""What a dlm checkpoint folder carries so that Hugging Face `transformers` can read it.

A dlm folder is already almost a Hugging Face one (config.json, model.safetensors,
tokenizer.json). Three additions close the gap, and none of them needs `transformers` to
write: ``"model_type": "dlm"`` and ``"architectures"`` in config.json (how the Auto classes
pick ``dlm.models.hf``'s classes, so no remote code is needed) and a tokenizer_config.json
(how ``AutoTokenizer`` learns the special tokens). The classes themselves live in
``dlm.models.hf``, which imports `transformers`.
"""

from __future__ import annotations

from dlm.data.tokenizer import Tokenizer
from dlm.models.transformer import ModelConfig

MODEL_TYPE = "dlm"
MASKED_LM = "DlmForMaskedLM"  # denoisers: every diffusion process (bidirectional attention)
CAUSAL_LM = "DlmForCausalLM"  # the AR baseline (causal attention)


def architecture(config: ModelConfig) -> str:
    """The transformers class that reads a model of this config."""
    return CAUSAL_LM if config.attention == "causal" else MASKED_LM


def config_fields(config: ModelConfig) -> dict:
    """The config.json entries that let `AutoConfig` and the Auto model classes find dlm's classes."""
    return {"model_type": MODEL_TYPE, "architectures": [architecture(config)]}


def tokenizer_config(tokenizer: Tokenizer, max_len: int) -> dict:
    """tokenizer_config.json for the tokenizer.json of `tokenizer`: the generic fast tokenizer, its
    special tokens, and ``split_special_tokens`` so that text typed as "<|mask|>" stays seven
    characters, as dlm's own tokenizer reads it."""
    names = {"mask": "mask_token", "pad": "pad_token", "eos": "eos_token", "bos": "bos_token"}
    specials = {names[k]: tokenizer.backend.id_to_token(i) for k, i in tokenizer.specials.items() if i is not None}
    return {"tokenizer_class": "PreTrainedTokenizerFast", **specials, "model_max_length": max_len,
            "model_input_names": ["input_ids", "attention_mask"],  # no token_type_ids: dlm has none
            "split_special_tokens": True, "clean_up_tokenization_spaces": False}
