"""Mixed-precision training steps (``train.precision = "bfloat16"``) against float32, per setting.

For each Fashion-MNIST config in ``benchmarks/configs/`` (``--configs``), the VAE is built at its
seeded initialization and two copies with the same weights take training steps (``svi_step``: the
config's objective, backward, Adam), one in float32 and one with the encoder and decoder bodies in
bfloat16 (``networks.mixed_precision``, as the trainer runs them), interleaved in one process (the
order alternates every round). The table gives the median time per step and the speed-up.

Before timing, at the same parameters and the same random draws, it reports how far bfloat16 moves
the step: the difference of the objective (nats per datapoint) and the cosine between the two
gradients (all parameters as one vector), at initialization (how the difference grows with
training shows in validation scores, not here). Images are random binary 28x28 (speed does not depend
on the pixel values). The speed-up depends on the hardware: bfloat16 pays on CPUs with AVX-512
BF16 or AMX and on recent GPUs; elsewhere it can be slower than float32.

    python benchmarks/precision.py --rounds 5 --threads 2
    python benchmarks/precision.py --configs fashion-vamp --rounds 9
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

from pyro_vae import Config
from pyro_vae.networks import mixed_precision
from pyro_vae.objectives import OBJECTIVES
from pyro_vae.programs import Program
from pyro_vae.training import run_optimizer, svi_step

from common import seeded_model  # benchmarks/common.py

CONFIGS = Path(__file__).resolve().parent / "configs"
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}


def step(vae, objective, optimizer, x, dtype) -> float:
    with mixed_precision(Program(vae).network_bodies(), dtype):
        return svi_step(vae, objective, optimizer, x)


def loss_and_gradient(vae, objective, x, dtype, seed: int) -> tuple[float, torch.Tensor]:
    """Minus the objective per datapoint, and the gradient as one vector, at fixed draws."""
    vae.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    program = Program(vae)
    with mixed_precision(program.network_bodies(), dtype):
        surrogate, loss = objective.step(program.source, x)
    surrogate.backward()
    grad = torch.cat([p.grad.flatten() for p in vae.parameters() if p.grad is not None])
    vae.zero_grad(set_to_none=True)
    return loss.item() / x.shape[0], grad


def measure(name: str, args) -> dict:
    config = Config.load(CONFIGS / f"{name}.toml")
    batch = args.batch or config.train.batch_size
    base, images = seeded_model(config, max(batch, 1000))
    x = images[:batch]
    objective = OBJECTIVES.build(config.train.objective)
    (loss32, g32), (loss16, g16) = (loss_and_gradient(base, objective, x, d, 0) for d in PRECISIONS.values())
    cosine = torch.nn.functional.cosine_similarity(g32.double(), g16.double(), dim=0).item()

    models = {p: copy.deepcopy(base) for p in PRECISIONS}
    train = dataclasses.replace(config.train, batch_size=batch)  # (the trainer's Adam, for this benchmark's batch)
    optimizers = {p: run_optimizer(m, train, batch, torch.device("cpu")) for p, m in models.items()}
    times = {p: [] for p in PRECISIONS}
    names = list(PRECISIONS)
    with pyro.validation_enabled(False):
        for p in names:  # warm-up
            step(models[p], objective, optimizers[p], x, PRECISIONS[p])
        for r in range(args.rounds):
            for p in names[r % 2:] + names[: r % 2]:
                start = time.perf_counter()
                for _ in range(args.steps):
                    step(models[p], objective, optimizers[p], x, PRECISIONS[p])
                times[p].append((time.perf_counter() - start) / args.steps)
    t32, t16 = (statistics.median(times[p]) * 1000 for p in names)
    return {"config": name, "objective": objective.spec()["name"], "batch": batch, "t32": t32, "t16": t16,
            "dloss": loss16 - loss32, "loss": loss32, "cosine": cosine}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="fashion-mlp,fashion-vamp,fashion-conv",
                        help="comma-separated names of benchmarks/configs/*.toml")
    parser.add_argument("--batch", type=int, help="training batch (default: each config's)")
    parser.add_argument("--steps", type=int, default=5, help="training steps per timing (default 5)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [measure(name, args) for name in args.configs.split(",")]

    print(f"# training-step precision: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), pyro {pyro.__version__}, device cpu")
    print(f"# {' '.join(sys.argv)}")
    print(f"# {args.rounds} interleaved round(s) of {args.steps} steps, median per step; the same weights and draws "
          f"for the loss and gradient columns")
    print("| config | objective, batch | float32: ms | bfloat16: ms | speed-up | loss (nats/datapoint) | "
          "bfloat16 - float32 | gradient cosine |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['config']} | {r['objective']}, {r['batch']} | {r['t32']:.1f} | {r['t16']:.1f} | "
              f"{r['t32'] / r['t16']:.2f}x | {r['loss']:.2f} | {r['dloss']:+.4f} | {r['cosine']:.6f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
