"""The conv decoder's transposed convolutions: PyTorch's stock CPU call against pyro-vae's UpConv2d.

``networks.UpConv2d`` is ``nn.ConvTranspose2d(in, out, 4, stride=2, padding=1)`` with the same
parameters, computed on the CPU as a sub-pixel convolution (<= 3 output channels) or on a
channels-last input (more). This script builds the Fashion-MNIST conv VAE (``fashion-conv.toml``,
VampPrior, Bernoulli) at its seeded initialization, and a copy whose decoder uses the stock module
with the same weights, and times, interleaved in one process (the order rotates every round):

* the decoder alone, forward, on ``--pairs`` latent draws (an evaluation chunk);
* one training step (``svi_step``: the ELBO's loss, backward, Adam), batch ``--batch``;
* importance-sampled log p(x) (``metrics.log_evidence``) of ``--images`` images with K = ``--samples``.

Before timing it checks that both give the same decoder output and the same gradients (the
"same maths" line). Images are random binary 28x28 (speed does not depend on the pixel values).

    python benchmarks/conv_decoder.py --rounds 5
    python benchmarks/conv_decoder.py --rounds 5 --set "model.network.channels=[32, 64]"
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

from pyro_vae import Config
from pyro_vae.metrics import log_evidence
from pyro_vae.networks import UpConv2d
from pyro_vae.objectives import OBJECTIVES
from pyro_vae.programs import Program
from pyro_vae.training import svi_step

from common import seeded_model  # benchmarks/common.py

CONFIG = Path(__file__).resolve().parent / "configs" / "fashion-conv.toml"


def with_stock_deconvs(vae):
    """A copy of ``vae`` whose UpConv2d layers are nn.ConvTranspose2d modules with the same weights."""
    stock = copy.deepcopy(vae)
    for module in list(stock.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, UpConv2d):
                plain = torch.nn.ConvTranspose2d(child.in_channels, child.out_channels, 4, stride=2, padding=1)
                plain.load_state_dict(child.state_dict())
                setattr(module, name, plain)
    return stock


def gradients(vae, objective, x, seed: int) -> list[torch.Tensor]:
    vae.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    surrogate, _ = objective.step(Program(vae).source, x)
    surrogate.backward()
    return [p.grad.clone() for p in vae.parameters() if p.grad is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override fashion-conv.toml")
    parser.add_argument("--pairs", type=int, default=2048, help="latent draws per decoder call (default 2048)")
    parser.add_argument("--batch", type=int, default=250, help="training batch (default 250)")
    parser.add_argument("--steps", type=int, default=5, help="training steps per timing (default 5)")
    parser.add_argument("--images", type=int, default=20, help="images for log p(x) (default 20)")
    parser.add_argument("--samples", type=int, default=1000, help="K for log p(x) (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    config = Config.load(CONFIG, args.set)
    fast, x = seeded_model(config, max(args.batch, args.images))
    stock = with_stock_deconvs(fast)
    models = {"stock nn.ConvTranspose2d": stock, "pyro-vae UpConv2d": fast}
    objective = OBJECTIVES.build(config.train.objective)
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=config.train.lr) for name, m in models.items()}
    z = torch.randn(args.pairs, config.model.latent_dim)
    xb, xe = x[: args.batch], x[: args.images]

    with torch.no_grad():
        out_gap = (fast.decoder(z) - stock.decoder(z)).abs().max().item()
    grad_gap = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
                   for a, b in zip(gradients(fast, objective, xb, 0), gradients(stock, objective, xb, 0)))

    def decoder_forward(m):
        with torch.no_grad():
            m.decoder(z)

    def training_steps(m, name):
        for _ in range(args.steps):
            svi_step(m, objective, optimizers[name], xb)

    def evidence(m):
        torch.manual_seed(1)
        log_evidence(m, xe, args.samples)

    tasks = {
        f"decoder forward, {args.pairs} draws": lambda m, name: decoder_forward(m),
        f"training step ({objective.spec()['name']}, batch {args.batch}), per step": training_steps,
        f"log p(x), {args.images} images x K = {args.samples}": lambda m, name: evidence(m),
    }
    times = {(task, name): [] for task in tasks for name in models}
    names = list(models)
    with pyro.validation_enabled(False):
        for task, fn in tasks.items():  # warm-up
            for name in names:
                fn(models[name], name)
        for r in range(args.rounds):
            for task, fn in tasks.items():
                for name in names[r % 2 :] + names[: r % 2]:
                    start = time.perf_counter()
                    fn(models[name], name)
                    times[(task, name)].append(time.perf_counter() - start)

    channels = config.model.network["channels"]
    print(f"# conv decoder: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), pyro {pyro.__version__}, device cpu")
    print(f"# {' '.join(sys.argv)}")
    print(f"# fashion-conv.toml, channels {channels}, {args.rounds} interleaved round(s), median")
    print("| task | stock nn.ConvTranspose2d: ms | pyro-vae UpConv2d: ms | speed-up |")
    print("| --- | --- | --- | --- |")
    for task in tasks:
        steps = args.steps if task.startswith("training step") else 1
        t_stock, t_fast = (statistics.median(times[(task, n)]) * 1000 / steps for n in names)
        print(f"| {task} | {t_stock:.1f} | {t_fast:.1f} | {t_stock / t_fast:.2f}x |")
    print(f"# same maths: largest decoder-output difference {out_gap:.1e}; largest relative gradient "
          f"difference {grad_gap:.1e} (same weights, same draws)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
