"""Iteration-indexed batch sampling: batch t is a pure function of (seed, stream, t, rank).

Because nothing depends on how many batches were drawn before, a resumed run sees exactly the
batches an uninterrupted run would have seen, with any number of data-loading workers.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .domain import SampleView, collate
from .workers import tracked, worker_options


def _mix(*values: int) -> int:
    """A 63-bit seed derived from integers (stable across runs and platforms)."""
    return int(np.random.SeedSequence([v & 0xFFFFFFFF for v in values]).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


class IterationBatchSampler(torch.utils.data.Sampler):
    """Yields, for iterations ``start, start+1, ...``, this rank's share of the global batch.

    Each element is ``(index, augmentation_seed)``. Indices walk through per-epoch random
    permutations of the dataset; the global batch of ``batch_size * world_size`` samples is cut
    into one contiguous slice per rank.
    """

    def __init__(
        self, size: int, batch_size: int, seed: int, stream: int, start_iter: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if size <= 0:
            raise ValueError("cannot sample batches from an empty dataset")
        self.size, self.batch_size, self.seed, self.stream = size, batch_size, seed, stream
        self.start_iter, self.rank, self.world_size = start_iter, rank, world_size
        self._perm_cache: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            self._perm_cache = {epoch: np.random.default_rng(_mix(self.seed, self.stream, epoch)).permutation(self.size)}
        return self._perm_cache[epoch]

    def batch(self, t: int) -> list[tuple[int, int]]:
        """This rank's ``(index, seed)`` pairs for iteration ``t``."""
        global_bs = self.batch_size * self.world_size
        out = []
        for j in range(self.rank * self.batch_size, (self.rank + 1) * self.batch_size):
            pos = t * global_bs + j
            epoch, k = divmod(pos, self.size)
            out.append((int(self._perm(epoch)[k]), _mix(self.seed, self.stream, t, j, 7)))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        t = self.start_iter
        while True:
            yield self.batch(t)
            t += 1

    def __len__(self) -> int:  # infinite; DataLoader only needs it for len(loader)
        return 2**62


def infinite_loader(
    view: SampleView, batch_size: int, seed: int, stream: int, start_iter: int, num_workers: int, rank: int = 0, world_size: int = 1
) -> Iterator[dict]:
    """An endless iterator of collated batches, starting at iteration ``start_iter``."""
    sampler = IterationBatchSampler(len(view), batch_size, seed, stream, start_iter, rank, world_size)
    loader = torch.utils.data.DataLoader(
        view,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        persistent_workers=num_workers > 0,
        prefetch_factor=2 if num_workers > 0 else None,
        **worker_options(num_workers),
        generator=torch.Generator(),  # keep the global RNG untouched: resumed runs stay identical
    )
    return tracked(iter(loader))
