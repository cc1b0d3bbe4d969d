"""Qwen2 and LLaMA causal LMs (tiny, random weights, their published layout) as starting points.

dlm's Transformer with the loaded weights and causal attention must give the next-token logits
that `transformers`' own Qwen2ForCausalLM / LlamaForCausalLM compute from the same folder; the
tokenizer gains a mask token; the embedding has exactly one row per tokenizer id; and a model
saved from it reloads as a dlm checkpoint with the same tokenizer and weights.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dlm.errors import DlmError
from dlm.models import Transformer, hf_format
from dlm.models.foreign import load_ar_source
from dlm.processes import Autoregressive
from dlm.training.checkpoint import load_checkpoint, save_checkpoint

from foreign_fixtures import TEXT, write_dream, write_llama, write_qwen2

TEXTS = [TEXT[:120], "it's 42 o'clock,\n  café déjà vu", "  leading spaces\tand tabs\n\n"]

# name -> (writer, options): GQA or not, tied or not, spare embedding rows or exactly one per token
FOLDERS = {
    "qwen2-gqa-untied-spare-rows": (write_qwen2, dict(n_kv_heads=2, tie=False, vocab_size=320)),
    "qwen2-mha-tied": (write_qwen2, dict(n_kv_heads=4, tie=True, vocab_size=300, shards=2)),
    "llama-gqa-untied": (write_llama, dict(n_kv_heads=2, tie=False)),
    "llama-mha-tied-spare-rows": (write_llama, dict(n_kv_heads=4, tie=True, vocab_size=304)),
}


@pytest.fixture(scope="module", params=list(FOLDERS))
def folder(request, tmp_path_factory):
    write, options = FOLDERS[request.param]
    return write(tmp_path_factory.mktemp("ar") / request.param, **options)


def config_of(folder) -> dict:
    return json.loads((folder / "config.json").read_text())


def published(folder) -> dict[str, torch.Tensor]:
    state = {}
    for file in folder.glob("*.safetensors"):
        state.update(load_file(str(file)))
    return state


# -- the forward pass is theirs ------------------------------------------------------------------
def test_causal_logits_match_transformers(folder):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    source = load_ar_source(folder)
    theirs_model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                                     local_files_only=True).eval()
    expected = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}[config_of(folder)["model_type"]]
    assert type(theirs_model).__name__ == expected
    ours_model = source.build().eval()
    known = source.tokenizer.vocab_size - 1  # the folder's tokens; the last id is the added mask
    ids = torch.randint(0, known, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = ours_model(ids, None), theirs_model(ids).logits  # (B, L, V): position i predicts i + 1
    assert ours.shape == (2, 20, source.tokenizer.vocab_size)
    assert (ours[..., :known] - theirs[..., :known]).abs().max() < 1e-4
    assert theirs.std() > 0.3, "logits should be far from uniform, or the comparison proves little"


def test_model_config_follows_config_json(folder):
    config, source = config_of(folder), load_ar_source(folder)
    cfg = source.model_config
    assert (cfg.attention, cfg.logit_shift, cfg.output_size) == ("causal", False, 0)
    assert cfg.vocab_size == source.tokenizer.vocab_size
    assert cfg.tie_embeddings == config["tie_word_embeddings"] and ("head.weight" in source.state) != cfg.tie_embeddings
    assert cfg.kv_heads == config["num_key_value_heads"] and cfg.qkv_bias == (config["model_type"] == "qwen2")
    assert (cfg.rope_base, cfg.norm_eps, cfg.max_len) == (config["rope_theta"], config["rms_norm_eps"],
                                                          config["max_position_embeddings"])
    assert source.architecture == {"qwen2": "Qwen2", "llama": "LLaMA"}[config["model_type"]]
    assert source.config == config
    assert all(v.dtype == torch.float32 for v in source.state.values())
    assert set(source.state) == set(Transformer(cfg).state_dict())


def test_build_adapts_attention_and_shift_without_touching_weights(folder):
    source = load_ar_source(folder)
    model = source.build(attention="bidirectional", logit_shift=True, max_len=32)
    assert model.config.logit_shift and model.config.attention == "bidirectional" and model.config.max_len == 32
    assert all(torch.equal(v, source.state[k]) for k, v in model.state_dict().items())
    with pytest.raises(DlmError, match="change the parameters of the"):
        source.build(time_conditioning=True)


# -- the tokenizer -------------------------------------------------------------------------------
def test_the_tokenizer_gains_a_mask_and_reads_text_as_theirs(folder):
    transformers = pytest.importorskip("transformers")
    source = load_ar_source(folder)
    tok, config = source.tokenizer, config_of(folder)
    theirs = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    known = len(theirs)
    assert tok.mask_id == known and tok.vocab_size == known + 1, "the mask takes the next free id"
    assert tok.backend.id_to_token(tok.mask_id) == "<|mask|>"
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == theirs.encode(text, add_special_tokens=False) and tok.decode(ids) == text
    typed = "a <|mask|> and <|endoftext|>"
    assert tok.decode(tok.encode(typed)) == typed and not {tok.mask_id, tok.eos_id} & set(tok.encode(typed)), \
        "typed text stays text"
    assert tok.eos_id == config["eos_token_id"] and tok.pad_id == tok.eos_id  # no pad_token_id: eos pads
    if config["model_type"] == "qwen2":
        assert tok.bos_id == tok.eos_id == tok.backend.token_to_id("<|endoftext|>")
    else:
        assert tok.bos_id == config["bos_token_id"] == tok.backend.token_to_id("<|begin_of_text|>") != tok.eos_id
    assert tok.decode([*tok.encode("fox"), tok.mask_id, tok.eos_id]) == "fox"  # specials skipped


def test_special_ids_from_generation_config_and_lists(tmp_path):
    folder = write_llama(tmp_path / "instruct", eos_token_id=None, bos_token_id=None)
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 296, "eos_token_id": [299, 297]}))
    tok = load_ar_source(folder).tokenizer
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (296, 299, 299)
    named = load_ar_source(write_llama(tmp_path / "named", mask_token_id=298, pad_token_id=297)).tokenizer
    assert (named.mask_id, named.pad_id, named.vocab_size) == (298, 297, 300), "a mask the config names is kept"


def test_a_vocabulary_that_already_has_the_mask_string_gets_a_fresh_one(tmp_path):
    folder = write_llama(tmp_path / "taken")
    data = json.loads((folder / "tokenizer.json").read_text())
    data["added_tokens"][2]["content"] = "<|mask|>"  # an ordinary special of theirs, not a mask
    (folder / "tokenizer.json").write_text(json.dumps(data))
    tok = load_ar_source(folder).tokenizer
    assert tok.backend.id_to_token(tok.mask_id) == "<|mask_1|>" and tok.mask_id == 300


# -- embedding rows: one per tokenizer id --------------------------------------------------------
def test_rows_past_the_tokenizer_are_dropped_and_the_mask_row_is_their_mean(folder):
    """300 tokens + the mask: the folders with 320 or 304 rows lose their spare rows (the mask takes the
    first one's place), the ones with 300 rows gain one."""
    source, theirs, config = load_ar_source(folder), published(folder), config_of(folder)
    assert (source.tokenizer.vocab_size, source.tokenizer.mask_id) == (301, 300)
    pairs = [("embed.weight", "model.embed_tokens.weight")]
    if not config["tie_word_embeddings"]:
        pairs.append(("head.weight", "lm_head.weight"))
    for ours, name in pairs:
        assert theirs[name].shape == (config["vocab_size"], config["hidden_size"])
        assert source.state[ours].shape == (301, config["hidden_size"])
        assert torch.equal(source.state[ours][:300], theirs[name][:300])
        assert torch.allclose(source.state[ours][300], theirs[name][:300].mean(0))


# -- errors --------------------------------------------------------------------------------------
def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def unlink(folder, *names):
    for name in names:
        (folder / name).unlink()


def drop_tensor(folder, name):
    from safetensors.torch import save_file

    state = load_file(str(folder / "model.safetensors"))
    del state[name]
    save_file(state, str(folder / "model.safetensors"))


@pytest.mark.parametrize("make,message", [
    (lambda f: edit_config(f, model_type="mistral"), r"'mistral' model; .*Qwen2 \(model_type 'qwen2'\) or LLaMA "
                                                     r"\(model_type 'llama'\)"),
    (lambda f: edit_config(f, model_type="llada"), "LLaDA model, a diffusion model .*load_checkpoint"),
    (lambda f: edit_config(f, format="dlm"), "is a dlm checkpoint, not a Hugging Face causal LM"),
    (lambda f: edit_config(f, rope_scaling={"rope_type": "llama3", "factor": 8.0}), "uses rope_scaling="),
    (lambda f: edit_config(f, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}), "uses rope_parameters="),
    (lambda f: edit_config(f, attention_bias=True), "LLaMA checkpoint uses attention_bias=True"),
    (lambda f: edit_config(f, mlp_bias=True), "uses mlp_bias=True"),
    (lambda f: edit_config(f, hidden_act="gelu"), "uses hidden_act='gelu'"),
    (lambda f: edit_config(f, head_dim=32), "uses head_dim=32"),
    (lambda f: edit_config(f, hidden_size=None), "lacks 'hidden_size'"),
    (lambda f: edit_config(f, num_attention_heads=5), "does not describe a LLaMA model dlm can build"),
    (lambda f: edit_config(f, eos_token_id=None) or unlink(f, "generation_config.json"),
     "does not give the end-of-text token id"),
    (lambda f: edit_config(f, bos_token_id=100000), "special token ids .* outside the tokenizer"),
    (lambda f: edit_config(f, num_hidden_layers=3), "lack 9 tensors that config.json implies"),
    (lambda f: edit_config(f, intermediate_size=80), "mlp.gate_proj.weight .* has shape .* config.json implies"),
    (lambda f: edit_config(f, vocab_size=310), r"embed_tokens.weight in .* has shape \(300, 64\), but config.json "
                                               r"implies \(310, 64\)"),
    (lambda f: edit_config(f, vocab_size=128), "tokenizer has 300 tokens but the model 128 embeddings"),
    (lambda f: unlink(f, "model-00002-of-00002.safetensors"), "model-00002-of-00002.safetensors is missing"),
    (lambda f: (f / "model-00001-of-00002.safetensors").write_bytes(b"\x00garbage"), "are corrupt"),
    (lambda f: unlink(f, "tokenizer.json"), "has no tokenizer: it needs tokenizer.json"),
    (lambda f: unlink(f, "config.json"), "has no config.json"),
    (lambda f: (f / "config.json").write_text("{broken"), "config.json is corrupt"),
])
def test_damaged_or_unsupported_llama_folders_are_explained(tmp_path, make, message):
    folder = write_llama(tmp_path / "llama")
    make(folder)
    with pytest.raises(DlmError, match=message):
        load_ar_source(folder)


@pytest.mark.parametrize("make,message", [
    (lambda f: edit_config(f, use_sliding_window=True), "Qwen2 checkpoint uses use_sliding_window=True"),
    (lambda f: edit_config(f, layer_types=["full_attention", "sliding_attention"]), "uses layer_types="),
    (lambda f: unlink(f, "merges.txt"), "has no tokenizer: it needs tokenizer.json, or vocab.json and merges.txt"),
    (lambda f: unlink(f, "model.safetensors"), "has no weights: it needs model.safetensors"),
    (lambda f: drop_tensor(f, "lm_head.weight"), "lack 1 tensors that config.json implies, e.g. 'lm_head.weight'"),
])
def test_damaged_or_unsupported_qwen2_folders_are_explained(tmp_path, make, message):
    folder = write_qwen2(tmp_path / "qwen2")
    make(folder)
    with pytest.raises(DlmError, match=message):
        load_ar_source(folder)


def test_missing_folder_and_diffusion_folders_are_explained(tmp_path):
    with pytest.raises(DlmError, match="no model folder at .*hf download Qwen/Qwen2.5-0.5B"):
        load_ar_source(tmp_path / "nowhere")
    with pytest.raises(DlmError, match="Dream model, a diffusion model that dlm loads as a checkpoint"):
        load_ar_source(write_dream(tmp_path / "dream"))


def test_load_checkpoint_points_a_causal_lm_to_init_from(tmp_path):
    folder = write_qwen2(tmp_path / "qwen2")
    with pytest.raises(DlmError, match=r"'qwen2' model, which dlm cannot load.*--init-from"):
        load_checkpoint(folder)


# -- a run started from it saves and reloads as a dlm checkpoint ---------------------------------
def test_a_checkpoint_from_a_causal_lm_reloads_with_its_tokenizer(tmp_path, folder):
    source = load_ar_source(folder)
    tok = source.tokenizer
    process = Autoregressive.from_config({"name": "ar"}, vocab_size=tok.vocab_size, special_ids=tok.specials)
    model = source.build(max_len=64).eval()
    saved = save_checkpoint(tmp_path / "run", step=3, model=model, process=process, tokenizer=tok,
                            train_config={"init_from": str(folder)})
    hf_tokenizer = json.loads((saved / "tokenizer_config.json").read_text())
    assert hf_tokenizer["mask_token"] == "<|mask|>" and hf_tokenizer["eos_token"] == tok.backend.id_to_token(tok.eos_id)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.tokenizer.specials == tok.specials and ckpt.tokenizer.vocab_size == tok.vocab_size
    assert ckpt.tokenizer.kind == tok.kind == "bpe"
    assert all(ckpt.tokenizer.encode(text) == tok.encode(text) for text in TEXTS)
    assert ckpt.model.config == model.config
    assert all(torch.equal(v, source.state[k]) for k, v in ckpt.model.state_dict().items())
    assert isinstance(ckpt.process, Autoregressive) and ckpt.process.bos_id == tok.bos_id


def test_a_dlm_checkpoint_without_the_tokenizer_entry_still_loads(tmp_path, tokenizer, model, process):
    saved = save_checkpoint(tmp_path / "run", step=1, model=model, process=process, tokenizer=tokenizer,
                            train_config={})
    config = json.loads((saved / "config.json").read_text())
    del config["tokenizer"]  # what a config.json written before the entry holds
    (saved / "config.json").write_text(json.dumps(config))
    ckpt = load_checkpoint(saved)
    assert ckpt.tokenizer.specials == tokenizer.specials
    assert hf_format.tokenizer_config(ckpt.tokenizer, 64)["mask_token"] == "<|mask|>"


def test_a_folder_written_by_current_transformers_loads_the_same(tmp_path, folder):
    """transformers >= 5 writes RoPE's base into rope_parameters (rope_theta: null), head_dim and layer_types."""
    import shutil

    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    theirs.save_pretrained(tmp_path / "saved")
    for file in folder.iterdir():
        if "token" in file.name or file.name in ("vocab.json", "merges.txt"):
            shutil.copy(file, tmp_path / "saved" / file.name)
    saved, original = load_ar_source(tmp_path / "saved"), load_ar_source(folder)
    assert "rope_parameters" in saved.config
    assert saved.model_config == original.model_config
    assert saved.state.keys() == original.state.keys()
    assert all(torch.equal(saved.state[k], original.state[k]) for k in saved.state)
