"""Input checks shared by the metrics: shapes, dtypes, devices, torch.distributed reduction.

Scores are ``(N, K, *spatial)`` with 0 to 3 spatial dims; targets ``(N, *spatial)`` or
``(N, 1, *spatial)`` integer class indices. Everything is flattened to ``(N, K, S)`` / ``(N, S)``.
"""

from __future__ import annotations

import numpy as np
import torch

_HALF = (torch.float16, torch.bfloat16)


def as_tensor(x, name: str) -> torch.Tensor:
    """A torch tensor from a tensor or numpy array; ValueError for anything else."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")


def check_int(value, name: str, minimum: int) -> int:
    """``value`` as an int >= minimum (bools rejected), else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def flatten_scores(
    scores, target, num_classes: int, name: str, device: torch.device | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate shapes and return ``scores (N, K, S)`` (float32 or float64) and ``target (N, S)``.

    Half-precision scores are upcast to float32. Both move to ``device`` when it is given.
    """
    scores = as_tensor(scores, name)
    target = as_tensor(target, "target")
    if not scores.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {scores.dtype}")
    if not 2 <= scores.ndim <= 5:
        raise ValueError(
            f"{name} must have shape (N, K, *spatial) with 0 to 3 spatial dims, "
            f"got shape {tuple(scores.shape)}"
        )
    if scores.shape[1] != num_classes:
        raise ValueError(
            f"{name} has {scores.shape[1]} classes in dim 1 but num_classes={num_classes}"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
    target = per_voxel_shape(target, scores.shape, name, "target")
    if device is not None:
        scores, target = scores.to(device), target.to(device)
    elif target.device != scores.device:
        target = target.to(scores.device)
    if scores.dtype in _HALF:
        scores = scores.float()
    n, k = scores.shape[:2]
    return scores.reshape(n, k, -1), target.reshape(n, -1).long()


def per_voxel_shape(t: torch.Tensor, scores_shape, name: str, what: str) -> torch.Tensor:
    """``t`` as ``(N, *spatial)`` of a ``(N, K, *spatial)`` score; ``(N, 1, *spatial)`` is squeezed."""
    if t.ndim == len(scores_shape) and t.ndim > 1 and t.shape[1] == 1:
        t = t.squeeze(1)
    expected = (scores_shape[0], *scores_shape[2:])
    if tuple(t.shape) != expected:
        raise ValueError(
            f"{what} shape {tuple(t.shape)} does not match {name} shape {tuple(scores_shape)}: "
            f"expected (N, *spatial) = {expected} or (N, 1, *spatial)"
        )
    return t


def raise_if_any(flags: torch.Tensor, messages: list[str]) -> None:
    """One host sync for all checks: raise ValueError with the message of the first true flag."""
    for flag, message in zip(flags.tolist(), messages, strict=True):
        if flag:
            raise ValueError(message)


def distributed_world() -> int:
    """World size when torch.distributed is initialised, else 1."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_copy(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over all ranks, on a copy (local state is never mutated)."""
    out = tensor.clone()
    if distributed_world() > 1:
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
    return out


def all_gather_list(items: list) -> list:
    """Concatenate a picklable list from every rank, rank-major (rank 0's items first)."""
    world = distributed_world()
    if world == 1:
        return list(items)
    gathered: list = [None] * world
    torch.distributed.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in part]
