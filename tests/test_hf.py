"""Hugging Face folders: dlm checkpoints load through transformers' Auto classes, offline, with
dlm's logits to the bit, and what save_pretrained writes is a dlm checkpoint again."""

import json
import os
import re
import shutil
import socket
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers (huggingface_hub) reads it
transformers = pytest.importorskip("transformers")

import dlm.models.hf as hf  # noqa: E402  (registers the "dlm" model type)
from dlm.cli import main  # noqa: E402
from dlm.data import train_bpe_tokenizer  # noqa: E402
from dlm.errors import DlmError  # noqa: E402
from dlm.models import hf_format  # noqa: E402
from dlm.sampling import Canvas, sample_ancestral  # noqa: E402
from dlm.training.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402

from conftest import TEXT, build  # noqa: E402

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer  # noqa: E402

README = Path(__file__).resolve().parent.parent / "README.md"
AUTO = {hf_format.MASKED_LM: AutoModelForMaskedLM, hf_format.CAUSAL_LM: AutoModelForCausalLM}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test here runs offline: any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a test of Hugging Face folders tried to use the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def saved(tmp_path, tokenizer, process_name: str = "masked", **model) -> Path:
    """A dlm checkpoint folder of a tiny model of the process `process_name`."""
    process, net = build(process_name, tokenizer, **model)
    return save_checkpoint(tmp_path / process_name, step=5, model=net, process=process, tokenizer=tokenizer,
                           train_config={"data": "test"}, metrics={"val_bits_per_char": 3.0})


def left_padded(tokenizer, batch: int = 3, length: int = 10):
    """Token ids (B, L) and an attention mask whose first rows are left-padded."""
    x = torch.randint(4, tokenizer.vocab_size, (batch, length), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(batch - 1):
        mask[row, : 2 * row + 1] = 0
        x[row, : 2 * row + 1] = tokenizer.pad_id
    return x, mask


def test_the_class_names_the_checkpoint_writes_are_the_classes():
    assert hf.DlmForMaskedLM.__name__ == hf_format.MASKED_LM and hf.DlmForCausalLM.__name__ == hf_format.CAUSAL_LM
    assert hf.DlmConfig.model_type == hf_format.MODEL_TYPE == "dlm"


def test_a_dlm_checkpoint_loads_with_automodelformaskedlm(tmp_path, tokenizer):
    folder = saved(tmp_path, tokenizer)
    written = json.loads((folder / "config.json").read_text())
    assert written["model_type"] == "dlm" and written["architectures"] == ["DlmForMaskedLM"]
    assert isinstance(AutoConfig.from_pretrained(folder), hf.DlmConfig)
    model = AutoModelForMaskedLM.from_pretrained(folder)
    assert type(model) is hf.DlmForMaskedLM and not model.training
    ours = load_checkpoint(folder).model
    assert list(model.state_dict()) == list(ours.state_dict())  # dlm's weight names, no prefix
    x, mask = left_padded(tokenizer)
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, ours(x))
        assert torch.equal(model(input_ids=x, attention_mask=mask).logits, ours(x, attention_mask=mask.bool()))
        out = model(input_ids=x, return_dict=False)
    assert isinstance(out, tuple) and torch.equal(out[0], ours(x).detach())


def test_the_transformer_inside_shares_the_weights(tmp_path, tokenizer):
    model = AutoModelForMaskedLM.from_pretrained(saved(tmp_path, tokenizer))
    with torch.no_grad():
        model.embed.weight.mul_(2)  # a change through the transformers model ...
    x = torch.randint(0, tokenizer.vocab_size, (1, 6))
    assert torch.equal(model.transformer(x), model(input_ids=x).logits)  # ... is the dlm Transformer's too
    assert model.transformer.embed.weight.data_ptr() == model.embed.weight.data_ptr()


def test_save_pretrained_writes_a_dlm_checkpoint_that_samples_the_same(tmp_path, tokenizer):
    folder = saved(tmp_path, tokenizer)
    model = AutoModelForMaskedLM.from_pretrained(folder)
    auto_tok = AutoTokenizer.from_pretrained(folder)
    out = tmp_path / "hf-copy"
    model.save_pretrained(out)
    auto_tok.save_pretrained(out)
    original, again = load_checkpoint(folder), load_checkpoint(out)
    assert again.config["process"] == original.config["process"]
    assert again.config["train"] == {"data": "test"} and again.step == 5
    assert again.process.mask_id == tokenizer.mask_id and again.tokenizer.specials == tokenizer.specials
    x, mask = left_padded(tokenizer)
    with torch.no_grad():
        assert torch.equal(again.model(x, attention_mask=mask.bool()), original.model(x, attention_mask=mask.bool()))
    samples = []
    for ckpt in (original, again):
        canvas = Canvas.for_generation([ckpt.tokenizer.encode("To be")], 12, fill_id=ckpt.tokenizer.mask_id,
                                       pad_id=ckpt.tokenizer.pad_id)
        result = sample_ancestral(ckpt.model, ckpt.process, canvas, steps=6, temperature=1.0,
                                  generator=torch.Generator().manual_seed(0))
        samples.append(result.tokens)
    assert torch.equal(samples[0], samples[1])
    assert (samples[1] != tokenizer.mask_id).all()  # a finished sample from the transformers-written folder


def test_dlm_generate_reads_a_save_pretrained_folder(tmp_path, tokenizer, capsys):
    model = AutoModelForMaskedLM.from_pretrained(saved(tmp_path, tokenizer))
    out = tmp_path / "hf-copy"
    model.save_pretrained(out)
    with pytest.raises(DlmError, match="tokenizer.save_pretrained"):  # the weights alone are not enough ...
        load_checkpoint(out)
    AutoTokenizer.from_pretrained(tmp_path / "masked" / "checkpoint-000005").save_pretrained(out)
    assert main(["generate", str(out), "--prompt", "To be", "--length", "8", "--steps", "4", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)  # ... with the tokenizer, dlm generates from it
    assert payload["samples"][0].startswith("To be") and len(payload["samples"][0]) > len("To be")


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_autotokenizer_encodes_like_dlm(tmp_path, tokenizer, kind):
    tok = tokenizer if kind == "char" else train_bpe_tokenizer([TEXT] * 5, vocab_size=300)
    folder = saved(tmp_path, tok)
    auto_tok = AutoTokenizer.from_pretrained(folder)
    text = "To be, or not\n  to be: that's the question"
    if kind == "bpe":
        text += " <|mask|><|pad|>"  # typed special tokens are text, as in dlm
    ids = tok.encode(text)
    assert auto_tok(text)["input_ids"] == ids
    assert auto_tok.decode(ids) == tok.decode(ids) == text
    assert (auto_tok.mask_token_id, auto_tok.pad_token_id, auto_tok.eos_token_id, auto_tok.bos_token_id) == \
        (tok.mask_id, tok.pad_id, tok.eos_id, tok.bos_id)
    assert auto_tok.model_max_length == 128
    batch = auto_tok(["To be", "or not to be"], padding=True, return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask"}
    model = AutoModelForMaskedLM.from_pretrained(folder)
    with torch.no_grad():  # the tokenizer's output goes straight into the model, padding and all
        logits = model(**batch).logits
        for row, text in enumerate(["To be", "or not to be"]):
            alone = model(input_ids=torch.tensor([tok.encode(text)])).logits  # (1, n, V)
            torch.testing.assert_close(logits[row, : alone.shape[1]], alone[0])


@pytest.mark.parametrize("process_name", ["masked", "uniform", "block", "ar", "gaussian"])
def test_every_process_round_trips(tmp_path, tokenizer, process_name):
    """Each process's checkpoint loads through the Auto class its config.json names, gives dlm's
    outputs (at a given t for time-conditioned ones), and comes back from save_pretrained intact."""
    folder = saved(tmp_path, tokenizer, process_name)
    ours = load_checkpoint(folder)
    architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
    model = AUTO[architecture].from_pretrained(folder)
    x, mask = left_padded(tokenizer)
    t = torch.tensor([0.2, 0.5, 0.9])
    with torch.no_grad():
        if ours.model.config.embed_dim:  # Diffusion-LM: vectors in, vectors out, logits by rounding
            noisy = ours.model.embed_tokens(x) + torch.randn(*x.shape, ours.model.config.embed_dim)
            out = model(inputs_embeds=noisy, attention_mask=mask, t=t)
            expected = ours.model(noisy, t, attention_mask=mask.bool())
            assert torch.equal(out.embeddings, expected)
            assert torch.equal(out.logits, ours.model.rounding_logits(expected))
            assert torch.equal(model(input_ids=x, t=t).embeddings, ours.model(ours.model.embed_tokens(x), t))
        else:
            expected = ours.model(x, t, attention_mask=mask.bool())
            assert torch.equal(model(input_ids=x, attention_mask=mask, t=t).logits, expected)
        if ours.model.config.time_conditioning:
            same_t = model(input_ids=x, t=0.5).logits
            assert torch.equal(same_t, model(input_ids=x, t=torch.full((3,), 0.5)).logits)
            with pytest.raises(DlmError, match="pass t"):
                model(input_ids=x)
    model.save_pretrained(tmp_path / "copy")
    shutil.copy(folder / "tokenizer.json", tmp_path / "copy")
    again = load_checkpoint(tmp_path / "copy")
    assert again.process.config() == ours.process.config() and type(again.process) is type(ours.process)
    assert again.model.config == ours.model.config
    for name, weight in ours.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[name], weight), name


def test_an_ar_checkpoint_is_a_causal_lm(tmp_path, tokenizer):
    folder = saved(tmp_path, tokenizer, "ar")
    ours = load_checkpoint(folder)
    with pytest.raises(DlmError, match="AutoModelForCausalLM"):
        AutoModelForMaskedLM.from_pretrained(folder)
    with pytest.raises(DlmError, match="AutoModelForMaskedLM"):
        AutoModelForCausalLM.from_pretrained(saved(tmp_path, tokenizer, "masked"))
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert type(model) is hf.DlmForCausalLM
    x0 = torch.tensor([tokenizer.encode("To be, or not")])  # (1, L)
    inputs = torch.cat([torch.tensor([[tokenizer.bos_id]]), x0], dim=1)  # [bos, x_1 .. x_L]
    with torch.no_grad():
        # transformers' convention (logits[:, i] predicts token i + 1) is dlm's AR likelihood
        loss = model(input_ids=inputs, labels=inputs).loss
        plain = type(ours.process)(vocab_size=tokenizer.vocab_size, bos_id=tokenizer.bos_id)  # bans nothing
        nll = plain.token_nll(ours.model, x0)  # (1, L) nats
        torch.testing.assert_close(loss.double(), nll.mean().double())
        generated = model.generate(inputs[:, :4], max_new_tokens=6, do_sample=False)
        x = inputs[:, :4]
        for _ in range(6):  # greedy decoding with dlm's model, by hand
            x = torch.cat([x, ours.model(x)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, x)


def test_a_checkpoint_from_before_model_type_still_loads(tmp_path, tokenizer):
    folder = saved(tmp_path, tokenizer)
    config = json.loads((folder / "config.json").read_text())
    del config["model_type"], config["architectures"]
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").unlink()
    ours = load_checkpoint(folder).model  # dlm reads it as before
    with pytest.raises(ValueError):  # transformers' Auto classes need the model type ...
        AutoModelForMaskedLM.from_pretrained(folder)
    model = hf.DlmForMaskedLM.from_pretrained(folder)  # ... the class itself does not
    x = torch.randint(0, tokenizer.vocab_size, (2, 7))
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, ours(x))


def test_weights_that_do_not_match_are_refused(tmp_path, tokenizer):
    from safetensors.torch import load_file, save_file

    folder = saved(tmp_path, tokenizer)
    weights = load_file(folder / "model.safetensors")
    del weights["blocks.1.ffn.down.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(DlmError, match="blocks.1.ffn.down.weight"):
        AutoModelForMaskedLM.from_pretrained(folder)


def test_a_config_without_dlm_settings_is_refused():
    with pytest.raises(DlmError, match="no dlm model settings"):
        hf.DlmForMaskedLM(hf.DlmConfig())


def test_readme_example_runs_as_written(tmp_path, tokenizer, monkeypatch):
    """The "Hugging Face folders" section's Python, against a tiny checkpoint at runs/shakespeare."""
    process, net = build("masked", tokenizer)
    save_checkpoint(tmp_path / "runs" / "shakespeare", step=1, model=net, process=process, tokenizer=tokenizer,
                    train_config={})
    section = README.read_text().split("\n## Hugging Face folders\n", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert load_checkpoint(tmp_path / "runs" / "shakespeare-hf").model.config == net.config
