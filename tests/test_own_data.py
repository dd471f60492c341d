"""Your own data: the array dataset (.npy, .npz, .pt), --data PATH, and a run that always knows
what it trained on (its fingerprint): no command scores a run on other data."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae import Config, DataError, DataSplits, Trainer, load_run
from pyro_vae.cli import main
from pyro_vae.config import DATASETS
from pyro_vae.training import CHECKPOINT

SMALL = ["--set", "model.latent_dim=2", "--set", "model.network.hidden=[8]", "--set", "train.epochs=1",
         "--set", "train.batch_size=16", "--set", "eval.samples=4", "--set", "eval.train_subset=8",
         "--set", "eval.exact_points=0", "--no-progress"]
QUIET = dict(progress=False, log=lambda s: None)


def digits(n: int = 40, side: int = 6, seed: int = 0) -> np.ndarray:
    """n uint8 images (n, side, side) of 8-bit levels."""
    return np.random.default_rng(seed).integers(0, 256, (n, side, side), dtype=np.uint8)


def load(**options) -> DataSplits:
    return DATASETS.build({"name": "array", **options}, "data").load()


def refused(argv: list[str], capsys, status: int = 2) -> str:
    assert main(argv) == status
    err = capsys.readouterr().err
    assert err.startswith("error") and "Traceback" not in err, err
    return err


# -- the array dataset ------------------------------------------------------------------------


def test_a_npy_of_8bit_images_is_scaled_and_split_by_a_seeded_test_fraction(tmp_path):
    x = digits(40)
    np.save(tmp_path / "d.npy", x)
    splits = load(path=str(tmp_path / "d.npy"), test_fraction=0.25, split_seed=3)
    assert splits.train.shape == (30, 1, 6, 6) and splits.test.shape == (10, 1, 6, 6)
    assert splits.train_labels is None and splits.test_labels is None
    everything = torch.cat([splits.train, splits.test]).flatten(1).mul(255).round().to(torch.uint8)
    assert sorted(map(tuple, everything.tolist())) == sorted(map(tuple, torch.from_numpy(x).flatten(1).tolist()))
    again = load(path=str(tmp_path / "d.npy"), test_fraction=0.25, split_seed=3)
    assert torch.equal(splits.test, again.test)  # the same split every time
    other = load(path=str(tmp_path / "d.npy"), test_fraction=0.25, split_seed=4)
    assert not torch.equal(splits.test, other.test)


def test_a_npz_with_labels_and_channels_last_colour_images(tmp_path):
    rgb = np.random.default_rng(0).random((20, 8, 8, 3), dtype=np.float32)
    np.savez(tmp_path / "c.npz", images=rgb, labels=np.arange(20) % 4)
    splits = load(path=str(tmp_path / "c.npz"), test_fraction=0.2)
    assert splits.train.shape == (16, 3, 8, 8)
    assert splits.train_labels.dtype == torch.int64 and len(splits.test_labels) == 4
    whole = torch.from_numpy(rgb).permute(0, 3, 1, 2)  # channels first, the values unchanged
    matches = [i for i in range(20) if torch.equal(whole[i], splits.train[0])]
    assert len(matches) == 1 and splits.train_labels[0].item() == matches[0] % 4


def test_keras_style_train_and_test_arrays_in_one_file(tmp_path):
    np.savez(tmp_path / "k.npz", x_train=digits(12), y_train=np.zeros(12, np.int64), x_test=digits(5, seed=1),
             y_test=np.ones(5, np.int64))
    splits = load(path=str(tmp_path / "k.npz"))
    assert splits.train.shape == (12, 1, 6, 6) and splits.test.shape == (5, 1, 6, 6)
    assert splits.test_labels.tolist() == [1] * 5
    torch.testing.assert_close(splits.test[:, 0], torch.from_numpy(digits(5, seed=1)).float() / 255)


def test_a_pt_file_of_tensors_and_a_second_test_file(tmp_path):
    torch.save({"x": torch.rand(10, 4), "y": torch.arange(10)}, tmp_path / "v.pt")
    torch.save({"x": torch.rand(3, 4), "y": torch.arange(3)}, tmp_path / "t.pt")
    splits = load(path=str(tmp_path / "v.pt"), test_path=str(tmp_path / "t.pt"))
    assert splits.train.shape == (10, 4) and splits.test.shape == (3, 4) and splits.test_labels.tolist() == [0, 1, 2]


def test_vectors_train_evaluate_and_explain_through_the_cli(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "table.npy", (rng.normal(size=(48, 5)) @ rng.normal(size=(5, 7))).astype(np.float32))
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "table.npy"), "--set", "model.likelihood=gaussian",
                 *SMALL, "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "data: array from" in out and "43 train / 5 test, 7" in out and "real values" in out and "no labels" in out
    fits = next(s for s in out.splitlines() if s.startswith("data: ")).split("likelihoods that fit: ")[1].split(", ")
    assert "gaussian" in fits and "laplace" in fits and "bernoulli" not in fits  # real values, not in [0, 1]
    recorded = Config.load(run / "config.toml").data
    assert recorded["name"] == "array" and recorded["path"] == str(tmp_path / "table.npy")
    assert main(["evaluate", str(run), "--samples", "3", "--no-progress"]) == 0


def test_the_summary_names_the_likelihoods_whose_contract_the_values_meet(tmp_path, capsys):
    np.save(tmp_path / "b.npy", (digits(30) > 127).astype(np.float32))  # binary
    assert main(["train", "--data", str(tmp_path / "b.npy"), *SMALL, "--out", str(tmp_path / "run")]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("data: "))
    fits = line.split("likelihoods that fit: ")[1].split(", ")
    assert "(binary)" in line and "bernoulli" in fits and "continuous-bernoulli" in fits and "gaussian" in fits


# -- bad input: refused at load time, naming the file and the fix ------------------------------


def _written(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _save(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


ARRAY_FAULTS = {
    "no-such-file": (lambda d: d / "missing.npy", "does not exist"),
    "five-dimensional": (lambda d: np.save(d / "a.npy", np.zeros((4, 2, 2, 2, 2), np.float32)) or d / "a.npy",
                         "fits no network"),
    "int32-values": (lambda d: np.save(d / "a.npy", np.zeros((4, 6, 6), np.int32)) or d / "a.npy",
                     "pyro-vae takes uint8"),
    "label-count": (lambda d: _save(d / "a.npz", x=digits(10), y=np.zeros(7, np.int64)), "labels of shape (7,) for 10"),
    "fractional-labels": (lambda d: _save(d / "a.npz", x=digits(10), y=np.full(10, 0.5)), "labels must be integers"),
    "ambiguous-layout": (lambda d: np.save(d / "a.npy", np.zeros((4, 3, 5, 3), np.float32)) or d / "a.npy",
                         "data.layout"),
    "no-datapoints": (lambda d: np.save(d / "a.npy", np.zeros((0, 6, 6), np.uint8)) or d / "a.npy",
                      "holds no datapoints"),
    "too-few-to-split": (lambda d: np.save(d / "a.npy", digits(1)) or d / "a.npy", "too few to hold out"),
    "which-array": (lambda d: _save(d / "a.npz", first=digits(4), second=digits(4)), "say which is the data"),
    "pickled-objects": (lambda d: torch.save({"x": torch.zeros(4, 6, 6), "meta": argparse.Namespace(a=1)},
                                             d / "a.pt") or d / "a.pt", "never unpickles"),
    "not-tensors": (lambda d: torch.save([1, 2, 3], d / "a.pt") or d / "a.pt", "not a tensor or a dict of tensors"),
    "nan-values": (lambda d: np.save(d / "a.npy", np.full((10, 6, 6), np.nan, np.float32)) or d / "a.npy",
                   "NaN or infinite values"),
    "damaged-file": (lambda d: _written(d / "a.npy", b"\x93NUMPY garbage"), "could not be read as data"),
    "unknown-suffix": (lambda d: _written(d / "a.txt", b"1 2 3"), "reads .npy, .npz, .pt files"),
}


@pytest.mark.parametrize("fault", ARRAY_FAULTS)
def test_bad_arrays_are_refused_before_training_naming_the_file(fault, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    path = ARRAY_FAULTS[fault][0](data)
    before = sorted(p.name for p in data.iterdir())
    argv = ["train", "--set", "data=array", "--set", f"data.path={path}", *SMALL, "--out", str(tmp_path / "run")]
    err = refused(argv, capsys)
    assert ARRAY_FAULTS[fault][1] in err
    assert str(path) in err or fault == "nan-values"
    assert sorted(p.name for p in data.iterdir()) == before  # nothing written into the data folder
    assert not (tmp_path / "run" / CHECKPOINT).exists()


# -- a run always knows its data --------------------------------------------------------------


def test_a_changed_data_file_is_refused_by_every_command_that_reads_the_run(tmp_path, capsys):
    np.save(tmp_path / "d.npy", (digits(30) > 127).astype(np.float32))
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "d.npy"), *SMALL, "--out", str(run)]) == 0
    np.save(tmp_path / "d.npy", (digits(30, seed=1) > 127).astype(np.float32))  # same shape, other values
    capsys.readouterr()
    for argv in (["evaluate", str(run), "--no-progress"], ["explain", str(run)],
                 ["train", "--resume", str(run), "--set", "train.epochs=2", "--no-progress"]):
        err = refused(argv, capsys)
        assert "not the same data" in err and str(tmp_path / "d.npy") in err


def python_splits(seed: int = 0) -> DataSplits:
    x = torch.from_numpy((digits(40, seed=seed) > 127).astype(np.float32)).unsqueeze(1)
    return DataSplits("mine", x[:32], torch.zeros(32, dtype=torch.long), x[32:], torch.ones(8, dtype=torch.long),
                      "my own 6x6 binary images")


def small_config() -> Config:
    return Config.from_dict({"model": {"latent_dim": 2, "network": {"name": "mlp", "hidden": [8]}},
                             "train": {"epochs": 1, "batch_size": 16},
                             "eval": {"samples": 4, "train_subset": 8, "exact_points": 0}})


def test_data_from_python_is_recorded_as_such_and_never_replaced_by_the_configs_dataset(tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(small_config(), run, splits=python_splits(), **QUIET).fit()
    recorded = Config.load(run / "config.toml").data
    assert recorded["name"] == "given" and recorded["description"] == "my own 6x6 binary images"
    assert recorded["fingerprint"] == python_splits().fingerprint()
    with pytest.raises(DataError, match="handed in from Python"):
        load_run(run)
    assert load_run(run, splits=python_splits()).data.test.shape == (8, 1, 6, 6)
    with pytest.raises(DataError, match="not the same data"):
        load_run(run, splits=python_splits(seed=1))
    err = refused(["evaluate", str(run), "--no-progress"], capsys)
    assert "handed in from Python" in err and "--data PATH" in err
    mine = python_splits()
    np.savez(tmp_path / "mine.npz", x_train=mine.train.numpy()[:, 0], y_train=mine.train_labels.numpy(),
             x_test=mine.test.numpy()[:, 0], y_test=mine.test_labels.numpy())
    assert main(["evaluate", str(run), "--data", str(tmp_path / "mine.npz"), "--samples", "3", "--no-progress"]) == 0
    np.savez(tmp_path / "other.npz", x_train=mine.train.numpy()[:, 0], x_test=mine.test.numpy()[:, 0])  # no labels
    capsys.readouterr()
    assert "not the same data" in refused(["evaluate", str(run), "--data", str(tmp_path / "other.npz")], capsys)


def test_a_run_trained_from_python_resumes_from_the_cli_with_its_data(tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(small_config(), run, splits=python_splits(), **QUIET).fit()
    mine = python_splits()
    np.savez(tmp_path / "mine.npz", x_train=mine.train.numpy()[:, 0], y_train=mine.train_labels.numpy(),
             x_test=mine.test.numpy()[:, 0], y_test=mine.test_labels.numpy())
    err = refused(["train", "--resume", str(run), "--set", "train.epochs=2", "--no-progress"], capsys)
    assert "handed in from Python" in err
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2", "--data", str(tmp_path / "mine.npz"),
                 "--no-progress"]) == 0
    assert torch.load(run / CHECKPOINT, weights_only=True)["epoch"] == 2
