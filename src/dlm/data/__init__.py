"""Data: corpora, tokenizers and packing."""

from dlm.data.corpora import BUILTIN_CORPORA, Corpus, load_corpus, split_documents
from dlm.data.packing import chunk, pack, random_windows
from dlm.data.tokenizer import (SPECIAL_TOKENS, TOKENIZERS, Tokenizer, UnknownCharacterError,
                                train_bpe_tokenizer, train_char_tokenizer)

__all__ = ["BUILTIN_CORPORA", "Corpus", "load_corpus", "split_documents", "chunk", "pack", "random_windows",
           "SPECIAL_TOKENS", "TOKENIZERS", "Tokenizer", "UnknownCharacterError", "train_bpe_tokenizer",
           "train_char_tokenizer"]
