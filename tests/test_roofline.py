"""The roofline benchmark: pass accounting, limits, and the script end to end on the tiny preset."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dlm.evaluation.roofline import (STEPS, Hardware, Pass, Shape, decoding_passes, flops_per_token, matmul_params,
                                     matmul_weights, measure, pass_limit, train_limit)
from dlm.models import Transformer, preset_config

ROOT = Path(__file__).resolve().parents[1]
SHAPE = Shape(prompt=12, generate=16, block=8, train_seq_len=32)
CPU = torch.device("cpu")


def test_pass_limit_is_the_larger_of_compute_and_memory_time():
    model = Transformer(preset_config("tiny", vocab_size=96, max_len=64))
    cfg = model.config
    n_matmul = 6 * (cfg.d_model * 3 * cfg.d_model + cfg.d_model * cfg.d_model + 3 * cfg.d_model * cfg.ffn_width)
    assert matmul_params(model) == n_matmul + 96 * cfg.d_model  # block Linears + the tied head
    untied = Transformer(preset_config("tiny", vocab_size=96, max_len=64, tie_embeddings=False))
    assert matmul_params(untied) == matmul_params(model)  # its own head, counted once
    heads = [w for w in matmul_weights(untied) if w.shape[0] == 96]
    assert len(heads) == 1 and heads[0] is untied.head.weight  # the floor times it once, too
    p = Pass(batch=2, queries=8, cached=24, seconds=1.0)
    flops = 2 * (2 * 8 * matmul_params(model) + 4 * cfg.n_layers * 8 * 32 * cfg.d_model)
    weights = 4 * sum(t.numel() for t in model.parameters())
    kv = 2 * cfg.n_layers * 2 * (32 + 8) * cfg.d_model * 4
    compute_bound = Hardware(peak_flops=1e9, bandwidth=1e15, dtype=torch.float32)
    memory_bound = Hardware(peak_flops=1e15, bandwidth=1e9, dtype=torch.float32)
    assert pass_limit(model, p, compute_bound) == pytest.approx(flops / 1e9)
    assert pass_limit(model, p, memory_bound) == pytest.approx((weights + kv) / 1e9)
    half = Hardware(peak_flops=1e15, bandwidth=1e9, dtype=torch.bfloat16)
    assert pass_limit(model, p, half) == pytest.approx((weights + kv) / 2 / 1e9)
    assert train_limit(model, 4, 32, compute_bound) == pytest.approx(flops_per_token(model, 32) * 128 / 1e9)


@pytest.mark.parametrize("step", [s for s in STEPS if s != "train"])
def test_each_decoding_step_is_found_in_its_sampler(step):
    model, passes = decoding_passes(step, "tiny", 2, SHAPE, CPU)
    assert all(p.batch == 2 and p.seconds > 0 for p in passes)
    if step == "ar_decode":  # one pass per token after the prefill, the cache growing by one each time
        assert [p.queries for p in passes] == [1] * (SHAPE.generate - 1)
        assert [p.cached for p in passes] == list(range(SHAPE.prompt + 1, SHAPE.prompt + SHAPE.generate))  # bos + prompt first
    elif step == "masked_dual_cache":  # the block re-run against everything else cached
        assert {(p.queries, p.cached) for p in passes} == {(8, SHAPE.prompt + SHAPE.generate - 8)}
        assert len(passes) == SHAPE.generate // SHAPE.block * (SHAPE.steps_per_block - 1)  # but each block's first
    elif step == "masked_full":
        assert {(p.queries, p.cached) for p in passes} == {(SHAPE.prompt + SHAPE.generate, 0)}
    else:  # the block and its exact cache of everything before it
        assert all(p.cached >= SHAPE.prompt for p in passes) and len({p.queries for p in passes}) == 1


def test_the_table_has_a_row_per_preset_batch_and_step():
    hw = Hardware(peak_flops=1e11, bandwidth=1e10, dtype=torch.float32)
    steps = ("masked_full", "train")
    result = measure(["tiny"], [1, 2], hw, shape=SHAPE, steps=steps, compile=False, train_warmup=1, train_steps=1)
    assert [(r["batch"], r["step"]) for r in result["rows"]] == [(b, s) for b in (1, 2) for s in steps]
    for r in result["rows"]:
        assert r["seconds"] > 0 and r["limit_seconds"] > 0 and r["ratio"] == pytest.approx(r["seconds"] /
                                                                                            r["limit_seconds"])
    assert 0 < result["train_fraction_of_peak"]["tiny"] < 1
    full = [r for r in result["rows"] if r["step"] == "masked_full"]
    # the pass's weight products alone take less than the whole pass (which also attends, norms, samples)
    assert all(0 < r["matmul_seconds"] < r["seconds"] and r["matmul_ratio"] > 1 for r in full)
    assert all("matmul_seconds" not in r for r in result["rows"] if r["step"] == "train")


def test_the_script_writes_its_report_and_json(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "roofline.py"), "--presets", "tiny",
                          "--batches", "1", "--steps", "ar_decode", "masked_dual_cache", "--canvas", "16", "16", "8", "--peak-seconds", "0.05",
                          "--out", str(tmp_path),
                          "--json"], capture_output=True, text=True, check=True, timeout=600)
    data = json.loads(out.stdout)
    assert data["peak_flops"] > 1e9 and data["bandwidth"] > 1e8
    assert [(r["preset"], r["batch"], r["step"]) for r in data["rows"]] == [("tiny", 1, "ar_decode"),
                                                                           ("tiny", 1, "masked_dual_cache")]
    assert {"seconds", "limit_seconds", "ratio"} <= data["rows"][0].keys()
    assert (tmp_path / "roofline.png").stat().st_size > 5_000
    assert "| tiny | 1 | ar_decode |" in (tmp_path / "roofline.md").read_text()
    assert all(r["matmul_seconds"] > 0 for r in data["rows"])
