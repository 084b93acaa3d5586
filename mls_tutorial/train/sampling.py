"""Seeded, resumable, iteration-based batch sampling (single process and DDP).

The index stream is a function of ``(seed, rank, world_size)`` only: epoch ``e`` is the
permutation ``torch.randperm(n, generator=seed + e)``, padded by wrapping to a multiple of the
world size and dealt round-robin to the ranks (as ``torch.utils.data.DistributedSampler`` does);
batch ``i`` is items ``i*B .. (i+1)*B - 1`` of the rank's concatenated epochs. So training can stop
at any iteration and resume at the same place without saving sampler state.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Iterator

import numpy as np
import torch

#: held from seeding the global RNGs to the last draw that must follow the seed (weight
#: initialisation): runs trained by threads of one process (a Dask worker with nthreads > 1)
#: share those RNGs, and would otherwise draw from each other's seeds
RNG_LOCK = threading.RLock()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs (waits for ``RNG_LOCK``)."""
    with RNG_LOCK:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)


class StreamBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches ``start .. stop - 1`` of the infinite seeded index stream (see module docstring)."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int,
        start: int = 0,
        stop: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if n < 1:
            raise ValueError(f"the training set is empty (n={n})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= start <= stop:
            raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop, self.rank, self.world_size = start, stop, rank, world_size
        self.per_rank = math.ceil(n / world_size)

    def __len__(self) -> int:
        return self.stop - self.start

    def _epoch(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        total = self.per_rank * self.world_size
        perm = (perm * math.ceil(total / self.n))[:total]
        return perm[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        pos = self.start * self.batch_size
        epoch, offset = divmod(pos, self.per_rank)
        items = self._epoch(epoch)[offset:]
        for _ in range(len(self)):
            while len(items) < self.batch_size:
                epoch += 1
                items += self._epoch(epoch)
            batch, items = items[: self.batch_size], items[self.batch_size :]
            yield batch
