"""Training-step time: hand-written PyTorch vs stock Pyro vs pyro-vae, interleaved in one process.

The model is the standard MLP VAE: 784-400-50 with softplus, Bernoulli likelihood, Adam (lr 1e-3),
on real binarized digits from the embedded MNIST subset. For each objective, the hand-written step
does the same maths as pyro-vae's (MC-KL ELBO against the MC-KL ELBO, analytic KL against analytic
KL, vectorized IWAE against vectorized IWAE), with one torch Adam over the same parameters. The
pyro-vae rows run the library's own step (``training.svi_step``: the objective's surrogate on the
program's terms, backward, Adam) on

* the stock VAE: its terms read straight from its distributions (``terms.DirectSource``);
* the stock VAE's program as a subclass that overrides ``model``/``guide`` (the same maths, traced:
  ``terms.TraceSource``);
* a user program: an ``nn.Module`` of this file with its own ``model``/``guide`` in plain Pyro
  distributions, the same networks and maths as the hand-written step (its twin), traced.

Every contestant runs ``--steps`` steps per round, in an order that rotates each round, after a
warm-up; the table gives the median time per step and the median over rounds of its ratio to the
hand-written step in the same round (so that the shared machine's drifts of speed cancel).

    python benchmarks/step_overhead.py                      # batch 128 and 1024, all objectives
    python benchmarks/step_overhead.py --batch-sizes 128 --rounds 10 --objectives elbo

Data handling (indexing a batch out of the in-memory training tensor, dynamic binarization) and
the input checks ``VAE.model`` and ``VAE.guide`` make on every call (shape, dtype, finiteness, the
likelihood's support) are timed separately and reported as shares of pyro-vae's step.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import pyro
import pyro.optim
import torch
import torch.nn.functional as F
from pyro.infer import SVI, RenyiELBO, Trace_ELBO
from torch import nn

import pyro.distributions as dist

from pyro_vae import VAE, BernoulliLikelihood
from pyro_vae.config import OBJECTIVES
from pyro_vae.data import MNIST5k, check_batch, require_finite
from pyro_vae.programs import Program
from pyro_vae.training import svi_step

LOG_2PI = math.log(2 * math.pi)
OBJECTIVE_CHOICES = ["elbo", "elbo-analytic-kl", "iwae", "renyi", "stl", "dreg"]
CHECKS: dict[tuple[str, int], tuple[float, float]] = {}


# ---------------------------------------------------------------------------------------------
# Hand-written PyTorch: the same networks, the same maths, no probabilistic library.


class HandVAE(nn.Module):
    def __init__(self, latent: int = 50, hidden: int = 400, pixels: int = 784):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(pixels, hidden), nn.Softplus())
        self.mu = nn.Linear(hidden, latent)
        self.raw_sigma = nn.Linear(hidden, latent)
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.Softplus(), nn.Linear(hidden, pixels))

    def encode(self, x):
        h = self.enc(x)
        return self.mu(h), F.softplus(self.raw_sigma(h))


class UserProgram(HandVAE):
    """A user's own model program (not pyro-vae's VAE class): the hand-written step's networks, its
    maths written as a Pyro model and guide over flat (batch, 784) data."""

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0).expand([self.mu.out_features]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(z)).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            mu, sigma = self.encode(x)
            pyro.sample("z", dist.Normal(mu, sigma).to_event(1))


class TracedVAE(VAE):
    """The stock VAE's program as a subclass that overrides model and guide: the same maths, traced."""

    def model(self, x):
        super().model(x)

    def guide(self, x):
        super().guide(x)


def hand_log_weights(model: HandVAE, x: torch.Tensor, k: int) -> torch.Tensor:
    """log p(x|z) + log p(z) - log q(z|x) for k vectorized samples: shape (k, batch)."""
    mu, sigma = model.encode(x)
    eps = torch.randn((k, *mu.shape))
    z = mu + sigma * eps
    log_q = (-0.5 * eps**2 - sigma.log()).sum(-1)
    log_p = (-0.5 * z**2).sum(-1)
    log_px = -F.binary_cross_entropy_with_logits(model.dec(z), x.expand(k, *x.shape), reduction="none").sum(-1)
    return log_px + log_p - log_q  # the two -D/2 log 2 pi constants cancel


def hand_loss(objective: str, model: HandVAE, x: torch.Tensor, k: int, alpha: float):
    """(surrogate, loss value) of one step; they coincide except for DReG."""
    surrogate = _hand_surrogate(objective, model, x, k, alpha)
    return surrogate if isinstance(surrogate, tuple) else (surrogate, surrogate)


def _hand_surrogate(objective: str, model: HandVAE, x: torch.Tensor, k: int, alpha: float):
    if objective == "elbo":  # Monte-Carlo KL, one sample
        mu, sigma = model.encode(x)
        eps = torch.randn_like(mu)
        z = mu + sigma * eps
        log_q = (-0.5 * eps**2 - sigma.log()).sum()
        log_p = (-0.5 * z**2).sum()
        recon = -F.binary_cross_entropy_with_logits(model.dec(z), x, reduction="sum")
        return -(recon + log_p - log_q)
    if objective == "elbo-analytic-kl":
        mu, sigma = model.encode(x)
        z = mu + sigma * torch.randn_like(mu)
        recon = -F.binary_cross_entropy_with_logits(model.dec(z), x, reduction="sum")
        kl = 0.5 * (sigma**2 + mu**2 - 1).sum() - sigma.log().sum()
        return -(recon - kl)
    if objective == "stl":  # log q at stopped parameters: the gradient keeps only z's path
        mu, sigma = model.encode(x)
        z = mu + sigma * torch.randn_like(mu)
        log_q = (-0.5 * ((z - mu.detach()) / sigma.detach()) ** 2 - sigma.detach().log()).sum()
        log_p = (-0.5 * z**2).sum()
        recon = -F.binary_cross_entropy_with_logits(model.dec(z), x, reduction="sum")
        return -(recon + log_p - log_q)
    if objective == "dreg":  # Tucker et al.: w^2 on the guide's path derivative, w on the model's gradient
        mu, sigma = model.encode(x)
        z = mu + sigma * torch.randn((k, *mu.shape))
        log_q = (-0.5 * ((z - mu.detach()) / sigma.detach()) ** 2 - sigma.detach().log()).sum(-1)
        log_px = -F.binary_cross_entropy_with_logits(model.dec(z), x.expand(k, *x.shape), reduction="none").sum(-1)
        log_w = log_px - 0.5 * z.pow(2).sum(-1) - log_q
        w = torch.softmax(log_w.detach(), 0)
        z.register_hook(lambda g: g * w.unsqueeze(-1))
        bound = torch.logsumexp(log_w.detach(), 0) - math.log(k)  # the value to log: the IWAE bound
        return -(w * log_w).sum(), -bound.sum()
    log_w = hand_log_weights(model, x, k)
    a = 0.0 if objective == "iwae" else alpha
    return -((torch.logsumexp((1 - a) * log_w, 0) - math.log(k)) / (1 - a)).sum()


def hand_step(objective: str, model: HandVAE, optimizer, x_flat: torch.Tensor, k: int, alpha: float) -> Callable[[], float]:
    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        surrogate, loss = hand_loss(objective, model, x_flat, k, alpha)
        surrogate.backward()
        optimizer.step()
        return loss.item()

    return step


# ---------------------------------------------------------------------------------------------
# Contestants


@dataclass
class Contestant:
    name: str
    objective: str
    step: Callable[[], float]
    validate: bool = False


def objective_spec(name: str, k: int, alpha: float) -> dict:
    return {
        "elbo": {"name": "elbo"},
        "elbo-analytic-kl": {"name": "elbo-analytic-kl"},
        "iwae": {"name": "iwae", "num_particles": k},
        "renyi": {"name": "renyi", "alpha": alpha, "num_particles": k},
        "stl": {"name": "stl"},
        "dreg": {"name": "dreg", "num_particles": k},
    }[name]


STOCK = "pyro-vae: stock VAE (direct terms)"
TRACED = "pyro-vae: stock VAE as a subclass (traced)"
USER = "pyro-vae: user program (traced)"


def pairs(hand: HandVAE, vae: VAE):
    return ((hand.enc[0], vae.encoder.body[0]), (hand.mu, vae.posterior.loc), (hand.raw_sigma, vae.posterior.raw_scale),
            (hand.dec[0], vae.decoder.body[0]), (hand.dec[2], vae.decoder.body[2]))


def hand_pairs(hand: HandVAE, user: HandVAE):
    return ((hand.enc[0], user.enc[0]), (hand.mu, user.mu), (hand.raw_sigma, user.raw_sigma),
            (hand.dec[0], user.dec[0]), (hand.dec[2], user.dec[2]))


def same_maths(objective: str, hand: HandVAE, program: Program, layers, obj, x: torch.Tensor, k: int,
               alpha: float) -> tuple[float, float]:
    """One step's loss and gradients from both, same weights and seed: (relative loss difference,
    largest relative gradient difference over the parameter tensors)."""
    hand.zero_grad(set_to_none=True)
    program.module.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    hand_surrogate, hand_value = hand_loss(objective, hand, x.flatten(1), k, alpha)
    hand_surrogate.backward()
    torch.manual_seed(123)
    surrogate, value = obj.step(program.source, x)
    surrogate.backward()
    worst = 0.0
    for h, v in layers:
        for a, b in ((h.weight.grad, v.weight.grad), (h.bias.grad, v.bias.grad)):
            worst = max(worst, ((a - b).norm() / b.norm().clamp_min(1e-12)).item())
    hand.zero_grad(set_to_none=True)
    program.module.zero_grad(set_to_none=True)
    return abs(hand_value.item() - value.item()) / abs(value.item()), worst


def copy_weights(pairs_) -> None:
    with torch.no_grad():
        for dst, src in pairs_:
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)


def contestants_for(objective: str, x: torch.Tensor, k: int, alpha: float, with_pyro: bool) -> list[Contestant]:
    torch.manual_seed(0)
    vae = VAE(latent_dim=50)  # the defaults: 784-400-50 MLP, softplus, N(0, I), Bernoulli
    hand, user = HandVAE(), UserProgram()
    copy_weights(pairs(hand, vae))  # same starting point for every contestant
    copy_weights(hand_pairs(user, hand))
    x_flat = x.flatten(1)
    out = [Contestant("hand-written PyTorch", objective,
                      hand_step(objective, hand, torch.optim.Adam(hand.parameters(), lr=1e-3), x_flat, k, alpha))]
    obj = OBJECTIVES.build(objective_spec(objective, k, alpha))
    stock_program, own = Program(vae), Program(user)
    with pyro.validation_enabled(False):
        CHECKS[objective, x.shape[0], "stock VAE"] = same_maths(objective, hand, stock_program, pairs(hand, vae), obj, x, k, alpha)
        CHECKS[objective, x.shape[0], "user program"] = same_maths(objective, hand, own, hand_pairs(hand, user), obj,
                                                                   x_flat, k, alpha)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    out.append(Contestant(STOCK, objective, lambda: svi_step(stock_program, obj, opt, x)))
    opt_user = torch.optim.Adam(user.parameters(), lr=1e-3)
    out.append(Contestant(USER, objective, lambda: svi_step(own, obj, opt_user, x_flat)))
    if with_pyro:
        traced = TracedVAE(latent_dim=50)
        traced.load_state_dict(vae.state_dict())
        traced_program, opt_t = Program(traced), torch.optim.Adam(traced.parameters(), lr=1e-3)
        out.append(Contestant(TRACED, objective, lambda: svi_step(traced_program, obj, opt_t, x)))
        stock = stock_pyro(objective, x, k, alpha)
        if stock is not None:
            out.append(Contestant(f"stock Pyro SVI ({stock[0]}), validation on", objective, stock[1], validate=True))
            out.append(Contestant(f"stock Pyro SVI ({stock[0]}), validation off", objective, stock_pyro(objective, x, k, alpha)[1]))
    return out


def stock_pyro(objective: str, x: torch.Tensor, k: int, alpha: float):
    """The recipe from Pyro's VAE tutorial: SVI + pyro.optim.Adam (one optimizer per parameter)."""
    if objective == "elbo":
        label, elbo = "Trace_ELBO", Trace_ELBO()
    elif objective == "iwae":
        label, elbo = f"RenyiELBO(alpha=0, {k} particles), not vectorized", RenyiELBO(alpha=0, num_particles=k)
    else:
        return None
    vae = VAE(latent_dim=50)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), elbo)
    return label, lambda: svi.step(x)


def measure(contestants: list[Contestant], rounds: int, steps: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per step of each contestant in each round, rounds interleaved in rotating order."""
    for c in contestants:
        with pyro.validation_enabled(c.validate):
            for _ in range(warmup):
                c.step()
    times: dict[str, list[float]] = {c.name: [] for c in contestants}
    for r in range(rounds):
        shift = r % len(contestants)
        for c in contestants[shift:] + contestants[:shift]:
            with pyro.validation_enabled(c.validate):
                start = time.perf_counter()
                for _ in range(steps):
                    c.step()
                times[c.name].append((time.perf_counter() - start) / steps)
    return times


def ratio(times: dict[str, list[float]], name: str, base: str = "hand-written PyTorch") -> float:
    """The median over rounds of the round's time of ``name`` over the hand-written step's in the same
    round: a drift of the machine's speed between rounds (this one is shared) cancels."""
    return statistics.median(a / b for a, b in zip(times[name], times[base]))


def data_share(train: torch.Tensor, batch: int, step_seconds: float, rounds: int) -> float:
    """Seconds the trainer spends getting a batch (index the in-memory tensor, dynamic binarization),
    over the step time."""
    likelihood = BernoulliLikelihood(binarize="dynamic")
    g = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(rounds):
        order = torch.randperm(train.shape[0], generator=g)
        start = time.perf_counter()
        for index in order.split(batch)[:10]:
            likelihood.prepare_batch(train[index], g)
        samples.append((time.perf_counter() - start) / 10)
    return statistics.median(samples) / step_seconds


def check_share(x: torch.Tensor, step_seconds: float, rounds: int) -> float:
    """Seconds of the input checks at the Python boundary (what ``VAE.model`` and ``VAE.guide`` check
    on every call, with Pyro's validation on or off), over the step time."""
    vae = VAE(latent_dim=50)

    def checks() -> None:
        vae.likelihood.check_observed(x, like=vae.decoder)  # VAE.model
        check_batch(x, vae.data_shape, like=vae.encoder)  # VAE.guide
        require_finite(x)

    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(20):
            checks()
        samples.append((time.perf_counter() - start) / 20)
    return statistics.median(samples) / step_seconds


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), pyro {pyro.__version__}, python {platform.python_version()}, "
            f"device cpu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--objectives", nargs="+", default=OBJECTIVE_CHOICES, choices=OBJECTIVE_CHOICES)
    parser.add_argument("--particles", type=int, default=10, help="K for iwae, renyi and dreg")
    parser.add_argument("--alpha", type=float, default=0.5, help="alpha for renyi")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=5, help="steps per contestant per round")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--no-pyro", action="store_true", help="skip the stock-Pyro rows and the traced stock VAE")
    args = parser.parse_args(argv)

    print(f"# step_overhead: {machine()}")
    print(f"# {' '.join(sys.argv)}")
    print(f"# ms: median over {args.rounds} interleaved rounds of {args.steps} steps; ratio: median over rounds of the "
          f"round's time / the hand-written step's in that round")
    train = MNIST5k().load().train
    rows: dict[tuple[str, str], dict[int, float]] = {}
    shares, checked = {}, {}
    for batch in args.batch_sizes:
        x = torch.bernoulli(train[:batch], generator=torch.Generator().manual_seed(0))
        for objective in args.objectives:
            contestants = contestants_for(objective, x, args.particles, args.alpha, not args.no_pyro)
            times = measure(contestants, args.rounds, args.steps, args.warmup)
            medians = {name: statistics.median(v) for name, v in times.items()}
            for c in contestants:
                rows.setdefault((objective, c.name), {})[batch] = (medians[c.name], ratio(times, c.name))
            if objective == "elbo":
                shares[batch] = data_share(train, batch, medians[STOCK], args.rounds)
                checked[batch] = check_share(x, medians[STOCK], args.rounds)

    header = "| objective | step | " + " | ".join(f"batch {b}: ms (ratio)" for b in args.batch_sizes) + " |"
    print(header)
    print("|" + " --- |" * (2 + len(args.batch_sizes)))
    for (objective, name), by_batch in rows.items():
        label = objective if objective in ("elbo", "elbo-analytic-kl", "stl") else f"{objective} (K={args.particles}" + (
            f", alpha={args.alpha})" if objective == "renyi" else ")")
        cells = " | ".join(f"{by_batch[b][0] * 1e3:.2f} ({by_batch[b][1]:.3f}x)" for b in args.batch_sizes)
        print(f"| {label} | {name} | {cells} |")
    for (objective, batch, who), (loss_diff, grad_diff) in CHECKS.items():
        print(f"# same maths, {objective} at batch {batch}, {who}: relative loss difference {loss_diff:.1e}, largest "
              f"relative gradient difference {grad_diff:.1e} (hand-written vs pyro-vae, same weights and seed)")
    for batch, share in shares.items():
        print(f"# data handling (index a batch + dynamic binarization), batch {batch}: "
              f"{100 * share:.1f}% of pyro-vae's elbo step")
    for batch, share in checked.items():
        print(f"# input checks at the Python boundary (VAE.model + VAE.guide: shape, dtype, finite, binary), batch "
              f"{batch}: {100 * share:.2f}% of pyro-vae's elbo step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
