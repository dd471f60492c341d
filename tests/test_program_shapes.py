"""User programs of shapes the stock VAE does not have, through every command: a model that
flattens x before observing it, one that declares pixels by a plate, a likelihood outside the
registry, several latent sites, a matrix-shaped latent. Every probe of the library reads what the
trace recorded at site "x" (never assumes it is x as given), so each trains, evaluates, samples,
encodes and compares."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.metrics import elbo_terms, widest_activation
from pyro_vae.programs import Program

import user_programs

SHAPES = ["FlatPoisson", "PixelPlate", "TwoLatents", "MatrixLatent"]


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    np.save(root / "grey.npy", rng.uniform(size=(48, 1, 6, 6)).astype(np.float32))
    return root


def test_the_widest_activation_is_measured_on_the_value_the_site_observed():
    program = Program(user_programs.FlatPoisson())
    assert widest_activation(program) == 36  # the decoder's 36 rates for its flattened x: probed, not crashed


def test_a_flattening_program_is_scored_on_its_flattened_observation():
    torch.manual_seed(0)
    module = user_programs.FlatPoisson()
    x = torch.poisson(torch.full((4, 1, 6, 6), 2.0))
    terms = elbo_terms(module, x, num_samples=3)
    assert terms["elbo"].shape == (4,) and torch.isfinite(terms["elbo"]).all()
    images = Program(module).decode({"z": torch.zeros(5, 2)})
    assert images.shape == (5, 1, 6, 6)  # the site's (5, 36) mean, in the data's shape


@pytest.mark.parametrize("name", SHAPES)
def test_a_program_of_this_shape_trains_evaluates_samples_encodes_and_compares(name, grey, tmp_path, capsys):
    data = str(grey / "grey.npy")
    program = ["--set", f"model.program=user_programs:{name}"]
    run = tmp_path / "run"
    assert main(["train", "--data", data, *program, "--set", "train.epochs=2", "--set", "train.batch_size=16",
                 "--set", "eval.samples=5", "--set", "eval.train_subset=8", "--out", str(run), "--no-progress"]) == 0
    summary = json.loads((run / "evaluation.json").read_text())
    assert math.isfinite(summary["elbo"]["mean"]) and math.isfinite(summary["log_px"]["mean"])
    for picture in ("samples.png", "reconstructions.png"):
        assert (run / picture).is_file()
    assert main(["evaluate", str(run), "--trust-code", "--samples", "6"]) == 0
    assert main(["sample", str(run), "--trust-code", "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").is_file()
    assert main(["encode", str(run), "--trust-code", "--data", data, "--samples", "4",
                 "--out", str(tmp_path / "z.npz")]) == 0
    with np.load(tmp_path / "z.npz") as z:
        assert np.isfinite(z["elbo"]).all() and len(z["elbo"]) == 48
    assert main(["compare", "--set", "data.name=array", "--set", f"data.path={data}", *program,
                 "--objectives", "elbo,iwae:2", "--budget", "3steps", "--curve-points", "1", "--curve-samples", "2",
                 "--grad-draws", "2", "--grad-batch", "4", "--snr-k", "1", "--set", "eval.samples=3",
                 "--out", str(tmp_path / "cmp"), "--no-progress"]) == 0
    rows = json.loads((tmp_path / "cmp" / "results.json").read_text())["rows"]
    assert [r["objective"] for r in rows] == ["elbo", "iwae"]
    capsys.readouterr()
