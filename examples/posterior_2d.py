"""See the intractable: train a VAE with a 2-D latent, then compare q(z|x) with the true p(z|x).

With two latent dimensions, p(x) = \\int p(x|z) p(z) dz can be computed by quadrature on a grid, so
the posterior p(z|x), log p(x) and the KL(q(z|x) || p(z|x)) that the ELBO leaves out become
numbers and pictures. Trains on the embedded MNIST subset (about 2 minutes on 2 CPU cores), then:

* evaluates the test set: importance-sampled log p(x) against the exact value;
* prints log p(x) = ELBO + KL(q(z|x) || p(z|x)) and ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)),
  term by term, for four test digits: the two where q(z|x) is furthest from p(z|x), two typical;
* writes posterior.png: p(z|x) (exact, by quadrature) against q(z|x), with decoded images.

    python examples/posterior_2d.py            # into runs/posterior-2d
    python examples/posterior_2d.py --smoke    # seconds (what the tests run)

The same from the command line:

    pyro-vae train --set model.latent_dim=2 --set train.epochs=100 --out runs/posterior-2d
    pyro-vae explain runs/posterior-2d
"""

import argparse
from pathlib import Path


from pyro_vae import Config, Trainer, load_run
from pyro_vae.exact import decomposition, format_decomposition
from pyro_vae.evaluation import evaluate
from pyro_vae.plots import plot_posteriors

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="runs/posterior-2d")
parser.add_argument("--epochs", type=int, default=100)
parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
args = parser.parse_args()

raw = {"model": {"latent_dim": 2}, "train": {"epochs": args.epochs}, "eval": {"samples": 1000, "exact_points": 100}}
samples = 5000
if args.smoke:
    raw = {"data": {"name": "synthetic", "side": 8, "n_train": 128, "n_test": 16},
           "model": {"latent_dim": 2, "network": {"name": "mlp", "hidden": [16]}},
           "train": {"epochs": 2, "lr": 1e-2}, "eval": {"samples": 20, "exact_points": 4, "train_subset": 32}}
    samples = 200

Trainer(Config.from_dict(raw), Path(args.out), progress=not args.smoke).fit(overwrite=True)
run = load_run(args.out)
program, test, labels = run.program, run.data.prepared_test, run.data.splits.test_labels
run.model.eval()

cfg = run.config.eval
result = evaluate(program, test, samples=cfg.samples, seed=0, batch_size=cfg.batch_size, exact_points=cfg.exact_points)
print(result.table(f"test set: {result.n} digits (exact values on {cfg.exact_points} spread over it)"))

# Four digits to look at: two where q(z|x) is furthest from p(z|x) (largest exact KL), two typical ones.
order = result.exact_index[result.exact.kl_q_posterior.argsort(descending=True)]
indices = [order[0].item(), order[1].item(), order[len(order) // 2].item(), order[len(order) // 2 + 1].item()]
rows, exact = decomposition(program, test[indices], samples=samples, seed=0)
titles = [f"test digit {i} (label {labels[i].item()})" for i in indices]
print("\nlog p(x) = ELBO + KL(q(z|x) || p(z|x)),  ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)); nats")
for row, title in zip(rows, titles):
    print()
    print(format_decomposition(row, title))
path = plot_posteriors(program, test[indices], exact.grids, Path(args.out) / "posterior.png", titles)
print(f"\nwrote {path}: the two digits with the largest KL(q(z|x) || p(z|x)) among those "
      f"{cfg.exact_points}, then two typical ones")
