"""Check dlm's native LLaDA and Dream forward passes against their reference modelling code.

    python scripts/check_foreign_logits.py REFERENCE_DIR

REFERENCE_DIR holds the published modelling code: modeling_llada.py + configuration_llada.py
and modeling_dream.py + configuration_dream.py (+ generation_utils.py, which modeling_dream
imports), either directly inside it, or as llada/model/ and dream/model/ (the layout of
NVlabs/Fast-dLLM). It needs the `transformers` those files were written for (4.46), so run it
from an environment of its own, never dlm's:

    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch transformers==4.46.3 safetensors tokenizers
    /tmp/refenv/bin/python scripts/check_foreign_logits.py /path/to/Fast-dLLM

It writes tiny random-weight checkpoints in the published layout (tests/foreign_fixtures.py),
loads each with the reference class (`from_pretrained`, which must find every tensor) and with
`dlm.training.load_checkpoint`, runs both in float32 on the same random ids, and prints the
largest absolute difference of the logits. Dream's logits are compared after Dream's own shift
(its generation code's `cat([logits[:, :1], logits[:, :-1]])`). Exit status 1 if any exceeds
the tolerance. The reference code is never copied into dlm.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.machinery
import importlib.util
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from dlm.models.transformer import Transformer  # noqa: E402
from dlm.training.checkpoint import load_checkpoint  # noqa: E402
from foreign_fixtures import write_dream, write_llada  # noqa: E402

TOLERANCE = 1e-4


def reference_module(root: Path, module: str, subdir: str):
    """Import root[/subdir]/module.py as part of a package (the files use relative imports)."""
    folder = root / subdir if (root / subdir / f"{module}.py").exists() else root
    if not (folder / f"{module}.py").exists():
        raise SystemExit(f"no {module}.py in {root} or {root / subdir}")
    package = f"reference_{module}"
    spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
    pkg = importlib.util.module_from_spec(spec)
    pkg.__path__ = [str(folder)]
    sys.modules[package] = pkg
    return importlib.import_module(f"{package}.{module}"), folder


def load_reference(cls, folder: Path):
    """The reference class's from_pretrained; every tensor of the folder must land in the model, unchanged."""
    from safetensors.torch import load_file

    model = cls.from_pretrained(str(folder), torch_dtype=torch.float32).eval()
    published = {}
    for file in folder.glob("*.safetensors"):
        published.update(load_file(str(file)))
    state = model.state_dict()
    if set(published) != set(state):
        only_folder, only_model = sorted(set(published) - set(state)), sorted(set(state) - set(published))
        raise SystemExit(f"the reference model's tensors differ from the folder's: only in the folder {only_folder}, "
                         f"only in the model {only_model}")
    changed = [name for name, tensor in published.items() if not torch.equal(tensor.float(), state[name])]
    if changed:
        raise SystemExit(f"the reference model did not load {changed}")
    return model


def full_vocabulary(model: Transformer) -> Transformer:
    """The same weights with every row of the head scored (dlm scores only the tokenizer's tokens)."""
    full = Transformer(dataclasses.replace(model.config, output_size=0)).eval()
    full.load_state_dict(model.state_dict())
    return full


def compare(name: str, ours: torch.Tensor, theirs: torch.Tensor, where: torch.Tensor) -> bool:
    diff = (ours - theirs).abs()[where].max().item()
    ok = diff <= TOLERANCE
    print(f"  {name:<58} ours {tuple(ours.shape)} ref {tuple(theirs.shape)}  max|diff| {diff:.2e}  "
          f"{'ok' if ok else 'FAIL'}")
    return ok


def check_llada(root: Path, work: Path) -> bool:
    modeling, folder = reference_module(root, "modeling_llada", "llada/model")
    print(f"LLaDA: reference {folder / 'modeling_llada.py'}")
    ok = True
    for heads, kv in ((4, 4), (4, 2)):
        path = write_llada(work / f"llada-{heads}-{kv}", n_heads=heads, n_kv_heads=kv, seed=heads + kv)
        ref = load_reference(modeling.LLaDAModelLM, path)
        ckpt = load_checkpoint(path)
        full = full_vocabulary(ckpt.model)
        V = ckpt.model.config.num_outputs
        g = torch.Generator().manual_seed(0)
        for B, L in ((2, 16), (3, 37), (1, 128)):
            x = torch.randint(0, V, (B, L), generator=g)
            x[:, ::5] = ckpt.tokenizer.mask_id  # a canvas with [MASK]s, as the sampler sees it
            with torch.no_grad():
                theirs = ref(x).logits  # (B, L, embedding_size)
                ours = ckpt.model(x, None)  # (B, L, V): the tokenizer's tokens only
                ours_full = full(x, None)
            everywhere = torch.ones(B, L, dtype=torch.bool)
            label = f"n_heads={heads} n_kv_heads={kv} B={B} L={L}"
            ok &= compare(label + " (all head rows)", ours_full, theirs, everywhere)
            ok &= compare(label + " (tokenizer rows)", ours, theirs[..., :V], everywhere)
    return ok


def check_dream(root: Path, work: Path) -> bool:
    modeling, folder = reference_module(root, "modeling_dream", "dream/model")
    print(f"Dream: reference {folder / 'modeling_dream.py'}")
    ok = True
    for heads, kv in ((4, 4), (4, 2), (4, 1)):
        path = write_dream(work / f"dream-{heads}-{kv}", n_heads=heads, n_kv_heads=kv, seed=heads + kv)
        ref = load_reference(modeling.DreamModel, path)
        ckpt = load_checkpoint(path)
        full = full_vocabulary(ckpt.model)
        V = ckpt.model.config.num_outputs
        g = torch.Generator().manual_seed(1)
        for B, L, padded in ((2, 16, False), (3, 37, False), (1, 128, False), (3, 24, True)):
            x = torch.randint(0, V, (B, L), generator=g)
            x[:, ::5] = ckpt.tokenizer.mask_id
            real = torch.ones(B, L, dtype=torch.bool)
            if padded:  # left padding of 0, 5 and 11 tokens
                for b, n in enumerate((0, 5, 11)):
                    real[b, :n] = False
                    x[b, :n] = ckpt.tokenizer.pad_id
            with torch.no_grad():
                mask = real[:, None, None, :].expand(B, 1, L, L) if padded else None  # keys that may be attended to
                logits = ref(x, attention_mask=mask).logits  # (B, L, vocab_size)
                theirs = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # Dream's generation shifts by one
                ours = ckpt.model(x, None, attention_mask=real if padded else None)
                ours_full = full(x, None, attention_mask=real if padded else None)
            # real tokens; in a padded row the first real token is predicted from a padding position: skip it
            where = real & torch.cat([torch.ones(B, 1, dtype=torch.bool), real[:, :-1]], dim=1)
            label = f"n_heads={heads} n_kv_heads={kv} B={B} L={L}" + (" left-padded" if padded else "")
            ok &= compare(label + " (all head rows)", ours_full, theirs, where)
            ok &= compare(label + " (tokenizer rows)", ours, theirs[..., :V], where)
    return ok


def check_dream_tokenizer(root: Path, work: Path) -> bool:
    """dlm builds Dream's byte-level BPE from vocab.json + merges.txt; the reference DreamTokenizer must agree."""
    tokenization, folder = reference_module(root, "tokenization_dream", "dream/model")
    path = write_dream(work / "dream-tokenizer")
    theirs = tokenization.DreamTokenizer.from_pretrained(str(path))
    ours = load_checkpoint(path).tokenizer
    texts = ["The quick brown fox", "  two spaces, tabs\tand\nnewlines\n\n", "numbers 1234567890 and 3.14",
             "unicode: caf\u00e9 na\u00efve \u4e2d\u6587 \U0001f600", "it's, we'll, they'd; I'M", "<|mask|> stays text"]
    # dlm never reads a special token out of typed text: the reference does the same with split_special_tokens
    same = sum(ours.encode(t) == theirs.encode(t, add_special_tokens=False, split_special_tokens=True)
               and ours.decode(ours.encode(t)) == t for t in texts)
    ids = {k: theirs.convert_tokens_to_ids(theirs.special_tokens_map.get(k + "_token") or "") for k in ("eos", "pad")}
    ids["mask"] = theirs.convert_tokens_to_ids("<|mask|>")
    agree = all(ours.specials[k] == i for k, i in ids.items())
    ok = same == len(texts) and agree
    print(f"Dream tokenizer: reference {folder / 'tokenization_dream.py'}: {same}/{len(texts)} texts encode to the "
          f"same ids and decode back; special ids {ids} {'agree' if agree else 'DIFFER'}  {'ok' if ok else 'FAIL'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, help="folder with the reference modelling code")
    args = parser.parse_args()
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, float32, tolerance {TOLERANCE:g} "
          f"(max |logit difference|)")
    with tempfile.TemporaryDirectory() as tmp:
        ok = check_llada(args.reference, Path(tmp))
        ok &= check_dream(args.reference, Path(tmp))
        ok &= check_dream_tokenizer(args.reference, Path(tmp))
    print("all within tolerance" if ok else "SOME DIFFERENCES EXCEED THE TOLERANCE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
