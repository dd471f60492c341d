"""Faults a careless or hostile user meets: nothing outside the run touched, nothing lost, every
failure one line with its exit status (2: usage, 1: runtime), never a traceback.

Each case checks the exit status, that the message names the path or the fix, and that sentinel
files inside and outside the run folder are byte-identical afterwards."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyro_vae import Config, StorageError, Trainer
from pyro_vae import files as files_module
from pyro_vae.cli import main
from pyro_vae.runs import LOCK, MARKER, run_lock
from pyro_vae.runs import CHECKPOINT, METRICS, read_metrics

TINY = ["--set", "data=synthetic", "--set", "data.n_train=64", "--set", "data.n_test=16", "--set", "data.side=6",
        "--set", "model.latent_dim=2", "--set", "model.network.hidden=[8]", "--set", "train.epochs=1",
        "--set", "train.batch_size=32", "--set", "eval.samples=4", "--set", "eval.train_subset=8",
        "--set", "eval.exact_points=0", "--no-progress"]
QUIET = dict(progress=False, log=lambda s: None)


def snapshot(*folders: Path) -> dict[str, bytes]:
    """Every file below ``folders`` (links as their target's name), to compare before and after."""
    out = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            out[str(path)] = os.readlink(path).encode() if path.is_symlink() else \
                path.read_bytes() if path.is_file() else b"<dir>"
    return out


def tiny_config(**train) -> Config:
    return Config.from_dict({"data": {"name": "synthetic", "n_train": 64, "n_test": 16, "side": 6},
                             "model": {"latent_dim": 2, "network": {"name": "mlp", "hidden": [8]}},
                             "train": {"epochs": 2, "batch_size": 32, **train},
                             "eval": {"samples": 4, "train_subset": 8, "exact_points": 0}})


def refused(argv: list[str], capsys, status: int = 2, inside: Path | None = None) -> str:
    """Run the CLI, which must fail with ``status`` in one line and no traceback; with ``inside``, a
    run folder, a sentinel file planted there and every file of the folder must be unchanged after."""
    if inside is not None:
        (inside / "sentinel-notes.txt").write_text("the user's notes\n")
        before = snapshot(inside)
    assert main(argv) == status
    err = capsys.readouterr().err
    assert err.startswith("error") and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    if inside is not None:
        assert snapshot(inside) == before
    return err


@pytest.fixture(autouse=True)
def sentinels_outside(tmp_path, monkeypatch):
    """Files outside any run folder (beside it, and in the working directory) that no fault may touch."""
    outside, cwd = tmp_path / "outside", tmp_path / "cwd"
    (outside / "sub").mkdir(parents=True)
    cwd.mkdir()
    (outside / "keep.txt").write_text("keep\n")
    (outside / "sub" / "data.bin").write_bytes(bytes(range(256)))
    (cwd / "keep.txt").write_text("the working directory's file\n")
    monkeypatch.chdir(cwd)
    files = [outside / "keep.txt", outside / "sub" / "data.bin", cwd / "keep.txt"]
    before = {f: f.read_bytes() for f in files}
    yield
    assert {f: f.read_bytes() for f in files if f.exists()} == before


# -- --overwrite removes only what pyro-vae made ----------------------------------------------


def test_overwrite_refuses_a_folder_pyro_vae_did_not_create_even_with_a_config_toml(tmp_path, capsys):
    """The reported damage: a project folder holding a file named config.toml was emptied."""
    project = tmp_path / "proj"
    (project / "src").mkdir(parents=True)
    (project / "config.toml").write_text('title = "app"\n')
    (project / "notes.txt").write_text("keep\n")
    before = snapshot(project)
    err = refused(["train", *TINY, "--out", str(project), "--overwrite"], capsys)
    assert str(project) in err and "did not create it" in err and "notes.txt" in err
    assert snapshot(project) == before


@pytest.mark.parametrize("where", [".", ".."])
def test_overwrite_never_empties_the_working_directory_or_a_parent(where, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["train", *TINY, "--out", ".", "--overwrite"]) in (0, 2)  # an empty directory may become a run
    capsys.readouterr()
    (work / "precious.txt").write_text("mine\n")
    before = snapshot(tmp_path)
    err = refused(["train", *TINY, "--out", where, "--overwrite"], capsys)
    assert "current directory or one of its parents" in err or "did not create it" in err
    assert snapshot(tmp_path) == before


def test_the_current_directory_is_never_emptied_even_when_it_is_a_run_folder(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    monkeypatch.chdir(run)
    capsys.readouterr()
    before = snapshot(run)
    err = refused(["train", *TINY, "--out", ".", "--overwrite"], capsys)
    assert "current directory" in err
    assert snapshot(run) == before


def test_overwrite_replaces_a_run_folder_pyro_vae_made_and_nothing_beside_it(tmp_path, capsys):
    (tmp_path / "beside.txt").write_text("untouched\n")
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    marker = json.loads((run / MARKER).read_text())
    assert marker["created_by"] == "pyro-vae train" and marker["pid"] == os.getpid()
    before = snapshot(tmp_path)
    assert main(["train", *TINY, "--set", "seed=5", "--out", str(run), "--overwrite"]) == 0
    assert (tmp_path / "beside.txt").read_bytes() == before[str(tmp_path / "beside.txt")]
    assert "seed = 5" in (run / "config.toml").read_text()


def test_a_run_folder_of_an_earlier_version_without_the_marker_is_not_overwritten(tmp_path, capsys):
    run = tmp_path / "old-run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    (run / MARKER).unlink()  # as pyro-vae wrote them before the marker
    capsys.readouterr()
    before = snapshot(run)
    err = refused(["train", *TINY, "--out", str(run), "--overwrite"], capsys)
    assert f"no {MARKER} marker" in err and "remove it yourself" in err
    assert snapshot(run) == before


def test_an_out_under_a_regular_file_says_so(tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    err = refused(["train", *TINY, "--out", str(tmp_path / "a-file" / "run")], capsys, status=1)
    assert str(tmp_path / "a-file" / "run") in err
    err = refused(["train", *TINY, "--out", str(tmp_path / "a-file")], capsys)
    assert "is a file, not a run folder" in err


# -- one writer at a time ---------------------------------------------------------------------


def hold_lock(run: Path) -> subprocess.Popen:
    """Another process holding ``run``'s lock until it is killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pyro_vae.runs import run_lock\n"
         "with run_lock(sys.argv[1], 'test holder'):\n    print('held', flush=True)\n    time.sleep(600)\n", str(run)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_is_refused_naming_the_process_and_a_killed_one_never_blocks(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    holder = hold_lock(run)
    try:
        capsys.readouterr()
        before = snapshot(run)
        for argv in (["train", "--resume", str(run), "--set", "train.epochs=2", "--no-progress"],
                     ["evaluate", str(run), "--samples", "3"],
                     ["sample", str(run), "--n", "4"],
                     ["train", *TINY, "--out", str(run), "--overwrite"]):
            err = refused(argv, capsys)
            assert f"is in use by process {holder.pid}" in err and "test holder" in err, argv
        assert snapshot(run) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2", "--no-progress"]) == 0  # no stale lock
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2]


def test_two_resumes_at_once_one_trains_and_the_other_is_refused(tmp_path):
    run = tmp_path / "run"
    slow = [a.replace("data.n_train=64", "data.n_train=2000") for a in TINY]
    assert main(["train", *slow, "--out", str(run)]) == 0
    resume = [sys.executable, "-m", "pyro_vae", "train", "--resume", str(run), "--set", "train.epochs=80",
              "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(resume, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = [first.stdout.readline() for _ in range(2)]  # (the feed's line, then the resume's)
    assert any("resuming" in line for line in lines), lines  # it holds the lock from here
    second = subprocess.run(resume, capture_output=True, text=True, timeout=120, env=env)
    rest, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 2 and f"in use by process {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    assert [m["epoch"] for m in read_metrics(run)] == list(range(1, 81))  # one line an epoch


def test_the_lock_is_reentrant_within_a_process_and_released_after(tmp_path):
    with run_lock(tmp_path, "outer"), run_lock(tmp_path, "inner"):
        assert json.loads((tmp_path / LOCK).read_text())["command"] == "outer"
    holder = hold_lock(tmp_path)  # released: another process takes it at once
    holder.send_signal(signal.SIGKILL)
    holder.wait()


# -- files are written whole or not at all ----------------------------------------------------


def test_a_link_planted_at_the_old_temporary_name_or_at_the_checkpoint_is_never_followed(tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"someone else's file")
    run = tmp_path / "run"
    Trainer(tiny_config(epochs=1), run, **QUIET).fit()
    (run / "checkpoint.pt.tmp").symlink_to(outside)
    (run / "best.pt").symlink_to(outside)
    os.replace(run / CHECKPOINT, tmp_path / "saved.pt")
    (run / CHECKPOINT).symlink_to(tmp_path / "saved.pt")
    Trainer(Config.load(run / "config.toml", ["train.epochs=2"]), run, **QUIET).fit(resume=True)
    assert outside.read_bytes() == b"someone else's file"
    assert not (run / CHECKPOINT).is_symlink()  # the link itself was replaced by the new checkpoint
    assert torch.load(run / CHECKPOINT, weights_only=True)["epoch"] == 2
    assert torch.load(tmp_path / "saved.pt", weights_only=True)["epoch"] == 1  # ... and what it pointed to kept


def test_a_full_disk_at_checkpoint_time_keeps_the_last_good_checkpoint_and_leaves_no_temporary_file(
        tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    before = (run / CHECKPOINT).read_bytes()

    def full(state, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files_module.torch, "save", full)
    capsys.readouterr()
    err = refused(["train", "--resume", str(run), "--set", "train.epochs=2", "--no-progress"], capsys, status=1)
    assert f"could not write {run / CHECKPOINT}: No space left on device (the disk is full). Its previous contents are intact." in err
    assert (run / CHECKPOINT).read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(StorageError):
        Trainer(Config.load(run / "config.toml", ["train.epochs=2"]), run, **QUIET).fit(resume=True)


def test_an_output_into_a_folder_that_is_not_there_says_which(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    capsys.readouterr()
    err = refused(["sample", str(run), "--out", str(tmp_path / "missing" / "s.png")], capsys, status=1)
    assert f"cannot create a file in {tmp_path / 'missing'}" in err


# -- metrics.jsonl ----------------------------------------------------------------------------


def test_resume_repairs_a_partial_last_line_of_the_metrics_and_says_so(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    with open(run / METRICS, "a") as f:
        f.write('{"epoch": 2, "objec')  # a process killed while appending
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2", "--no-progress"]) == 0
    assert "last line was cut off" in capsys.readouterr().out
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2]


def test_a_damaged_line_inside_the_metrics_is_refused_naming_it(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--set", "train.epochs=2", "--out", str(run)]) == 0
    lines = (run / METRICS).read_text().splitlines()
    (run / METRICS).write_text("\n".join(["garbage", *lines]) + "\n")
    capsys.readouterr()
    err = refused(["train", "--resume", str(run), "--set", "train.epochs=3", "--no-progress"], capsys)
    assert f"{run / METRICS} line 1 is not JSON" in err


# -- exit statuses ------------------------------------------------------------------------------


def test_a_divergence_is_a_runtime_failure_and_debug_shows_the_traceback(tmp_path, capsys):
    err = refused(["train", *TINY, "--set", "train.lr=1e12", "--out", str(tmp_path / "run")], capsys, status=1)
    assert "the loss became" in err and "Try a smaller train.lr" in err
    assert main(["--debug", "train", *TINY, "--set", "train.lr=1e12", "--out", str(tmp_path / "run2")]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_an_operating_system_refusal_is_a_runtime_failure_in_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(run / "config.toml"))

    monkeypatch.setattr("pyro_vae.trained.load_run", denied)
    capsys.readouterr()
    err = refused(["evaluate", str(run)], capsys, status=1, inside=run)
    assert err.strip() == f"error: {run / 'config.toml'}: Permission denied."


# -- data refused at load time, before any training ---------------------------------------------


def idx_folder(tmp_path: Path) -> Path:
    from test_data import make_idx_folder

    folder = tmp_path / "fashion"
    folder.mkdir()
    make_idx_folder(folder)
    return folder


def _float_images(folder: Path) -> None:
    import gzip
    import struct

    import numpy as np

    array = np.zeros((12, 28, 28), dtype=">f4")
    header = bytes([0, 0, 0x0D, 3]) + b"".join(struct.pack(">I", n) for n in array.shape)
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + array.tobytes())


def _resized(folder: Path, side: int) -> None:
    import numpy as np
    from test_data import write_idx

    for prefix, n in (("train", 12), ("t10k", 5)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", np.zeros((n, side, side)))


def _labels_count(folder: Path) -> None:
    import numpy as np
    from test_data import write_idx

    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(4))


def _empty_test(folder: Path) -> None:
    import numpy as np
    from test_data import write_idx

    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((0, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(0))


DATA_FAULTS = {
    "truncated-gzip": (lambda f: (f / "train-images-idx3-ubyte.gz").write_bytes(
        (f / "train-images-idx3-ubyte.gz").read_bytes()[:100]), "is truncated: its compressed stream ends early"),
    "not-gzip": (lambda f: (f / "train-images-idx3-ubyte.gz").write_bytes(b"plain text, not gzip"),
                 "is not gzip data though it is named .gz"),
    "labels-in-the-images-place": (lambda f: (f / "train-images-idx3-ubyte.gz").write_bytes(
        (f / "train-labels-idx1-ubyte.gz").read_bytes()), "holds labels (1-D), not images"),
    "float-images": (_float_images, "holds >f4 values"),
    "wrong-image-size": (lambda f: _resized(f, 32), "is 28x28 images, and the train files"),
    "label-count": (_labels_count, "holds (4,) labels for the 5 images"),
    "empty-test-set": (_empty_test, "the test split in"),
}


@pytest.mark.parametrize("fault", DATA_FAULTS)
def test_broken_idx_data_is_refused_at_load_time_naming_the_file(fault, tmp_path, capsys):
    folder = idx_folder(tmp_path)
    DATA_FAULTS[fault][0](folder)
    before = snapshot(folder)
    err = refused(["train", "--set", "data=fashion-mnist", "--set", f"data.data_dir={folder}", "--out",
                   str(tmp_path / "run"), "--no-progress"], capsys)
    assert DATA_FAULTS[fault][1] in err and str(folder) in err
    assert snapshot(folder) == before
    assert not (tmp_path / "run" / CHECKPOINT).exists()


# -- settings and files that cannot be meant --------------------------------------------------


def test_a_config_file_that_is_not_utf8_is_refused_in_words(tmp_path, capsys):
    (tmp_path / "latin1.toml").write_bytes('[train]\n# caf\xe9\nepochs = 1\n'.encode("latin-1"))
    err = refused(["train", str(tmp_path / "latin1.toml"), "--out", str(tmp_path / "run")], capsys)
    assert "is not UTF-8 text" in err and "latin1.toml" in err


@pytest.mark.parametrize("lr", ["inf", "nan", "-1e-3"])
def test_a_learning_rate_that_is_not_a_finite_positive_number_is_refused(lr, tmp_path, capsys):
    err = refused(["train", *TINY, "--set", f"train.lr={lr}", "--out", str(tmp_path / "run")], capsys)
    assert "train.lr must be a finite number > 0" in err
    assert not (tmp_path / "run").exists()


def test_a_batch_larger_than_the_training_set_is_said(tmp_path, capsys):
    assert main(["train", *TINY, "--set", "train.batch_size=500", "--out", str(tmp_path / "run")]) == 0
    assert "train.batch_size = 500 is larger than the training set (64 datapoints)" in capsys.readouterr().out


def test_a_model_too_large_for_the_machine_is_refused_with_the_estimate(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("pyro_vae.preflight.physical_memory", lambda: 2**12)  # a machine of 4 KiB
    err = refused(["train", *TINY, "--out", str(tmp_path / "run")], capsys)
    assert "parameters: training holds about" in err and "0.0 GiB of memory" in err
    assert not (tmp_path / "run" / CHECKPOINT).exists()


def test_a_path_beyond_the_systems_limit_is_one_line(tmp_path, capsys):
    err = refused(["train", *TINY, "--out", str(tmp_path / ("x" * 300) / "run")], capsys, status=1)
    assert "File name too long" in err


@pytest.mark.parametrize("damage", ["nan", "shape"])
def test_a_damaged_checkpoint_is_refused_naming_the_tensor(damage, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    state = torch.load(run / CHECKPOINT, weights_only=True)
    name = "decoder.body.0.weight"
    state["model"][name] = state["model"][name].fill_(float("nan")) if damage == "nan" else torch.zeros(3, 3)
    torch.save(state, run / CHECKPOINT)
    capsys.readouterr()
    err = refused(["evaluate", str(run)], capsys, inside=run)
    assert str(run / CHECKPOINT) in err and name in err
    assert ("NaN or infinite values" if damage == "nan" else "do not fit the model program") in err


def test_evaluate_refuses_a_k_beyond_the_bound_unless_told(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    capsys.readouterr()
    err = refused(["evaluate", str(run), "--samples", "1000000000"], capsys, inside=run)
    assert "beyond 100,000 importance samples per datapoint" in err and "--allow-large-k" in err


def test_ctrl_c_during_an_evaluation_says_what_is_kept_and_how_to_resume(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("pyro_vae.evaluation.evaluate", interrupted)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--samples", "7"]) == 130
    err = capsys.readouterr().err
    assert f"finished batches are kept in {run / 'evaluation-K7-seed0.batches'}" in err and "resumes them" in err
    assert "epoch's checkpoint" not in err


# -- the Python API checks its inputs at the boundary, also with Pyro's validation off ----------


def small_vae(likelihood="bernoulli"):
    from pyro_vae import VAE

    torch.manual_seed(0)
    return VAE(data_shape=(1, 4, 4), latent_dim=2, likelihood=likelihood, network={"name": "mlp", "hidden": [8]})


def binary_batch(n: int = 5) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 1, 4, 4), 0.5), generator=torch.Generator().manual_seed(0))


def svi_step(vae, x) -> float:
    import pyro

    pyro.clear_param_store()
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
    with pyro.validation_enabled(False):
        return svi.step(x)


PYTHON_FAULTS = {  # likelihood, the batch, what the message says
    "grey-under-bernoulli": ("bernoulli", lambda x: x * 0.5 + 0.25, "pixel values that are not exactly 0 or 1"),
    "minus-one-to-one-under-bernoulli": ("bernoulli", lambda x: 2 * x - 1, "vae.likelihood.prepare_batch(x, generator)"),
    "nan-inputs": ("bernoulli", lambda x: x.masked_fill(x > 0.5, float("nan")), "NaN or infinite values"),
    "inf-under-gaussian": ("gaussian", lambda x: x.masked_fill(x > 0.5, float("inf")), "NaN or infinite values"),
    "flat-batch": ("bernoulli", lambda x: x.flatten(1), "x.reshape(-1, 1, 4, 4)"),
    "one-image-without-a-batch": ("bernoulli", lambda x: x[0], "x.unsqueeze(0)"),
    "another-size": ("bernoulli", lambda x: x[..., :3, :3], "data of another size"),
    "uint8-levels": ("bernoulli", lambda x: (x * 255).to(torch.uint8), "x.float() / 255"),
    "float64": ("bernoulli", lambda x: x.double(), "x.to('cpu', torch.float32)"),
    "a-numpy-array": ("bernoulli", lambda x: x.numpy(), "not a torch.Tensor"),
    "above-one-under-continuous-bernoulli": ("continuous-bernoulli", lambda x: x * 2, "needs pixel intensities in [0, 1]"),
    "between-levels-under-categorical": ("categorical", lambda x: x * 0.3, "values between levels"),
    "the-edges-under-beta": ("beta", lambda x: x, "observes values in the open interval (0, 1)"),
}


@pytest.mark.parametrize("fault", PYTHON_FAULTS)
def test_a_batch_the_model_cannot_score_is_refused_by_raw_svi_with_validation_off(fault):
    from pyro_vae import DataError

    likelihood, damage, said = PYTHON_FAULTS[fault]
    vae = small_vae(likelihood)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    with pytest.raises(DataError, match=None) as e:
        svi_step(vae, damage(binary_batch()))
    assert said in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())  # no step was taken


@pytest.mark.parametrize("fault", ["grey-under-bernoulli", "nan-inputs", "flat-batch", "float64"])
def test_evaluate_refuses_what_the_model_cannot_score_with_the_same_message(fault):
    from pyro_vae import DataError, evaluate

    likelihood, damage, said = PYTHON_FAULTS[fault]
    with pytest.raises(DataError) as e:
        evaluate(small_vae(likelihood), damage(binary_batch()), samples=3)
    assert said in str(e.value)


def test_the_python_boundary_says_what_the_cli_says(tmp_path, capsys):
    from pyro_vae import DataError

    vae = small_vae({"name": "bernoulli", "binarize": "none"})
    with pytest.raises(DataError) as e:
        svi_step(vae, binary_batch() * 0.5)
    err = refused(["train", *TINY, "--set", "data.binary=false", "--set", "model.likelihood.binarize=none",
                   "--out", str(tmp_path / "run")], capsys)
    python_said = str(e.value).split(" pixel values ")[1]
    assert python_said in err  # the same sentence, after the count and the split's name


def test_data_the_model_can_score_passes_the_boundary_unchanged():
    from pyro_vae import evaluate

    vae, x = small_vae(), binary_batch()
    assert math.isfinite(svi_step(vae, x))
    assert math.isfinite(evaluate(vae, x, samples=3).log_px.mean().item())


def test_an_evaluated_user_program_is_refused_nan_inputs_and_a_wrong_shape():
    from pyro_vae import DataError, evaluate
    from user_programs import TwoLatents

    program = TwoLatents(data_shape=(1, 4, 4))
    for x, said in ((binary_batch().masked_fill(binary_batch() > 0.5, float("nan")), "NaN or infinite"),
                    (binary_batch().flatten(1), "x.reshape(-1, 1, 4, 4)")):
        with pytest.raises(DataError) as e:
            evaluate(program, x, samples=3)
        assert said in str(e.value)


def test_an_unwritable_run_folder_is_a_runtime_failure_naming_it(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    before = snapshot(run)
    run.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: the system's answer, injected
        def denied(*args, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        monkeypatch.setattr(files_module.tempfile, "mkstemp", denied)
    capsys.readouterr()
    try:
        err = refused(["train", "--resume", str(run), "--set", "train.epochs=2", "--no-progress"], capsys, status=1)
    finally:
        run.chmod(0o755)
    assert f"cannot create a file in {run}: Permission denied" in err
    assert {k: v for k, v in snapshot(run).items() if not k.endswith(LOCK)} == \
        {k: v for k, v in before.items() if not k.endswith(LOCK)}


def test_missing_idx_files_are_named_with_the_files_expected(tmp_path, capsys):
    folder = idx_folder(tmp_path)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    err = refused(["train", "--set", "data=fashion-mnist", "--set", f"data.data_dir={folder}", "--out",
                   str(tmp_path / "run"), "--no-progress"], capsys)
    assert "no t10k-labels-idx1-ubyte(.gz)" in err and str(folder) in err


def test_a_data_folder_that_is_not_there_is_named(tmp_path, capsys):
    err = refused(["train", "--set", "data=fashion-mnist", "--set", f"data.data_dir={tmp_path / 'nowhere'}",
                   "--out", str(tmp_path / "run"), "--no-progress"], capsys)
    assert str(tmp_path / "nowhere") in err


@pytest.mark.parametrize("command", ["evaluate", "sample", "explain"])
def test_a_run_folder_without_its_checkpoint_is_refused_by_every_reader(command, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    (run / CHECKPOINT).unlink()
    capsys.readouterr()
    err = refused([command, str(run)], capsys, inside=run)
    assert str(run) in err


def test_a_python_trainer_refuses_nan_data_before_any_step(tmp_path):
    from pyro_vae import DataError, DataSplits

    train = binary_batch(64).expand(64, 1, 4, 4).clone()
    train[3, 0, 1, 1] = float("nan")
    splits = DataSplits("mine", train, torch.zeros(64, dtype=torch.long), binary_batch(8), torch.zeros(8, dtype=torch.long))
    with pytest.raises(DataError, match="1 NaN or infinite values"):
        Trainer(tiny_config(), tmp_path / "run", splits=splits, **QUIET).fit()
    assert not (tmp_path / "run" / CHECKPOINT).exists()


def test_a_run_folder_larger_than_the_free_disk_is_refused_with_the_estimate(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("pyro_vae.preflight.free_disk", lambda path: 1000)  # 1,000 bytes free
    err = refused(["train", *TINY, "--out", str(tmp_path / "run")], capsys)
    assert "the run folder needs 2 of them at once" in err and "GiB free" in err and str(tmp_path) in err
    assert not (tmp_path / "run" / CHECKPOINT).exists()


def test_a_run_refused_before_it_wrote_anything_leaves_no_folder_so_the_command_can_be_run_again(tmp_path, capsys):
    run = tmp_path / "run"
    refused(["train", *TINY, "--set", "model.likelihood=categorical", "--out", str(run)], capsys)  # grey data
    assert not run.exists()
    assert main(["train", *TINY, "--out", str(run)]) == 0  # the same folder, no --overwrite needed
