"""Containers of data and how values are held: :class:`Levels` (8-bit data as uint8, read as
v / 255 in float32), :class:`DataSplits` (train and test, labels, the fingerprint), and the
conversions of arrays into them (images or vectors, labels, a seeded test split)."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from ..errors import DataError


class Levels:
    """8-bit data held as its uint8 levels v, a quarter of float32's bytes, and read as v / 255 in
    float32 (bit for bit the values a float32 copy divided by 255 holds) only where it is used.

    It behaves as a read-only container of datapoints: ``levels[index]`` (a subset, still levels),
    ``shape``, ``len``, ``to(device)``; ``float()`` gives the values. A dataset of 8-bit images
    holds its splits so (``DataSplits``), and the trainer draws its batches from them
    (``PreparedData.train``), decoding one batch at a time."""

    dtype = torch.float32  #: the dtype of the values it holds

    def __init__(self, values: torch.Tensor) -> None:
        if values.dtype != torch.uint8:
            raise TypeError(f"Levels holds uint8 values, got {values.dtype}.")
        self.values = values

    @classmethod
    def exactly(cls, x: torch.Tensor) -> "Levels | None":
        """The levels whose values equal float32 ``x`` in every element (x = v / 255 exactly), or
        None when ``x`` is not such data. Checked in slices, each against the decoding itself."""
        if x.dtype != torch.float32 or x.dim() == 0 or x.numel() == 0:
            return None
        values = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
        step = _rows_per_slice(x)
        for start in range(0, x.shape[0], step):
            part = x[start:start + step]
            scaled = part * 255.0
            low, high = torch.aminmax(scaled)
            if not (low >= 0 and high <= 255):  # NaN compares False: not levels
                return None
            values[start:start + step] = scaled.round_().to(torch.uint8)
            if not torch.equal(_from_levels(values[start:start + step]).view(torch.int32), part.view(torch.int32)):
                return None  # (compared bit for bit: -0.0 is not the level 0)
        return cls(values)

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def nbytes(self) -> int:
        return self.values.numel()

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index) -> "Levels":
        return Levels(self.values[index])

    def to(self, device) -> "Levels":
        return Levels(self.values.to(device))

    def float(self) -> torch.Tensor:
        """The values: v / 255 in float32."""
        return _from_levels(self.values)

    def __repr__(self) -> str:
        return f"Levels(shape={tuple(self.shape)}, device={self.device})"


def _rows_per_slice(x) -> int:
    """Datapoints per slice of a loop over ``x`` (a tensor or Levels): about 4M values, 16 MiB of float32."""
    return max(1, (1 << 22) // max(1, math.prod(x.shape[1:])))


_LEVEL_VALUES = torch.arange(256, dtype=torch.float32).div_(255.0)  # v / 255, divided on the CPU, exactly rounded
_LEVEL_TABLES: dict[torch.device, torch.Tensor] = {}


def _from_levels(values: torch.Tensor) -> torch.Tensor:
    """The one conversion of 8-bit levels to values, v / 255 in float32, bit for bit the datasets'
    float32 division by 255. On the CPU that division itself; elsewhere (where a kernel may multiply
    by the reciprocal instead) read from the table of the 256 values divided on the CPU."""
    return values.float().div_(255.0) if values.device.type == "cpu" else _from_level_table(values)


def _from_level_table(values: torch.Tensor) -> torch.Tensor:
    """v / 255 read from the table of the 256 values divided on the CPU, on values' device."""
    table = _LEVEL_TABLES.get(values.device)
    if table is None:
        table = _LEVEL_TABLES.setdefault(values.device, _LEVEL_VALUES.to(values.device))
    out = torch.empty(values.shape, dtype=torch.float32, device=values.device)
    flat, into = values.reshape(-1), out.view(-1)
    step = 1 << 24  # (the indices are int64: 128 MiB of them at a time)
    for start in range(0, flat.numel(), step):
        into[start:start + step] = table[flat[start:start + step].long()]
    return out


def nbytes(x: "torch.Tensor | Levels | None") -> int:
    """Bytes of data held (a tensor's or its levels')."""
    if x is None:
        return 0
    return x.nbytes if isinstance(x, Levels) else x.numel() * x.element_size()


class _Split:
    """A split of :class:`DataSplits` as a float32 tensor: what it holds, or its levels decoded afresh."""

    def __set_name__(self, owner, name: str) -> None:
        self.split = name

    def __get__(self, splits, owner=None):
        if splits is None:
            return self
        x = splits.held(self.split)
        return x.float() if isinstance(x, Levels) else x

    def __set__(self, splits, x: "torch.Tensor | Levels") -> None:
        splits._held[self.split] = x


class DataSplits:
    """Train and test data of one dataset (labels: one integer per datapoint, or None).

    ``train`` and ``test`` are float32 tensors. A dataset of 8-bit levels is held as
    :class:`Levels` (``held("train")``) and ``train``/``test`` decode it afresh on each access: a
    new tensor, which the splits do not keep (changing it changes nothing held).

    ``factors``: where the data was generated from known factors of variation (a disentanglement
    dataset), ``{"train": (N, F), "test": (M, F)}`` integer factor indices per datapoint, named by
    ``factor_names`` (F names); None otherwise."""

    def __init__(self, name: str, train: "torch.Tensor | Levels", train_labels: torch.Tensor | None,
                 test: "torch.Tensor | Levels", test_labels: torch.Tensor | None, description: str = "",
                 scaling: dict | None = None, factors: dict[str, torch.Tensor] | None = None,
                 factor_names: tuple[str, ...] = ()) -> None:
        self.name, self.description = name, description
        self.train_labels, self.test_labels = train_labels, test_labels
        self.scaling = scaling  # how a table's columns were scaled (csv): applied again to new datapoints
        self._held = {"train": train, "test": test}
        if factors is not None:
            for split in ("train", "test"):
                f = factors[split]
                if f.dim() != 2 or len(f) != len(self._held[split]) or f.shape[1] != len(factor_names):
                    raise DataError(f"the {split} factors have shape {tuple(f.shape)}: one row of "
                                    f"{len(factor_names)} factors ({', '.join(factor_names)}) per datapoint is needed.")
        self.factors, self.factor_names = factors, tuple(factor_names)

    def held(self, split: str) -> "torch.Tensor | Levels":
        """A split as it is held: a float tensor, or :class:`Levels`."""
        return self._held[split]

    train = _Split()
    test = _Split()

    @property
    def nbytes(self) -> int:
        """Bytes the splits hold (data and labels)."""
        return sum(nbytes(t) for t in (*self._held.values(), self.train_labels, self.test_labels))

    def __repr__(self) -> str:
        return f"DataSplits({self.name!r}, train={tuple(self.event_shape)} x {len(self._held['train'])}, " \
               f"test x {len(self._held['test'])})"

    def fingerprint(self) -> str:
        """SHA-256 of the data as trained on: the train and test values (float32 dtype, shape, values,
        decoded in slices when held as levels) and labels."""
        h = hashlib.sha256()
        extra = (self.factors["train"], self.factors["test"]) if self.factors is not None else ()  # (unchanged without)
        for t in (self._held["train"], self._held["test"], self.train_labels, self.test_labels, *extra):
            if t is None:
                h.update(b"none")
                continue
            if isinstance(t, Levels):
                h.update(f"{t.dtype} {tuple(t.shape)}".encode())
                step = _rows_per_slice(t)
                for start in range(0, len(t), step):
                    h.update(t[start:start + step].float().cpu().numpy().tobytes())
                continue
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype} {tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self._held["train"].shape[1:])

    @classmethod
    def from_arrays(cls, x, labels=None, *, test=None, test_labels=None, test_fraction: float = 0.1,
                    split_seed: int = 0, layout: str = "auto", name: str = "arrays") -> "DataSplits":
        """Splits from arrays in memory (NumPy arrays or tensors), read as the ``array`` dataset reads
        a file: images (N, H, W), (N, C, H, W) or (N, H, W, C) or vectors (N, D); uint8 as 8-bit
        levels scaled by 1/255, floats as they are; ``labels`` one integer per datapoint. The test set
        is ``test`` (and ``test_labels``), else a ``test_fraction`` of x held out by ``split_seed``."""
        def array(a, what: str) -> np.ndarray:
            if torch.is_tensor(a):
                return a.detach().cpu().numpy()
            if isinstance(a, np.ndarray):
                return a
            raise DataError(f"{what} must be a NumPy array or a torch tensor, got {type(a).__name__}.")

        if not 0.0 < test_fraction < 1.0:
            raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}.")
        images = as_images(array(x, "x"), layout, "x")
        y = as_labels(array(labels, "labels"), len(images), "labels") if labels is not None else None
        given = None
        if test is not None:
            t = as_images(array(test, "test"), layout, "test")
            if t.shape[1:] != images.shape[1:]:
                raise DataError(f"test holds datapoints of shape {tuple(t.shape[1:])} and x of "
                                f"{tuple(images.shape[1:])}: the test set must be the same kind of data.")
            given = (t, as_labels(array(test_labels, "test_labels"), len(t), "test_labels")
                     if test_labels is not None else None)
        elif test_labels is not None:
            raise DataError("test_labels without test: give the test set's datapoints too.")
        train, train_labels, test_x, test_y = train_and_test(images, y, given, test_fraction, split_seed, "x")
        where = "given test set" if given is not None else f"{len(test_x)} held out by seed {split_seed}"
        return cls(name, train, train_labels, test_x, test_y,
                   f"arrays from Python ({where}): {len(train)} train / {len(test_x)} test, "
                   f"{'x'.join(map(str, train.shape[1:]))}")

    def check_finite(self) -> None:
        for split, x in self._held.items():
            if isinstance(x, Levels):
                continue  # 8-bit levels are finite
            bad = (~torch.isfinite(x)).sum().item()
            if bad:
                raise DataError(
                    f"the {split} split of dataset '{self.name}' has {bad} NaN or infinite values; "
                    f"clean the data (or drop those images) before training."
                )


def train_and_test(x: torch.Tensor, labels: torch.Tensor | None, test: tuple | None, fraction: float, seed: int,
                   where) -> tuple:
    """(train, train_labels, test, test_labels): x and a given test set ``(test, test_labels)``, or,
    without one, a seeded fraction of x held out (:func:`seeded_split`)."""
    if test is not None:
        return x, labels, test[0], test[1]
    return seeded_split(x, labels, fraction, seed, where)


def seeded_split(x: torch.Tensor, labels: torch.Tensor | None, fraction: float, seed: int, where) -> tuple:
    """(train, train_labels, test, test_labels): a fraction of the datapoints, chosen by a seeded
    permutation, held out as the test set (each part in its original order)."""
    n = len(x)
    n_test = max(1, round(n * fraction))
    if n_test >= n:
        raise DataError(f"{where} holds {n} datapoint(s): too few to hold out a test set (test_fraction = "
                        f"{fraction}); add data or give data.test_path.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test, train = order[:n_test].sort().values, order[n_test:].sort().values
    pick = (lambda i: labels[i]) if labels is not None else (lambda i: None)
    return x[train], pick(train), x[test], pick(test)


def as_images(array: np.ndarray, layout: str, where: str) -> "torch.Tensor | Levels":
    """Datapoints (N, C, H, W) or (N, D) from an array of images (N, H, W), (N, C, H, W),
    (N, H, W, C) or vectors (N, D): uint8 as :class:`Levels` (read as v / 255), floats as float32."""
    if array.ndim == 4 and layout == "auto":
        first, last = array.shape[1] in (1, 3, 4), array.shape[3] in (1, 3, 4)
        if first == last:
            raise DataError(f"{where}: an array of shape {array.shape} could be (N, C, H, W) or (N, H, W, C); say "
                            f"which with data.layout = \"NCHW\" or \"NHWC\".")
        layout = "NCHW" if first else "NHWC"
    if array.ndim == 4 and layout == "NHWC":
        array = array.transpose(0, 3, 1, 2)
    elif array.ndim == 3:
        array = array[:, None]
    elif array.ndim not in (2, 4):
        raise DataError(f"{where}: an array of shape {array.shape} fits no network: pyro-vae takes images (N, H, W), "
                        f"(N, C, H, W) or (N, H, W, C), or vectors (N, D).")
    if len(array) == 0:
        raise DataError(f"{where}: the array holds no datapoints (shape {array.shape}).")
    if array.dtype == np.uint8:
        return Levels(torch.from_numpy(np.ascontiguousarray(array)))
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.floating):
        return torch.from_numpy(np.ascontiguousarray(array).astype(np.float32))
    raise DataError(f"{where}: values of type {array.dtype}; pyro-vae takes uint8 (8-bit levels, scaled by 1/255) or "
                    f"floating-point values (kept as they are): convert it, e.g. x.astype(np.float32) / scale.")


def as_labels(array: np.ndarray, n: int, where: str) -> torch.Tensor:
    """One integer label per datapoint, as int64."""
    array = np.asarray(array)
    if array.ndim != 1 or len(array) != n:
        raise DataError(f"{where}: labels of shape {array.shape} for {n} datapoints: one label per datapoint is needed.")
    if not np.issubdtype(array.dtype, np.integer):
        if not (np.issubdtype(array.dtype, np.floating) and np.isfinite(array).all() and (array == np.round(array)).all()):
            raise DataError(f"{where}: labels must be integers (class numbers), and these are {array.dtype} values "
                            f"such as {array.flatten()[0]!r}.")
    return torch.from_numpy(array.astype(np.int64))
