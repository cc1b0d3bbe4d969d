"""Training on several processes with torch.distributed: what each process is, and the few
collectives the training loop needs.

``torchrun --nproc-per-node N -m dlm train ...`` starts N copies of the same loop; torchrun
tells each its place through the environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT). Every process draws the same global batch from the same data generator and
trains on its own share of it (a distributed sampler over the batch's rows: process r takes
micro-batches r*A ... r*A + A - 1 of the W*A the batch is cut into, A = grad_accum), so the
data seen per step does not depend on how many processes there are. Gradients are averaged
by DDP (gloo on CPU, NCCL on GPU), or reduce-scattered by FSDP2 (``fully_shard``) with
``--fsdp``. Process 0 validates, writes checkpoints and metrics, and draws the progress bar.

Without torchrun (or with one process) nothing here starts a process group, and every
collective is the identity.
"""

from __future__ import annotations

import datetime
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dlm.errors import DlmError


@dataclass(frozen=True)
class Distributed:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum of `values` over all processes (one small all-reduce)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def broadcast(self, obj):
        """Process 0's `obj` (any picklable value) on every process."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise DlmError(f"the environment variable {name}={value!r} is not a number; launch with torchrun") from None


def from_environment() -> Distributed:
    """Where this process stands, from the variables torchrun sets (one process when absent)."""
    world_size, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise DlmError(f"RANK={rank} does not fit WORLD_SIZE={world_size}; launch with torchrun")
    return Distributed(world_size=world_size, rank=rank, local_rank=local_rank)


def init_distributed(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun set up: NCCL when training on CUDA (one GPU per process,
    cuda:LOCAL_RANK), gloo on CPU. Returns the process's place and its device."""
    place = from_environment()
    if not place.enabled:
        return place, device
    if device.type == "cuda":
        if device.index is None:
            if place.local_rank >= torch.cuda.device_count():
                raise DlmError(f"process {place.rank} wants cuda:{place.local_rank} but this node has "
                               f"{torch.cuda.device_count()} GPUs; start at most that many processes per node")
            device = torch.device("cuda", place.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if "MASTER_ADDR" not in os.environ:
        raise DlmError("WORLD_SIZE > 1 but MASTER_ADDR is not set: start distributed training with torchrun "
                       "(torchrun --nproc-per-node N -m dlm train ...)")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=place.rank, world_size=place.world_size,
                                timeout=datetime.timedelta(minutes=30))
    return place, device


class _Replicated(torch.nn.parallel.DistributedDataParallel):
    """DDP that still answers for the model's own attributes and methods (a process may call
    ``denoiser.embed_tokens`` or read ``denoiser.config``)."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def replicate(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP: a replica per process; gradients are averaged over processes during backward."""
    return _Replicated(model, device_ids=[device.index] if device.type == "cuda" else None)


def _fully_shard():
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        raise DlmError(f"--fsdp needs FSDP2 (torch.distributed.fsdp.fully_shard, PyTorch >= 2.6); this is "
                       f"PyTorch {torch.__version__}. Upgrade PyTorch or train without --fsdp (DDP)") from None
    return fully_shard


def shard_model(model: torch.nn.Module, device: torch.device) -> None:
    """FSDP2: shard each transformer block, then the rest (embeddings, final norm, head), over
    all processes, onto `device` (one process per GPU); a block's weights are gathered only
    while it runs. A model still on the host moves over one block at a time."""
    from torch.distributed.device_mesh import init_device_mesh

    fully_shard = _fully_shard()
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    # A block returns its keys and values (views) beside its output, for KV caches; FSDP2 warns
    # that an in-place op on a view would skip its hook, and nothing writes to them in place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    for block in getattr(model, "blocks", []):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def _is_sharded(x) -> bool:
    return hasattr(x, "full_tensor") and hasattr(x, "placements")  # a DTensor


def gather_full(tree):
    """The same nested dict/list with every sharded tensor (DTensor) gathered whole, on the CPU.
    With sharded tensors inside, every process must call it (it is a collective)."""
    if isinstance(tree, dict):
        return {k: gather_full(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(gather_full(v) for v in tree)
    if _is_sharded(tree):
        return tree.full_tensor().cpu()
    return tree


@torch.no_grad()
def shard_optimizer_state(optimizer) -> None:
    """After loading a checkpoint's whole optimizer state into an optimizer over sharded
    parameters, cut each state tensor (momenta, second moments) to this process's shard. Loading
    whole tensors and sharding them here is what lets a run resume on another number of processes."""
    from torch.distributed.tensor import distribute_tensor

    for inner in getattr(optimizer, "optimizers", [optimizer]):
        for group in inner.param_groups:
            for p in group["params"]:
                if not _is_sharded(p):
                    continue
                state = inner.state.get(p, {})
                for key, value in state.items():
                    if torch.is_tensor(value) and not _is_sharded(value) and value.shape == p.shape:
                        state[key] = distribute_tensor(value.to(p.device), p.device_mesh, p.placements,
                                                       src_data_rank=None)


@contextmanager
def no_sync(model: torch.nn.Module, *, skip: bool):
    """Accumulate gradients locally (no all-reduce) for every micro-batch but the last."""
    if not skip:
        yield
    elif hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield
