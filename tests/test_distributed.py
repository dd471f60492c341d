"""Data-parallel training with torch.distributed: two gloo processes follow one, to float tolerance.

These tests launch real process groups with torchrun (``pyro-vae train --nproc 2``) on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.distributed import Distributed
from pyro_vae.runs import CHECKPOINT, load_checkpoint, read_metrics

CONFIG = """
seed = 3
[data]
name = "synthetic"
n_train = 200
n_test = 50
side = 6
[model]
latent_dim = 2
[model.network]
name = "mlp"
hidden = [16]
[train]
epochs = 2
batch_size = 32
lr = 0.01
[eval]
samples = 20
train_subset = 40
exact_points = 4
"""


def pyro_vae(*args: str, cwd: Path, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyro_vae", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def parameters(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / CHECKPOINT)["model"]


def assert_same_parameters(a: Path, b: Path, atol: float = 1e-5) -> None:
    pa, pb = parameters(a), parameters(b)
    assert pa.keys() == pb.keys()
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], atol=atol, rtol=1e-4, msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same config trained by one process and by two."""
    root = tmp_path_factory.mktemp("dist")
    (root / "tiny.toml").write_text(CONFIG)
    assert main(["train", str(root / "tiny.toml"), "--out", str(root / "one"), "--no-progress"]) == 0
    two = pyro_vae("train", "tiny.toml", "--out", "two", "--no-progress", "--nproc", "2", cwd=root)
    assert two.returncode == 0, two.stdout + two.stderr
    return root, two


def test_two_processes_follow_the_single_process_run(runs):
    root, two = runs
    assert "2 processes (gloo)" in two.stdout
    assert load_checkpoint(root / "two" / CHECKPOINT)["step"] == load_checkpoint(root / "one" / CHECKPOINT)["step"]
    assert_same_parameters(root / "one", root / "two")
    one_metrics, two_metrics = read_metrics(root / "one"), read_metrics(root / "two")
    for a, b in zip(one_metrics, two_metrics):
        assert a["objective"] == pytest.approx(b["objective"], rel=1e-5)
        assert a["test"]["elbo"] == pytest.approx(b["test"]["elbo"], rel=1e-5)


def test_sharded_evaluation_reports_the_single_process_numbers(runs):
    root, _ = runs
    one = json.loads((root / "one" / "evaluation.json").read_text())
    two = json.loads((root / "two" / "evaluation.json").read_text())
    for key in ("elbo", "log_px", "gap"):
        assert one[key]["mean"] == pytest.approx(two[key]["mean"], rel=1e-5, abs=1e-5)
    assert one["exact"]["log_px"]["mean"] == pytest.approx(two["exact"]["log_px"]["mean"], rel=1e-5)
    for name in ("samples.png", "reconstructions.png", "curves.png", "latent.png"):  # rank 0 wrote them
        assert (root / "two" / name).is_file()


USER_PROGRAM = CONFIG.replace("[model]\nlatent_dim = 2\n[model.network]\nname = \"mlp\"\nhidden = [16]\n",
                              "[model]\nprogram = \"user_programs:TwoLatents\"\nhidden = 12\n")
TESTS = str(Path(__file__).resolve().parent)  # where user_programs.py is


def test_two_processes_follow_one_for_a_user_program(tmp_path):
    """A traced program's Normal latents draw their noise for the whole global batch and keep their
    shard's rows (terms._NormalDraws), as the stock guides do: the run is the same at any N."""
    assert "user_programs:TwoLatents" in USER_PROGRAM
    (tmp_path / "own.toml").write_text(USER_PROGRAM)
    assert main(["train", str(tmp_path / "own.toml"), "--out", str(tmp_path / "one"), "--no-progress"]) == 0
    path = os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])
    two = pyro_vae("train", "own.toml", "--out", "two", "--no-progress", "--nproc", "2", cwd=tmp_path,
                   env={"PYTHONPATH": path})
    assert two.returncode == 0, two.stdout + two.stderr
    assert_same_parameters(tmp_path / "one", tmp_path / "two")
    one, two = (json.loads((tmp_path / r / "evaluation.json").read_text()) for r in ("one", "two"))
    assert one["log_px"]["mean"] == pytest.approx(two["log_px"]["mean"], rel=1e-5)


def test_resume_crosses_between_one_and_two_processes(runs):
    root, _ = runs
    one_epoch = CONFIG.replace("epochs = 2", "epochs = 1")
    (root / "short.toml").write_text(one_epoch)
    # two processes, then one
    started = pyro_vae("train", "short.toml", "--out", "two-then-one", "--no-progress", "--nproc", "2", cwd=root)
    assert started.returncode == 0, started.stderr
    assert main(["train", "--resume", str(root / "two-then-one"), "--set", "train.epochs=2", "--no-progress"]) == 0
    assert_same_parameters(root / "one", root / "two-then-one")
    # one process, then two
    assert main(["train", str(root / "short.toml"), "--out", str(root / "one-then-two"), "--no-progress"]) == 0
    resumed = pyro_vae("train", "--resume", "one-then-two", "--set", "train.epochs=2", "--no-progress",
                       "--nproc", "2", cwd=root)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_parameters(root / "one", root / "one-then-two")


def test_a_failing_rank_stops_every_rank_with_its_message(tmp_path):
    (tmp_path / "tiny.toml").write_text(CONFIG)
    (tmp_path / "fail_on_rank_1.py").write_text(
        "import os, sys\n"
        "from pyro_vae import training\n"
        "if os.environ['RANK'] == '1':\n"
        "    def broken(*args, **kwargs):\n"
        "        raise RuntimeError('disk on rank 1 went away')\n"
        "    training.svi_step = broken\n"
        "from pyro_vae.cli import main\n"
        "sys.exit(main())\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(tmp_path / "fail_on_rank_1.py"), "train", "tiny.toml", "--out", "run", "--no-progress", "--timeout", "60"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode != 0
    assert "disk on rank 1 went away" in done.stdout + done.stderr
    assert time.monotonic() - started < 120  # rank 0, waiting in all_reduce, was stopped, not left hanging


def test_a_nan_loss_stops_every_rank(tmp_path):
    (tmp_path / "tiny.toml").write_text(CONFIG.replace("lr = 0.01", "lr = 1e12"))
    done = pyro_vae("train", "tiny.toml", "--out", "run", "--no-progress", "--nproc", "2", cwd=tmp_path)
    assert done.returncode != 0
    for rank in (0, 1):  # the all-reduced loss is the same on every rank: each stops, saying where
        assert f"error (rank {rank} of 2): the loss became nan at epoch 1, step" in done.stderr


def test_shards_cover_a_batch_once_in_order():
    for world in (1, 2, 3):
        for n in (1, 5, 32, 33):
            parts = [Distributed(rank, world).shard(n) for rank in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))


def test_single_process_map_items_is_a_plain_map():
    assert Distributed().map_items(4, lambda ids: [i * i for i in ids]) == [0, 1, 4, 9]


def test_launcher_and_torchrun_refusals(tmp_path, capsys):
    (tmp_path / "tiny.toml").write_text(CONFIG)
    assert main(["train", str(tmp_path / "tiny.toml"), "--nproc", "0"]) == 2
    assert "--nproc must be >= 1" in capsys.readouterr().err
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pyro_vae",
         "train", "tiny.toml", "--no-progress"], cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode != 0 and "give --out RUN_DIR" in done.stderr


def test_ranks_whose_clocks_disagree_stop_at_the_same_epoch_under_a_time_cap(tmp_path):
    (tmp_path / "tiny.toml").write_text(CONFIG.replace("epochs = 2", "epochs = 50\nmax_minutes = 0.05"))
    (tmp_path / "slow_clock_on_rank_1.py").write_text(
        "import os, sys, time, types\n"
        "from pyro_vae import training\n"
        "if os.environ['RANK'] == '1':  # rank 1 measures every epoch 20 times longer than rank 0\n"
        "    training.time = types.SimpleNamespace(perf_counter=lambda: 20 * time.perf_counter())\n"
        "from pyro_vae.cli import main\n"
        "sys.exit(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(tmp_path / "slow_clock_on_rank_1.py"), "train", "tiny.toml", "--out", "run", "--no-progress",
         "--timeout", "60"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr  # no rank left waiting for the other
    assert "time cap" in done.stdout
    epochs = load_checkpoint(tmp_path / "run" / CHECKPOINT)["epoch"]
    assert 1 <= epochs < 50
