"""Data-parallel training on PyTorch's own distributed engine (``torch.distributed``).

Launched by ``torchrun`` (or ``pyro-vae train --nproc N``, which runs torchrun), every process
reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment and joins one process
group: backend ``nccl`` with one GPU per process when CUDA is present, ``gloo`` on CPU. The
meaning of a run does not depend on the number of processes N:

* every process draws the same global batch indices (the epoch's order is an index, 8 bytes a
  row) and keeps its contiguous shard of them. With ``train.noise = "keyed"`` (the default for a
  streamed dataset, ``data.name = "stream"``) it reads only its shard's rows from disk and draws
  each datapoint's noise (binarization, reparameterization) from a stream keyed on (seed, epoch,
  step, datapoint index), so no process holds or generates the global batch. Otherwise (the
  in-memory datasets' default) every process holds the dataset and draws the noise of the whole
  global batch, keeping its shard's part. Either way each example's noise does not depend on which
  rank handles it;
* after the backward pass the gradients, which are sums over the shard's examples, are summed
  over ranks with one ``all_reduce`` (so they equal the single-process gradient, a sum over the
  global batch), together with the loss; every rank then takes the same optimizer step;
* evaluation shards the evaluation batches over ranks, each batch under a seed of its own, and
  gathers the per-datapoint values, so the reported numbers equal the single-process ones.

Only rank 0 writes the run folder, the progress bar, checkpoints and pictures. A collective that
waits longer than ``timeout`` (default 300 s) fails instead of hanging; a rank that raises exits,
and torchrun then stops the others.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

from .config import DEFAULT_TIMEOUT  # noqa: F401  (importable from here as before)
from .errors import DistributedError


def _collective(what: str, rank: int, world: int, run: Callable[[], object]):
    """Run one collective; its failure (a peer process gone, a timeout) said in words, naming this rank."""
    try:
        return run()
    except RuntimeError as e:  # (torch.distributed's DistBackendError, a timeout's error, are RuntimeErrors)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(
            f"rank {rank} of {world}: the {what} across processes failed ({first}). Another process of the run "
            f"stopped (killed, out of memory, its machine gone) or did not answer within the timeout. The last "
            f"finished epoch's checkpoint is kept: start the same launcher again on every machine with "
            f"`pyro-vae train --resume RUN` to go on.") from None


@dataclass(frozen=True)
class Distributed:
    """This process's place in the group; the defaults describe a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: str = "auto", timeout: float = DEFAULT_TIMEOUT) -> "Distributed":
        """Join the process group torchrun describes in the environment (a no-op for one process).

        The backend follows the configured device: ``nccl`` (one GPU per process, ``cuda:LOCAL_RANK``)
        when it is "auto" or "cuda[:N]" and CUDA is present, ``gloo`` otherwise."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        gpu = device != "cpu" and torch.cuda.is_available()
        backend = "nccl" if gpu else "gloo"
        if gpu:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
        return cls(rank, world, local_rank, backend)

    def device(self, name: str) -> str:
        """The device a process uses: its own GPU under nccl, else the configured one."""
        return f"cuda:{self.local_rank}" if self.backend == "nccl" else name

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's contiguous part [start, stop) of n items (the first ranks take one more)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def sum_gradients_and(self, params: list[torch.nn.Parameter], value: torch.Tensor) -> torch.Tensor:
        """Sum every parameter's gradient and ``value`` over ranks, in one all_reduce. A parameter
        that no rank gave a gradient keeps ``grad = None`` (as in one process, so Adam skips it)."""
        if not self.active:
            return value
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        present = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype, device=grads[0].device)
        flat = torch.cat([g.reshape(-1) for g in grads] + [present, value.reshape(1).to(grads[0])])
        _collective("sum of the gradients", self.rank, self.world, lambda: dist.all_reduce(flat))
        offset = 0
        for p, g, used in zip(params, grads, flat[-1 - len(params) : -1].tolist()):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p) if used else None
            offset += n
        return flat[-1]

    def map_items(self, count: int, compute: Callable[[list[int]], list]) -> list:
        """Run ``compute`` on this rank's share of items 0..count-1 (every world-th one) and return
        all results, in item order, on every rank."""
        mine = list(range(self.rank, count, self.world))
        results = compute(mine)
        if not self.active:
            return results
        gathered: list = [None] * self.world
        _collective("gathering of results", self.rank, self.world,
                    lambda: dist.all_gather_object(gathered, list(zip(mine, results))))
        ordered = dict(pair for part in gathered for pair in part)
        return [ordered[i] for i in range(count)]

    def slowest(self, *seconds: float) -> tuple[float, ...]:
        """Each of ``seconds`` maximized over ranks: every rank gets the same numbers, so decisions
        taken on timings (the time cap) agree across ranks instead of leaving one rank waiting."""
        if not self.active:
            return seconds
        gathered: list = [None] * self.world
        _collective("exchange of timings", self.rank, self.world, lambda: dist.all_gather_object(gathered, seconds))
        return tuple(max(column) for column in zip(*gathered))

    def barrier(self) -> None:
        if self.active:
            _collective("barrier", self.rank, self.world, dist.barrier)

    def close(self) -> None:
        """Leave the group once every rank is done (rank 0 may still be writing pictures)."""
        if self.active and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


SINGLE = Distributed()
