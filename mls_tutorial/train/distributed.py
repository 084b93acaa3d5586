"""torch.distributed helpers: one code path for 1 process and for ``torchrun`` (DDP).

``init_from_env()`` starts the process group when ``torchrun`` set ``WORLD_SIZE > 1`` (NCCL on
CUDA, gloo on CPU); everything else asks ``rank()`` / ``world_size()`` / ``is_main()`` and works
unchanged in a single process.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the only rank that writes files."""
    return rank() == 0


def init_from_env(device: str | torch.device | None = None) -> bool:
    """Initialise the process group from torchrun's environment; return True when distributed.

    Backend: NCCL when the chosen device is CUDA, gloo otherwise. With CUDA each process takes
    ``cuda:LOCAL_RANK``. A no-op (returns False) when ``WORLD_SIZE`` is unset or 1.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if is_distributed():
        return True
    want_cuda = torch.cuda.is_available() and (
        device is None or "cuda" in str(device) or str(device) == "auto"
    )
    backend = "nccl" if want_cuda else "gloo"
    if want_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def local_device(device: torch.device) -> torch.device:
    """``cuda:LOCAL_RANK`` for a CUDA device under torchrun, else ``device`` unchanged."""
    if device.type == "cuda" and is_distributed() and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place SUM across ranks (identity in a single process); returns ``tensor``."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj_rank0, obj_rank1, ...]`` on every rank (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()
