"""Estimators for a discrete latent, measured against the exact gradient, on the embedded MNIST subset.

The model: z is two one-hot groups of 8 classes (64 joint states, uniform prior), p(x|z) a
Bernoulli decoder (784-400 MLP), q(z|x) a factorized categorical encoder. With 64 states every
quantity can be summed exactly: log p(x), the ELBO and the ELBO's true gradient. So each
estimator's gradient is measured against the truth: its bias (the distance of its mean from the
exact gradient, with the standard error that distance has from noise alone), variance and SNR, at
the start, middle and end of training; and after equal budgets of steps, test ELBO and log p(x),
exact by enumeration.

Estimators: the exact sum over states (``enumerate``), the score function (REINFORCE) with no
baseline, a decaying-average baseline and a leave-one-out baseline over 4 draws, VIMCO over 4 draws
(its gradient is the IWAE bound's, so its "bias" against the ELBO's is the two bounds' difference), the Gumbel-softmax
relaxation (temperature annealed from 1 to 0.5) and the straight-through Gumbel estimator.

    python examples/discrete_latents.py              # its time announced before it trains
    python examples/discrete_latents.py --steps 200 --total 10min   # the measuring scaled down to fit
    python examples/discrete_latents.py --smoke      # seconds (what the tests run)

Before training it prints its estimate of the whole run (training and every measurement); the
measuring settings not given as options are scaled down so that they add at most 50% to the
training time (or, with --total, so that the whole run fits).

The same from the command line:

    pyro-vae compare --set model.latent_dim=16 --set model.prior=categorical --set model.prior.classes=8 \\
        --set model.guide=categorical --set model.guide.classes=8 --particles 1 --budget 1000steps \\
        --objectives 'enumerate,score-function(baseline=none),score-function,score-function(baseline=leave-one-out):4,vimco:4,gumbel-softmax(final_temperature=0.5; anneal_epochs=20),straight-through-gumbel'
"""

import argparse
import sys

from pyro_vae import Config, ConfigError
from pyro_vae.compare import Budget, Comparison, parse_objectives, parse_total, time_line

ESTIMATORS = ("enumerate,score-function(baseline=none),score-function,score-function(baseline=leave-one-out):4,vimco:4,"
              "gumbel-softmax(final_temperature=0.5; anneal_epochs=20),straight-through-gumbel")

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="runs/discrete-latents")
parser.add_argument("--steps", type=int, default=1000)
parser.add_argument("--seeds", type=int, default=1, help="initializations per estimator (default 1)")
parser.add_argument("--total", help="the whole run's time (e.g. 15min): the measuring not set below is scaled "
                    "down to fit; a run whose estimate exceeds it needs --yes (default: measuring at most 50%% "
                    "on top of the training)")
parser.add_argument("--yes", action="store_true", help="run even where the estimate exceeds --total")
parser.add_argument("--curve-points", type=int, help="evaluations along training (default 5, scaled to fit)")
parser.add_argument("--curve-samples", type=int, help="K of log p(x) along training (default 100, scaled to fit)")
parser.add_argument("--grad-draws", type=int, help="gradient draws per snapshot (default 100, scaled to fit)")
parser.add_argument("--snr-k", help="K values of the SNR against K (default 1,4,16)")
parser.add_argument("--final-samples", type=int, help="K of the final test log p(x) (default 1000, scaled to fit)")
parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
args = parser.parse_args()

groups, classes = 2, 8
raw = {"model": {"latent_dim": groups * classes, "prior": {"name": "categorical", "classes": classes},
                 "guide": {"name": "categorical", "classes": classes}},
       "eval": {"samples": 1000}}
settings = dict(curve_points=5, grad_batch=64)
steps = args.steps
if args.smoke:
    groups, classes = 2, 3
    raw = {"data": {"name": "synthetic", "side": 8, "binary": True},
           "model": {"latent_dim": groups * classes, "network": {"name": "mlp", "hidden": [16]},
                     "prior": {"name": "categorical", "classes": classes}, "guide": {"name": "categorical", "classes": classes}},
           "eval": {"samples": 10, "train_subset": 64}}
    settings = dict(curve_points=2, curve_samples=5, grad_draws=5, grad_batch=16, snr_ks=(1, 2))
    steps = 10
given = {"curve_points": args.curve_points, "curve_samples": args.curve_samples, "grad_draws": args.grad_draws,
         "final_samples": args.final_samples,
         "snr_ks": tuple(int(k) for k in args.snr_k.split(",")) if args.snr_k else (None if args.smoke else (1, 4, 16))}
settings.update({k: v for k, v in given.items() if v is not None})

try:
    comparison = Comparison(Config.from_dict(raw), parse_objectives(ESTIMATORS, 1), Budget(steps=steps), args.out,
                            particles=1, progress=False, seeds=args.seeds, confirmed=args.yes,
                            total=parse_total(args.total) if args.total else None, **settings)
    comparison.run(overwrite=True)
except ConfigError as e:  # (e.g. the estimate exceeds --total: one line, naming the fix)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
m = comparison.measuring
print(f"{groups} one-hot groups of {classes} classes ({classes ** groups} states); {steps} steps per estimator, "
      f"batch 128, Adam 1e-3, seed 0; nats per datapoint on the test set"
      + (f"; {comparison.scaled_note}" if comparison.scaled_note else ""))
print(comparison.markdown())
print(f"\ndifferences from {comparison.ref} (paired: the same test datapoints):")
print(comparison.paired_markdown())
print(f"\ngradient statistics ({m.grad_draws} draws on a fixed batch of {m.grad_batch} training "
      f"digits), against the exactly enumerated gradient:")
print(comparison.gradient_markdown())
snr = comparison.snr_vs_k
print(f"\nencoder gradient against K ({snr['parameters']}): SNR, and |bias| / |exact gradient|")
for name, by_k in snr["encoder_snr"].items():
    bias = snr["encoder_relative_bias"][name]
    print(f"  {name:<45} " + "  ".join(f"K={k}: {v:.3f} ({bias[k]:.3f})" for k, v in by_k.items()))
print(f"\n{time_line(comparison)}")
print(f"\nfolder: {args.out} (results.md/.csv/.json, curves.png, differences.png, snr_vs_k.png, a run folder per "
      f"estimator with per_datapoint.csv)")
