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
from pyro_vae.runs import CHECKPOINT

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


def test_label_key_names_the_labels_in_the_same_file_or_a_file_of_them(tmp_path):
    x = digits(20)
    np.savez(tmp_path / "a.npz", x=x, digit=np.arange(20) % 5, y=np.zeros(20, np.int64))
    np.save(tmp_path / "classes.npy", np.arange(20) % 2)
    by_key = load(path=str(tmp_path / "a.npz"), label_key="digit", test_fraction=0.25)
    by_default = load(path=str(tmp_path / "a.npz"), test_fraction=0.25)  # y, the default key
    by_file = load(path=str(tmp_path / "a.npz"), label_key=str(tmp_path / "classes.npy"), test_fraction=0.25)
    assert torch.equal(by_key.train, by_default.train) and torch.equal(by_key.train, by_file.train)
    first = [i for i in range(20) if torch.equal(torch.from_numpy(x[i]).float().div(255), by_key.train[0, 0])]
    assert by_key.train_labels[0].item() == first[0] % 5 and by_file.train_labels[0].item() == first[0] % 2
    assert by_default.train_labels.eq(0).all()
    with pytest.raises(DataError, match="no array 'label' for the labels; it holds x, digit, y"):
        load(path=str(tmp_path / "a.npz"), label_key="label")


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
    # integers load as float32 values equal to them (counts), refused only where float32 is no longer exact
    "int32-beyond-float32": (lambda d: np.save(d / "a.npy", np.full((4, 6, 6), 2 ** 24 + 1, np.int32)) or d / "a.npy",
                             "exact for integers only up to 2**24"),
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


# -- using a trained model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("use") / "run"
    Trainer(small_config(), run, splits=python_splits(), **QUIET).fit()
    return run


def test_a_loaded_run_encodes_decodes_samples_and_scores(trained):
    import pyro_vae

    run, x = pyro_vae.load(trained), python_splits().test
    mean, scale = run.encode(x)
    q = run.program.vae.q_z_given_x(x)  # the diagonal Gaussian's own mean and scale
    torch.testing.assert_close(mean, q.mean)
    torch.testing.assert_close(scale, q.stddev)
    assert run.decode(mean).shape == (8, 1, 6, 6) and run.reconstruct(x).shape == (8, 1, 6, 6)
    assert torch.equal(run.sample(5, seed=3), run.sample(5, seed=3)) and run.sample(5).shape == (5, 1, 6, 6)
    elbo, evidence = run.elbo(x, samples=50), run.log_prob(x, samples=200)
    assert elbo.shape == (8,) and (evidence["log_px"] >= elbo - 4 * evidence["stderr"] - 0.5).all()
    torch.testing.assert_close(evidence["log_px"], run.log_prob(x, samples=200)["log_px"])  # seeded: the same again


def test_the_use_api_takes_flat_batches_uint8_and_arrays_and_names_the_shape_otherwise(trained):
    import pyro_vae
    from pyro_vae import DataError

    run, x = pyro_vae.load(trained), python_splits().test
    mean, _ = run.encode(x)
    torch.testing.assert_close(run.encode(x.flatten(1))[0], mean)  # (B, 36) reshaped to (B, 1, 6, 6)
    torch.testing.assert_close(run.encode((x * 255).to(torch.uint8))[0], mean)  # 8-bit levels scaled
    torch.testing.assert_close(run.encode(x.numpy())[0], mean)  # a numpy array
    with pytest.raises(DataError, match=r"the model takes \(batch, 1, 6, 6\)"):
        run.encode(torch.zeros(3, 35))
    with pytest.raises(DataError, match="NaN or infinite"):
        run.encode(x.masked_fill(x > 0.5, float("nan")))
    with pytest.raises(DataError, match=r"values in \[0, 2\]"):
        run.log_prob(x * 2)  # outside what the Bernoulli's binarization can take


def test_encode_writes_per_datapoint_latents_and_scores(trained, tmp_path, capsys):
    import pyro_vae

    np.save(tmp_path / "new.npy", python_splits(seed=5).train.numpy()[:10, 0])
    out = tmp_path / "latents.npz"
    assert main(["encode", str(trained), "--data", str(tmp_path / "new.npy"), "--out", str(out), "--samples", "20",
                 "--no-progress"]) == 0
    table = np.load(out)
    assert table["mean"].shape == (10, 2) and table["scale"].shape == (10, 2) and table["log_px"].shape == (10,)
    assert "label" not in table.files
    run = pyro_vae.load(trained)
    first = python_splits(seed=5).train[:10]
    np.testing.assert_allclose(table["mean"], run.encode(first)[0].numpy(), rtol=1e-5)
    assert main(["encode", str(trained), "--data", str(tmp_path / "new.npy"), "--out", str(tmp_path / "l.csv"),
                 "--samples", "20", "--no-progress"]) == 0
    rows = (tmp_path / "l.csv").read_text().splitlines()
    assert rows[0] == "index,elbo,log_px,log_px_stderr,elbo_stderr,mean_0,mean_1,scale_0,scale_1" and len(rows) == 11
    np.testing.assert_allclose([float(v) for v in rows[1].split(",")[2:3]], table["log_px"][:1], rtol=1e-4)
    capsys.readouterr()
    err = refused(["encode", str(trained), "--data", str(tmp_path / "new.npy"), "--out", str(out)], capsys)
    assert "already exists" in err


# -- image folders ----------------------------------------------------------------------------


def write_pngs(folder: Path, n: int, side: int = 6, mode: str = "L", seed: int = 0) -> list[np.ndarray]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng, out = np.random.default_rng(seed), []
    for i in range(n):
        pixels = rng.integers(0, 256, (side, side) if mode == "L" else (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels, mode).save(folder / f"img{i:03d}.png")
        out.append(pixels)
    return out


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path / "pyro-vae-cache"))


def test_a_flat_folder_of_grey_pngs_is_read_cached_and_read_again_when_it_changes(tmp_path):
    pixels = write_pngs(tmp_path / "imgs", 20)
    before = sorted(p.name for p in (tmp_path / "imgs").iterdir())
    first = DATASETS.build({"name": "image-folder", "path": str(tmp_path / "imgs"), "test_fraction": 0.25}).load()
    assert first.train.shape == (15, 1, 6, 6) and first.test.shape == (5, 1, 6, 6) and first.train_labels is None
    everything = torch.cat([first.train, first.test]).mul(255).round().to(torch.uint8).flatten(1)
    assert sorted(map(tuple, everything.tolist())) == sorted(tuple(p.flatten().tolist()) for p in pixels)
    assert "(decoded, cached)" in first.description
    again = DATASETS.build({"name": "image-folder", "path": str(tmp_path / "imgs"), "test_fraction": 0.25}).load()
    assert "(from the cache)" in again.description and again.fingerprint() == first.fingerprint()
    write_pngs(tmp_path / "imgs", 1, seed=9)  # img000.png replaced by another image
    changed = DATASETS.build({"name": "image-folder", "path": str(tmp_path / "imgs"), "test_fraction": 0.25}).load()
    assert "changed since it was cached" in changed.description and changed.fingerprint() != first.fingerprint()
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == before  # nothing written into the folder


def test_class_subfolders_in_colour_give_sorted_labels(tmp_path):
    for name, seed in (("dogs", 1), ("cats", 2)):
        write_pngs(tmp_path / "pets" / name, 6, side=4, mode="RGB", seed=seed)
    splits = DATASETS.build({"name": "image-folder", "path": str(tmp_path / "pets"), "test_fraction": 0.25}).load()
    assert splits.train.shape[1:] == (3, 4, 4)  # colour found in the files
    labels = torch.cat([splits.train_labels, splits.test_labels])
    assert sorted(labels.tolist()) == [0] * 6 + [1] * 6 and "classes cats, dogs" in splits.description
    grey = DATASETS.build({"name": "image-folder", "path": str(tmp_path / "pets"), "channels": 1}).load()
    assert grey.train.shape[1:] == (1, 4, 4)


def test_images_of_several_sizes_need_a_size(tmp_path):
    write_pngs(tmp_path / "imgs", 3, side=6)
    write_pngs(tmp_path / "more", 1, side=9)
    (tmp_path / "more" / "img000.png").rename(tmp_path / "imgs" / "big.png")
    with pytest.raises(DataError, match=r"several sizes \(big.png: 9x9, img000.png: 6x6\).*data.size"):
        DATASETS.build({"name": "image-folder", "path": str(tmp_path / "imgs")}).load()
    splits = DATASETS.build({"name": "image-folder", "path": str(tmp_path / "imgs"), "size": [5, 7],
                             "test_fraction": 0.25}).load()
    assert splits.train.shape[1:] == (1, 5, 7)


IMAGE_FAULTS = {
    "not-an-image": (lambda d: (d / "bad.png").write_bytes(b"this is text"), "bad.png is not an image"),
    "truncated": (lambda d: (d / "cut.png").write_bytes((d / "img000.png").read_bytes()[:60]), "cut.png"),
    "files-and-subfolders": (lambda d: (d / "sub").mkdir(), "both image files"),
}


@pytest.mark.parametrize("fault", IMAGE_FAULTS)
def test_bad_image_folders_are_refused_naming_the_file(fault, tmp_path, capsys):
    write_pngs(tmp_path / "imgs", 4)
    IMAGE_FAULTS[fault][0](tmp_path / "imgs")
    before = sorted(p.name for p in (tmp_path / "imgs").iterdir())
    err = refused(["train", "--data", str(tmp_path / "imgs"), *SMALL, "--out", str(tmp_path / "run")], capsys)
    assert IMAGE_FAULTS[fault][1] in err and str(tmp_path / "imgs") in err
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == before
    assert not (tmp_path / "run" / CHECKPOINT).exists()


def test_an_empty_folder_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = refused(["train", "--data", str(tmp_path / "empty"), *SMALL, "--out", str(tmp_path / "run")], capsys)
    assert "holds no image files" in err


def test_a_folder_of_your_images_trains_evaluates_samples_and_encodes_from_the_cli(tmp_path, capsys):
    write_pngs(tmp_path / "imgs", 30)
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "imgs"), *SMALL, "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "data: image-folder" in out and "27 train / 3 test, 1x6x6" in out and "8-bit levels" in out
    assert main(["evaluate", str(run), "--samples", "3", "--no-progress"]) == 0
    assert main(["sample", str(run), "--n", "4"]) == 0
    assert main(["encode", str(run), "--out", str(tmp_path / "z.npz"), "--samples", "3", "--no-progress"]) == 0
    assert np.load(tmp_path / "z.npz")["mean"].shape == (3, 2)  # the run's test set
    assert main(["interpolate", str(run), "--pairs", "0:2"]) == 0 and (run / "interpolate-0_2.png").is_file()


# -- tables -----------------------------------------------------------------------------------


def write_table(path: Path, rows: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(rows, 3)) * [1.0, 10.0, 0.1] + [0.0, 100.0, -5.0]
    lines = ["a,b,c,kind"] + [f"{a:.6f},{b:.6f},{c:.6f},{i % 3}" for i, (a, b, c) in enumerate(values)]
    path.write_text("\n".join(lines) + "\n")
    return values


def test_a_csv_table_is_standardized_by_its_training_rows_and_the_scaling_recorded(tmp_path, capsys):
    values = write_table(tmp_path / "t.csv")
    splits = DATASETS.build({"name": "csv", "path": str(tmp_path / "t.csv"), "label_column": "kind"}).load()
    assert splits.train.shape == (36, 3) and splits.test.shape == (4, 3)
    torch.testing.assert_close(splits.train.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(splits.train.std(0, unbiased=False), torch.ones(3), atol=1e-5, rtol=0)
    shift, scale = torch.tensor(splits.scaling["shift"]), torch.tensor(splits.scaling["scale"])
    raw = torch.from_numpy(values).float()
    everything = torch.cat([splits.train, splits.test]) * scale + shift  # undone: the file's numbers again
    assert sorted(map(tuple, everything.round(decimals=3).tolist())) == sorted(map(tuple, raw.round(decimals=3).tolist()))
    assert sorted(torch.cat([splits.train_labels, splits.test_labels]).tolist()) == sorted(i % 3 for i in range(40))
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "t.csv"), "--set", "data.label_column=kind", "--set",
                 "model.likelihood=gaussian", *SMALL, "--out", str(run)]) == 0
    assert torch.load(run / CHECKPOINT, weights_only=True)["data"]["scaling"] == splits.scaling
    write_table(tmp_path / "new.csv", rows=5, seed=3)
    assert main(["encode", str(run), "--data", str(tmp_path / "new.csv"), "--out", str(tmp_path / "z.npz"),
                 "--samples", "3", "--no-progress"]) == 0
    import pyro_vae

    raw = torch.from_numpy(write_table(tmp_path / "same.csv", rows=5, seed=3)).float()  # rows as the file has them
    loaded = pyro_vae.load(run)  # the API scales them itself, as the training rows were
    np.testing.assert_allclose(np.load(tmp_path / "z.npz")["mean"], loaded.encode(raw)[0].numpy(), rtol=1e-4, atol=1e-5)
    scaled = (raw - shift) / scale
    torch.testing.assert_close(loaded.inputs(raw), scaled)
    np.testing.assert_allclose(pyro_vae.data.apply_scaling(raw.numpy(), loaded.scaling), scaled.numpy(), rtol=1e-6)


CSV_FAULTS = {
    "ragged": ("a,b\n1,2\n3\n", "line 3: 1 columns where the header has 2"),
    "not-a-number": ("a,b\n1,2\n3,x\n", "line 3, column 'b': 'x' is not a number"),
    "nan": ("a,b\n1,2\n3,nan\n", "line 3, column 'b': 'nan' is not a finite number"),
    "header-only": ("a,b\n", "holds a header and no rows"),
    "empty": ("", "holds no rows"),
}


@pytest.mark.parametrize("fault", CSV_FAULTS)
def test_bad_tables_are_refused_naming_the_line(fault, tmp_path, capsys):
    (tmp_path / "t.csv").write_text(CSV_FAULTS[fault][0])
    err = refused(["train", "--data", str(tmp_path / "t.csv"), "--set", "model.likelihood=gaussian", *SMALL,
                   "--out", str(tmp_path / "run")], capsys)
    assert CSV_FAULTS[fault][1] in err and str(tmp_path / "t.csv") in err


def test_labels_that_are_not_integers_are_refused(tmp_path, capsys):
    (tmp_path / "t.csv").write_text("a,b,y\n1,2,0.5\n3,4,1\n5,6,0\n")
    err = refused(["train", "--data", str(tmp_path / "t.csv"), "--set", "data.label_column=y", *SMALL,
                   "--out", str(tmp_path / "run")], capsys)
    assert "labels must be integers" in err


# -- colour images end to end -----------------------------------------------------------------


@pytest.mark.parametrize("likelihood", ["discretized-logistic", "categorical", "beta"])
def test_colour_images_train_and_report_bits_per_dim_with_the_conv_network(likelihood, tmp_path):
    import json

    rgb = np.random.default_rng(0).integers(0, 256, (24, 8, 8, 3), dtype=np.uint8)  # (N, H, W, C), 8-bit
    np.save(tmp_path / "rgb.npy", rgb)
    run = tmp_path / "run"
    small = [a for a in SMALL if a != "model.network.hidden=[8]"]
    small = [a for i, a in enumerate(small) if not (a == "--set" and small[i + 1] == "--set")]
    assert main(["train", "--data", str(tmp_path / "rgb.npy"), *small, "--set", "model.network=conv", "--set",
                 "model.network.channels=[4, 4]", "--set", "model.network.hidden=8", "--set",
                 f"model.likelihood={likelihood}", "--out", str(run)]) == 0
    result = json.loads((run / "evaluation.json").read_text())
    bits = next(v for k, v in result.items() if "bits" in k)
    bits = bits["mean"] if isinstance(bits, dict) else bits
    assert 7.5 < bits < 12  # uniformly random 8-bit pixels hold 8 bits each: no model of them does much better


def test_pixelcnn_bernoulli_refuses_colour_naming_the_likelihoods_that_take_it():
    from pyro_vae import VAE, ConfigError

    with pytest.raises(ConfigError, match="discretized-logistic and categorical"):
        VAE(data_shape=(3, 8, 8), likelihood="pixelcnn-bernoulli")


def test_interpolate_and_traverse_write_their_grids(trained, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "interp.png"
    assert main(["interpolate", str(trained), "--data", str(tmp_path / "none.npy"), "--out", str(out)]) == 2
    np.save(tmp_path / "mine.npy", python_splits().test.numpy()[:, 0])
    assert main(["interpolate", str(trained), "--data", str(tmp_path / "mine.npy"), "--pairs", "0:1", "2:3",
                 "--steps", "5", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 0
    import pyro_vae

    run = pyro_vae.load(trained)
    means = run.encode(python_splits().test[[0, 1]])[0]
    ends = run.decode(means)  # t = 0 and t = 1 of the line are the two posterior means decoded
    line = run.decode(torch.stack([means[0] + t * (means[1] - means[0]) for t in torch.linspace(0, 1, 5)]))
    torch.testing.assert_close(line[[0, -1]], ends)
    assert main(["traverse", str(trained), "--data", str(tmp_path / "mine.npy"), "--dims", "0", "1", "--out",
                 str(tmp_path / "trav.png")]) == 0
    assert "latent coordinates 0, 1" in capsys.readouterr().out and (tmp_path / "trav.png").is_file()
    err = refused(["traverse", str(trained), "--data", str(tmp_path / "mine.npy"), "--dims", "7",
                   "--out", str(tmp_path / "t2.png")], capsys)
    assert "coordinates 0 to 1" in err
    err = refused(["interpolate", str(trained), "--data", str(tmp_path / "mine.npy"), "--pairs", "0:99",
                   "--out", str(tmp_path / "i2.png")], capsys)
    assert "has 8 datapoints" in err


# -- CIFAR-10 from its binary files -----------------------------------------------------------


def write_cifar10(folder: Path, per_file: int = 3) -> dict[str, np.ndarray]:
    rng, written = np.random.default_rng(0), {}
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, per_file, dtype=np.uint8)
        pixels = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        (folder / name).write_bytes(np.concatenate([labels[:, None], pixels], 1).tobytes())
        written[name] = (labels, pixels)
    return written


def test_cifar10_reads_the_binary_batches_channel_first(tmp_path):
    written = write_cifar10(tmp_path / "cifar" / "cifar-10-batches-bin")
    splits = DATASETS.build({"name": "cifar10", "data_dir": str(tmp_path / "cifar")}, "data").load()
    assert splits.train.shape == (15, 3, 32, 32) and splits.test.shape == (3, 3, 32, 32)
    labels, pixels = written["data_batch_2.bin"]
    assert splits.train_labels[3:6].tolist() == labels.tolist()
    red_of_the_fourth = pixels[0, :1024].reshape(32, 32)  # the first record of batch 2: its red plane, row-major
    assert torch.equal((splits.train[3, 0] * 255).round().to(torch.uint8), torch.from_numpy(red_of_the_fourth))
    assert torch.equal((splits.test[2, 2] * 255).round().to(torch.uint8),
                       torch.from_numpy(written["test_batch.bin"][1][2, 2048:].reshape(32, 32)))


def test_a_damaged_cifar10_folder_is_refused_naming_the_file(tmp_path, capsys):
    write_cifar10(tmp_path / "c")
    (tmp_path / "c" / "data_batch_3.bin").write_bytes(b"\0" * 100)
    err = refused(["train", "--set", "data=cifar10", "--set", f"data.data_dir={tmp_path / 'c'}", *SMALL,
                   "--out", str(tmp_path / "run")], capsys)
    assert "data_batch_3.bin is 100 bytes, not whole records" in err
    (tmp_path / "c" / "test_batch.bin").unlink()
    err = refused(["train", "--set", "data=cifar10", "--set", f"data.data_dir={tmp_path / 'c'}", *SMALL,
                   "--out", str(tmp_path / "run")], capsys)
    assert "data_batch_3.bin" in err  # the first fault found is named; the missing file is next


# -- SVHN from its official MATLAB files ---------------------------------------------------------


def write_svhn(folder: Path, n: int = 4) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Files laid out as SVHN's format 2: X uint8 (32, 32, 3, N), y (N, 1) in 1..10 (10: the digit 0)."""
    import scipy.io

    rng, written = np.random.default_rng(0), {}
    folder.mkdir(parents=True)
    for name in ("train_32x32.mat", "test_32x32.mat"):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.float64)
        y[0] = 10
        scipy.io.savemat(folder / name, {"X": x, "y": y})
        written[name] = (x, y)
    return written


def test_svhn_reads_the_official_files_channel_first_with_ten_as_zero(tmp_path):
    written = write_svhn(tmp_path / "svhn")
    splits = DATASETS.build({"name": "svhn", "data_dir": str(tmp_path / "svhn")}, "data").load()
    assert splits.train.shape == (4, 3, 32, 32) and splits.test.shape == (4, 3, 32, 32)
    x, y = written["train_32x32.mat"]
    assert splits.train_labels.tolist() == (y.reshape(-1) % 10).astype(int).tolist() and splits.train_labels[0] == 0
    green_of_the_third = x[:, :, 1, 2]  # (row, column) of image 2's green channel
    assert torch.equal((splits.train[2, 1] * 255).round().to(torch.uint8), torch.from_numpy(green_of_the_third))


def test_a_damaged_svhn_folder_is_refused_naming_the_file(tmp_path, capsys):
    import scipy.io

    write_svhn(tmp_path / "s")
    scipy.io.savemat(tmp_path / "s" / "test_32x32.mat", {"X": np.zeros((28, 28, 5), np.uint8), "y": np.ones((5, 1))})
    err = refused(["train", "--set", "data=svhn", "--set", f"data.data_dir={tmp_path / 's'}", *SMALL,
                   "--out", str(tmp_path / "run")], capsys)
    assert "test_32x32.mat is not an SVHN cropped-digits file" in err
    (tmp_path / "s" / "train_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    err = refused(["train", "--set", "data=svhn", "--set", f"data.data_dir={tmp_path / 's'}", *SMALL,
                   "--out", str(tmp_path / "run")], capsys)
    assert "train_32x32.mat could not be read as a MATLAB file" in err
    (tmp_path / "s" / "train_32x32.mat").unlink()
    err = refused(["train", "--set", "data=svhn", "--set", f"data.data_dir={tmp_path / 's'}", *SMALL,
                   "--out", str(tmp_path / "run")], capsys)
    assert "train_32x32.mat does not exist" in err


def test_a_moved_data_file_is_pointed_at_again_and_checked_by_its_fingerprint(tmp_path, capsys):
    np.save(tmp_path / "d.npy", (digits(30) > 127).astype(np.float32))
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "d.npy"), *SMALL, "--out", str(run)]) == 0
    (tmp_path / "d.npy").rename(tmp_path / "moved.npy")
    capsys.readouterr()
    assert "does not exist" in refused(["evaluate", str(run), "--no-progress"], capsys)
    assert main(["evaluate", str(run), "--data", str(tmp_path / "moved.npy"), "--samples", "3", "--no-progress"]) == 0
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2", "--set",
                 f"data.path={tmp_path / 'moved.npy'}", "--no-progress"]) == 0
    assert Config.load(run / "config.toml").data["path"] == str(tmp_path / "moved.npy")
    np.save(tmp_path / "other.npy", (digits(30, seed=2) > 127).astype(np.float32))
    capsys.readouterr()
    err = refused(["train", "--resume", str(run), "--set", "train.epochs=3", "--set",
                   f"data.path={tmp_path / 'other.npy'}", "--no-progress"], capsys)
    assert "not the same data" in err


def test_the_trainer_takes_bare_numpy_arrays(tmp_path):
    """Trainer(splits=x) with a NumPy array (pythae's way): uint8 images scaled by 1/255, a seeded
    tenth held out, recorded as data from Python; (x, labels) keeps the labels."""
    import numpy as np

    from pyro_vae import Config, DataSplits, Trainer, load_run

    rng = np.random.default_rng(0)
    x = (rng.random((60, 6, 6)) < 0.3).astype(np.uint8) * 255
    labels = rng.integers(0, 3, 60)
    config = Config.from_dict({"model": {"latent_dim": 2, "network": {"name": "mlp", "hidden": [8]}},
                               "train": {"epochs": 1, "batch_size": 16}, "eval": {"samples": 4}})
    trainer = Trainer(config, tmp_path / "run", progress=False, log=lambda s: None, splits=(x, labels)).fit()
    data = trainer.data
    assert data.train.shape[1:] == (1, 6, 6) and data.train.shape[0] + data.test.shape[0] == 60
    assert set(data.train.float().unique().tolist()) <= {0.0, 1.0}
    assert trainer.config.data["name"] == "given"
    same = DataSplits.from_arrays(x, labels)
    assert torch.equal(same.test_labels, data.splits.test_labels)
    with pytest.raises(DataError, match="NumPy array or a torch tensor"):
        DataSplits.from_arrays([[0, 1]])
    with pytest.raises(DataError, match="one label per datapoint"):
        DataSplits.from_arrays(x, labels[:5])
    load_run(tmp_path / "run", splits=same)  # the same arrays again: the fingerprint matches
