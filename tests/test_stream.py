"""Data bigger than memory: the streaming layout (``pyro-vae convert``, dataset "stream"), the
chunked epoch order, keyed noise, and each process reading only its share.

What is asserted: a layout reads back exactly what was converted (sparse, dense, 8-bit, .h5ad in
chunks); training on it equals training on the same rows in memory bit for bit (same order, same
keyed noise); the chunked order visits every row once an epoch and does not depend on the number of
processes; two gloo processes equal one, each reading only its own part of every batch; two
torchrun "nodes" (--nnodes 2, c10d rendezvous on 127.0.0.1) equal one process; and the faults:
a file missing or cut short, a layout changed under a running job, a layout of another version.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from pyro_vae.cli import main
from pyro_vae.config import Config
from pyro_vae.data import DATASETS, SparseRows, StreamedRows, chunk_batches, convert, read_manifest
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.numerics import keyed_noise, mix64, mix64_int, noise_key, standard_normal, uniform
from pyro_vae.runs import CHECKPOINT, load_checkpoint
from pyro_vae.training import Trainer
from test_count_data import write_h5ad


def counts(n: int, d: int = 30, seed: int = 0) -> sp.csr_matrix:
    """Sparse counts with no empty row (the counts dataset would drop those)."""
    r = np.random.default_rng(seed)
    x = r.poisson(r.gamma(0.5, 2.0, size=(n, d)) * (r.random((n, d)) < 0.3)).astype(np.float32)
    x[x.sum(1) == 0, 0] = 1
    return sp.csr_matrix(x)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    sp.save_npz(root / "train.npz", counts(300, seed=1))
    sp.save_npz(root / "test.npz", counts(60, seed=2))
    convert(root / "train.npz", root / "train", chunk_rows=32, progress=False)
    convert(root / "test.npz", root / "test", chunk_rows=32, progress=False)
    return root


def tiny(data: dict, **train) -> Config:
    return Config.from_dict({
        "seed": 5, "data": data,
        "model": {"latent_dim": 3, "likelihood": "negative-binomial", "network": {"name": "mlp", "hidden": [16]}},
        "train": {"epochs": 2, "batch_size": 40, "chunk_rows": 32, "window": 3, **train},
        "eval": {"samples": 5, "train_subset": 50, "exact_points": 0}})


STREAMED = {"name": "stream", "path": "train", "test_path": "test"}


def streamed(root: Path) -> dict:
    return {**STREAMED, "path": str(root / "train"), "test_path": str(root / "test")}


# ---------------------------------------------------------------------------------------------
# the layout


def test_a_sparse_layout_reads_back_the_rows_converted(layouts):
    rows = StreamedRows(layouts / "train")
    m = sp.load_npz(layouts / "train.npz").toarray()
    assert tuple(rows.shape) == m.shape and rows.kind == "csr"
    pick = torch.tensor([7, 0, 299, 7, 31, 32])
    got = rows[pick]
    assert isinstance(got, SparseRows)
    np.testing.assert_array_equal(got.float().numpy(), m[pick.numpy()])
    np.testing.assert_array_equal(rows[10:20].float().numpy(), m[10:20])
    np.testing.assert_array_equal(rows.row_totals().numpy(), m.sum(1))
    stats = read_manifest(layouts / "train")["values"]
    assert stats == {"min": 0.0, "max": float(m.max()), "kind": "counts: whole numbers >= 0"}


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_a_dense_layout_reads_back_levels_or_values_and_labels(tmp_path, dtype):
    r = np.random.default_rng(0)
    x = (r.random((70, 1, 4, 4)) * 255).astype(dtype)
    y = r.integers(0, 3, 70)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    convert(tmp_path / "a.npz", tmp_path / "s", chunk_rows=16, progress=False)
    splits = DATASETS.build({"name": "stream", "path": str(tmp_path / "s"), "test_fraction": 0.25}, "data").load()
    train, test = splits.held("train"), splits.held("test")
    every = np.concatenate([train.rows, test.rows])
    held = np.unique(test.rows // 16)  # whole chunks held out
    assert len(held) == 1 and sorted(test.rows.tolist()) == list(range(held[0] * 16, min(70, held[0] * 16 + 16)))
    assert sorted(every.tolist()) == list(range(70))
    want = x / 255.0 if dtype == np.uint8 else x
    np.testing.assert_allclose(splits.train[np.arange(len(train))].numpy(), want[train.rows], rtol=0, atol=1e-7)
    np.testing.assert_array_equal(splits.train_labels.numpy(), y[train.rows])


def test_an_h5ad_csr_matrix_is_copied_a_chunk_of_rows_at_a_time(tmp_path):
    m = counts(50, d=12, seed=3)
    write_h5ad(tmp_path / "cells.h5ad", m)
    out = convert(tmp_path / "cells.h5ad", tmp_path / "cells", chunk_rows=7, progress=False)
    np.testing.assert_array_equal(StreamedRows(out)[np.arange(50)].float().numpy(), m.toarray())
    assert (out / "features.txt").read_text().splitlines() == [f"G{i}" for i in range(12)]


def test_a_layout_written_block_by_block_is_the_matrix(tmp_path):
    from pyro_vae.data import LayoutWriter

    m = counts(100, d=9, seed=4)
    with LayoutWriter(tmp_path / "blocks", 9, chunk_rows=16) as writer:
        for start in range(0, 100, 33):  # (blocks of any size: the chunks are the layout's own)
            writer.append(m[start:start + 33])
    rows = StreamedRows(tmp_path / "blocks")
    np.testing.assert_array_equal(rows[np.arange(100)].float().numpy(), m.toarray())
    assert rows.manifest["nnz"] == m.nnz and rows.chunk_rows == 16
    with pytest.raises(DataError, match="negative"), LayoutWriter(tmp_path / "bad", 9) as writer:
        writer.append(-m[:5])
    assert not (tmp_path / "bad" / "manifest.json").exists()  # refused: left unfinished, never read as a layout


def test_the_split_holds_out_whole_chunks_by_seed():
    from pyro_vae.data import split_chunks

    train, test = split_chunks(100, 10, 0.2, seed=1)
    assert len(test) == 20 and len(set(test.tolist()) | set(train.tolist())) == 100
    assert all(np.unique(test // 10, return_counts=True)[1] == 10)
    again, _ = split_chunks(100, 10, 0.2, seed=1)
    np.testing.assert_array_equal(train, again)
    with pytest.raises(DataError, match="smaller --chunk-rows"):
        split_chunks(10, 10, 0.2, seed=0)


def test_convert_on_the_command_line(layouts, tmp_path, capsys):
    assert main(["convert", str(layouts / "train.npz"), "--out", str(tmp_path / "c"), "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["convert", str(layouts / "train.npz"), "--out", str(tmp_path / "c"), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["convert", str(layouts / "train.npz"), "--out", str(tmp_path / "c"), "--overwrite",
                 "--no-progress"]) == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.md").write_text("mine")
    assert main(["convert", str(layouts / "train.npz"), "--out", str(tmp_path / "mine"), "--overwrite",
                 "--no-progress"]) == 2
    assert (tmp_path / "mine" / "notes.md").read_text() == "mine"  # never deletes what is not a layout
    assert main(["convert", str(tmp_path / "nothing.npz"), "--out", str(tmp_path / "d")]) == 2
    assert main(["convert", str(layouts / "train.npz"), "--out", str(tmp_path / "e"), "--chunk-rows", "0"]) == 2


# ---------------------------------------------------------------------------------------------
# the epoch order and the keyed noise


def test_the_chunked_order_visits_every_row_once_from_few_chunks_a_batch():
    batches = list(chunk_batches(1000, 64, chunk_rows=50, window=4, seed=0, epoch=3))
    every = torch.cat(batches)
    assert sorted(every.tolist()) == list(range(1000))
    assert [len(b) for b in batches] == [64] * 15 + [40]
    assert max(len(torch.unique(b // 50)) for b in batches) <= 8  # a window's 4 chunks, or two windows' at a seam
    again = list(chunk_batches(1000, 64, chunk_rows=50, window=4, seed=0, epoch=3))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    other = torch.cat(list(chunk_batches(1000, 64, chunk_rows=50, window=4, seed=0, epoch=4)))
    assert not torch.equal(every, other)


def test_mix64_is_splitmix64():
    # SplitMix64 from state 1234567: its first output is 6457827717110365317 (Vigna's reference code)
    assert mix64_int(1234567) == 6457827717110365317
    z = torch.tensor([0, 1, -1, 2**62 + 12345, -(2**63)], dtype=torch.int64)
    assert [int(v) % 2**64 for v in mix64(z)] == [mix64_int(int(v) % 2**64) for v in z]


def test_keyed_noise_depends_on_the_datapoint_not_on_who_draws_it():
    key, ids = noise_key(0, 1, 2), torch.arange(100, 164)
    with keyed_noise(key, ids):
        eps = standard_normal(torch.Size((3, 64, 5)), -2, torch.float32, torch.device("cpu"))
        u = uniform(torch.Size((64, 7)), torch.float32, torch.device("cpu"))
    with keyed_noise(key, ids[[5, 40, 2]]):  # another process holding three of them, in another order
        part = standard_normal(torch.Size((3, 3, 5)), -2, torch.float32, torch.device("cpu"))
        u_part = uniform(torch.Size((3, 7)), torch.float32, torch.device("cpu"))
    assert torch.equal(part, eps[:, [5, 40, 2]]) and torch.equal(u_part, u[[5, 40, 2]])
    with keyed_noise(noise_key(0, 1, 3), ids):
        assert not torch.equal(standard_normal(torch.Size((3, 64, 5)), -2, torch.float32, torch.device("cpu")), eps)
    assert abs(eps.mean().item()) < 0.1 and abs(eps.std().item() - 1) < 0.1
    assert 0 <= u.min().item() and u.max().item() < 1


# ---------------------------------------------------------------------------------------------
# training on it


def test_training_on_the_layout_equals_training_in_memory_bit_for_bit(layouts, monkeypatch):
    monkeypatch.chdir(layouts)
    memory = tiny({"name": "counts", "path": "train.npz", "test_path": "test.npz"}, order="chunks", noise="keyed")
    a = Trainer(memory, layouts / "in-memory", progress=False).fit()
    b = Trainer(tiny(STREAMED), layouts / "streamed", progress=False).fit()  # (chunks and keyed noise: the default)
    assert b.feed.on_disk and b.feed.keyed and b.feed.order == "chunks"
    sa, sb = a.program.module.state_dict(), b.program.module.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [h["test"]["elbo"] for h in a.history] == [h["test"]["elbo"] for h in b.history]


def test_a_run_on_a_layout_evaluates_and_reads_back(layouts, tmp_path, capsys):
    (tmp_path / "s.toml").write_text(tiny(streamed(layouts)).to_toml())
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "s.toml"), "--out", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "read from disk a batch at a time" in out and "noise keyed" in out
    assert json.loads((run / "evaluation.json").read_text())["datapoints"] == 60
    assert main(["encode", str(run), "--out", str(tmp_path / "codes.csv")]) == 0
    assert len((tmp_path / "codes.csv").read_text().splitlines()) == 61
    assert main(["train", "--resume", str(run), "--set", "train.epochs=3", "--no-progress"]) == 0
    assert load_checkpoint(run / CHECKPOINT)["epoch"] == 3


def test_semi_supervised_runs_refuse_keyed_noise(tmp_path):
    config = Config.from_dict({
        "data": {"name": "synthetic", "n_train": 64, "n_test": 16, "side": 6, "binary": True, "labels": 8},
        "model": {"program": "m2", "num_classes": 4, "latent_dim": 2, "network": {"name": "mlp", "hidden": [8]}},
        "train": {"epochs": 1, "noise": "keyed"}})
    with pytest.raises(ConfigError, match="keyed"):
        Trainer(config, tmp_path / "r", progress=False).fit()


# ---------------------------------------------------------------------------------------------
# faults


def copy_layout(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_a_missing_or_cut_file_is_named_at_open(layouts, tmp_path):
    folder = copy_layout(layouts / "train", tmp_path / "t")
    (folder / "values.npy").unlink()
    with pytest.raises(DataError, match="values.npy is missing"):
        StreamedRows(folder)
    folder = copy_layout(layouts / "train", tmp_path / "u")
    data = (folder / "indices.npy").read_bytes()
    (folder / "indices.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="indices.npy.*truncated"):
        StreamedRows(folder)


def test_a_file_cut_short_mid_run_ends_it_resumably(layouts, tmp_path):
    from pyro_vae.callbacks import Callback

    folder = copy_layout(layouts / "train", tmp_path / "t")
    whole = (folder / "values.npy").read_bytes()

    class CutAfterFirstEpoch(Callback):
        def on_epoch_end(self, trainer, record):
            (folder / "values.npy").write_bytes(whole[:-8])  # (a copy going wrong, a disk filling up)

    config = tiny({**streamed(layouts), "path": str(folder)}, epochs=3)
    with pytest.raises(DataError, match="values.npy is now .*cut short.*--resume"):
        Trainer(config, tmp_path / "run", progress=False, callbacks=[CutAfterFirstEpoch()]).fit()
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["epoch"] == 1
    with pytest.raises(DataError, match="values.npy.*truncated.*--resume"):  # refused until it is back
        Trainer(config, tmp_path / "run", progress=False).fit(resume=True)
    (folder / "values.npy").write_bytes(whole)  # restored: the run goes on
    assert Trainer(config, tmp_path / "run", progress=False).fit(resume=True).epoch == 3


def test_a_layout_changed_under_a_running_job_is_refused_at_the_next_epoch(layouts, tmp_path):
    from pyro_vae.callbacks import Callback

    folder = copy_layout(layouts / "train", tmp_path / "t")
    whole, original = np.load(folder / "values.npy"), (folder / "values.npy").read_bytes()

    class ChangeAfterFirstEpoch(Callback):
        def on_epoch_end(self, trainer, record):
            np.save(folder / "values.npy", whole + (np.arange(len(whole)) == 0))  # the same size, other counts

    config = tiny({**streamed(layouts), "path": str(folder)}, epochs=3)
    with pytest.raises(DataError, match="values.npy changed on disk"):
        Trainer(config, tmp_path / "run", progress=False, callbacks=[ChangeAfterFirstEpoch()]).fit()
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["epoch"] == 1
    with pytest.raises(DataError, match="values.npy.*SHA-256"):  # and on resume, before any step
        Trainer(config, tmp_path / "run", progress=False).fit(resume=True)
    (folder / "values.npy").write_bytes(original)
    assert Trainer(config, tmp_path / "run", progress=False).fit(resume=True).epoch == 3


def test_a_layout_of_another_version_is_refused_naming_the_way_out(layouts, tmp_path):
    folder = copy_layout(layouts / "train", tmp_path / "t")
    manifest = json.loads((folder / "manifest.json").read_text())
    for version, fix in ((0, "pyro-vae convert"), (99, "upgrade pyro-vae")):
        (folder / "manifest.json").write_text(json.dumps({**manifest, "version": version}))
        with pytest.raises(DataError, match=fix):
            StreamedRows(folder)


# ---------------------------------------------------------------------------------------------
# several processes, several "machines"

SHARE_SCRIPT = textwrap.dedent("""
    import sys, tomllib
    import numpy as np
    from pyro_vae.config import Config
    from pyro_vae.distributed import Distributed
    from pyro_vae.training import Trainer

    config, out, logs = Config.from_dict(tomllib.load(open(sys.argv[1], "rb"))), sys.argv[2], sys.argv[3]
    dist = Distributed.from_environment("cpu")

    class Logged(Trainer):
        def _build(self):
            super()._build()
            self.data.train.read_log = []  # every training row this process reads from now on

    trainer = Logged(config, out, progress=False, dist=dist).fit()
    np.save(f"{logs}/rank{dist.rank}.npy", np.concatenate(trainer.data.train.read_log))
    dist.close()
""")


def torchrun(*args: str, cwd: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def test_two_processes_equal_one_and_each_reads_only_its_share(layouts, tmp_path):
    config = tiny(streamed(layouts))
    (tmp_path / "c.toml").write_text(config.to_toml())
    (tmp_path / "share.py").write_text(SHARE_SCRIPT)
    one = Trainer(config, tmp_path / "one", progress=False).fit()
    done = subprocess.run(torchrun("--standalone", "--nproc-per-node=2", "share.py", "c.toml", "two", ".", cwd=tmp_path),
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    two = load_checkpoint(tmp_path / "two" / CHECKPOINT)["model"]
    for name, value in one.program.module.state_dict().items():
        torch.testing.assert_close(two[name], value, atol=1e-5, rtol=1e-4, msg=name)
    reads = [np.load(tmp_path / f"rank{r}.npy") for r in (0, 1)]
    n, shares = len(one.data.train), [[], []]
    for epoch in range(2):
        for batch in chunk_batches(n, 40, 32, 3, seed=5, epoch=epoch):
            half = (len(batch) + 1) // 2
            shares[0].append(batch[:half].numpy())
            shares[1].append(batch[half:].numpy())
    for r in (0, 1):  # exactly its own part of every batch, in order, and nothing else
        np.testing.assert_array_equal(reads[r], np.concatenate(shares[r]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pyro_vae import training
    if os.environ["RANK"] == "1" and os.environ.get("KILL_RANK_1_AFTER_EPOCH_1"):
        end_epoch = training.Trainer._end_epoch
        def killed(self, *args, **kwargs):
            end_epoch(self, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)  # (a machine gone: no message, no clean exit)
        training.Trainer._end_epoch = killed
    from pyro_vae.cli import main
    sys.exit(main())
""")


def two_nodes(tmp_path: Path, *args: str, kill: bool = False) -> list[tuple[int, str]]:
    """Two torchrun launchers joined by a c10d rendezvous on 127.0.0.1: (exit status, output) of each."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"KILL_RANK_1_AFTER_EPOCH_1": "1"} if kill else {})}
    nodes = [subprocess.Popen(torchrun("--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                                       f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=pyro-vae-test", "node.py",
                                       *args, "--no-progress", "--timeout", "60", cwd=tmp_path),
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for _ in range(2)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    return [(node.returncode, out) for node, out in zip(nodes, outputs)]


def test_two_nodes_by_c10d_rendezvous_equal_one_process_and_resume_after_one_dies(layouts, tmp_path):
    config = tiny(streamed(layouts), epochs=3)
    (tmp_path / "c.toml").write_text(config.to_toml())
    (tmp_path / "node.py").write_text(KILL_SCRIPT)
    one = Trainer(config, tmp_path / "one", progress=False).fit()
    started = time.monotonic()
    killed = two_nodes(tmp_path, "train", "c.toml", "--out", "nodes", kill=True)
    assert all(status != 0 for status, _ in killed) and time.monotonic() - started < 200
    said = "\n".join(out for _, out in killed)
    assert "2 processes (gloo)" in said
    assert "rank 0 of 2: the " in said and "pyro-vae train --resume RUN" in said, said  # the survivor, in words
    assert load_checkpoint(tmp_path / "nodes" / CHECKPOINT)["epoch"] == 1
    resumed = two_nodes(tmp_path, "train", "--resume", "nodes")  # the same launchers, --resume: it goes on
    assert [status for status, _ in resumed] == [0, 0], "\n".join(out for _, out in resumed)
    nodes = load_checkpoint(tmp_path / "nodes" / CHECKPOINT)
    assert nodes["epoch"] == 3
    for name, value in one.program.module.state_dict().items():
        torch.testing.assert_close(nodes["model"][name], value, atol=1e-5, rtol=1e-4, msg=name)
