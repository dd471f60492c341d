"""Faults on the surfaces of wave 2, as a careless or hostile user meets them: --overwrite pointed at
the wrong kind of thing, tampered exports, stale caches, the trained-model API's bad arguments,
symlink loops, a declared-huge array, a full disk, a refusal after the run folder exists. Each is
one line with its exit status (2 usage, 1 runtime), no traceback, and nothing destroyed."""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae import ConfigError, DataError, ProgramError, Trainer, VAE
from pyro_vae import files as files_module
from pyro_vae.cli import main
from pyro_vae.data import DataSplits
from pyro_vae.errors import CheckpointError, StorageError
from pyro_vae.runs import CHECKPOINT, CONFIG, MARKER
from pyro_vae.trained import load, load_run

from test_faults import TINY, refused, sentinels_outside, snapshot, tiny_config  # noqa: F401  (the autouse fixture)

QUIET = dict(progress=False, log=lambda s: None)


@pytest.fixture
def run(tmp_path) -> Path:
    folder = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(folder)]) == 0
    return folder


# -- 0. --overwrite never crosses kinds, never writes over a run's own files ---------------------------


def test_compare_over_a_run_and_train_over_a_comparison_are_refused_even_with_overwrite(run, tmp_path, capsys):
    err = refused(["compare", *TINY[:-1], "--objectives", "elbo", "--budget", "2steps", "--curve-points", "1",
                   "--grad-draws", "2", "--grad-batch", "4", "--snr-k", "1", "--out", str(run), "--overwrite",
                   "--no-progress"], capsys, inside=run)
    assert "it is a run folder" in err and "makes a comparison" in err
    cmp = tmp_path / "cmp"
    assert main(["compare", *TINY[:-1], "--objectives", "elbo", "--budget", "2steps", "--curve-points", "1",
                 "--grad-draws", "2", "--grad-batch", "4", "--snr-k", "1", "--out", str(cmp), "--no-progress"]) == 0
    capsys.readouterr()
    err = refused(["train", *TINY, "--out", str(cmp), "--overwrite"], capsys, inside=cmp)
    assert "it is a comparison" in err and "makes a run folder" in err
    assert main(["train", *TINY, "--out", str(run), "--overwrite"]) == 0  # a run replaces a run


@pytest.mark.parametrize("out, fragment", [
    ("checkpoint.pt", "one of a run folder's own files"),
    ("config.toml", "one of a run folder's own files"),
    ("s.toml", "writes a picture (.png)"),
    ("pictures", "is a folder"),
])
def test_sample_never_writes_over_a_run_s_own_files_or_under_another_kind_of_name(run, out, fragment, capsys):
    (run / "pictures").mkdir()
    err = refused(["sample", str(run), "--n", "4", "--out", str(run / out), "--overwrite"], capsys, inside=run)
    assert fragment in err


def test_overwrite_replaces_a_picture_only_with_a_picture(run, tmp_path, capsys):
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture at all\n")
    err = refused(["sample", str(run), "--n", "4", "--out", str(notes), "--overwrite"], capsys)
    assert "is not a picture" in err and notes.read_text() == "not a picture at all\n"
    good = tmp_path / "good.png"
    assert main(["sample", str(run), "--n", "4", "--out", str(good)]) == 0
    assert main(["sample", str(run), "--n", "4", "--out", str(good), "--overwrite"]) == 0


# -- 1. exports are tamper-evident as a whole -----------------------------------------------------------


def test_an_edited_export_config_or_record_is_refused_and_a_damaged_record_said_in_words(run, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert load(out).epoch == 1
    config = (out / CONFIG).read_text()
    (out / CONFIG).write_text(config.replace('name = "bernoulli"', 'name = "continuous-bernoulli"'))
    with pytest.raises(CheckpointError, match="does not match the SHA-256"):
        load(out)
    (out / CONFIG).write_text(config)
    info = json.loads((out / "export.json").read_text())
    (out / "export.json").write_text(json.dumps({**info, "epoch": 99}))
    with pytest.raises(CheckpointError, match="was changed after the export"):
        load(out)
    (out / "export.json").write_text(json.dumps(info)[:40])  # truncated
    assert "is not readable JSON" in refused(["sample", str(out), "--n", "4", "--out", str(tmp_path / "s.png")],
                                             capsys)
    (out / "export.json").write_text(json.dumps({k: v for k, v in info.items() if k != "sha256"}))
    assert "lacks sha256" in refused(["sample", str(out), "--n", "4", "--out", str(tmp_path / "s.png")], capsys)


def test_a_nan_checkpoint_is_refused_by_export_as_by_evaluate(run, tmp_path, capsys):
    state = torch.load(run / CHECKPOINT, weights_only=True)
    name = next(iter(state["model"]))
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    torch.save(state, run / CHECKPOINT)
    assert "NaN or infinite" in refused(["export", str(run), "--out", str(tmp_path / "e")], capsys)
    assert not (tmp_path / "e").exists()


def test_commands_take_an_export_where_it_makes_sense_and_say_what_it_is_elsewhere(run, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert main(["sample", str(out), "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    err = refused(["evaluate", str(out), "--samples", "3", "--no-progress"], capsys)
    assert "is an export" in err and "--data PATH" in err
    data = tmp_path / "x.npy"
    np.save(data, load_run(run).data.test.numpy())
    assert main(["encode", str(out), "--data", str(data), "--out", str(tmp_path / "z.npz"), "--samples", "3",
                 "--no-progress"]) == 0


# -- 2. caches never decide what the data is --------------------------------------------------------


def test_an_image_folder_whose_files_changed_keeping_names_sizes_and_times_is_decoded_again(tmp_path, monkeypatch):
    from PIL import Image

    from pyro_vae.data import ImageFolder

    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path / "cache-root"))
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for i in range(4):  # (uncompressed PNGs: a file's size depends on its image's size alone)
        paths.append(folder / f"{i}.png")
        Image.fromarray(np.full((6, 6), 10 * i, np.uint8)).save(paths[-1], compress_level=0)
    first = ImageFolder(path=str(folder)).load()
    stat = os.stat(paths[0])
    Image.fromarray(np.full((6, 6), 200, np.uint8)).save(paths[0], compress_level=0)  # the same size, other pixels
    assert os.path.getsize(paths[0]) == stat.st_size
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and the same modification time
    again = ImageFolder(path=str(folder)).load()
    assert again.fingerprint() != first.fingerprint()
    assert "changed since it was cached" in again.description


# -- 3. the trained-model API checks its arguments at the boundary ----------------------------------------


@pytest.mark.parametrize("call, error, fragment", [
    (lambda r: r.sample(-1), ConfigError, "whole number >= 1"),
    (lambda r: r.sample(2.5), ConfigError, "whole number >= 1"),
    (lambda r: r.log_prob(r.data.test[:2], samples=0), ConfigError, "whole number >= 1"),
    (lambda r: r.decode(torch.zeros(3, 5)), DataError, r"latent is \(batch, 2\)"),
    (lambda r: r.decode(torch.full((3, 2), float("nan"))), DataError, "NaN or infinite"),
    (lambda r: r.elbo(r.data.test[:0]), DataError, "holds no datapoints"),
    (lambda r: r.elbo(torch.empty(2, 1, 6, 6, device="meta")), DataError, "meta device"),
    (lambda r: r.classify(r.data.test[:2]), ProgramError, "takes no labels, so it has no classifier"),
], ids=["sample-negative", "sample-fraction", "samples-zero", "latent-size", "nan-z", "empty", "meta", "classify"])
def test_the_api_refuses_bad_arguments_in_one_line_naming_the_fix(run, call, error, fragment):
    with pytest.raises(error, match=fragment):
        call(load_run(run))


def test_devices_that_do_not_exist_are_refused_listing_those_that_do(run, capsys):
    for name in ("gpu", "mps"):
        with pytest.raises(ConfigError, match="this machine has: auto, cpu"):
            load(run, device=name)
    assert "is not a device name" in refused(["sample", str(run), "--device", "gpu"], capsys)


def test_the_constructors_refuse_what_cannot_be_meant(tmp_path):
    for bad in ("5", 2.5, 0, True):
        with pytest.raises(ConfigError, match="latent_dim must be a whole number"):
            VAE(latent_dim=bad)
    with pytest.raises(ConfigError, match="data_shape must be the shape of one datapoint"):
        VAE(data_shape=(0, 28, 28))
    empty = DataSplits("empty", torch.zeros(0, 1, 6, 6), None, torch.rand(4, 1, 6, 6), None)
    with pytest.raises(DataError, match="the train split of dataset 'empty' holds no datapoints"):
        Trainer(tiny_config(), tmp_path / "run", splits=empty, **QUIET).fit()
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_named_relative_to_the_run_folder_is_found_there(run, tmp_path, capsys):
    assert main(["evaluate", str(run), "--checkpoint", "checkpoint.pt", "--samples", "2", "--no-progress"]) == 0
    assert "no checkpoint at" in refused(["evaluate", str(run), "--checkpoint", "nope.pt", "--no-progress"], capsys)


# -- 4. faults at write time ------------------------------------------------------------------------


def test_a_full_disk_mid_run_ends_with_what_was_kept_and_how_to_go_on(tmp_path, monkeypatch, capsys):
    real = torch.save
    calls = {"n": 0}

    def full_on_the_second_checkpoint(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "optimizer" in obj:
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(files_module.torch, "save", full_on_the_second_checkpoint)
    run = tmp_path / "run"
    err = refused(["train", *TINY[:-3], "--set", "train.epochs=3", "--no-progress", "--out", str(run)], capsys,
                  status=1)
    assert "epoch 2 could not be saved" in err and "the disk is full" in err
    assert "the last good checkpoint is epoch 1" in err and f"--resume {run}" in err
    assert torch.load(run / CHECKPOINT, weights_only=True)["epoch"] == 1  # intact
    monkeypatch.setattr(files_module.torch, "save", real)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0


def test_a_storage_error_names_torch_s_own_writer_failure():
    def failing(f):
        raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file data/0")

    with pytest.raises(StorageError, match="PytorchStreamWriter failed writing"):
        files_module.atomic_write(Path("/tmp") / "pyro-vae-never-written.bin", failing)


# -- 5. messages that help ---------------------------------------------------------------------------


def test_a_symlink_loop_in_an_image_folder_is_named(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "images" / "a"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(folder / "0.png")
    (folder / "loop").symlink_to(tmp_path / "images", target_is_directory=True)
    err = refused(["train", "--data", str(tmp_path / "images"), "--out", str(tmp_path / "run"), "--no-progress"],
                  capsys)
    assert "symlink loop at" in err and len(err) < 600
    assert not (tmp_path / "run").exists()


def test_an_npz_declaring_an_array_larger_than_memory_is_refused_before_allocating(tmp_path, capsys):
    import zipfile

    header = {"descr": "<f4", "fortran_order": False, "shape": (3_000_000, 1_000_000)}  # 11 TiB declared
    buffer = __import__("io").BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        z.writestr("x.npy", buffer.getvalue())
    err = refused(["train", "--data", str(tmp_path / "huge.npz"), "--out", str(tmp_path / "run")], capsys)
    assert "declares an array of shape (3000000, 1000000)" in err and "GiB" in err


def test_a_run_whose_data_moved_says_which_run_recorded_what_and_the_fix(tmp_path, capsys, monkeypatch):
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).uniform(size=(40, 1, 6, 6)).astype(np.float32))
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), *TINY[8:], "--out", str(run)]) == 0
    assert str(data) in (run / CONFIG).read_text()  # recorded absolute: found from any directory
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    assert main(["evaluate", str(run), "--samples", "2", "--no-progress"]) == 0
    data.rename(tmp_path / "moved.npy")
    err = refused(["evaluate", str(run), "--samples", "2", "--no-progress"], capsys)
    assert "does not exist" in err and "recorded data.path" in err and "--data PATH" in err
    assert main(["evaluate", str(run), "--samples", "2", "--data", str(tmp_path / "moved.npy"), "--no-progress"]) == 0


def test_a_refusal_after_the_run_folder_exists_leaves_nothing_behind(tmp_path, capsys):
    class FailsAtStart:
        def on_train_start(self, trainer):
            raise ConfigError("this callback cannot start")

    run = tmp_path / "run"
    with pytest.raises(ConfigError):
        Trainer(tiny_config(), run, callbacks=[FailsAtStart()], **QUIET).fit()
    assert not run.exists()
    Trainer(tiny_config(), run, **QUIET).fit()  # the same command again: nothing in its way
    assert (run / CHECKPOINT).is_file() and (run / MARKER).is_file()


def test_nan_rows_are_refused_before_a_summary_of_nan_values(tmp_path, capsys):
    x = np.random.default_rng(0).uniform(size=(20, 4)).astype(np.float32)
    x[3, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    err = refused(["train", "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "run")], capsys)
    out = capsys.readouterr().out
    assert "NaN or infinite" in err and "[nan, nan]" not in out


def test_a_config_path_that_is_a_directory_is_said_so(tmp_path, capsys):
    assert "is a directory" in refused(["train", str(tmp_path)], capsys)


# -- 6. pictures of latents where sweeping means nothing -----------------------------------------------


def test_traverse_switches_the_codes_of_a_categorical_latent_and_interpolate_refuses(tmp_path, capsys):
    run = tmp_path / "cat"
    assert main(["train", *TINY, "--set", "model.latent_dim=6", "--set", "model.prior=categorical",
                 "--set", "model.prior.classes=3", "--set", "model.guide=categorical", "--set", "model.guide.classes=3",
                 "--set", "train.objective=enumerate", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["traverse", str(run), "--out", str(tmp_path / "t.png")]) == 0
    assert "2 groups of site 'z' switched" in capsys.readouterr().out
    assert "the points between two codes are no code" in refused(["interpolate", str(run)], capsys)


def test_the_command_line_ends_quietly_when_its_reader_goes_away(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(f"{sys.executable} -m pyro_vae list | head -1", shell=True, capture_output=True, text=True)
    assert done.returncode == 0 and "Broken pipe" not in done.stderr and done.stdout.strip()


def test_list_shows_the_library_s_model_programs_with_their_options(capsys):
    assert main(["list", "program"]) == 0
    out = capsys.readouterr().out
    for name in ("gmvae", "cvae", "m2", "quadrant-cvae"):
        assert f"  {name}  (" in out
    assert "num_classes = 10" in out


def test_a_run_prints_in_one_short_line(run):
    text = repr(load_run(run))
    assert text.startswith("Run(") and len(text) < 200 and "optimizer" not in text
    assert math.isfinite(load_run(run).elbo(load_run(run).data.test[:2]).sum().item())
