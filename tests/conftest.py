"""Shared fixtures: tiny data and models so the whole suite stays fast on 2 CPU cores."""

from __future__ import annotations

import pyro
import pytest
import torch

from pyro_vae import VAE, Config
from pyro_vae.data import Synthetic
from pyro_vae.terms import DirectSource


@pytest.fixture(autouse=True)
def _fresh_state():
    """Every test starts from an empty param store and a fixed seed."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="session")
def grey_splits():
    return Synthetic(n_train=128, n_test=32, side=6).load()


@pytest.fixture(scope="session")
def eight_bit_splits():
    return Synthetic(n_train=128, n_test=32, side=6, quantize=True).load()


@pytest.fixture(scope="session")
def binary_splits():
    return Synthetic(n_train=128, n_test=32, side=6, binary=True).load()


class TracedVAE(VAE):
    """The stock VAE's program written out again: the same maths, which the library must trace
    (it overrides model and guide, so the direct terms of VAE are not provably its terms)."""

    def model(self, x):
        super().model(x)

    def guide(self, x):
        super().guide(x)


def tiny_vae(**kwargs) -> VAE:
    options = dict(data_shape=(1, 6, 6), latent_dim=2, network={"name": "mlp", "hidden": [16]})
    options.update(kwargs)
    return VAE(**options)


def tiny_config(**sections) -> Config:
    """A config that trains in well under a second: synthetic 6x6 data, 2-D latent, small MLP."""
    raw = {
        "data": {"name": "synthetic", "n_train": 128, "n_test": 32, "side": 6},
        "model": {"latent_dim": 2, "network": {"name": "mlp", "hidden": [16]}},
        "train": {"epochs": 2, "batch_size": 32, "lr": 1e-2},
        "eval": {"samples": 20, "train_subset": 32},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return Config.from_dict(raw)


@torch.no_grad()
def log_weights(vae: VAE, x: torch.Tensor, k: int) -> torch.Tensor:
    """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) for k fresh draws z_k ~ q(z|x), (k, batch):
    q(z|x), p(z) and p(x|z) built anew, nothing cached."""
    return DirectSource(vae).draw(x, k).log_weights
