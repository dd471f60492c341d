"""Exported models: safetensors weights + config, loaded back to the same numbers, never running code."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

import pyro_vae
from pyro_vae.cli import main
from pyro_vae.errors import CheckpointError, ProgramError, RunDirError
from pyro_vae.trained import EXPORT_INFO, EXPORT_WEIGHTS, export_run

from conftest import tiny_config

TINY = ["--set", "data=synthetic", "--set", "data.n_train=64", "--set", "data.n_test=16", "--set", "data.side=6",
        "--set", "model.latent_dim=2", "--set", "model.network.hidden=[16]", "--set", "train.epochs=1",
        "--set", "train.batch_size=32", "--set", "eval.samples=4", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("export") / "run"
    assert main(["train", *TINY, "--out", str(run_dir)]) == 0
    return run_dir


def test_an_export_loads_to_the_same_model(trained, tmp_path):
    out = tmp_path / "exported"
    assert main(["export", str(trained), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.toml", "export.json", "model.safetensors"]
    run, exported = pyro_vae.load(trained), pyro_vae.load(out)
    assert exported.source == EXPORT_WEIGHTS and exported.epoch == run.epoch == 1
    for (name, a), (_, b) in zip(run.model.state_dict().items(), exported.model.state_dict().items()):
        assert torch.equal(a, b), name
    x = torch.rand(5, 1, 6, 6)
    assert torch.equal(run.encode(x)[0], exported.encode(x)[0])
    assert torch.equal(run.elbo(x, seed=3), exported.elbo(x, seed=3))
    info = json.loads((out / EXPORT_INFO).read_text())
    assert info["data"]["fingerprint"] == run.checkpoint["data"]["fingerprint"] and info["data_shape"] == [1, 6, 6]


def test_the_weights_file_holds_tensors_only(trained, tmp_path):
    """safetensors: a JSON header and raw tensor bytes, nothing a loader would execute (a pickle
    would start with its protocol opcode)."""
    out = export_run(trained, tmp_path / "e")
    raw = (out / EXPORT_WEIGHTS).read_bytes()
    header_size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_size])
    assert set(header) - {"__metadata__"} == set(pyro_vae.load(trained).model.state_dict())
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(raw)


def test_damage_and_user_code_are_refused(trained, tmp_path):
    out = export_run(trained, tmp_path / "e")
    with pytest.raises(RunDirError, match="exists and is not empty"):
        export_run(trained, out)
    export_run(trained, out, overwrite=True)
    weights = out / EXPORT_WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the SHA-256"):
        pyro_vae.load(out)
    # a user program's export loads only given the program's object: an export never imports code
    from pyro_vae import Trainer

    from examples.own_program import TwoLayerVAE

    run_dir = tmp_path / "own"
    Trainer(tiny_config(train={"epochs": 1, "batch_size": 32}), run_dir, progress=False, log=lambda s: None,
            model=TwoLayerVAE(data_shape=(1, 6, 6), top_dim=2, bottom_dim=2, hidden=8)).fit()
    own = export_run(run_dir, tmp_path / "own-export")
    with pytest.raises(ProgramError, match="never imports code"):
        pyro_vae.load(own)
    loaded = pyro_vae.load(own, model=TwoLayerVAE(data_shape=(1, 6, 6), top_dim=2, bottom_dim=2, hidden=8))
    assert loaded.sample(2).shape == (2, 1, 6, 6)
