"""The order an epoch visits the training rows in, as minibatches of row indices.

``permutation`` (the default for data held in memory): a fresh permutation of all N rows each
epoch, drawn from the run's data generator; 8 bytes a row held for the epoch.

``chunks`` (the default for a streaming layout, ``data/stream.py``): the rows are cut into chunks
of ``chunk_rows`` consecutive rows (the layout's own chunks); each epoch the chunks are put in a
seeded order, taken ``window`` at a time, and the rows of a window shuffled together. A batch then
reads rows from at most ``window`` chunks, close together on disk, instead of N random places;
what is held is the chunk order (8 bytes a chunk) and one window's permutation (8 bytes a row of
the window), however many rows there are. The order is a function of (seed, epoch) alone, built
lazily window by window, so a resumed run, and a run on any number of processes, visits the same
rows in the same batches. Two rows of different windows never meet in a batch (except across a
window's boundary), so a window should hold many batches (``window * chunk_rows`` >> batch_size).
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from ..numerics import mix64_int


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch of minibatch indices: a fresh permutation of range(n) from ``generator``, split."""
    return list(torch.randperm(n, generator=generator, device=generator.device).split(batch_size))


def chunk_batches(n: int, batch_size: int, chunk_rows: int, window: int, seed: int, epoch: int
                  ) -> Iterator[torch.Tensor]:
    """One epoch of minibatch indices (CPU int64) in the chunked order above, for (seed, epoch):
    ceil(n / batch_size) batches, all of ``batch_size`` rows but the last."""
    if n <= 0:
        return
    generator = torch.Generator().manual_seed(mix64_int(mix64_int(seed) ^ (epoch + 1)) >> 1)
    chunks = math.ceil(n / chunk_rows)
    order = torch.randperm(chunks, generator=generator)
    carry = torch.zeros(0, dtype=torch.int64)
    for first in range(0, chunks, window):
        rows = torch.cat([torch.arange(c * chunk_rows, min(n, (c + 1) * chunk_rows)) for c in order[first:first + window].tolist()])
        rows = torch.cat([carry, rows[torch.randperm(len(rows), generator=generator)]])
        full = len(rows) - len(rows) % batch_size
        yield from rows[:full].split(batch_size)
        carry = rows[full:]
    if len(carry):
        yield carry
