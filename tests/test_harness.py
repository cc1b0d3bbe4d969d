"""The lm-evaluation-harness adapter: the bound it reports, its windows, generation, and whole
lm_eval runs on the bundled local tasks (offline; tiny models with random weights)."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from dlm.cli import main  # noqa: E402
from dlm.data import train_char_tokenizer  # noqa: E402
from dlm.evaluation.harness import TASKS, DlmLM, windows  # noqa: E402
from dlm.training.checkpoint import save_checkpoint  # noqa: E402

from conftest import TEXT, build  # noqa: E402

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
README = Path(__file__).resolve().parent.parent / "README.md"
PROCESSES = ("masked", "block", "uniform", "gaussian", "ar")


@pytest.fixture(scope="module")
def tokenizer():
    """Characters of the test text and of the bundled tasks."""
    return train_char_tokenizer([TEXT] + [p.read_text() for p in sorted(TASKS.glob("*.jsonl"))])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer):
    """{process: checkpoint folder} with random weights, a 48-token context."""
    root = tmp_path_factory.mktemp("harness")
    folders = {}
    for name in PROCESSES:
        process, model = build(name, tokenizer, max_len=48)
        save_checkpoint(root / name, step=0, model=model, process=process, tokenizer=tokenizer, train_config={})
        folders[name] = root / name
    return folders


def ll_request(context: str, continuation: str) -> Instance:
    return Instance("loglikelihood", {}, (context, continuation), 0)


def gen_request(context: str, **gen_kwargs) -> Instance:
    return Instance("generate_until", {}, (context, gen_kwargs), 0)


def test_windows_score_every_token_once_inside_the_window():
    for ctx, total, window in itertools.product(range(0, 12), range(0, 30), range(1, 10)):
        if total < ctx:
            continue
        pieces = windows(ctx, total, window)
        starts = [ctx] + [stop for _, _, stop in pieces]
        assert [first for _, first, _ in pieces] == starts[:-1] and starts[-1] == total  # every token once, in order
        for start, first, stop in pieces:
            assert 0 <= start <= first < stop and stop - start <= window
            n = stop - first
            assert first - start == min(first, window - n)  # all the context that fits next to them
            assert first - start >= min(first, window // 2)  # at least half a window of it
    assert windows(5, 9, 16) == [(0, 5, 9)]  # fits: one piece, the whole context
    assert windows(30, 34, 16) == [(18, 30, 34)]  # a long context is cut from the left
    assert windows(0, 40, 16) == [(0, 0, 16), (8, 16, 24), (16, 24, 32), (24, 32, 40)]  # rolling


def exact_masked_elbo(ckpt, ctx: list[int], target: list[int]) -> tuple[float, float]:
    """The conditional ELBO of masked diffusion by enumeration, and the variance of one stratified
    draw: sum_m 1/m E_{|S|=m} sum_{l in S} -log p(c_l | x, c with S masked) (LLaDA eq. 6)."""
    model, process = ckpt.model, ckpt.process
    N, offset = len(target), len(ctx)
    nelbo, variance = 0.0, 0.0
    for m in range(1, N + 1):
        values = []
        for S in itertools.combinations(range(N), m):
            x = torch.tensor(ctx + target)[None]
            x[0, [offset + s for s in S]] = process.mask_id
            with torch.no_grad():
                logp = torch.log_softmax(process.x0_logits(model(x, torch.zeros(1))), dim=-1)[0]  # (L, V)
            values.append(N / m * -sum(logp[offset + s, target[s]].item() for s in S))
        values = torch.tensor(values, dtype=torch.float64)
        nelbo += values.mean().item() / N  # m is uniform on 1..N
        variance += values.var(unbiased=False).item() / N  # within-m spread; stratification removes the rest
    return -nelbo, variance


def test_masked_elbo_is_exact_for_one_token_and_unbiased_for_more(checkpoints, tokenizer):
    lm = DlmLM(str(checkpoints["masked"]), mc_num=600, batch_size=200, progress=False, check_greedy=False)
    context = "To be, or not to be"
    ctx = tokenizer.encode(context)

    (one, _), = lm.loglikelihood([ll_request(context, ",")])
    exact, spread = exact_masked_elbo(lm.ckpt, ctx, tokenizer.encode(","))
    assert spread == 0 and one == pytest.approx(exact, abs=1e-5) and one < 0  # one masked token: exact

    target = tokenizer.encode(" th")
    exact, variance = exact_masked_elbo(lm.ckpt, ctx, target)
    (estimate, _), (again, _) = lm.loglikelihood([ll_request(context, " th")] * 2)
    assert estimate == again  # each request draws from its own seeded generator
    assert estimate <= 0 and variance > 0
    assert abs(estimate - exact) < 5 * math.sqrt(variance / lm.mc_num), (estimate, exact)

    other_seed = DlmLM(str(checkpoints["masked"]), mc_num=600, batch_size=200, seed=1, progress=False,
                       check_greedy=False)
    (moved, _), = other_seed.loglikelihood([ll_request(context, " th")])
    assert moved != estimate and abs(moved - exact) < 5 * math.sqrt(variance / lm.mc_num)


def test_ar_loglikelihood_is_the_exact_chain_rule(checkpoints, tokenizer):
    lm = DlmLM(str(checkpoints["ar"]), mc_num=7, progress=False, check_greedy=False)
    model, process = lm.ckpt.model, lm.ckpt.process
    ctx, target = tokenizer.encode("Whether 'tis"), tokenizer.encode(" nobler")
    exact = 0.0
    for i in range(len(target)):  # log p(c_i | bos, x, c_<i), one prefix at a time
        prefix = torch.tensor([process.bos_id] + ctx + target[:i])[None]
        with torch.no_grad():
            logits = process.x0_logits(model(prefix, torch.zeros(1)))[0, -1]  # (V,)
        exact += torch.log_softmax(logits, dim=-1)[target[i]].item()
    (ll, _), = lm.loglikelihood([ll_request("Whether 'tis", " nobler")])
    assert ll == pytest.approx(exact, abs=1e-4)


@pytest.mark.parametrize("name", PROCESSES)
def test_every_process_gives_a_reproducible_bound_and_text(checkpoints, name):
    lm = DlmLM(str(checkpoints[name]), mc_num=4, batch_size=4, progress=False)
    requests = [ll_request("The slings and arrows", " of outrageous fortune"), ll_request("", "To sleep")]
    first, second = lm.loglikelihood(requests), lm.loglikelihood(requests)
    assert first == second
    assert all(math.isfinite(ll) and ll < 0 and isinstance(greedy, bool) for ll, greedy in first)
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (TEXT,), 0)])[0]
    assert math.isfinite(rolling) and rolling < 0  # TEXT is longer than the context: windows
    texts = lm.generate_until([gen_request("To be", until=["\n"], max_gen_toks=8, do_sample=True)])
    assert isinstance(texts[0], str) and "\n" not in texts[0] and len(texts[0]) <= 8


def test_generate_until_cuts_at_the_first_stop_string(checkpoints):
    for seed in range(20):  # a random model writes random characters: find a seed with no early end-of-text
        lm = DlmLM(str(checkpoints["masked"]), temperature=1.0, gen_length=24, seed=seed, progress=False)
        raw, = lm.generate_until([gen_request("To be", until=[])])
        if len(raw) >= 12:
            break
    assert len(raw) >= 12, raw
    stop = raw[5]
    cut, = lm.generate_until([gen_request("To be", until=[stop])])
    assert cut == raw[:raw.index(stop)]
    both, = lm.generate_until([gen_request("To be", until=[raw[9], stop])])
    assert both == raw[:min(raw.index(stop), raw.index(raw[9]))]  # the earliest of the stop strings


def test_is_greedy_says_whether_greedy_decoding_writes_the_continuation(checkpoints, tokenizer):
    lm = DlmLM(str(checkpoints["ar"]), progress=False)
    greedy, = lm.generate_until([gen_request("Whether", until=[], max_gen_toks=6, do_sample=False)])
    assert len(greedy) == 6
    changed = ("a" if greedy[-1] != "a" else "b")
    (_, yes), (_, no) = lm.loglikelihood([ll_request("Whether", greedy), ll_request("Whether", greedy[:-1] + changed)])
    assert yes is True and no is False
    quick = DlmLM(str(checkpoints["ar"]), progress=False, check_greedy=False)
    assert quick.loglikelihood([ll_request("Whether", greedy)])[0][1] is False


def test_overlong_context_is_cut_from_the_left(checkpoints, tokenizer, caplog):
    lm = DlmLM(str(checkpoints["masked"]), mc_num=4, progress=False, check_greedy=False)
    context = TEXT[:200].rstrip()  # about 200 characters for a 48-token model
    with caplog.at_level(logging.WARNING, logger="dlm.evaluation.harness"):
        (ll, greedy), = lm.loglikelihood([ll_request(context, "W")])
    assert "cut" in caplog.text and math.isfinite(ll)
    (kept, _), = lm.loglikelihood([ll_request(context[-47:], "W")])  # the 47 tokens that fit (one per character)
    assert ll == pytest.approx(kept, abs=1e-6)  # one masked token: exact, so the two must agree
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dlm.evaluation.harness"):
        text, = lm.generate_until([gen_request(context, until=["\n"], max_gen_toks=100)])
    assert isinstance(text, str) and len(text) <= 24 and "cut" in caplog.text and "generate 24" in caplog.text


def test_characters_outside_the_vocabulary(checkpoints):
    lm = DlmLM(str(checkpoints["masked"]), mc_num=2, progress=False)
    (unwritable, greedy), (readable, _) = lm.loglikelihood([ll_request("To be", " ☃"), ll_request("To ☃be", " or")])
    assert unwritable == -math.inf and greedy is False
    assert math.isfinite(readable)


def test_simple_evaluate_on_the_local_tasks(checkpoints, tokenizer):
    from lm_eval.tasks import TaskManager

    lm = DlmLM(str(checkpoints["masked"]), mc_num=4, batch_size=16, progress=False)
    manager = TaskManager(include_path=str(TASKS), include_defaults=False)
    out = lm_eval.simple_evaluate(model=lm, tasks=["dlm_shakespeare"], limit=3, task_manager=manager,
                                  bootstrap_iters=0, log_samples=True)
    results = out["results"]
    assert 0 <= results["dlm_shakespeare_mc"]["acc,none"] <= 1
    matched = results["dlm_shakespeare_gen"]["exact_match,none"] * 3  # of 3 documents
    assert 0 <= matched <= 3 and matched == pytest.approx(round(matched))
    bits = results["dlm_shakespeare_ppl"]["bits_per_byte,none"]
    assert 1 < bits < 3 * math.log2(tokenizer.vocab_size)  # a random model: about log2(V) bits per character
    samples = out["samples"]
    assert len(samples["dlm_shakespeare_mc"]) == 3 and len(samples["dlm_shakespeare_mc"][0]["resps"]) == 4
    gen = samples["dlm_shakespeare_gen"][0]
    assert gen["arguments"][0][1]["until"] == [" ", "\n"] and " " not in gen["resps"][0][0]


def test_cli_runs_the_local_tasks_and_explains_mistakes(checkpoints, capsys):
    assert main(["lm-eval", "--model", str(checkpoints["ar"]), "--tasks", "dlm_shakespeare_mc,dlm_shakespeare_ppl",
                 "--limit", "2", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["process"] == "ar" and 0 <= payload["results"]["dlm_shakespeare_mc"]["acc,none"] <= 1
    assert payload["results"]["dlm_shakespeare_ppl"]["bits_per_byte,none"] > 0
    assert main(["lm-eval", str(checkpoints["ar"]), "--tasks", "dlm_shakespeare_mc",  # DIR, as other commands
                 "--include-path", "/no/such/folder"]) == 1
    err = capsys.readouterr().err
    assert "--include-path /no/such/folder" in err and "Traceback" not in err
    assert main(["lm-eval", "--model", str(checkpoints["masked"]), "--tasks", "dlm_shakespeare_gen",
                 "--sampler", "block"]) == 1
    assert "sampler" in capsys.readouterr().err
    assert main(["lm-eval", "--tasks", "dlm_shakespeare_mc"]) == 1  # no checkpoint at all
    assert "name the checkpoint once" in capsys.readouterr().err


def test_readme_section_runs_as_written(checkpoints, tmp_path, monkeypatch):
    """The README's `dlm lm-eval` lines, on a random model at runs/shakespeare, shortened."""
    text = README.read_text().split("\n### Evaluating with lm-evaluation-harness\n", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#")[0] for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)
                for line in block.replace("\\\n", " ").splitlines() if line.startswith("dlm lm-eval")]
    assert commands
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "shakespeare").symlink_to(checkpoints["masked"])
    monkeypatch.chdir(tmp_path)
    for command in commands:
        argv = shlex.split(command)[1:]
        assert main(argv + ["--limit", "2", "--mc-num", "2", "--json"]) == 0, command


def test_plain_lm_eval_command_line_through_python_dash_m(checkpoints):
    out = subprocess.run([sys.executable, "-m", "dlm.evaluation.harness", "--model", "dlm", "--model_args",
                          f"pretrained={checkpoints['masked']},mc_num=2", "--tasks", "dlm_shakespeare_mc",
                          "--include_path", str(TASKS), "--limit", "2"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"dlm_shakespeare_mc\s*\|.*\|acc\s*\|", out.stdout), out.stdout
