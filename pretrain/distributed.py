"""Process group set-up for one process, torchrun, the deepspeed launcher and SLURM alike."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init() -> tuple[int, int, torch.device]:
    """Start torch.distributed through DeepSpeed (gloo on the CPU, nccl on GPUs); returns rank,
    world size and this rank's device. A lone process becomes a world of one."""
    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(values: dict[str, float], device) -> dict[str, float]:
    """Mean over ranks of a few scalars (for logging)."""
    if not dist.is_initialized() or dist.get_world_size() == 1 or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(values, t.tolist()))


def any_rank(flag: bool, device) -> bool:
    """True on every rank when `flag` is true on any (one small all-reduce)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# ---------------------------------------------------------------- collectives of the objectives and the bank
# Each is the identity in a world of one, so the same code trains one process and many.


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' rows of x (this rank's keep their gradient) and the offset of this rank's rows."""
    if _world() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0), dist.get_rank() * x.shape[0]


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of x (a copy; no gradient)."""
    if _world() > 1:
        x = x.clone()
        dist.all_reduce(x)
    return x


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows of every rank, concatenated in rank order; ranks may hold different row counts (no gradient)."""
    if _world() == 1:
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = torch.zeros((max(sizes), *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return torch.cat([o[:s] for o, s in zip(out, sizes)])
