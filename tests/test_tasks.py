"""Reasoning tasks (dlm.data.tasks): deterministic generators, unique Sudoku solutions, checkers that
reject corrupted answers, disjoint splits, clear errors for bad parameters."""

from __future__ import annotations

import random

import pytest

from dlm.cli import main
from dlm.data.corpora import load_corpus
from dlm.data.tasks import TASKS, load_task, task_splits
from dlm.data.tasks.base import _splits
from dlm.data.tasks.sudoku import BLANK, solve
from dlm.data.tokenizer import train_char_tokenizer
from dlm.errors import DlmError

SMALL = {"sudoku": "sudoku:givens=40,train=20,valid=5,test=5",
         "sudoku6": "sudoku6:givens=14,train=60,valid=20,test=30",
         "countdown": "countdown:train=300,valid=20,test=50",
         "paths": "paths:degree=3,length=4,min_length=2,train=300,valid=20,test=50"}


def fresh_splits(spec):
    _splits.cache_clear()  # generate again, not from the in-process cache
    return load_task(spec).splits()


@pytest.mark.parametrize("name", sorted(TASKS))
def test_generators_are_deterministic_by_seed(name):
    a, b = fresh_splits(SMALL[name]), fresh_splits(SMALL[name])
    assert a == b, "the same spec and seed give the same instances"
    c = fresh_splits(SMALL[name] + ",seed=1")
    assert [i.prompt for i in a["test"]] != [i.prompt for i in c["test"]], "another seed, other instances"
    bigger = fresh_splits(SMALL[name].replace("train=", "train=1"))  # e.g. train=150 -> train=1150
    assert bigger["test"] == a["test"] and bigger["validation"] == a["validation"], \
        "the held-out splits do not depend on how much training data is asked for"


@pytest.mark.parametrize("name", sorted(TASKS))
def test_splits_never_share_an_instance(name):
    splits = fresh_splits(SMALL[name])
    task = load_task(SMALL[name])
    assert {k: len(v) for k, v in splits.items()} == {"train": task.p["train"], "validation": task.p["valid"],
                                                      "test": task.p["test"]}
    keys = {k: {i.key for i in v} for k, v in splits.items()}
    prompts = {k: {i.prompt for i in v} for k, v in splits.items()}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not keys[a] & keys[b] and not prompts[a] & prompts[b], f"{a} and {b} share an instance"
    assert sum(map(len, keys.values())) == sum(map(len, splits.values())), "no duplicate inside a split either"


@pytest.mark.parametrize("name", ["sudoku6", "sudoku"])
def test_every_sudoku_has_exactly_one_solution(name):
    task = load_task(SMALL[name])
    for inst in (i for split in fresh_splits(SMALL[name]).values() for i in split):
        cells = inst.prompt[:-1]
        assert sum(ch != BLANK for ch in cells) == task.p["givens"]
        grid = [0 if ch == BLANK else int(ch) for ch in cells]
        solutions = solve(grid, task.geo, limit=2)
        assert len(solutions) == 1, "the solver finds one solution and proves there is no second"
        assert "".join(map(str, solutions[0])) == inst.response
        assert task.is_solved(inst.prompt, inst.response)


def test_the_solver_counts_several_solutions_and_none():
    task = load_task("sudoku6")
    assert len(solve([0] * 36, task.geo, limit=5)) == 5, "an empty grid has many solutions"
    clash = [1, 1] + [0] * 34
    assert solve(clash, task.geo) == [], "givens that clash: no solution"


def corrupt(name, inst, rng):
    """A wrong answer of the same format: one changed digit, number or node."""
    r = inst.response
    if name.startswith("sudoku"):
        givens = inst.prompt[:-1]
        blank = rng.choice([k for k, ch in enumerate(givens) if ch == BLANK])
        digit = str(int(r[blank]) % (6 if name == "sudoku6" else 9) + 1)
        return r[:blank] + digit + r[blank + 1:]
    if name == "countdown":
        return r[:-1] + str((int(r[-1]) + 1) % 10)  # the last result is off by one digit
    body = inst.prompt.split(";")[0]
    others = sorted({ch for ch in body if ch != "," and ch not in r})
    k = rng.randrange(1, len(r) - 1) if len(r) > 2 else 1
    return r[:k] + rng.choice(others) + r[k + 1:]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_checkers_accept_the_answer_and_reject_a_corrupted_one(name):
    task, rng = load_task(SMALL[name]), random.Random(0)
    for inst in fresh_splits(SMALL[name])["test"][:20]:
        assert task.is_solved(inst.prompt, inst.response) and task.is_valid(inst.prompt, inst.response)
        bad = corrupt(name, inst, rng)
        assert bad != inst.response
        assert not task.is_solved(inst.prompt, bad), f"{name} accepted the corrupted answer {bad!r}"
        assert task.is_valid(inst.prompt, bad), "a corrupted answer is still well formed"
        assert not task.is_valid(inst.prompt, inst.response[:-1] + "#"), "a foreign symbol is not"


def test_countdown_checker_computes_by_hand():
    task = load_task("countdown:numbers=3")
    assert task.is_solved("4,3,5>35|", "4+3=7,7*5=35")
    assert task.is_solved("4,3,5>35|", "5*4=20,20+3=23,") is False
    assert not task.is_solved("4,3,5>35|", "4+3=7,7*5=35,35-5=30"), "5 is used twice"
    assert not task.is_solved("4,3,5>7|", "4+3=7"), "every number must be used"
    assert not task.is_solved("4,3,5>1|", "4/3=1,5-1=4"), "division must be exact"
    assert not task.is_valid("4,3,5>35|", "__import__('os')"), "no eval(): text is parsed, never run"
    assert not task.is_solved("4,3,5>35|", "(4+3)*5=35"), "one operation per equation"


def test_paths_checker_walks_the_graph():
    task = load_task("paths:degree=2,length=2")
    prompt = "ab,bc,ad,de;ae|"
    assert task.is_solved(prompt, "ade")
    assert not task.is_solved(prompt, "abc"), "the other arm"
    assert not task.is_solved(prompt, "ae"), "no edge a -> e"
    assert not task.is_solved(prompt, "abe") and task.is_valid(prompt, "abe")


def test_task_corpus_and_char_tokenizer_give_each_symbol_one_token():
    corpus = load_corpus(SMALL["countdown"])
    assert corpus.is_pairs and len(corpus.train_pairs) == 300 and len(corpus.validation_pairs) == 20
    tok = train_char_tokenizer(corpus.train)
    task = load_task(SMALL["countdown"])
    for ch in task.alphabet:
        assert len(tok.encode(ch)) == 1
    p, r = corpus.train_pairs[0]
    assert len(tok.encode(p + r)) == len(p + r) <= task.seq_len - 1


@pytest.mark.parametrize("spec, words", [
    ("sudoku6:givens=3", ["givens=3", "out of range", "8 to 35"]),
    ("sudoku:size=4", ["no parameter 'size'", "givens"]),
    ("countdown:numbers=four", ["integer", "numbers"]),
    ("countdown:numbers", ["integer"]),
    ("paths:degree=9,length=9", ["distinct nodes", "52"]),
    ("paths:length=3,min_length=5", ["min_length <= length"]),
    ("countdown:max_number=100,max_result=50", ["max_result >= max_number"]),
])
def test_bad_parameters_get_a_clear_error(spec, words):
    with pytest.raises(DlmError) as e:
        load_task(spec)
    for word in words:
        assert word in str(e.value)


def test_bad_parameters_on_the_command_line(capsys, tmp_path):
    assert main(["train", "--data", "sudoku6:givens=2", "--out", str(tmp_path / "run"), "--steps", "1",
                 "--no-progress"]) != 0
    assert "givens=2 is out of range" in capsys.readouterr().err


def test_large_splits_are_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("DLM_CACHE", str(tmp_path))
    task = load_task("paths:degree=2,length=3,train=2000,valid=10,test=10")
    first = task_splits(task)
    files = list((tmp_path / "tasks").glob("*.json"))
    assert len(files) == 1
    again = task_splits(task)
    assert [(i.prompt, i.response) for i in again["train"]] == [(i.prompt, i.response) for i in first["train"]]
