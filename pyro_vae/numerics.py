"""Numerical plumbing shared by training and evaluation: seeded blocks and shard-invariant noise.

Nothing here knows about models. ``seeded`` runs a block under a seed of its own without
disturbing the caller's random stream. ``sharded_noise`` is how data-parallel training keeps the
meaning of a run independent of the number of processes: inside the block, standard-normal noise
for a batch of datapoints is drawn for the whole global batch and this process keeps its rows, so
every datapoint gets the noise it would get in one process.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Iterator

import torch

from .errors import ConfigError
from torch.distributions.utils import _standard_normal

#: (start, stop, total) while a data-parallel step runs: this process holds datapoints
#: [start, stop) of a global batch of ``total``.
_NOISE_SHARD: contextvars.ContextVar[tuple[int, int, int] | None] = contextvars.ContextVar("noise_shard", default=None)


@contextmanager
def sharded_noise(start: int, stop: int, total: int) -> Iterator[None]:
    """Inside the block, :func:`standard_normal` draws noise for ``total`` datapoints and keeps rows
    [start, stop) of the datapoint dimension."""
    token = _NOISE_SHARD.set((start, stop, total))
    try:
        yield
    finally:
        _NOISE_SHARD.reset(token)


def noise_shard() -> tuple[int, int, int] | None:
    """The active shard, or None outside :func:`sharded_noise` (a single process)."""
    return _NOISE_SHARD.get()


def standard_normal(shape: torch.Size, data_dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """eps ~ N(0, I) of ``shape``, whose dimension ``data_dim`` (negative) indexes datapoints.

    Outside :func:`sharded_noise`, one draw of ``shape`` (what ``Normal.rsample`` draws). Inside
    it, one draw with that dimension widened to the global batch, narrowed to this process's rows:
    the numbers a single process would give these datapoints."""
    shard = _NOISE_SHARD.get()
    if shard is None:
        return _standard_normal(shape, dtype=dtype, device=device)
    start, stop, total = shard
    if shape[data_dim] != stop - start:
        raise RuntimeError(f"noise of shape {tuple(shape)} drawn for a shard of {stop - start} datapoints "
                           f"(dimension {data_dim}): a pyro-vae bug")
    full = list(shape)
    full[data_dim] = total
    return _standard_normal(torch.Size(full), dtype=dtype, device=device).narrow(data_dim, start, stop - start)


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Draws inside the block come from ``torch.manual_seed(seed)``; the random state outside it
    (the CPU's, and every CUDA device's when ``device`` is one: ``manual_seed`` seeds them all) is
    restored afterwards, so the caller's stream is untouched."""
    cuda = torch.device(device).type == "cuda"
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
        torch.manual_seed(seed)
        yield


def available_devices() -> list[str]:
    """The devices this machine can compute on, by name: cpu, cuda (and cuda:i) where CUDA is, mps
    where Apple's Metal is."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def resolve_device(name) -> torch.device:
    """The device ``name`` names ("auto": CUDA where there is one, else the CPU), refused in words
    where it is not a device or not one this machine has, listing those it has."""
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise ConfigError(f"device must be a name such as \"cpu\", \"cuda\" or \"auto\", got {name!r}.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    here = ", ".join(["auto", *available_devices()])
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a device name; this machine has: {here}.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device = {name!r} but CUDA is not available here; this machine has: {here}.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device = {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s): {here}.")
    if device.type not in ("cpu", "cuda") and name not in available_devices():
        raise ConfigError(f"device = {name!r} is not available here (this machine, or this build of torch); this "
                          f"machine has: {here}.")
    return device
