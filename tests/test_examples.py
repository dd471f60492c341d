"""Every example runs top to bottom with its smoke setting; every example config trains."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pyro_vae import Config
from pyro_vae.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMOKE = [  # 8x8 8-bit synthetic images: every likelihood accepts them, two convolutions halve them twice
    "--set", "data=synthetic", "--set", "data.side=8", "--set", "data.quantize=true", "--set", "data.n_train=64",
    "--set", "data.n_test=16", "--set", "train.epochs=1", "--set", "eval.samples=5", "--set", "eval.train_subset=16",
    "--set", "eval.exact_points=2",
]


def run_script(name: str, *args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_vanilla_vae_example(tmp_path):
    out = run_script("vanilla_vae.py", "--smoke", cwd=tmp_path)
    assert "train ELBO" in out and "log p(x)" in out


def test_swap_components_example(tmp_path):
    out = run_script("swap_components.py", "--smoke", "--out", str(tmp_path / "swap"), cwd=tmp_path)
    for label in ("N(0, I)", "learned Gaussian", "mixture of 10", "continuous Bernoulli"):
        assert label in out


def test_compare_estimators_example(tmp_path):
    out = run_script("compare_estimators.py", "--smoke", "--out", str(tmp_path / "cmp"), cwd=tmp_path)
    assert "| dreg | 2 | 10 |" in out and "encoder gradient SNR against K" in out
    assert "differences from elbo (K=2), paired" in out and "estimate:" in out


def test_priors_side_by_side_example(tmp_path):
    out = run_script("priors_side_by_side.py", "--smoke", "--out", str(tmp_path / "priors"), cwd=tmp_path)
    for label in ("N(0, I)", "flow", "VampPrior"):
        assert label in out


def test_posterior_2d_example(tmp_path):
    out = run_script("posterior_2d.py", "--smoke", "--out", str(tmp_path / "p2d"), cwd=tmp_path)
    assert "+ KL(q(z|x) || p(z|x))" in out and "exact: quadrature" in out
    assert (tmp_path / "p2d" / "posterior.png").is_file()


def test_own_program_example(tmp_path):
    out = run_script("own_program.py", "--smoke", "--out", str(tmp_path / "own"), cwd=tmp_path)
    assert "| own program: two latent sites |" in out and "| stock VAE: one latent vector |" in out
    recorded = Config.load(tmp_path / "own" / "own" / "config.toml").model
    assert recorded.program == "examples.own_program:TwoLayerVAE"
    assert recorded.options == {"top_dim": 8, "bottom_dim": 16, "hidden": 256}


# the synthetic data's 4 classes (clusters), 8 of its 64 training images labelled
FOR_LABELS = ["--set", "model.num_classes=4", "--set", "train.validation=8"]
SMOKE_EXTRA = {"conditional": FOR_LABELS, "semi-supervised": [*FOR_LABELS, "--set", "data.labels=8"],
               "quadrant-completion": ["--set", "train.validation=8"]}


#: configs for count data: trained on a small sparse count matrix written by the test (--data)
COUNT_CONFIGS = {"prodlda", "scvi"}


def small_counts(folder) -> list[str]:
    """``--data`` of a small document-word (or cell-gene) count matrix as a SciPy .npz: 64 rows, 24 columns."""
    import numpy as np
    import scipy.sparse

    rng = np.random.default_rng(0)
    counts = rng.poisson(rng.gamma(0.5, 2.0, size=(64, 24))).astype(np.int32)
    counts[:, 0] += 1  # (no empty rows)
    scipy.sparse.save_npz(folder / "counts.npz", scipy.sparse.csr_matrix(counts))
    return ["--data", str(folder / "counts.npz"), "--set", "data.test_fraction=0.25"]


@pytest.mark.parametrize("config", sorted((EXAMPLES / "configs").glob("*.toml")), ids=lambda p: p.stem)
def test_example_config_trains(config, tmp_path):
    extra = SMOKE_EXTRA.get(config.stem, [])
    if config.stem in COUNT_CONFIGS:  # (its own data: counts, not the synthetic images)
        pairs = [SMOKE[i : i + 2] for i in range(0, len(SMOKE), 2)]  # ("--set", "key=value") pairs
        smoke = [a for pair in pairs if not pair[1].startswith("data") for a in pair]
        extra = [*small_counts(tmp_path), *extra]
    else:
        smoke = SMOKE
    assert main(["train", str(config), *smoke, *extra, "--out", str(tmp_path / "run"), "--no-progress"]) == 0


def test_discrete_latents_example(tmp_path):
    out = run_script("discrete_latents.py", "--smoke", "--out", str(tmp_path / "discrete"), cwd=tmp_path)
    assert "| enumerate | all states | 10 |" in out and "exact test log p(x)" in out
    assert "against the exactly enumerated gradient" in out and "encoder bias" in out
