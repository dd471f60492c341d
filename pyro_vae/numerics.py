"""Numerical plumbing shared by training and evaluation: seeded blocks and shard-invariant noise.

Nothing here knows about models. ``seeded`` runs a block under a seed of its own without
disturbing the caller's random stream. ``sharded_noise`` is how data-parallel training keeps the
meaning of a run independent of the number of processes: inside the block, standard-normal noise
for a batch of datapoints is drawn for the whole global batch and this process keeps its rows, so
every datapoint gets the noise it would get in one process.

``keyed_noise`` is the other way, the one streaming training takes (``train.noise = "keyed"``): each
datapoint's noise is a function of (seed, epoch, step, the draw's place in the step, the datapoint's
index in the training set, the element), computed by a counter-based generator (SplitMix64's mixing
function on 64-bit integers, then the inverse normal CDF). No process draws noise for datapoints it
does not hold, and a datapoint's noise does not depend on which batch, rank or machine holds it.
"""

from __future__ import annotations

import contextvars
import math
from contextlib import contextmanager
from typing import Iterator

import torch

from .errors import ConfigError
from torch.distributions.utils import _standard_normal

#: (start, stop, total) while a data-parallel step runs: this process holds datapoints
#: [start, stop) of a global batch of ``total``.
_NOISE_SHARD: contextvars.ContextVar[tuple[int, int, int] | None] = contextvars.ContextVar("noise_shard", default=None)
#: the keyed stream of a step under :func:`keyed_noise`
_KEYED: contextvars.ContextVar["_Keyed | None"] = contextvars.ContextVar("keyed_noise", default=None)


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
    the numbers a single process would give these datapoints. Inside :func:`keyed_noise`, each
    datapoint's own keyed numbers."""
    keyed = _KEYED.get()
    if keyed is not None:
        bits = keyed.bits(shape, data_dim, device)  # 53 of them as a uniform in (0, 1), never 0 or 1
        return torch.special.ndtri((_shift_right(bits, 11).double() + 0.5) * 2.0 ** -53).to(dtype)
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


def uniform(shape: torch.Size, dtype: torch.dtype, device: torch.device, generator: torch.Generator | None = None
            ) -> torch.Tensor:
    """u ~ U(0, 1) of ``shape``, whose first dimension indexes datapoints: from ``generator`` (what
    ``torch.rand`` draws), or inside :func:`keyed_noise` each datapoint's own keyed numbers (a
    training batch's dynamic binarization or dequantization)."""
    keyed = _KEYED.get()
    if keyed is not None:  # as torch.rand: multiples of 2^-m in [0, 1), m the dtype's significand bits
        m = 1 - round(math.log2(torch.finfo(dtype).eps))
        return _shift_right(keyed.bits(shape, -len(shape), device), 64 - m).to(dtype) * 2.0 ** -m
    return torch.rand(shape, generator=generator, device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Keyed noise: a counter-based generator (SplitMix64's finalizer as the mixing function)

_GOLDEN = 0x9E3779B97F4A7C15
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_MASK64 = (1 << 64) - 1


def _signed(c: int) -> int:
    """The 64-bit pattern of ``c`` as torch's int64 holds it."""
    c &= _MASK64
    return c - (1 << 64) if c >= 1 << 63 else c


def _shift_right(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def mix64(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output of state z (int64 tensors as 64-bit patterns; products wrap mod 2^64):
    a bijection of 64-bit words whose outputs of consecutive states pass BigCrush."""
    z = z + _signed(_GOLDEN)
    z = (z ^ _shift_right(z, 30)) * _signed(_MIX1)
    z = (z ^ _shift_right(z, 27)) * _signed(_MIX2)
    return z ^ _shift_right(z, 31)


def mix64_int(z: int) -> int:
    """:func:`mix64` of one Python integer (the keys), as an unsigned 64-bit number."""
    z = (z + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return z ^ (z >> 31)


class _Keyed:
    """The keyed stream of one training step: a key from (seed, epoch, step), the training-set
    indices of the datapoints this process holds, and a count of the draws made so far."""

    def __init__(self, key: int, ids: torch.Tensor) -> None:
        self.key, self.ids, self.draws = key, ids.to(torch.int64), 0

    def bits(self, shape: torch.Size, data_dim: int, device: torch.device) -> torch.Tensor:
        """64 random bits (int64) for each element of ``shape``: the element of datapoint ids[i] at
        offset e (within the other dimensions, in order) is a function of (key, this draw's number,
        ids[i], e) alone."""
        shape = torch.Size(shape)
        data_dim = data_dim % len(shape)
        if shape[data_dim] != len(self.ids):
            raise RuntimeError(f"keyed noise of shape {tuple(shape)} drawn for {len(self.ids)} datapoints (dimension "
                               f"{data_dim}): a pyro-vae bug")
        draw_key = _signed(mix64_int(self.key ^ mix64_int(self.draws)))
        self.draws += 1
        rest = shape[:data_dim] + shape[data_dim + 1:]
        per_point = mix64(self.ids.to(device) ^ draw_key)  # (B,): each datapoint's stream of this draw
        offsets = torch.arange(math.prod(rest), device=device, dtype=torch.int64) * _signed(_GOLDEN)
        bits = mix64(per_point[:, None] + offsets[None, :])  # (B, elements): counters of each stream
        return bits.view(len(self.ids), *rest).movedim(0, data_dim)


def noise_key(seed: int, epoch: int, step: int) -> int:
    """The key of one training step's keyed noise."""
    return mix64_int(mix64_int(mix64_int(seed) ^ epoch) ^ step)


@contextmanager
def keyed_noise(key: int, ids: torch.Tensor) -> Iterator[None]:
    """Inside the block, :func:`standard_normal` and :func:`uniform` give each datapoint (``ids``: its
    index in the training set) noise keyed on ``key`` (:func:`noise_key`) and its index alone."""
    token = _KEYED.set(_Keyed(key, ids))
    try:
        yield
    finally:
        _KEYED.reset(token)


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
