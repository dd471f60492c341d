"""Completing digits from 1, 2 or 3 quadrants: the quadrant CVAE's conditional log-likelihood against a deterministic network.

Pyro's CVAE task (``examples/cvae``): shown quadrants x_v (1: bottom-left; 2: the left half; 3: all
but the bottom-right), the rest x_h predicted. For each ``--visible`` count:

* **CVAE** (``model.program = "quadrant-cvae"``, ``pyro_vae/quadrants.py``): p(z|x_v) a prior
  network, x_h ~ Bernoulli(decoder(z)), q(z|x); 784-500-500 softplus MLPs, z 16-D (``--latent-dim``),
  Adam 1e-3, batch 100, trained for ``--minutes`` of wall time; best.pt by the validation ELBO.
  Reported on the test set: -log p(x_h | x_v) importance-sampled with K = ``--samples`` draws of z
  ~ q(z|x) (± s.e.), and the -ELBO Pyro's example reports (a bound: larger).
* **deterministic network**: the same 784-500-500 MLP from x_v (hidden pixels set to 0) to the
  logits of x_h, trained by the Bernoulli log-likelihood of the hidden pixels for the same minutes
  (Adam 1e-3, batch 100), the step with the best validation loss kept: its test -log p(x_h | x_v) is
  the cross-entropy, a factorized Bernoulli (each hidden pixel independent given x_v).

Pixels are binarized once (threshold draws with a fixed seed, the library's evaluation binarization)
for both, so the numbers are log-likelihoods of the same binary images, in nats per image, summed
over the hidden pixels. A picture of completions (shown pixels, several CVAE draws, the network's
mean, the truth) goes to ``--out``/completions-<visible>.png.

    python benchmarks/quadrants.py --minutes 3                                       # mnist5k
    python benchmarks/quadrants.py --data-dir ../shared/data/fashion-mnist --minutes 8 --validation 10000
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

from pyro_vae import Config, Trainer  # noqa: E402
from pyro_vae.quadrants import QuadrantCVAE, visible_mask  # noqa: E402
from pyro_vae.config import DATASETS  # noqa: E402
from pyro_vae.evaluation import evaluate  # noqa: E402
from pyro_vae.networks import MLPEncoder  # noqa: E402
from pyro_vae.plots import save_grid  # noqa: E402
from pyro_vae.trained import load_run  # noqa: E402

HIDDEN = [500, 500]


def stat(values: torch.Tensor) -> dict:
    return {"mean": values.double().mean().item(), "stderr": values.double().std().item() / math.sqrt(len(values))}


class Network(torch.nn.Module):
    """x_v -> logits of every pixel (the hidden ones are scored): the deterministic baseline."""

    def __init__(self, shown: torch.Tensor):
        super().__init__()
        self.register_buffer("shown", shown)
        self.body = MLPEncoder(tuple(shown.shape), HIDDEN, "softplus")
        self.out = torch.nn.Linear(self.body.out_features, shown.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x * self.shown)).view(x.shape)

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """-log p(x_h | x_v) per image: the hidden pixels' Bernoulli cross-entropy, summed."""
        bce = F.binary_cross_entropy_with_logits(self(x), x, reduction="none")
        return (bce * ~self.shown).flatten(1).sum(1)


def train_network(data, shown: torch.Tensor, minutes: float, seed: int) -> tuple[Network, int]:
    torch.manual_seed(seed)
    net = Network(shown)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    best, best_state, steps, started = math.inf, None, 0, time.perf_counter()
    while time.perf_counter() - started < 60 * minutes:
        for index in torch.randperm(data.train.shape[0], generator=g).split(100):
            x = data.train_eval_form[index]
            loss = net.nll(x).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
        with torch.no_grad():
            valid = net.nll(data.valid).mean().item()
        if valid < best:
            best, best_state = valid, {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    return net, steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="an IDX folder (Fashion-MNIST layout); unset: the embedded mnist5k")
    parser.add_argument("--visible", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--minutes", type=float, default=3.0, help="training wall time of each model")
    parser.add_argument("--validation", type=int, default=500)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--samples", type=int, default=1000, help="K for the importance-sampled log-likelihood")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/quadrants"))
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    data_table = {"name": "fashion-mnist", "data_dir": args.data_dir} if args.data_dir else {"name": "mnist5k"}
    splits = DATASETS.build(data_table, "data").load()
    rows = []
    for visible in args.visible:
        config = Config.from_dict({
            "seed": args.seed, "data": data_table,
            "model": {"program": "quadrant-cvae", "visible": visible, "latent_dim": args.latent_dim, "binarize": "static",
                      "network": {"name": "mlp", "hidden": HIDDEN}},
            "train": {"epochs": 100000, "batch_size": 100, "max_minutes": args.minutes, "validation": args.validation,
                      "objective": "elbo-analytic-kl"},
            "eval": {"samples": args.samples}})
        run_dir = args.out / f"cvae-visible{visible}"
        trainer = Trainer(config, run_dir, progress=False, log=lambda line: None, preloaded=splits)
        trainer.fit(overwrite=True)
        run = load_run(run_dir, trust_code=False)
        result = evaluate(run.program, run.data.prepared_test, samples=args.samples, seed=args.seed)
        data = trainer.data
        data.train_eval_form = data.train.float()  # statically binarized once: the network sees the same pixels
        shown = visible_mask(tuple(data.train.shape[1:]), visible)
        net, steps = train_network(data, shown, args.minutes, args.seed)
        with torch.no_grad():
            net_nll = net.nll(data.test)
        row = {"visible": visible, "cvae_epochs": trainer.epoch, "cvae_selected_epoch": run.epoch,
               "cvae_nll_is": stat(-result.log_px), "cvae_neg_elbo": stat(-result.elbo),
               "network_nll": stat(net_nll), "network_steps": steps}
        rows.append(row)
        print(json.dumps(row))
        module: QuadrantCVAE = run.program.module
        x = data.test[torch.linspace(0, data.test.shape[0] - 1, 8).long()]
        with torch.no_grad():
            draws = module.complete(x, 3)
            mean = torch.where(shown, x, torch.sigmoid(net(x)))
        shown_only = torch.where(shown, x, torch.full_like(x, 0.5))
        grid = torch.cat([shown_only, *draws, mean, x])
        args.out.mkdir(parents=True, exist_ok=True)
        save_grid(grid, args.out / f"completions-{visible}.png", 8,
                  f"{visible} quadrant(s) shown: rows: the input (hidden grey), 3 CVAE completions (E[x_h|z], z ~ p(z|x_v)), "
                  f"the deterministic network's mean, the truth")
    result = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
              "machine": machine(), "dataset": data_table["name"], "settings": vars(args) | {"out": str(args.out)},
              "rows": rows, "units": "nats per image, summed over the hidden pixels; ± standard error over test images"}
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n| quadrants shown | CVAE -log p(x_h \\| x_v), IS K={args.samples} | CVAE -ELBO | deterministic network "
          f"-log p(x_h \\| x_v) | CVAE epochs (selected) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        c, e, n = r["cvae_nll_is"], r["cvae_neg_elbo"], r["network_nll"]
        print(f"| {r['visible']} | {c['mean']:.2f} ± {c['stderr']:.2f} | {e['mean']:.2f} ± {e['stderr']:.2f} | "
              f"{n['mean']:.2f} ± {n['stderr']:.2f} | {r['cvae_epochs']} ({r['cvae_selected_epoch']}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
