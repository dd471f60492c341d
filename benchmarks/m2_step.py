"""Training-step time of the semi-supervised M2 with y enumerated: hand-written PyTorch vs pyro-vae, interleaved.

The model is ``model.program = "m2"`` (``pyro_vae/labelled.py``): y ~ Cat(1/C), z ~ N(0, I),
x ~ Bernoulli(decoder(z, y)); q(y|x) a linear head on the encoder's features h(x), q(z|x, y) a
Gaussian whose mean and scale are linear in [h(x), y]; 784-``hidden`` softplus MLPs, Adam 1e-3,
random binary 28x28 images. On an unlabelled batch the step sums the ELBO over the C classes:

    ELBO(x) = sum_y q(y|x) [log p(x|y, z_y) + log p(y) + log p(z_y) - log q(z_y|x, y) - log q(y|x)]

with one z_y ~ q(z|x, y) per class and datapoint. The hand-written step computes exactly that
with no probabilistic library, the C classes batched as one (C, B, ...) tensor (checked first:
the same loss and gradients from the same weights and random numbers); pyro-vae runs
``training.svi_step`` with the objective ``enumerate`` on the traced program. A labelled batch
(``--labelled``) adds, in both, the ELBO of (x, y) and alpha log q(y|x) (alpha = 50) on a second batch
of the same size.

Rounds of ``--steps`` steps interleaved in rotating order after a warm-up; the table gives the
median time per step and the median over rounds of the ratio. Target (issue 31): <= 1.2x at batch 200.

    python benchmarks/m2_step.py                      # batch 200, 10 classes, hidden 400
    python benchmarks/m2_step.py --labelled --rounds 10
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path
from typing import Callable

import pyro
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402
from discrete_step import measure, optimizer_step  # noqa: E402

from pyro_vae.config import OBJECTIVES  # noqa: E402
from pyro_vae.labelled import SemiSupervisedVAE  # noqa: E402
from pyro_vae.programs import Program  # noqa: E402
from pyro_vae.labels import LabelledBatch  # noqa: E402
from pyro_vae.training import svi_step  # noqa: E402

HAND = "hand-written PyTorch"
LIBRARY = "pyro-vae (m2, enumerate)"
ALPHA = 50.0
LOG_2PI = math.log(2 * math.pi)


class HandM2(nn.Module):
    def __init__(self, classes: int, latent: int, hidden: int, pixels: int = 784):
        super().__init__()
        self.classes, self.latent = classes, latent
        self.enc = nn.Sequential(nn.Linear(pixels, hidden), nn.Softplus())
        self.q_y = nn.Linear(hidden, classes)
        self.loc = nn.Linear(hidden + classes, latent)
        self.raw_scale = nn.Linear(hidden + classes, latent)
        self.dec = nn.Sequential(nn.Linear(latent + classes, hidden), nn.Softplus(), nn.Linear(hidden, pixels))

    def bound(self, h: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(x|y, z) + log p(z) - log q(z|x, y) at one z ~ q(z|x, y); y one-hot (..., B, C)."""
        inp = torch.cat([h.expand(*y.shape[:-1], h.shape[-1]), y], -1)
        loc, scale = self.loc(inp), F.softplus(self.raw_scale(inp))
        eps = torch.randn(loc.shape)
        z = loc + scale * eps
        log_q_z = (-0.5 * eps.pow(2) - scale.log()).sum(-1) - 0.5 * self.latent * LOG_2PI
        log_p_z = (-0.5 * z.pow(2)).sum(-1) - 0.5 * self.latent * LOG_2PI
        logits = self.dec(torch.cat([z, y], -1))
        log_lik = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        return log_lik + log_p_z - log_q_z

    def unlabelled(self, x: torch.Tensor) -> torch.Tensor:
        """minus the ELBO summed over the classes (all C at once) and the batch."""
        h = self.enc(x)
        log_q_y = torch.log_softmax(self.q_y(h), -1).T  # (C, B)
        states = torch.eye(self.classes)[:, None, :].expand(-1, x.shape[0], -1)  # (C, B, C)
        bound = self.bound(h, x, states) - math.log(self.classes) - log_q_y
        return -(log_q_y.exp() * bound).sum()

    def labelled(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(surrogate, loss): minus the ELBO of (x, y), and alpha log q(y|x) in the surrogate."""
        h = self.enc(x)
        one_hot = F.one_hot(y, self.classes).to(x.dtype)
        loss = -(self.bound(h, x, one_hot) - math.log(self.classes)).sum()
        log_q_y = (torch.log_softmax(self.q_y(h), -1) * one_hot).sum()
        return loss - ALPHA * log_q_y, loss.detach()


def pairs(hand: HandM2, module: SemiSupervisedVAE):
    return ((hand.enc[0], module.encoder.body[0]), (hand.q_y, module.q_y_logits), (hand.loc, module.q_z.loc),
            (hand.raw_scale, module.q_z.raw_scale), (hand.dec[0], module.decoder.body[0]),
            (hand.dec[2], module.decoder.body[2]))


def copy_weights(hand: HandM2, module: SemiSupervisedVAE) -> None:
    with torch.no_grad():
        for h, v in pairs(hand, module):
            h.weight.copy_(v.weight)
            h.bias.copy_(v.bias)


def hand_surrogate(hand: HandM2, x: torch.Tensor, labelled) -> tuple[torch.Tensor, torch.Tensor]:
    loss = hand.unlabelled(x.flatten(1))
    surrogate, value = loss, loss.detach()
    if labelled is not None:
        more, more_value = hand.labelled(labelled[0].flatten(1), labelled[1])
        surrogate, value = surrogate + more, value + more_value
    return surrogate, value


def library_surrogate(program: Program, objective, x: torch.Tensor, labelled) -> tuple[torch.Tensor, torch.Tensor]:
    surrogate, value = objective.step(program.source, x)
    if labelled is not None:
        more, more_value = LabelledBatch(program, OBJECTIVES.build("elbo"), ALPHA, *labelled)(1.0)
        surrogate, value = surrogate + more, value + more_value
    return surrogate, value


def same_maths(hand: HandM2, program: Program, objective, x, labelled) -> tuple[float, float]:
    """(relative loss difference, largest relative gradient difference) of one step from both."""
    results = []
    for run in (lambda: hand_surrogate(hand, x, labelled), lambda: library_surrogate(program, objective, x, labelled)):
        torch.manual_seed(123)
        surrogate, value = run()
        surrogate.backward()
        results.append(value.item())
    worst = max(((a - b).norm() / b.norm().clamp_min(1e-12)).item()
                for h, v in pairs(hand, program.module)
                for a, b in ((h.weight.grad, v.weight.grad), (h.bias.grad, v.bias.grad)))
    hand.zero_grad(set_to_none=True)
    program.module.zero_grad(set_to_none=True)
    return abs(results[0] - results[1]) / abs(results[1]), worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=400)
    parser.add_argument("--labelled", action="store_true", help="add a labelled batch to each step")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    print(f"M2: {args.classes} classes enumerated, z {args.latent_dim}-D, 784-{args.hidden} MLPs, batch "
          f"{args.batch_size}{' + a labelled batch of as many' if args.labelled else ''}, Adam 1e-3")
    torch.manual_seed(0)
    x = (torch.rand(args.batch_size, 1, 28, 28) < 0.3).float()
    labelled = ((torch.rand(args.batch_size, 1, 28, 28) < 0.3).float(),
                torch.randint(0, args.classes, (args.batch_size,))) if args.labelled else None
    module = SemiSupervisedVAE(num_classes=args.classes, latent_dim=args.latent_dim,
                               network={"name": "mlp", "hidden": [args.hidden]})
    hand = HandM2(args.classes, args.latent_dim, args.hidden)
    copy_weights(hand, module)
    program = Program(module)
    objective = OBJECTIVES.build({"name": "enumerate", "classifier_weight": ALPHA})
    with pyro.validation_enabled(False):
        loss_diff, grad_diff = same_maths(hand, program, objective, x, labelled)

        def library_step(optimizer) -> Callable[[], float]:
            also = (lambda: LabelledBatch(program, OBJECTIVES.build("elbo"), ALPHA, *labelled)(1.0)) if labelled else None
            return lambda: svi_step(program, objective, optimizer, x, also=also)

        contestants = {HAND: optimizer_step(torch.optim.Adam(hand.parameters(), lr=1e-3),
                                            lambda: hand_surrogate(hand, x, labelled)),
                       LIBRARY: library_step(torch.optim.Adam(module.parameters(), lr=1e-3))}
        times = measure(contestants, args.rounds, args.steps, args.warmup)
    ratio = statistics.median(a / b for a, b in zip(times[LIBRARY], times[HAND]))
    print("\n| step | hand-written ms | pyro-vae ms | ratio | target | same maths: loss, gradient (relative) |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| M2, y enumerated{' + labelled batch' if args.labelled else ''} | {statistics.median(times[HAND]) * 1e3:.2f} | "
          f"{statistics.median(times[LIBRARY]) * 1e3:.2f} | {ratio:.3f}x | 1.2x: {'met' if ratio <= 1.2 else 'not met'} | "
          f"{loss_diff:.1e}, {grad_diff:.1e} |")
    print(f"\n{args.rounds} rounds of {args.steps} steps, interleaved; ms: median per step; ratio: median over rounds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
