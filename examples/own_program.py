"""Your own model program, trained, evaluated and compared by pyro-vae like the stock VAE.

All pyro-vae needs is a Pyro program: an ``nn.Module`` whose ``model(x)`` declares p(z) p(x|z) and
whose ``guide(x)`` declares q(z|x), over a ``pyro.plate("data", ...)``, with the observed site "x"
(``pyro_vae.programs``). This one is not the stock VAE: each pixel's grey level has a Student-t
likelihood whose scale and degrees of freedom are learned.

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


class StudentTVAE(nn.Module):
    """p(z) = N(0, I); p(x|z) = prod_i StudentT(x_i; nu, mu_i(z), s), s and nu learned; q(z|x) = N(mu(x), diag sigma(x)^2).

    x is a pixel's grey level k in {0, ..., 255} plus noise u ~ U[0, 1) (drawn afresh for every
    training batch, once with a fixed seed for evaluation sets): log p(k + u) is a lower bound on
    the log-probability of the 8-bit image (uniform dequantization), the scale on which the stock
    ``beta`` likelihood reports too.
    """

    stochastic_batches = True  # prepare_batch draws new noise every time

    def __init__(self, *, data_shape=(1, 28, 28), latent_dim: int = 16, hidden: int = 256):
        super().__init__()
        self.data_shape, self.latent_dim, self.hidden = tuple(data_shape), latent_dim, hidden
        pixels = math.prod(self.data_shape)
        self.encoder = nn.Sequential(nn.Flatten(-3), nn.Linear(pixels, hidden), nn.Softplus(), nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Softplus(), nn.Linear(hidden, pixels),
                                     nn.Unflatten(-1, self.data_shape))
        self.log_scale = nn.Parameter(torch.tensor(math.log(8.0)))  # s, in grey levels
        self.raw_df = nn.Parameter(torch.tensor(1.0))  # nu = 1 + softplus(raw_df)

    def model(self, x):
        df, scale = 1 + F.softplus(self.raw_df), self.log_scale.exp()
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            loc = 256 * torch.sigmoid(self.decoder(z))
            pyro.sample("x", dist.StudentT(df, loc, scale).to_event(len(self.data_shape)), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            loc, raw_scale = self.encoder(x / 256).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, F.softplus(raw_scale)).to_event(1))

    # The data contract: grey levels k / 255 in [0, 1] become k + u.
    def check_data(self, x, split):
        from pyro_vae import DataError

        if x.min() < 0 or x.max() > 1 or ((x * 255).round() - x * 255).abs().max() > 1e-3:
            raise DataError(f"StudentTVAE models 8-bit grey levels k / 255; the {split} data is not such.")

    def prepare_eval_set(self, x):
        return (255 * x).round() + torch.rand(x.shape, generator=torch.Generator().manual_seed(2)).to(x.device)

    def prepare_batch(self, x, generator):
        return (255 * x).round() + torch.rand(x.shape, generator=generator, device=x.device)


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
    raw = {"train": {"epochs": args.epochs}, "eval": {"samples": 1000}}
    if args.smoke:
        raw = {"data": {"name": "synthetic", "side": 8, "quantize": True, "n_train": 64, "n_test": 16},
               "train": {"epochs": 1}, "eval": {"samples": 5, "train_subset": 16}}
    # Import the class by its module path (not as __main__), so that the run folder can rebuild it:
    # `pyro-vae evaluate RUN --trust-code` from the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    program = importlib.import_module("examples.own_program").StudentTVAE

    rows = []
    for label, model, likelihood in (("own program: Student-t likelihood", program, None),
                                     ("stock VAE: beta likelihood (dequantized)", None, "beta")):
        config = Config.from_dict({**raw, "model": {"latent_dim": 16, "network": {"name": "mlp", "hidden": [256]},
                                                    **({"likelihood": likelihood} if likelihood else {})}})
        run_dir = Path(args.out) / ("own" if model else "stock")
        trainer = Trainer(config, run_dir, progress=not args.smoke, log=lambda s: None,
                          model=model(data_shape=(1, 8, 8) if args.smoke else (1, 28, 28), latent_dim=16, hidden=256)
                          if model else None)
        trainer.fit(overwrite=True)
        result = finish_run(load_run(run_dir, trust_code=True), log=lambda s: None)
        rows.append((label, result.summary()))
        print(result.table(f"{label}: test set of {result.n} images ({run_dir})"), end="\n\n")
    print("| model | test ELBO | test log p(x) | active units |\n| --- | --- | --- | --- |")
    for label, s in rows:
        print(f"| {label} | {s['elbo']['mean']:.2f} | {s['log_px']['mean']:.2f} ± {s['log_px']['stderr']:.2f} | "
              f"{s['active_units']} / {s['latent_dim']} |")
    print("nats per image; both are lower bounds on the log-probability of the 8-bit images (dequantized)")


if __name__ == "__main__":
    main()
