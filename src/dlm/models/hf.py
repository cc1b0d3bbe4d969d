"""dlm checkpoints as Hugging Face `transformers` models (the extra ``dlm[hf]``).

``import dlm.models.hf`` registers the model type "dlm" with ``AutoConfig``,
``AutoModelForMaskedLM`` (every diffusion denoiser) and ``AutoModelForCausalLM`` (the AR
baseline). Then a checkpoint folder written by dlm loads offline, with no remote code::

    import dlm.models.hf
    from transformers import AutoModelForMaskedLM, AutoTokenizer
    model = AutoModelForMaskedLM.from_pretrained("runs/x/checkpoint-000500")
    tokenizer = AutoTokenizer.from_pretrained("runs/x/checkpoint-000500")

and what ``model.save_pretrained(d)`` and ``tokenizer.save_pretrained(d)`` write is a dlm
checkpoint again (``dlm generate --model d``): the config keeps dlm's "model", "process" and
"tokenizer" settings, and the weights keep dlm's names.

How the two formats stay one: the Hugging Face model holds the dlm ``Transformer``'s
sub-modules as its own children (``embed``, ``blocks``, ``norm``, ...), so its state dict *is*
the Transformer's, key for key, with no base-model prefix to add or strip; ``forward`` runs the
Transformer itself, so the logits are dlm's to the bit. A model of vectors (``embed_dim > 0``,
Diffusion-LM) reads ``inputs_embeds`` (B, L, E) or embeds ``input_ids``, and its ``logits`` are
the rounding head's over the predicted clean embeddings (returned too, as ``embeddings``).

Checkpoints written before dlm wrote ``"model_type"`` into config.json cannot be dispatched by
the Auto classes; ``DlmForMaskedLM.from_pretrained`` (or ``DlmForCausalLM``) reads them as they
are, or add ``"model_type": "dlm"`` to their config.json.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dlm.errors import DlmError
from dlm.models import hf_format
from dlm.models.transformer import ModelConfig, Transformer

try:
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, GenerationMixin,
                              PretrainedConfig, PreTrainedModel)
    from transformers.modeling_outputs import CausalLMOutput, MaskedLMOutput
except ImportError as e:
    raise DlmError(f"dlm.models.hf needs Hugging Face transformers ({e.name or e} is missing): "
                   f"pip install 'dlm[hf]'") from None


class DlmConfig(PretrainedConfig):
    """A dlm config.json as transformers sees it: dlm's nested settings, kept as they are.

    ``model`` holds the ``ModelConfig`` fields, ``process`` the forward process's config (its
    name, schedule, ...), ``tokenizer`` its kind and special ids. Every other entry of dlm's
    config.json (format, step, train, metrics) rides along, so a saved config is still one dlm
    reads. Build one by hand with ``DlmConfig(model=ModelConfig(...).to_dict(), process=...)``.
    """

    model_type = hf_format.MODEL_TYPE

    def __init__(self, model: dict | None = None, process: dict | None = None, tokenizer: dict | None = None,
                 format: str = "dlm", **kwargs):
        self.model = model
        self.process = process
        self.tokenizer = tokenizer
        self.format = format  # what dlm's read_config checks
        super().__init__(**kwargs)

    def model_config(self) -> ModelConfig:
        if not isinstance(self.model, dict):
            raise DlmError("this DlmConfig has no dlm model settings (its \"model\" entry); load a dlm checkpoint "
                           "folder, or build it with DlmConfig(model=ModelConfig(...).to_dict(), process=...)")
        try:
            return ModelConfig(**self.model)
        except (TypeError, ValueError) as e:
            raise DlmError(f"the \"model\" entry of this config does not describe a dlm model ({e}); "
                           f"was it written by a newer dlm? upgrade dlm") from None


@dataclass
class DlmMaskedLMOutput(MaskedLMOutput):
    """``logits`` (B, L, V) over the clean token at every position; for a model of vectors also
    ``embeddings`` (B, L, E), the predicted clean embeddings whose rounding gives the logits."""

    embeddings: Tensor | None = None


class DlmPreTrainedModel(PreTrainedModel):
    config_class = DlmConfig
    base_model_prefix = ""  # the model is its own base: weight names are the Transformer's, unprefixed
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    attention: tuple[str, ...] = ()  # the ModelConfig.attention kinds this class serves
    other_class = ""  # where to send the others

    def __init__(self, config: DlmConfig):
        super().__init__(config)
        model_config = config.model_config()
        if model_config.attention not in self.attention:
            raise DlmError(f"this is a dlm model with {model_config.attention} attention; load it with "
                           f"{self.other_class} (the class its config.json names in \"architectures\")")
        core = Transformer(model_config)
        # Share the Transformer's children instead of nesting it: the state dict keeps dlm's names.
        # The Transformer itself is kept off the module tree (plain attribute) to run forward.
        object.__setattr__(self, "_transformer", core)
        for name, child in core.named_children():
            self.add_module(name, child)
        self.post_init()

    @property
    def transformer(self) -> Transformer:
        """The dlm Transformer sharing these weights: a Denoiser for dlm's samplers and processes."""
        return self._transformer

    def _init_weights(self, module) -> None:
        """Nothing: the Transformer initialises itself (dlm's scheme, not transformers' generic one),
        and a loaded model must find every weight in the file (``from_pretrained`` checks)."""

    def train(self, mode: bool = True):
        super().train(mode)
        self._transformer.training = mode
        return self

    def get_input_embeddings(self):
        return self._transformer.embed

    def get_output_embeddings(self):
        return self._transformer.head  # None when tied to the embedding, as dlm's presets are

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' from_pretrained, made strict like dlm's loader: every weight the model
        needs must be in the file, with its shape, and nothing else."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        problems = {k: sorted(info[k])[:5] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")
                    if info.get(k)}
        if problems:
            raise DlmError(f"the weights in {args[0] if args else 'this folder'} do not match the model its "
                           f"config.json describes: {problems}")
        return (model, info) if want_info else model

    def _run(self, input_ids: Tensor | None, attention_mask: Tensor | None, t, inputs_embeds: Tensor | None):
        """dlm's forward pass -> (logits (B, L, V), predicted embeddings (B, L, E) or None)."""
        cfg = self._transformer.config
        if cfg.embed_dim:
            if inputs_embeds is None:
                if input_ids is None:
                    raise DlmError("pass input_ids (B, L) or inputs_embeds (B, L, E)")
                inputs_embeds = self._transformer.embed_tokens(input_ids)  # (B, L, E): the clean embeddings
            x = inputs_embeds
        else:
            if inputs_embeds is not None:
                raise DlmError("this dlm model reads token ids: pass input_ids, not inputs_embeds")
            if input_ids is None:
                raise DlmError("pass input_ids (B, L)")
            x = input_ids
        B = x.shape[0]
        if t is not None:
            t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
            t = t.expand(B) if t.ndim == 0 else t  # (B,)
        elif cfg.time_conditioning:
            raise DlmError("this dlm model is time-conditioned (its process does not reveal the noise level "
                           "in the input): pass t, the noise level in [0, 1], as a float or a (B,) tensor")
        mask = None if attention_mask is None else attention_mask.bool()  # (B, L), False = padding
        out = self._transformer(x, t, attention_mask=mask)
        if cfg.embed_dim:
            return self._transformer.rounding_logits(out), out  # (B, L, V), (B, L, E)
        return out, None  # (B, L, V)


class DlmForMaskedLM(DlmPreTrainedModel):
    """A dlm diffusion denoiser: ``logits`` (B, L, V) over the clean token at every position.

    ``t`` (float or (B,)) is the noise level, needed only by time-conditioned models (uniform
    and Gaussian diffusion). ``labels`` (B, L), -100 where ignored, give the plain cross-entropy
    of those positions as ``loss`` (not the diffusion bound: that is ``dlm eval``'s business)."""

    attention = ("bidirectional",)
    other_class = "AutoModelForCausalLM (DlmForCausalLM)"

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, t=None,
                inputs_embeds: Tensor | None = None, labels: Tensor | None = None,
                return_dict: bool | None = None, **kwargs) -> DlmMaskedLMOutput | tuple:
        logits, embeddings = self._run(input_ids, attention_mask, t, inputs_embeds)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        out = DlmMaskedLMOutput(loss=loss, logits=logits, embeddings=embeddings)
        return out if return_dict is not False else out.to_tuple()


class DlmForCausalLM(DlmPreTrainedModel, GenerationMixin):
    """dlm's AR baseline: ``logits[:, i]`` predicts token i + 1, as transformers expects, so
    ``generate`` works (without a KV cache: every step reruns the whole sequence). dlm's AR
    models were trained on text that starts with the tokenizer's bos token: prepend it."""

    attention = ("causal",)
    other_class = "AutoModelForMaskedLM (DlmForMaskedLM)"
    _supports_cache_class = False

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                labels: Tensor | None = None, return_dict: bool | None = None, **kwargs) -> CausalLMOutput | tuple:
        logits, _ = self._run(input_ids, attention_mask, None, None)  # (B, L, V)
        loss = None
        if labels is not None:  # position i predicts label i + 1
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        out = CausalLMOutput(loss=loss, logits=logits)
        return out if return_dict is not False else out.to_tuple()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate must not build a transformers cache: dlm's KVCache is its own

    def prepare_inputs_for_generation(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs):
        return {"input_ids": input_ids, "attention_mask": attention_mask}  # no cache: the whole sequence


AutoConfig.register(hf_format.MODEL_TYPE, DlmConfig, exist_ok=True)
AutoModelForMaskedLM.register(DlmConfig, DlmForMaskedLM, exist_ok=True)
AutoModelForCausalLM.register(DlmConfig, DlmForCausalLM, exist_ok=True)
