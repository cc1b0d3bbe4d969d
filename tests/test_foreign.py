"""LLaDA and Dream checkpoints (tiny, random weights, their published layout) as dlm checkpoints.

The native forward pass is checked here against a plain re-implementation written from the
published modelling code (scripts/check_foreign_logits.py checks it against that code itself,
which needs an older `transformers` and so is not part of the tests).
"""

from __future__ import annotations

import json
import math
import shlex

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from dlm.cli import main
from dlm.errors import DlmError
from dlm.models import ModelConfig, Transformer
from dlm.models.transformer import KVCache
from dlm.processes import BlockDiffusion
from dlm.sampling import SAMPLERS, Canvas, sample_blocks
from dlm.training.checkpoint import load_checkpoint, save_checkpoint

from conftest import tiny_model
from foreign_fixtures import write_dream, write_llada


@pytest.fixture(scope="module")
def llada(tmp_path_factory):
    return write_llada(tmp_path_factory.mktemp("llada") / "LLaDA-tiny")


@pytest.fixture(scope="module")
def dream(tmp_path_factory):
    return write_dream(tmp_path_factory.mktemp("dream") / "Dream-tiny")


@pytest.fixture(scope="module", params=["llada", "dream"])
def folder(request, llada, dream):
    return {"llada": llada, "dream": dream}[request.param]


# -- a plain re-implementation of the published forward passes -----------------------------------
def published_weights(folder) -> dict[str, torch.Tensor]:
    state = {}
    for file in folder.glob("*.safetensors"):
        state.update(load_file(str(file)))
    return state


def rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate(x, base):  # (B, H, L, hd), positions 0..L-1, rotate_half convention
    L, hd = x.shape[-2:]
    freqs = torch.outer(torch.arange(L).float(), 1.0 / base ** (torch.arange(0, hd, 2).float() / hd))
    emb = torch.cat([freqs, freqs], -1)
    x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
    return x * emb.cos() + torch.cat([-x2, x1], -1) * emb.sin()


def reference_logits(folder, ids: torch.Tensor) -> torch.Tensor:
    """Logits over every embedding row, computed straight from the published tensors and config.json;
    for Dream after its generation code's shift, cat([logits[:, :1], logits[:, :-1]])."""
    c = json.loads((folder / "config.json").read_text())
    w = published_weights(folder)
    if c["model_type"] == "llada":
        n, H, KV, eps, base = c["n_layers"], c["n_heads"], c["n_kv_heads"], c["rms_norm_eps"], c["rope_theta"]
        p = "model.transformer."
        name = {"emb": p + "wte.weight", "final": p + "ln_f.weight", "head": p + "ff_out.weight"}
        blk = lambda i, k: w[f"{p}blocks.{i}." + {  # noqa: E731
            "ln1": "attn_norm", "ln2": "ff_norm", "q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "attn_out",
            "gate": "ff_proj", "up": "up_proj", "down": "ff_out"}[k] + ".weight"]
        bias = lambda i, k: 0  # noqa: E731
    else:
        n, H, KV = c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"]
        eps, base = c["rms_norm_eps"], c["rope_theta"]
        name = {"emb": "model.embed_tokens.weight", "final": "model.norm.weight", "head": "lm_head.weight"}
        blk = lambda i, k: w[f"model.layers.{i}." + {  # noqa: E731
            "ln1": "input_layernorm", "ln2": "post_attention_layernorm", "q": "self_attn.q_proj",
            "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj", "gate": "mlp.gate_proj",
            "up": "mlp.up_proj", "down": "mlp.down_proj"}[k] + ".weight"]
        bias = lambda i, k: w[f"model.layers.{i}.self_attn.{k}_proj.bias"]  # noqa: E731
    x = w[name["emb"]][ids]
    B, L, D = x.shape
    hd = D // H
    for i in range(n):
        h = rms(x, blk(i, "ln1"), eps)
        q = (h @ blk(i, "q").T + bias(i, "q")).view(B, L, H, hd).transpose(1, 2)
        k = (h @ blk(i, "k").T + bias(i, "k")).view(B, L, KV, hd).transpose(1, 2)
        v = (h @ blk(i, "v").T + bias(i, "v")).view(B, L, KV, hd).transpose(1, 2)
        k, v = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)
        q, k = rotate(q, base), rotate(k, base)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1) @ v
        x = x + att.transpose(1, 2).reshape(B, L, D) @ blk(i, "o").T
        h = rms(x, blk(i, "ln2"), eps)
        x = x + (F.silu(h @ blk(i, "gate").T) * (h @ blk(i, "up").T)) @ blk(i, "down").T
    logits = rms(x, w[name["final"]], eps) @ w[name["head"]].T
    return logits if c["model_type"] == "llada" else torch.cat([logits[:, :1], logits[:, :-1]], 1)


def test_native_forward_matches_the_published_computation(folder):
    ckpt = load_checkpoint(folder)
    V = ckpt.tokenizer.vocab_size
    ids = torch.randint(0, V, (2, 19), generator=torch.Generator().manual_seed(0))
    ids[:, ::3] = ckpt.tokenizer.mask_id
    with torch.no_grad():
        ours = ckpt.model(ids, None)
        theirs = reference_logits(folder, ids)
    assert ours.shape == (2, 19, V) and theirs.shape[-1] > V  # padding rows of the embedding are not scored
    assert (ours - theirs[..., :V]).abs().max() < 1e-4
    assert theirs.std() > 0.3, "logits should be far from uniform, or the comparison proves little"


# -- loading: ids from their config, shapes, options ---------------------------------------------
def test_llada_loads_with_its_config_and_tokenizer(llada):
    config = json.loads((llada / "config.json").read_text())
    ckpt = load_checkpoint(llada)
    tok, cfg = ckpt.tokenizer, ckpt.model.config
    assert tok.mask_id == config["mask_token_id"] == tok.backend.token_to_id("<|mdm_mask|>")
    assert tok.eos_id == tok.pad_id == config["eos_token_id"] == tok.backend.token_to_id("<|endoftext|>")
    assert ckpt.process.mask_id == tok.mask_id and ckpt.process.schedule.alpha(torch.tensor(0.25)) == 0.75
    assert tok.eos_id not in ckpt.process.banned_ids, "LLaDA pads with end-of-text: it must stay writable"
    assert (cfg.vocab_size, cfg.num_outputs) == (config["embedding_size"], tok.vocab_size) and cfg.num_outputs < 384
    assert not cfg.logit_shift and not cfg.tie_embeddings and cfg.rope_base == 500000.0
    assert ckpt.context_length == config["max_sequence_length"]
    assert tok.decode(tok.encode("The quick brown fox")) == "The quick brown fox"


def test_dream_loads_from_vocab_and_merges(dream):
    config = json.loads((dream / "config.json").read_text())
    assert not (dream / "tokenizer.json").exists()
    ckpt = load_checkpoint(dream)
    tok, cfg = ckpt.tokenizer, ckpt.model.config
    assert tok.mask_id == config["mask_token_id"] == tok.backend.token_to_id("<|mask|>")
    assert tok.eos_id == config["eos_token_id"] and tok.eos_id not in ckpt.process.banned_ids
    assert cfg.logit_shift and cfg.qkv_bias and cfg.kv_heads == config["num_key_value_heads"] < cfg.n_heads
    assert ckpt.model.blocks[0].attn.qkv.weight.shape == (64 + 2 * 32, 64)  # q: 4 heads, k and v: 2 heads of 16
    assert ckpt.context_length == config["max_position_embeddings"]
    text = "it's 42 o'clock,\n  café <|mask|>"
    assert tok.decode(tok.encode(text)) == text and tok.mask_id not in tok.encode(text), "typed text stays text"


def test_a_single_weights_file_loads_the_same_as_shards(tmp_path, llada):
    single = write_llada(tmp_path / "one", shards=1)
    assert (single / "model.safetensors").exists() and not (single / "model.safetensors.index.json").exists()
    ids = torch.arange(20)[None] + 10
    assert torch.equal(load_checkpoint(single).model(ids, None), load_checkpoint(llada).model(ids, None))


def test_bf16_weights_and_dtype(tmp_path, dream):
    fp32 = load_checkpoint(dream)
    bf16 = load_checkpoint(dream, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf16.model.parameters())
    ids = torch.arange(24)[None] + 7
    with torch.no_grad():
        a, b = fp32.model(ids, None), bf16.model(ids, None)
    assert b.dtype == torch.bfloat16 and (a - b.float()).abs().max() < 0.25 * a.abs().max()
    stored = write_dream(tmp_path / "bf16", dtype=torch.bfloat16)  # as published: bf16 on disk
    assert load_checkpoint(stored).model.embed.weight.dtype == torch.float32
    canvas = Canvas.for_generation([bf16.tokenizer.encode("The quick")], 6, fill_id=bf16.tokenizer.mask_id,
                                   pad_id=bf16.tokenizer.pad_id)
    out = SAMPLERS["confidence"](bf16.model, bf16.process, canvas, steps=6, generator=torch.Generator().manual_seed(0))
    assert not (out.tokens == bf16.tokenizer.mask_id).any()


# -- sampling ------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler,knobs", [
    ("ancestral", {}),
    ("confidence", {}),
    ("confidence", {"block_length": 4, "threshold": 0.3}),
    ("confidence", {"block_length": 4, "cache": "prefix"}),
    ("confidence", {"block_length": 4, "cache": "dual"}),
    ("remdm", {}),
])
def test_samplers_write_every_position_and_only_tokenizer_ids(folder, sampler, knobs):
    ckpt = load_checkpoint(folder)
    tok = ckpt.tokenizer
    prompts = [tok.encode("The quick brown"), tok.encode("Diffusion")]
    canvas = Canvas.for_generation(prompts, 8, fill_id=tok.mask_id, pad_id=tok.pad_id)
    out = SAMPLERS[sampler](ckpt.model, ckpt.process, canvas, steps=8, temperature=1.0,
                            generator=torch.Generator().manual_seed(0), **knobs)
    written = out.tokens[canvas.editable]
    assert not (written == tok.mask_id).any()
    assert (written < tok.vocab_size).all(), "rows of the embedding past the tokenizer are never sampled"
    assert torch.equal(out.tokens[~canvas.editable], canvas.tokens[~canvas.editable])


def cached_model(**overrides) -> Transformer:
    """A tiny Dream-like model: grouped-query attention, q/k/v biases, shifted logits."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, qkv_bias=True,
                      logit_shift=True, max_len=64, **overrides)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.bias.normal_()
    return model


def test_kv_cache_with_shift_and_gqa_gives_the_uncached_logits():
    model = cached_model()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 40, (2, 20), generator=g)
    positions = torch.arange(20).expand(2, 20)
    # block-causal: [0, 12) is clean context that sees only itself; [12, 20) sees everything
    allowed = torch.ones(20, 20, dtype=torch.bool)
    allowed[:12, 12:] = False
    with torch.no_grad():
        full = model(x, None, positions=positions, mask=allowed[None, None])
        cache = KVCache()
        first = model(x[:, :12], None, positions=positions[:, :12], mask=allowed[None, None, :12, :12],
                      cache=cache, commit=12)
        rest = model(x[:, 12:], None, positions=positions[:, 12:], mask=allowed[None, None, 12:], cache=cache)
    assert torch.allclose(first, full[:, :12], atol=1e-5)
    assert torch.allclose(rest, full[:, 12:], atol=1e-5), "the first cached position is predicted from position 11"
    assert cache.keys[0].shape == (2, 2, 12, 8), "the cache keeps the 2 key/value heads, not 4"


def test_a_cache_that_drops_a_span_predicts_it_from_the_token_before_it():
    model = cached_model()
    x = torch.randint(0, 40, (1, 18), generator=torch.Generator().manual_seed(1))
    positions = torch.arange(18)[None]
    # columns [6, 11) attend to everything; the others only to themselves outside the span (a dual cache)
    span = (torch.arange(18) >= 6) & (torch.arange(18) < 11)
    allowed = span[:, None] | ~span[None, :]
    with torch.no_grad():
        full = model(x, None, positions=positions, mask=allowed[None, None])
        cache = KVCache()
        model(x, None, positions=positions, mask=allowed[None, None], cache=cache, commit=18)
        kept = cache.select(~span)
        middle = model(x[:, span], None, positions=positions[:, span], mask=torch.ones(1, 1, 5, 18, dtype=torch.bool),
                       cache=kept)
    assert torch.allclose(middle, full[:, span], atol=1e-5)


def test_block_sampler_cache_changes_nothing_with_shift_and_gqa():
    model = cached_model()
    process = BlockDiffusion(vocab_size=40, mask_id=39, block_size=4)
    canvas = Canvas.for_generation([[1, 2, 3], [4, 5, 6, 7, 8]], 10, fill_id=39, pad_id=0)
    cached = sample_blocks(model, process, canvas, steps=10, temperature=0.0)
    plain = sample_blocks(model, process, canvas, steps=10, temperature=0.0, use_cache=False)
    assert torch.equal(cached.tokens, plain.tokens)
    assert not (cached.tokens == 39).any()


# -- the command line ----------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [[], ["--sampler", "confidence", "--block-length", "4", "--dtype", "bfloat16"]])
def test_generate_from_the_command_line(folder, capsys, extra):
    code = main(["generate", str(folder), "--prompt", "The quick", "--length", "8", "--steps", "4",
                 "--device", "cpu", "--json", *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    reply = json.loads(out)
    assert reply["samples"][0].startswith("The quick") and reply["nfe"] >= 1


def test_infill_from_the_command_line(dream, capsys):
    code = main(["infill", str(dream), "--text", "The quick <fill:4> over the lazy dog", "--device", "cpu", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    text = json.loads(out)["text"]
    assert text.startswith("The quick ") and text.endswith(" over the lazy dog")


def test_serve_answers_completions_from_a_foreign_model(folder):
    pytest.importorskip("uvicorn", reason="the [server] extra is not installed")
    from fastapi.testclient import TestClient

    from dlm.server.app import create_app
    from dlm.server.limits import Limits

    ckpt = load_checkpoint(folder)
    with TestClient(create_app(ckpt, limits=Limits(max_tokens=16, timeout_s=30), model_name="tiny", seed=0)) as client:
        reply = client.post("/v1/completions", json={"prompt": "The quick", "max_tokens": 6, "steps": 3,
                                                     "sampler": "confidence", "seed": 1})
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["prompt_tokens"] == len(ckpt.tokenizer.encode("The quick"))


# -- errors --------------------------------------------------------------------------------------
def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_an_unsupported_architecture_is_named(tmp_path):
    folder = write_dream(tmp_path / "qwen", model_type="qwen2")
    with pytest.raises(DlmError, match=r"'qwen2' model, which dlm cannot load.*LLaDA \(model_type 'llada'\), "
                                       r"Dream \(model_type 'dream'\)"):
        load_checkpoint(folder)


@pytest.mark.parametrize("make,message", [
    (lambda f: edit_config(f, block_type="sequential"), "uses block_type='sequential', which dlm does not implement"),
    (lambda f: edit_config(f, d_model=96), "do not fit the model in config.json|do not match the model"),
    (lambda f: edit_config(f, n_layers=3), "lack 9 tensors that config.json implies"),
    (lambda f: edit_config(f, mask_token_id=None), "does not give the mask token id"),
    (lambda f: edit_config(f, mask_token_id=100000), "special token ids .* outside the tokenizer"),
    (lambda f: edit_config(f, embedding_size=128, vocab_size=128), "tokenizer has 300 tokens but the model 128"),
    (lambda f: (f / "model-00002-of-00002.safetensors").unlink(), "model-00002-of-00002.safetensors is missing"),
    (lambda f: (f / "model-00001-of-00002.safetensors").write_bytes(b"\x00garbage"), "are corrupt"),
    (lambda f: (f / "tokenizer.json").unlink(), "has no tokenizer"),
    (lambda f: (f / "config.json").write_text("{broken"), "config.json is corrupt"),
])
def test_damaged_or_mismatched_folders_are_explained(tmp_path, make, message):
    folder = write_llada(tmp_path / "llada")
    make(folder)
    with pytest.raises(DlmError, match=message):
        load_checkpoint(folder)


def test_the_cli_reports_an_unsupported_model_without_a_traceback(tmp_path, capsys):
    folder = write_llada(tmp_path / "x", model_type="mdlm")
    assert main(["generate", str(folder), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "'mdlm' model, which dlm cannot load" in err and "Traceback" not in err


# -- dlm's own checkpoints are untouched ---------------------------------------------------------
def test_a_dlm_checkpoint_without_the_new_config_keys_loads_bit_identically(tmp_path, tokenizer, process):
    model = tiny_model(tokenizer.vocab_size)
    folder = save_checkpoint(tmp_path / "run", step=1, model=model, process=process, tokenizer=tokenizer,
                             train_config={})
    config = json.loads((folder / "config.json").read_text())
    for key in ("n_kv_heads", "qkv_bias", "logit_shift", "output_size"):  # what configs written before had
        del config["model"][key]
    (folder / "config.json").write_text(json.dumps(config))
    ckpt = load_checkpoint(tmp_path / "run")
    ids = torch.tensor([tokenizer.encode("To be, or not to be")])
    with torch.no_grad():
        assert torch.equal(ckpt.model(ids, None), model(ids, None))
    assert ckpt.model.config == model.config and ckpt.tokenizer.specials == tokenizer.specials
    bf16 = load_checkpoint(tmp_path / "run", dtype=torch.bfloat16)
    assert bf16.model.embed.weight.dtype == torch.bfloat16


def test_the_readme_commands_run_on_tiny_folders(llada, dream, capsys):
    """The README's LLaDA/Dream lines, on the tiny folders instead of the 7-8B downloads (`dlm
    serve` is only parsed: it would not return)."""
    from pathlib import Path

    from dlm.cli import build_parser

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("\n### LLaDA and Dream checkpoints\n", 1)[1].split("\n### ", 1)[0]
    lines = [line for line in section.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
             if line.startswith("dlm ")]
    assert len(lines) >= 3
    folders = {"models/LLaDA-8B-Instruct": str(llada), "models/Dream-v0-Base-7B": str(dream)}
    for line in lines:
        for name, path in folders.items():
            line = line.replace(name, path)
        argv = shlex.split(line)[1:] + ["--device", "cpu"]
        if argv[0] == "serve":
            assert build_parser().parse_args(argv).checkpoint in folders.values()
            continue
        assert main(argv + ["--no-live"]) == 0, line
    capsys.readouterr()
