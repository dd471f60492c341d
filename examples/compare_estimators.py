"""Compare ELBO estimators on equal terms on the embedded MNIST subset (about 5 minutes on 2 CPU cores).

Trains the default VAE (784-400-50 MLP, N(0, I) prior, dynamically binarized Bernoulli) five times
from the same initialization, on the same minibatches, for the same number of steps, each time
with another objective and K samples per datapoint: the Monte-Carlo ELBO, the ELBO with a
closed-form KL, the IWAE bound, the sticking-the-landing ELBO gradient and IWAE with the
doubly-reparameterized gradient. Prints its estimate of the whole run before training (the
measuring not given scaled down to at most 50% on top of the training, as ``pyro-vae compare``
does), then the result table, the paired differences and the gradient statistics.

    python examples/compare_estimators.py              # the comparison in the README
    python examples/compare_estimators.py --smoke      # seconds (what the tests run)

The same comparison from the command line:

    pyro-vae compare --objectives elbo,elbo-analytic-kl,iwae,stl,dreg --particles 5 --budget 2000steps
"""

import argparse

from pyro_vae import Config
from pyro_vae.compare import Budget, Comparison, parse_objectives

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="runs/compare-estimators")
parser.add_argument("--steps", type=int, default=2000)
parser.add_argument("--particles", type=int, default=5)
parser.add_argument("--seeds", type=int, default=1, help="initializations per objective")
parser.add_argument("--curve-points", type=int, help="test-curve points (default 10, scaled to fit)")
parser.add_argument("--grad-draws", type=int, help="gradient draws per snapshot (default 100, scaled to fit)")
parser.add_argument("--final-samples", type=int, help="the final log p(x)'s K (default 1000, scaled to fit)")
parser.add_argument("--total", type=float, help="seconds the whole run may take (the measuring scaled to fit)")
parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
args = parser.parse_args()

raw = {"eval": {"samples": 1000}}
settings = dict(curve_points=args.curve_points, grad_draws=args.grad_draws, final_samples=args.final_samples)
steps, particles = args.steps, args.particles
if args.smoke:
    raw = {"data": {"name": "synthetic", "side": 8}, "model": {"latent_dim": 2, "network": {"name": "mlp", "hidden": [16]}},
           "eval": {"samples": 10, "train_subset": 64}}
    settings = dict(curve_points=2, curve_samples=5, grad_draws=5, grad_batch=16, snr_ks=(1, 2))
    steps, particles = 10, 2

comparison = Comparison(
    Config.from_dict(raw), parse_objectives("elbo,elbo-analytic-kl,iwae,stl,dreg", particles),
    Budget(steps=steps), args.out, particles=particles, progress=False, seeds=args.seeds, total=args.total, **settings,
)
comparison.run(overwrite=True)
print(f"{steps} steps per objective, batch 128, Adam 1e-3, K = {particles} samples per datapoint, seed 0; "
      f"nats per datapoint on the test set")
print(comparison.markdown())
print(f"\ndifferences from {comparison.ref}, paired on the same test digits:")
print(comparison.paired_markdown())
m = comparison.measuring
print(f"\ngradient statistics ({m.grad_draws} draws on a fixed batch of {m.grad_batch} training digits):")
print(comparison.gradient_markdown())
snr = comparison.snr_vs_k
print(f"\nencoder gradient SNR against K ({snr['parameters']}):")
for name, by_k in snr["encoder_snr"].items():
    print(f"  {name:<5} " + "  ".join(f"K={k}: {v:.3f}" for k, v in by_k.items()))
print(f"\nfolder: {args.out} (results.md/.csv/.json, curves.png, snr_vs_k.png, a run folder per objective)")
