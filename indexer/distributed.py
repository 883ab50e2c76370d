"""The process group of a torchrun launch (or a single process), and FSDP2 sharding."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place in the launch: rank, world size, local rank, device."""
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def init(timeout_s: float = 4 * 3600) -> Ranks:
    """Join the torchrun process group (NCCL with GPUs, gloo without); single process when not
    launched by torchrun. Each rank uses cuda:LOCAL_RANK when CUDA is available. ``timeout_s``
    bounds every collective, including the waits while rank 0 alone scans the corpus."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return Ranks(rank, world, local, device)


def barrier(ranks: Ranks) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ranks.distributed:
        dist.barrier()


def broadcast(ranks: Ranks, obj):
    """rank 0's ``obj`` on every rank (any picklable object)."""
    if not ranks.distributed:
        return obj
    box = [obj if ranks.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(ranks: Ranks, obj) -> list:
    """Every rank's ``obj``, on every rank, in rank order."""
    if not ranks.distributed:
        return [obj]
    out = [None] * ranks.world
    dist.all_gather_object(out, obj)
    return out


def exchange_rows(ranks: Ranks, outgoing: list[np.ndarray]) -> np.ndarray:
    """All-to-all of int64 rows: ``outgoing[q]`` [n_q, width] goes to rank q; returns the rows
    every rank sent here, in rank order, [n, width]."""
    width = outgoing[0].shape[1]
    device = ranks.device if ranks.device.type == "cuda" else torch.device("cpu")
    counts = torch.tensor([len(o) for o in outgoing], dtype=torch.int64, device=device)
    incoming = torch.empty_like(counts)
    dist.all_to_all_single(incoming, counts)
    send = torch.from_numpy(np.ascontiguousarray(np.concatenate(outgoing).reshape(-1))).to(device)
    recv = torch.empty(int(incoming.sum()) * width, dtype=torch.int64, device=device)
    dist.all_to_all_single(recv, send, output_split_sizes=(incoming * width).tolist(),
                           input_split_sizes=(counts * width).tolist())
    return recv.cpu().numpy().reshape(-1, width)


def any_true(ranks: Ranks, flag: bool) -> bool:
    """True when ``flag`` is true on any rank (a collective: every rank must call it)."""
    if not ranks.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], device=ranks.device if ranks.device.type == "cuda"
                     else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_reduce_sum(ranks: Ranks, t):
    """The sum of tensor ``t`` over all ranks, on every rank (gloo reduces on the CPU)."""
    if not ranks.distributed:
        return t
    device = t.device
    work = t.to("cpu") if dist.get_backend() == "gloo" else t
    work = work.clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(device)


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def fully_shard_model(model: torch.nn.Module, ranks: Ranks) -> torch.nn.Module:
    """FSDP2: shard every transformer block, then the whole model, over all ranks."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(ranks.device.type, (ranks.world,))
    blocks = transformer_blocks(model)
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    return model


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated decoder layers: the largest ModuleList in the model."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        return []
    return list(max(lists, key=lambda m: sum(p.numel() for p in m.parameters())))
