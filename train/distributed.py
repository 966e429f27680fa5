"""Data-parallel training under torchrun: the process group (gloo on CPU, nccl on GPU), the
gathered context-embedding update that keeps every rank's embeddings identical, and the
BatchNorm statistics averaged over ranks. One process (no torchrun) is world size 1 and none
of this runs."""
from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cream_rt.errors import CreamError
from cream_rt.model.network import CamModel, EmbeddingStatistics
from cream_rt.unreadable import UnreadableImages

__all__ = ["Distributed", "from_environment", "gather_statistics", "update_embeddings", "average_batchnorm",
           "embeddings_spread", "sum_over_ranks", "any_rank_empty", "share_unreadable"]

TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("CREAM_DDP_TIMEOUT", 600)))


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: rank, world size, local rank, backend and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_environment(device: str) -> Distributed:
    """The torchrun environment (WORLD_SIZE, RANK, LOCAL_RANK) joined as a process group, or
    world size 1. On CUDA each process takes the GPU of its local rank."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise CreamError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (set by torchrun)") from None
    if world <= 1:
        return Distributed(device=device)
    cuda = device.startswith("cuda")
    if cuda:
        if torch.cuda.device_count() <= local:
            raise CreamError(f"rank {rank}: local rank {local} has no GPU ({torch.cuda.device_count()} visible)")
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=TIMEOUT)
    return Distributed(rank, world, local, backend, device)


def gather_statistics(stats: EmbeddingStatistics, ctx: Distributed) -> EmbeddingStatistics:
    """Every rank's per-sample statistics, concatenated in rank order (the same on every rank).
    A rank's batch may be shorter (an unreadable image left out): all_gather needs equal sizes,
    so each rank pads to the longest and the padding rows are dropped after the gather."""
    if not ctx.enabled:
        return stats
    size = torch.tensor([len(stats.labels)], device=stats.labels.device)
    sizes = [torch.empty_like(size) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, size)
    sizes = [int(n) for n in sizes]
    longest = max(sizes)
    fields = []
    for tensor in stats:
        padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        padded[:len(tensor)] = tensor
        parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
        dist.all_gather(parts, padded)
        fields.append(torch.cat([part[:n] for part, n in zip(parts, sizes)]))
    return EmbeddingStatistics(*fields)


def update_embeddings(model: CamModel, features: torch.Tensor, labels: torch.Tensor, ctx: Distributed) -> None:
    """The context-embedding update of one global batch: rank 0's samples, then rank 1's, ...,
    each with the one-process rule, applied alike on every rank."""
    model.apply_embedding_statistics(gather_statistics(model.embedding_statistics(features, labels), ctx))


def average_batchnorm(model: torch.nn.Module, ctx: Distributed) -> None:
    """BatchNorm running means and variances averaged over ranks: with each rank's plain average
    over its own batches (precise BN), this is the plain average over all ranks' batches."""
    if not ctx.enabled:
        return
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            for buffer in (module.running_mean, module.running_var):
                dist.all_reduce(buffer)
                buffer /= ctx.world_size


def embeddings_spread(model: CamModel, ctx: Distributed) -> float:
    """The largest absolute difference between any rank's embeddings and rank 0's (0.0 when
    they are identical, as the gathered update guarantees)."""
    if not ctx.enabled:
        return 0.0
    parts = [torch.empty_like(model.embeddings) for _ in range(ctx.world_size)]
    dist.all_gather(parts, model.embeddings.contiguous())
    return max(float((p - parts[0]).abs().max()) for p in parts)


def sum_over_ranks(values: list[float], ctx: Distributed) -> list[float]:
    """Each value summed over ranks (the epoch's images, hits and loss of the whole job)."""
    if not ctx.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_rank_empty(batch_size: int, ctx: Distributed) -> bool:
    """Whether this step's batch is empty on any rank (all its images unreadable): then every
    rank skips the step, as DDP's gradient all-reduce needs all of them or none."""
    if not ctx.enabled:
        return batch_size == 0
    empty = torch.tensor([float(batch_size == 0)], device=ctx.device)
    dist.all_reduce(empty, op=dist.ReduceOp.MAX)
    return bool(empty.item())


def share_unreadable(unreadable: UnreadableImages, ctx: Distributed) -> None:
    """Every rank's unreadable images added to every rank's list, in rank order, so that rank 0's
    record and warning name all of them and the --max-bad-images limit counts the whole job
    (past it every rank stops alike). Sent as JSON bytes: no pickling."""
    if not ctx.enabled:
        return
    mine = torch.tensor(list(json.dumps(unreadable.reasons).encode()), dtype=torch.uint8, device=ctx.device)
    size = torch.tensor([len(mine)], dtype=torch.int64, device=ctx.device)
    sizes = [torch.empty_like(size) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, size)
    padded = torch.zeros(max(int(n) for n in sizes), dtype=torch.uint8, device=ctx.device)
    padded[:len(mine)] = mine
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    for part, n in zip(parts, sizes):
        for name, reason in json.loads(bytes(part[:int(n)].cpu().tolist()).decode()).items():
            unreadable.add(name, reason)
