"""A fixed slice of the Shakespeare training text, for the data-constrained regime (many epochs
over little text): `--data shakespeare-slice:chars=1000000`.

Training text: the first `chars` characters of the training works in their fixed order, cut at a
line break. Validation: the first `validation_chars` characters of the held-out works (Henry VI
Part 1, Richard II), without the lines that use a character the slice never does (the character
tokenizer is built from the slice), so nearly the same for every slice size.
"""

from __future__ import annotations

from functools import lru_cache

from dlm.errors import DlmError

NAME = "shakespeare-slice"
DEFAULTS = {"chars": 1_000_000, "validation_chars": 100_000}


def is_slice(spec: str) -> bool:
    return spec.partition(":")[0] == NAME


def parse_slice(spec: str) -> dict[str, int]:
    values = dict(DEFAULTS)
    for item in filter(None, (s.strip() for s in spec.partition(":")[2].split(","))):
        key, _, value = item.partition("=")
        if key not in DEFAULTS:
            raise DlmError(f"{NAME} has no parameter {key!r}; its parameters are {', '.join(DEFAULTS)} "
                           f"(e.g. {NAME}:chars=1000000)")
        try:
            values[key] = int(value)
        except ValueError:
            raise DlmError(f"{NAME} parameter {key} needs an integer, got {value!r}") from None
        if values[key] < 1000:
            raise DlmError(f"{NAME} parameter {key}={values[key]} is too small: use at least 1000 characters")
    return values


def _cut(text: str, chars: int) -> str:
    head = text[:chars]
    newline = head.rfind("\n")
    return head[:newline + 1] if newline > chars // 2 else head


@lru_cache(maxsize=4)
def slice_corpus(spec: str):
    from dlm.data.corpora import Corpus, shakespeare

    p = parse_slice(spec)
    works = shakespeare()
    train, validation = "".join(works.train), "".join(works.validation)
    if p["chars"] > len(train):
        raise DlmError(f"{NAME}:chars={p['chars']} is more than the {len(train):,} characters of the training works")
    text = _cut(train, p["chars"])
    alphabet = set(text)  # the char tokenizer knows only the slice's characters: drop held-out lines with others
    held_out = "".join(line for line in validation.splitlines(keepends=True) if set(line) <= alphabet)
    return Corpus(spec, (text,), (_cut(held_out, p["validation_chars"]),),
                  f"the first {p['chars']:,} characters of Shakespeare's training works")
