"""Estimators for discrete latents at Jang et al.'s settings, on equal wall-clock budgets.

Two latents, each in the stock VAE (784-400 softplus MLP encoder and decoder, dynamically
binarized Bernoulli pixels, Adam 1e-3, batch 128): 20 one-hot groups of 10 classes (10^20 states:
no enumeration) and 200 binary units, both under a uniform prior with a factorized q(z|x). Each
estimator trains for the same seconds of training time from the same initialization on the same
minibatches (``pyro-vae compare``); the table gives the test ELBO and the importance-sampled test
log p(x) (K = ``--samples``, with q(z|x) as the proposal), nats per datapoint.

Estimators: ``score-function`` with the leave-one-out baseline over 4 draws, ``vimco`` over 4 draws
(trained on the IWAE bound), ``gumbel-softmax``
(tau annealed 1 -> 0.5 over the first half of the budget's epochs, estimated from a first run of
each), ``straight-through-gumbel`` (tau 1 -> 0.5 likewise) and ``score-function`` with the
decaying-average baseline and one draw.

    python benchmarks/discrete_estimators.py --budget 180s                       # mnist5k
    python benchmarks/discrete_estimators.py --data-dir ../shared/data/fashion-mnist --budget 600s
    python benchmarks/discrete_estimators.py --smoke      # seconds: tiny data and latents (the tests)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import pyro
import torch

from pyro_vae import Config
from pyro_vae.compare import Budget, Comparison, parse_objectives

LATENTS = {
    "categorical": {"latent_dim": 200, "prior": {"name": "categorical", "classes": 10},
                    "guide": {"name": "categorical", "classes": 10}},
    "bernoulli": {"latent_dim": 200, "prior": {"name": "bernoulli"}, "guide": {"name": "bernoulli"}},
}
ESTIMATORS = ("score-function(baseline=leave-one-out):4,vimco:4,score-function:1,"
              "gumbel-softmax(final_temperature=0.5; anneal_epochs={anneal}):1,"
              "straight-through-gumbel(final_temperature=0.5; anneal_epochs={anneal}):1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="Fashion-MNIST's IDX files (default: the embedded mnist5k)")
    parser.add_argument("--budget", default="180s", help="training time per estimator (seconds: 180s, 10min)")
    parser.add_argument("--anneal-epochs", type=float, default=None,
                        help="epochs of the temperature's annealing (default: half the epochs a budget fits, "
                             "from 60 ms per step)")
    parser.add_argument("--samples", type=int, default=1000, help="K of the test log p(x)")
    parser.add_argument("--latents", nargs="+", default=list(LATENTS), choices=list(LATENTS))
    parser.add_argument("--out", default="runs/discrete-estimators")
    parser.add_argument("--smoke", action="store_true", help="8x8 synthetic data, 12-number latents, 3 steps")
    args = parser.parse_args(argv)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), pyro {pyro.__version__}, python {platform.python_version()}, cpu")
    data = {"name": "fashion-mnist", "data_dir": args.data_dir} if args.data_dir else {"name": "mnist5k"}
    budget = Budget.parse(args.budget)
    train_images = 60_000 if args.data_dir else 4_000
    anneal = args.anneal_epochs
    if anneal is None:  # half the budget's epochs at about 60 ms a step (batch 128)
        anneal = round(0.5 * (budget.seconds or 60) / 0.06 / (train_images / 128), 1)
    tables, hidden, latents = {}, 400, dict(LATENTS)
    if args.smoke:
        data, budget, anneal, hidden, args.samples = {"name": "synthetic", "side": 8, "binary": True}, Budget(steps=3), \
            1.0, 16, 5
        latents = {"categorical": {**LATENTS["categorical"], "latent_dim": 12, "prior": {"name": "categorical", "classes": 3},
                                   "guide": {"name": "categorical", "classes": 3}},
                   "bernoulli": {**LATENTS["bernoulli"], "latent_dim": 12}}
    for latent in args.latents:
        raw = {"data": data, "model": {**latents[latent], "network": {"name": "mlp", "hidden": [hidden]}},
               "eval": {"samples": args.samples}}
        comparison = Comparison(Config.from_dict(raw), parse_objectives(ESTIMATORS.format(anneal=anneal), 1), budget,
                                Path(args.out) / latent, particles=1, curve_points=2, curve_samples=10, grad_draws=20,
                                snr_ks=(1,), progress=False, log=lambda line: None)
        comparison.run(overwrite=True)
        tables[latent] = comparison.rows()
        shape = (f"{latents[latent]['latent_dim'] // latents[latent]['prior']['classes']} one-hot groups of "
                 f"{latents[latent]['prior']['classes']} classes") if latent == "categorical" else \
            f"{latents[latent]['latent_dim']} binary units"
        print(f"\n{latent}: {shape}, "
              f"{budget.describe()} per estimator, test set of {data['name']}; nats per datapoint")
        print(f"| estimator | K | steps | test ELBO | test log p(x) (K={args.samples}) |\n| --- | --- | --- | --- | --- |")
        for row in tables[latent]:
            print(f"| {row['objective']} | {row['K']} | {row['steps']} | {row['test_elbo']:.2f} | "
                  f"{row[f'test_log_px_K{args.samples}']:.2f} ± {row['test_log_px_stderr']:.2f} |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "tables.json").write_text(json.dumps({"budget": budget.describe(), "anneal_epochs": anneal,
                                                            "data": data, "tables": tables}, indent=2) + "\n")
    print(f"\ntemperature annealed over {anneal} epochs; every run folder under {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
