"""Training-step time of the estimators for discrete latents: hand-written PyTorch vs pyro-vae, interleaved.

The model: z is M one-hot groups of K classes under a uniform prior, a factorized categorical
q(z|x) (a linear head on a 784-400 softplus encoder), a 400-unit softplus MLP decoder to Bernoulli
pixels, Adam (lr 1e-3), random binary 28x28 images. For each estimator the hand-written step does
the same maths with no probabilistic library (checked first: same loss and gradients from the same
weights and random numbers), and pyro-vae runs its own step (``training.svi_step`` on the stock VAE):

* ``score-function`` (K = 1, decaying-average baseline): a Gumbel-max draw, the score term
  (f - b) grad log q(z|x) beside the ELBO's own gradient;
* ``gumbel-softmax`` and ``straight-through-gumbel`` (tau = 0.5): the relaxed (or rounded) draw
  decoded, the KL to the uniform prior in closed form;
* ``enumerate``: the ELBO summed over all K^M states, the hand-written step as a batched sum that
  decodes each state once and scores every datapoint under it.

Every contestant runs ``--steps`` steps per round, rounds interleaved in rotating order after a
warm-up; the table gives the median time per step and the median over rounds of its ratio to the
hand-written step of the same round. Targets (issue 32): score-function and relaxed steps within
1.15x, enumeration within 1.2x.

    python benchmarks/discrete_step.py                                  # 2 groups of 8 classes, batch 128
    python benchmarks/discrete_step.py --groups 1 --classes 10 --rounds 10
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Callable

import pyro
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae import VAE
from pyro_vae.config import OBJECTIVES
from pyro_vae.programs import Program
from pyro_vae.training import svi_step

ESTIMATORS = ["score-function", "gumbel-softmax", "straight-through-gumbel", "enumerate"]
HAND = "hand-written PyTorch"
LIBRARY = "pyro-vae (stock VAE)"
TEMPERATURE = 0.5


class HandVAE(nn.Module):
    def __init__(self, groups: int, classes: int, hidden: int = 400, pixels: int = 784):
        super().__init__()
        self.groups, self.classes = groups, classes
        self.enc = nn.Sequential(nn.Linear(pixels, hidden), nn.Softplus())
        self.logits = nn.Linear(hidden, groups * classes)
        self.dec = nn.Sequential(nn.Linear(groups * classes, hidden), nn.Softplus(), nn.Linear(hidden, pixels))
        self.average: float | None = None

    def log_q(self, x: torch.Tensor) -> torch.Tensor:
        """log q(z_g = k | x), (B, M, K)."""
        return torch.log_softmax(self.logits(self.enc(x)).unflatten(-1, (self.groups, self.classes)), -1)


def gumbel(shape, like: torch.Tensor) -> torch.Tensor:
    u = torch.rand(shape, dtype=like.dtype)
    return -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))


def hand_surrogate(estimator: str, model: HandVAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(surrogate, loss) of one step, summed over the batch, in nats."""
    log_q = model.log_q(x)  # (B, M, K)
    log_prior = -model.groups * math.log(model.classes)  # uniform: log p(z) of every state
    if estimator == "enumerate":
        k, m = model.classes, model.groups
        index = torch.arange(k ** m)
        digits = torch.stack([(index // k ** g) % k for g in reversed(range(m))], -1)
        states = F.one_hot(digits, k).to(x.dtype)  # (S, M, K)
        logits = model.dec(states.flatten(1))  # (S, 784): each state decoded once
        log_lik = -F.binary_cross_entropy_with_logits(
            logits[:, None, :].expand(-1, x.shape[0], -1), x.expand(states.shape[0], -1, -1), reduction="none").sum(-1)
        log_q_s = torch.einsum("smk,bmk->sb", states, log_q)  # (S, B)
        loss = -(log_q_s.exp() * (log_lik + log_prior - log_q_s)).sum()
        return loss, loss.detach()
    g = gumbel(log_q.shape, log_q)
    if estimator == "score-function":
        z = F.one_hot((log_q + g).argmax(-1), model.classes).to(x.dtype)  # a Gumbel-max draw
        log_lik = -F.binary_cross_entropy_with_logits(model.dec(z.flatten(1)), x, reduction="none").sum(-1)
        log_q_z = (z * log_q).sum((-1, -2))
        f = log_lik + log_prior - log_q_z
        fd = f.detach()
        if model.average is None:
            b = (fd.sum() - fd) / (fd.numel() - 1)
            model.average = fd.mean().item()
        else:
            b = model.average
            model.average = 0.9 * model.average + 0.1 * fd.mean().item()
        total = f.sum() + ((fd - b) * (log_q_z - log_q_z.detach())).sum()
        return -total, -f.sum().detach()
    y = torch.softmax((log_q + g) / TEMPERATURE, -1)
    if estimator == "straight-through-gumbel":
        y = F.one_hot(y.argmax(-1), model.classes).to(y.dtype) - y.detach() + y
    log_lik = -F.binary_cross_entropy_with_logits(model.dec(y.flatten(1)), x, reduction="sum")
    kl = (log_q.exp() * (log_q - log_prior / model.groups)).sum()
    loss = -(log_lik - kl)
    return loss, loss.detach()


def optimizer_step(optimizer, surrogate: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> Callable[[], float]:
    """One step of ``optimizer`` on ``surrogate()``'s (surrogate, loss): the hand-written contestants' step."""
    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        value, loss = surrogate()
        value.backward()
        optimizer.step()
        return loss.item()

    return step


def hand_step(estimator: str, model: HandVAE, optimizer, x: torch.Tensor) -> Callable[[], float]:
    return optimizer_step(optimizer, lambda: hand_surrogate(estimator, model, x))


def spec(estimator: str) -> dict:
    if estimator == "score-function":
        return {"name": estimator, "baseline": "average"}
    if estimator == "enumerate":
        return {"name": estimator, "max_states": 4096}
    return {"name": estimator, "temperature": TEMPERATURE}


def pairs(hand: HandVAE, vae: VAE):
    return ((hand.enc[0], vae.encoder.body[0]), (hand.logits, vae.posterior.logits),
            (hand.dec[0], vae.decoder.body[0]), (hand.dec[2], vae.decoder.body[2]))


def copy_weights(hand: HandVAE, vae: VAE) -> None:
    with torch.no_grad():
        for h, v in pairs(hand, vae):
            h.weight.copy_(v.weight)
            h.bias.copy_(v.bias)


def same_maths(estimator: str, hand: HandVAE, program: Program, x: torch.Tensor) -> tuple[float, float]:
    """(relative loss difference, largest relative gradient difference) of one step from both."""
    objective = OBJECTIVES.build(spec(estimator))
    hand.zero_grad(set_to_none=True)
    program.module.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    s, value_hand = hand_surrogate(estimator, hand, x.flatten(1))
    s.backward()
    torch.manual_seed(123)
    s, value = objective.step(program.source, x)
    s.backward()
    worst = max(((a - b).norm() / b.norm().clamp_min(1e-12)).item()
                for h, v in pairs(hand, program.module)
                for a, b in ((h.weight.grad, v.weight.grad), (h.bias.grad, v.bias.grad)))
    hand.zero_grad(set_to_none=True)
    program.module.zero_grad(set_to_none=True)
    hand.average = None
    return abs(value_hand.item() - value.item()) / abs(value.item()), worst


def measure(contestants: dict[str, Callable[[], float]], rounds: int, steps: int, warmup: int) -> dict[str, list[float]]:
    for step in contestants.values():
        for _ in range(warmup):
            step()
    names = list(contestants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            for _ in range(steps):
                contestants[name]()
            times[name].append((time.perf_counter() - start) / steps)
    return times


def main(argv: list[str] | None = None) -> int:
    import os
    import platform

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--estimators", nargs="+", default=ESTIMATORS, choices=ESTIMATORS)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), pyro {pyro.__version__}, python {platform.python_version()}, cpu")
    m, k = args.groups, args.classes
    print(f"z: {m} one-hot group(s) of {k} classes ({k ** m} states), batch {args.batch_size}, 784-400 MLP, Adam 1e-3")
    x = (torch.rand(args.batch_size, 1, 28, 28) < 0.3).float()
    rows = []
    with pyro.validation_enabled(False):
        for estimator in args.estimators:
            torch.manual_seed(0)
            vae = VAE(latent_dim=m * k, prior={"name": "categorical", "classes": k},
                      guide={"name": "categorical", "classes": k}, network={"name": "mlp", "hidden": [400]})
            hand = HandVAE(m, k)
            copy_weights(hand, vae)
            program = Program(vae)
            loss_diff, grad_diff = same_maths(estimator, hand, program, x)
            objective = OBJECTIVES.build(spec(estimator))
            contestants = {
                HAND: hand_step(estimator, hand, torch.optim.Adam(hand.parameters(), lr=1e-3), x.flatten(1)),
                LIBRARY: (lambda opt: lambda: svi_step(program, objective, opt, x))(
                    torch.optim.Adam(vae.parameters(), lr=1e-3)),
            }
            times = measure(contestants, args.rounds, args.steps, args.warmup)
            ratio = statistics.median(a / b for a, b in zip(times[LIBRARY], times[HAND]))
            rows.append((estimator, statistics.median(times[HAND]) * 1e3, statistics.median(times[LIBRARY]) * 1e3, ratio,
                         loss_diff, grad_diff))
    target = {"enumerate": 1.2}
    print("\n| estimator | hand-written ms | pyro-vae ms | ratio | target | same maths: loss, gradient (relative) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for estimator, hand_ms, lib_ms, ratio, loss_diff, grad_diff in rows:
        t = target.get(estimator, 1.15)
        print(f"| {estimator} | {hand_ms:.2f} | {lib_ms:.2f} | {ratio:.3f}x | {t}x: {'met' if ratio <= t else 'not met'} | "
              f"{loss_diff:.1e}, {grad_diff:.1e} |")
    print(f"\n{args.rounds} rounds of {args.steps} steps, interleaved; ms: median per step; ratio: median over rounds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
