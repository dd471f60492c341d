"""Your own model program, trained, evaluated and compared by pyro-vae like the stock VAE.

All pyro-vae needs is a Pyro program: an ``nn.Module`` whose ``model(x)`` declares p(z) p(x|z) and
whose ``guide(x)`` declares q(z|x), over a ``pyro.plate("data", ...)``, with the observed site "x"
(``pyro_vae.programs``). This one is not the stock VAE: it has two latent sites, z_2 on top and
z_1 below it, each with its own network, and its own decoder.

    python examples/own_program.py            # Python API: trains it and the stock VAE, compares them
    python examples/own_program.py --smoke    # a few seconds (what the tests run)

From a config and the command line (from the repository root, so that ``examples.own_program``
imports; a run folder imports it again only with ``--trust-code``):

    pyro-vae train examples/configs/own-program.toml --out runs/own
    pyro-vae evaluate runs/own --trust-code
    pyro-vae compare examples/configs/own-program.toml --objectives elbo,iwae,stl --budget 500steps
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae import BernoulliLikelihood


class TwoLayerVAE(nn.Module):
    """z_2 ~ N(0, I); z_1 | z_2 ~ N(mu(z_2), diag sigma(z_2)^2); x | z_1 ~ prod_i Bern(x_i; sigmoid(f(z_1)_i)); q(z_2|x) q(z_1|x, z_2).

    Its data contract is the stock Bernoulli likelihood's: a fresh binarization of every training
    batch, the evaluation sets binarized once with the library's fixed seed (the same binary test
    digits the stock VAE scores).
    """

    stochastic_batches = True
    binarize = BernoulliLikelihood()

    def __init__(self, *, data_shape=(1, 28, 28), top_dim: int = 8, bottom_dim: int = 16, hidden: int = 256):
        super().__init__()
        self.data_shape, self.top_dim, self.bottom_dim, self.hidden = tuple(data_shape), top_dim, bottom_dim, hidden
        pixels = math.prod(self.data_shape)
        self.encoder = nn.Sequential(nn.Flatten(-3), nn.Linear(pixels, hidden), nn.Softplus())
        self.q_top = nn.Linear(hidden, 2 * top_dim)
        self.q_bottom = nn.Sequential(nn.Linear(hidden + top_dim, hidden), nn.Softplus(), nn.Linear(hidden, 2 * bottom_dim))
        self.p_bottom = nn.Sequential(nn.Linear(top_dim, hidden), nn.Softplus(), nn.Linear(hidden, 2 * bottom_dim))
        self.decoder = nn.Sequential(nn.Linear(bottom_dim, hidden), nn.Softplus(), nn.Linear(hidden, pixels),
                                     nn.Unflatten(-1, self.data_shape))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z_2 = pyro.sample("z_2", dist.Normal(x.new_zeros(self.top_dim), 1.0).to_event(1))
            loc, raw_scale = self.p_bottom(z_2).chunk(2, -1)
            z_1 = pyro.sample("z_1", dist.Normal(loc, F.softplus(raw_scale)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z_1)).to_event(len(self.data_shape)), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            h = self.encoder(x)
            loc, raw_scale = self.q_top(h).chunk(2, -1)
            z_2 = pyro.sample("z_2", dist.Normal(loc, F.softplus(raw_scale)).to_event(1))
            h = h.expand(*z_2.shape[:-1], h.shape[-1])  # (particles share x's features)
            loc, raw_scale = self.q_bottom(torch.cat([h, z_2], -1)).chunk(2, -1)
            pyro.sample("z_1", dist.Normal(loc, F.softplus(raw_scale)).to_event(1))

    def check_data(self, x, split):
        self.binarize.check_data(x, split)

    def prepare_eval_set(self, x):
        return self.binarize.prepare_eval_set(x)

    def prepare_batch(self, x, generator):
        return self.binarize.prepare_batch(x, generator)


def main() -> None:
    import argparse
    import importlib
    import sys
    from pathlib import Path

    from pyro_vae import Config, Trainer, finish_run, load_run

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/own-program")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    args = parser.parse_args()
    raw, shape = {"train": {"epochs": args.epochs}, "eval": {"samples": 1000}}, (1, 28, 28)
    if args.smoke:
        raw = {"data": {"name": "synthetic", "side": 8, "n_train": 64, "n_test": 16},
               "train": {"epochs": 1}, "eval": {"samples": 5, "train_subset": 16}}
        shape = (1, 8, 8)
    # Import the class by its module path (not as __main__), so that the run folder can rebuild it:
    # `pyro-vae evaluate RUN --trust-code` from the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    program = importlib.import_module("examples.own_program").TwoLayerVAE(data_shape=shape)

    rows = []
    stock = {"latent_dim": program.top_dim + program.bottom_dim, "network": {"name": "mlp", "hidden": [program.hidden]}}
    for label, model in (("own program: two latent sites", program), ("stock VAE: one latent vector", None)):
        run_dir = Path(args.out) / ("own" if model is not None else "stock")
        Trainer(Config.from_dict({**raw, "model": stock}), run_dir, progress=not args.smoke, log=lambda s: None,
                model=model).fit(overwrite=True)
        result = finish_run(load_run(run_dir, trust_code=True), log=lambda s: None)
        rows.append((label, result.summary()))
        print(result.table(f"{label}: test set of {result.n} images ({run_dir})"), end="\n\n")
    print("| model | test ELBO | test log p(x) | KL(q(z|x) || p(z)) |\n| --- | --- | --- | --- |")
    for label, s in rows:
        print(f"| {label} | {s['elbo']['mean']:.2f} | {s['log_px']['mean']:.2f} ± {s['log_px']['stderr']:.2f} | "
              f"{s['kl']['mean']:.2f} |")
    print(f"nats per image, the same binary test images; {'smoke run' if args.smoke else f'{args.epochs} epochs each'}")


if __name__ == "__main__":
    main()
