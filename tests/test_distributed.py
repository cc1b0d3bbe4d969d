"""Training under torchrun: two CPU processes (gloo) take the same step as one process on the
same global batch, and a run killed mid-training resumes on another number of processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist

from dlm.training import TrainConfig, train
from dlm.training.checkpoint import load_training_state, resolve

from conftest import tiny_train_config

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="this PyTorch build has no gloo backend")

# Started by torchrun in each process (or alone, as rank 0): train the TrainConfig given as
# JSON; with a kill step, one process sends itself a signal while it computes that step's loss:
# by default the last rank SIGKILL (and torchrun then stops the other one).
WORKER = """
import json, os, signal, sys
import torch
from dlm.processes import MaskedDiffusion
from dlm.training import TrainConfig, train

config, kill_step, resume = TrainConfig(**json.loads(sys.argv[1])), int(sys.argv[2]), sys.argv[3] == "resume"
sig, rank = getattr(signal, sys.argv[4]), int(sys.argv[5]) % int(os.environ.get("WORLD_SIZE", 1))
calls = {"n": 0}
original = MaskedDiffusion.loss

def loss(self, *args, **kwargs):
    calls["n"] += torch.is_grad_enabled()  # training steps only, not validation
    if calls["n"] == kill_step and int(os.environ.get("RANK", 0)) == rank:
        os.kill(os.getpid(), sig)
    return original(self, *args, **kwargs)

MaskedDiffusion.loss = loss
train(config, resume=resume, progress=False)
"""


@pytest.fixture
def config(tmp_path):
    return tiny_train_config(tmp_path, steps=1, final_eval_chunks=4, eval_samples=1)


def torchrun(tmp_path, config: TrainConfig, *, kill_step: int = 0, resume: bool = False, processes: int = 2,
             signal_name: str = "SIGKILL", rank: int = -1) -> subprocess.CompletedProcess:
    """Launch WORKER on 2 processes with torchrun (one thread each); processes=1: plain python.
    With kill_step, process `rank` (-1: the last) sends itself `signal_name` during that step."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)] if processes > 1 else []
    cmd = [sys.executable, *launch, str(script), json.dumps(config.to_dict()), str(kill_step),
           "resume" if resume else "new", signal_name, str(rank)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)


def weights(run_dir) -> dict[str, torch.Tensor]:
    state = load_training_state(resolve(run_dir))
    return {**state["model"], **{"ema." + k: v for k, v in state["ema"]["model"].items()}}


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"weights differ by up to {worst}"


@pytest.mark.parametrize("fsdp,optimizer,atol", [(False, "muon", 0.0), (True, "adamw", 1e-6), (True, "muon", 1e-3)],
                         ids=["ddp", "fsdp", "fsdp-muon"])
def test_two_processes_take_the_step_one_process_takes(config, tmp_path, fsdp, optimizer, atol):
    """One step of 2 processes x 4 sequences = one step of 1 process over the same 8 sequences,
    cut into the same 2 micro-batches (grad_accum=2), which get the same noise. DDP's all-reduce
    sums exactly as accumulation does: bit for bit. FSDP's reduce-scatter differs in the last
    bits (the momenta agree to 1e-6); AdamW keeps that at 1e-6, while Muon's bf16 Newton-Schulz
    of the gathered update turns it into about 2e-4."""
    two = replace(config, out=str(tmp_path / "two"), fsdp=fsdp, optimizer=optimizer)
    proc = torchrun(tmp_path, two)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = train(replace(two, out=str(tmp_path / "one"), grad_accum=2, fsdp=False), progress=False)
    assert one.step == 1
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert_same_weights(a, b, atol=atol)
    if optimizer == "muon":  # the gradients themselves agree (Muon's momentum is the first gradient)
        momenta = [load_training_state(resolve(tmp_path / run))["optimizer"]["optimizers"][1]["state"]
                   for run in ("one", "two")]
        assert max((momenta[0][i]["momentum_buffer"] - momenta[1][i]["momentum_buffer"]).abs().max().item()
                   for i in momenta[0]) <= 1e-6
    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["world_size"] for r in records if r.get("event") == "start"] == [2]
    assert len([r for r in records if "loss" in r]) == 1, "process 0 alone writes the metrics"


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp-then-one-process", "fsdp-then-fsdp"])
def test_a_killed_two_process_run_resumes_exactly(config, tmp_path, fsdp):
    """Killed during step 5 (step 3 was saved), then resumed: on one process after DDP (the 2
    micro-batches now run in turn), on two again after FSDP (whole saved state, re-sharded)."""
    full_config = replace(config, steps=6, fsdp=fsdp, optimizer="adamw" if fsdp else "muon")
    full = train(replace(full_config, out=str(tmp_path / "full"), grad_accum=2, fsdp=False), progress=False)

    proc = torchrun(tmp_path, full_config, kill_step=5)
    assert proc.returncode != 0 and "Signal 9 (SIGKILL)" in proc.stderr, proc.stderr[-3000:]
    assert resolve(config.out).name == "checkpoint-000003"
    assert load_training_state(resolve(config.out))["micro_batches"] == 2

    if fsdp:
        proc = torchrun(tmp_path, full_config, resume=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert resolve(config.out).name == "checkpoint-000006"
    else:
        resumed = train(full_config, resume=True, progress=False)
        assert resumed.step == 6
        assert resumed.losses == pytest.approx(full.losses[3:], abs=1e-6)
    assert_same_weights(weights(tmp_path / "full"), weights(config.out), atol=1e-5 if fsdp else 1e-6)


def test_a_killed_one_process_run_resumes_on_two(config, tmp_path):
    """Scaling up: a run saved with 1 micro-batch per step cannot keep it on 2 processes; it goes
    on with 2 (the same batches, other noise draws) and says so."""
    full_config = replace(config, steps=6)
    proc = torchrun(tmp_path, full_config, kill_step=5, processes=1)
    assert proc.returncode == -9, proc.stderr[-3000:]  # SIGKILL
    assert resolve(config.out).name == "checkpoint-000003"
    assert load_training_state(resolve(config.out))["micro_batches"] == 1

    proc = torchrun(tmp_path, full_config, resume=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "saved with micro_batches=1 per step" in proc.stderr
    state = load_training_state(resolve(config.out))
    assert state["step"] == 6 and state["micro_batches"] == 2 and state["world_size"] == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 4, 5, 6]  # step 4 again after the kill
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_sigterm_to_one_process_stops_both_at_the_same_step_with_a_checkpoint(config, tmp_path):
    """SIGTERM (a scheduler's preemption, torchrun passing on Ctrl-C) reaching process 0 alone, during
    step 4: the stop request travels in the step's all-reduce, both processes finish step 4, it is
    saved, and the run resumes from it."""
    full_config = replace(config, steps=6)
    proc = torchrun(tmp_path, full_config, kill_step=4, signal_name="SIGTERM", rank=0)
    assert proc.returncode != 0  # the workers end with KeyboardInterrupt after saving
    assert resolve(config.out).name == "checkpoint-000004"
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("event") == "interrupted"] == [4]
    proc = torchrun(tmp_path, full_config, resume=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_training_state(resolve(config.out))["step"] == 6


def test_two_nodes_launched_with_the_multi_node_flags(config, tmp_path):
    """The README's multi-node launch, two "machines" of one process each emulated on this one:
    RANK and LOCAL_RANK now differ, and the step is still the one-process step."""
    import socket

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    two = replace(config, out=str(tmp_path / "two"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
                               "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
                               str(script), json.dumps(two.to_dict()), "0", "new", "SIGKILL", "-1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for rank in (0, 1)]
    outputs = [node.communicate(timeout=240) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    train(replace(two, out=str(tmp_path / "one"), grad_accum=2), progress=False)
    assert_same_weights(weights(tmp_path / "one"), weights(tmp_path / "two"), atol=0.0)


def test_the_readme_torchrun_lines_are_dlm_commands():
    """Each `torchrun ... -m dlm ARGS` line of the README parses as a dlm command."""
    from pathlib import Path

    from dlm.cli import build_parser

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if line.startswith("torchrun ")]
    assert len(lines) >= 4
    for line in lines:
        args = build_parser().parse_args(line.split(" -m dlm ", 1)[1].split())
        assert args.command == "train" and args.out
