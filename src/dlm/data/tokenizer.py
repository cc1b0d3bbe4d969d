"""Tokenizers: character level and byte-level BPE, both stored as a Hugging Face `tokenizer.json`.

dlm's own carry four explicit special tokens (mask, pad, eos, bos); their ids are looked up here
and handed to the processes, so no library code hard-codes a token id. A tokenizer of another
model (LLaDA, Dream) is read from its `tokenizer.json`, or built from a Qwen2-style
`vocab.json` + `merges.txt`, and gets its special ids from that model's config. Text typed by a
user never turns into a special token: ``"<|mask|>"`` in a prompt is seven ordinary characters.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterable, Sequence

from dlm.errors import DlmError

MASK, PAD, EOS, BOS = "<|mask|>", "<|pad|>", "<|endoftext|>", "<|startoftext|>"
SPECIAL_TOKENS = (MASK, PAD, EOS, BOS)
KINDS = ("char", "bpe")
# Qwen2's pre-tokenizer split (letters, digits one by one, punctuation runs, newlines, spaces).
QWEN2_PRETOKENIZE = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                     r"""\s*[\r\n]+|\s+(?!\S)|\s+""")


class UnknownCharacterError(DlmError):
    """A character the character-level vocabulary has never seen."""


class Tokenizer:
    """Thin wrapper over a `tokenizers.Tokenizer` that knows its special ids and its kind.

    `specials` gives the ids of another model's tokenizer ({"mask", "eos"} required, "pad" and
    "bos" optional; pad defaults to eos); without it, dlm's own four special tokens are looked up."""

    def __init__(self, backend, kind: str, specials: dict[str, int | None] | None = None):
        if kind not in KINDS:
            raise ValueError(f"tokenizer kind must be one of {KINDS}, got {kind!r}")
        self.backend = backend
        self.kind = kind
        # Text is text: never parse "<|mask|>" typed by a user as the mask token.
        self.backend.encode_special_tokens = True
        vocab = backend.get_vocab(with_added_tokens=True)
        # ids run 0 .. n-1; the largest id + 1 also covers a vocabulary with holes
        self.vocab_size = max(backend.get_vocab_size(with_added_tokens=True), max(vocab.values(), default=-1) + 1)
        if specials is None:
            ids = {tok: backend.token_to_id(tok) for tok in SPECIAL_TOKENS}
            missing = [tok for tok, i in ids.items() if i is None]
            if missing:
                raise DlmError(f"tokenizer lacks the special tokens {missing}; it was not made by dlm")
            self.mask_id, self.pad_id, self.eos_id, self.bos_id = (ids[t] for t in SPECIAL_TOKENS)
        else:
            self.mask_id, self.eos_id = specials.get("mask"), specials.get("eos")
            self.pad_id = self.eos_id if specials.get("pad") is None else specials["pad"]
            self.bos_id = specials.get("bos")
            given = {"mask": self.mask_id, "eos": self.eos_id, "pad": self.pad_id, "bos": self.bos_id}
            bad = {k: i for k, i in given.items() if (i is None and k != "bos")
                   or (i is not None and not (isinstance(i, int) and 0 <= i < self.vocab_size))}
            if bad:
                raise DlmError(f"the special token ids {bad} are missing or outside the tokenizer's {self.vocab_size} "
                               f"tokens; the model's config and its tokenizer files do not belong together")
        self.specials = {"mask": self.mask_id, "pad": self.pad_id, "eos": self.eos_id, "bos": self.bos_id}
        self._alphabet = (frozenset(t for t in backend.get_vocab() if t not in SPECIAL_TOKENS)
                          if kind == "char" else None)

    # -- encoding ---------------------------------------------------------------------
    def check_text(self, text: str) -> None:
        """Raise UnknownCharacterError naming the first character the vocabulary lacks."""
        if self._alphabet is None:
            return  # byte-level BPE encodes every string
        unknown = set(text) - self._alphabet
        if unknown:
            # one pass over the text (not one search per unknown character: quadratic on hostile input)
            first = next(i for i, c in enumerate(text) if c in unknown)
            ch = text[first]
            others = sorted(unknown - {ch})
            more = f" (and {len(others)} more: {''.join(others)[:20]!r})" if others else ""
            raise UnknownCharacterError(
                f"character {ch!r} (U+{ord(ch):04X}) at position {first} is not in this model's "
                f"character vocabulary{more}; remove or replace it, or train with a tokenizer that "
                f"covers it (e.g. --tokenizer bpe)")

    def encode(self, text: str) -> list[int]:
        self.check_text(text)
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        for text in texts:
            self.check_text(text)
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def decode_until_eos(self, ids: Sequence[int]) -> str:
        """The text of generated ids: what comes before the first end-of-text token (after it is not text)."""
        ids = list(ids)
        return self.decode(ids[:ids.index(self.eos_id)] if self.eos_id in ids else ids)

    def token_text(self, token_id: int) -> str:
        """How one token reads on its own (for views that draw the canvas token by token)."""
        return self.backend.decode([int(token_id)], skip_special_tokens=False)

    # -- files ------------------------------------------------------------------------
    def save(self, path: str | pathlib.Path) -> None:
        self.backend.save(str(path))

    @classmethod
    def load(cls, path: str | pathlib.Path, *, specials: dict[str, int | None] | None = None) -> "Tokenizer":
        """Read a `tokenizer.json`; `specials` as for the constructor (another model's ids)."""
        from tokenizers import Tokenizer as Backend

        path = pathlib.Path(path)
        try:
            backend = Backend.from_file(str(path))
            model_type = json.loads(path.read_text())["model"]["type"]
        except Exception as e:  # a damaged or foreign file: say which and why
            raise DlmError(f"cannot read the tokenizer {path}: {e}") from None
        kind = {"WordLevel": "char", "BPE": "bpe"}.get(model_type)
        if kind is None:
            raise DlmError(f"{path} holds a {model_type} tokenizer; dlm reads char (WordLevel) and BPE ones")
        return cls(backend, kind, specials)

    @classmethod
    def from_vocab_merges(cls, folder: str | pathlib.Path, *, specials: dict[str, int | None]) -> "Tokenizer":
        """Qwen2's byte-level BPE (Dream's tokenizer) from `vocab.json` + `merges.txt`, with the added
        tokens of `tokenizer_config.json` at their ids; what `transformers` builds for Qwen2TokenizerFast."""
        from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
        from tokenizers import Tokenizer as Backend

        folder = pathlib.Path(folder)
        try:
            vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
            lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
            merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
            config_path = folder / "tokenizer_config.json"
            config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
            added = config.get("added_tokens_decoder", {})  # {"151643": {"content": "<|endoftext|>", ...}}
            backend = Backend(models.BPE(vocab=vocab, merges=merges, byte_fallback=False))
        except Exception as e:
            raise DlmError(f"cannot build the tokenizer from {folder / 'vocab.json'} and merges.txt: {e}") from None
        backend.normalizer = normalizers.NFC()
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        backend.decoder = decoders.ByteLevel()
        for token_id, token in sorted(added.items(), key=lambda item: int(item[0])):
            content = token["content"] if isinstance(token, dict) else str(token)
            if backend.token_to_id(content) is None:
                backend.add_special_tokens([AddedToken(content, special=True, normalized=False)])
            if backend.token_to_id(content) != int(token_id):
                raise DlmError(f"{folder / 'tokenizer_config.json'} puts {content!r} at id {token_id}, but after "
                               f"the {len(vocab)} tokens of vocab.json it lands at {backend.token_to_id(content)}; "
                               f"the tokenizer files do not belong together")
        return cls(backend, "bpe", specials)

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


def train_char_tokenizer(texts: Iterable[str]) -> Tokenizer:
    """One token per character seen in `texts` (sorted by code point), after the specials."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    alphabet = sorted(set().union(*(set(t) for t in texts)))
    if not alphabet:
        raise DlmError("cannot build a character vocabulary from empty text")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({ch: len(SPECIAL_TOKENS) + i for i, ch in enumerate(alphabet)})
    backend = Backend(models.WordLevel(vocab, unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return Tokenizer(backend, "char")


def train_bpe_tokenizer(texts: Iterable[str], *, vocab_size: int = 4096) -> Tokenizer:
    """Byte-level BPE (GPT-2 style) trained locally with the `tokenizers` library."""
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as Backend

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise DlmError(f"a byte-level BPE vocabulary needs at least {256 + len(SPECIAL_TOKENS)} tokens, "
                       f"got {vocab_size}")
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer)
    return Tokenizer(backend, "bpe")


TOKENIZERS = {"char": train_char_tokenizer, "bpe": train_bpe_tokenizer}
