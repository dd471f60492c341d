"""Model programs a user might write, for the tests: none of them is pyro-vae's VAE class (but one
subclass of it), each an nn.Module with model(x) and guide(x) over a "data" plate.

Importable as ``user_programs`` (the tests folder is on sys.path under pytest, and the
subprocess tests put it on PYTHONPATH), so a config can name ``user_programs:TwoLatents``.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae import VAE


class TemperedVAE(VAE):
    """The stock VAE with its likelihood tempered: log p(x|z) counts ``temperature`` times."""

    def __init__(self, *, temperature: float = 0.1, **options):
        super().__init__(**options)
        self.temperature = temperature

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.p_z())
            with poutine.scale(scale=self.temperature):
                pyro.sample("x", self.p_x_given_z(z), obs=x)


class TwoLatents(nn.Module):
    """z1 ~ N(0, I), z2 | z1 ~ N(A z1, I), x | z1, z2 ~ Bernoulli(decoder([z1, z2])) per pixel;
    q(z1|x) q(z2|x, z1), both diagonal Gaussians. Binarizes its data (the data contract)."""

    stochastic_batches = True

    def __init__(self, *, data_shape=(1, 6, 6), dim: int = 2, hidden: int = 16):
        super().__init__()
        self.data_shape, self.dim, self.hidden = tuple(data_shape), dim, hidden
        pixels = math.prod(self.data_shape)
        self.mix = nn.Linear(dim, dim, bias=False)
        self.decoder = nn.Sequential(nn.Linear(2 * dim, hidden), nn.Tanh(), nn.Linear(hidden, pixels),
                                     nn.Unflatten(-1, self.data_shape))
        self.encoder = nn.Sequential(nn.Flatten(-3), nn.Linear(pixels, hidden), nn.Tanh())
        self.q1 = nn.Linear(hidden, 2 * dim)
        self.q2 = nn.Linear(hidden + dim, 2 * dim)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(x.new_zeros(self.dim), 1.0).to_event(1))
            z2 = pyro.sample("z2", dist.Normal(self.mix(z1), 1.0).to_event(1))
            logits = self.decoder(torch.cat([z1, z2], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(len(self.data_shape)), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            h = self.encoder(x)
            loc, raw = self.q1(h).chunk(2, -1)
            z1 = pyro.sample("z1", dist.Normal(loc, F.softplus(raw)).to_event(1))
            loc, raw = self.q2(torch.cat([h.expand(*z1.shape[:-1], h.shape[-1]), z1], -1)).chunk(2, -1)
            pyro.sample("z2", dist.Normal(loc, F.softplus(raw)).to_event(1))

    def prepare_eval_set(self, x):
        return torch.bernoulli(x, generator=torch.Generator(device=x.device).manual_seed(2))

    def prepare_batch(self, x, generator):
        return torch.bernoulli(x, generator=generator)


class LinearGaussian(nn.Module):
    """z ~ N(0, I_L), x = W z + b + N(0, diag psi) over flattened pixels; q(z|x) = N(A x + c, diag s^2).

    Everything is in closed form: p(x) = N(b, W W^T + diag psi) (``marginal``)."""

    def __init__(self, *, data_shape=(1, 3, 3), latent_dim: int = 2):
        super().__init__()
        self.data_shape, self.latent_dim = tuple(data_shape), latent_dim
        d = math.prod(self.data_shape)
        self.w = nn.Parameter(torch.randn(d, latent_dim))
        self.b = nn.Parameter(torch.randn(d) * 0.1)
        self.log_psi = nn.Parameter(torch.full((d,), -1.0))
        self.a = nn.Linear(d, latent_dim)
        self.log_s = nn.Parameter(torch.full((latent_dim,), -1.0))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            mean = (z @ self.w.T + self.b).reshape(*z.shape[:-1], *self.data_shape)
            psi = self.log_psi.exp().reshape(self.data_shape)
            pyro.sample("x", dist.Normal(mean, psi.sqrt()).to_event(len(self.data_shape)), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.a(x.flatten(-3)), self.log_s.exp()).to_event(1))

    def marginal(self) -> torch.distributions.LowRankMultivariateNormal:
        return torch.distributions.LowRankMultivariateNormal(self.b, self.w, self.log_psi.exp())

    @torch.no_grad()
    def guide_near_the_posterior(self, widen: float = 1.3) -> "LinearGaussian":
        """q(z|x) := the exact posterior's mean, N(Sigma W^T Psi^-1 (x - b), .), with its marginal
        scales widened by ``widen`` (p(z|x) = N(mu, Sigma), Sigma = (I + W^T Psi^-1 W)^-1)."""
        w_psi = self.w.T / self.log_psi.exp()
        cov = torch.linalg.inv(torch.eye(self.latent_dim) + w_psi @ self.w)
        gain = cov @ w_psi
        self.a.weight.copy_(gain)
        self.a.bias.copy_(-gain @ self.b)
        self.log_s.copy_((widen * cov.diagonal().sqrt()).log())
        return self


class NoObservedX(TwoLatents):
    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(x.new_zeros(self.dim), 1.0).to_event(1))
            z2 = pyro.sample("z2", dist.Normal(self.mix(z1), 1.0).to_event(1))
            logits = self.decoder(torch.cat([z1, z2], -1))
            pyro.sample("y", dist.Bernoulli(logits=logits).to_event(3), obs=x)


class GuideHasExtraSite(TwoLatents):
    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            h = self.encoder(x)
            loc, raw = self.q1(h).chunk(2, -1)
            z1 = pyro.sample("z1", dist.Normal(loc, F.softplus(raw)).to_event(1))
            pyro.sample("z2", dist.Normal(z1, 1.0).to_event(1))
            pyro.sample("z3", dist.Normal(z1, 1.0).to_event(1))


class ModelHasExtraLatent(TwoLatents):
    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(x.new_zeros(self.dim), 1.0).to_event(1))
            z2 = pyro.sample("z2", dist.Normal(self.mix(z1), 1.0).to_event(1))
            w = pyro.sample("w", dist.Normal(z2, 1.0).to_event(1))
            logits = self.decoder(torch.cat([z1, w], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(3), obs=x)


class NoDataPlate(TwoLatents):
    def model(self, x):
        z1 = pyro.sample("z1", dist.Normal(x.new_zeros(x.shape[0], self.dim), 1.0).to_event(2))
        z2 = pyro.sample("z2", dist.Normal(self.mix(z1), 1.0).to_event(2))
        pyro.sample("x", dist.Bernoulli(logits=self.decoder(torch.cat([z1, z2], -1))).to_event(4), obs=x)


class NotReparameterized(TwoLatents):
    """Its guide draws z2 from a Normal that claims no rsample."""

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            h = self.encoder(x)
            loc, raw = self.q1(h).chunk(2, -1)
            z1 = pyro.sample("z1", dist.Normal(loc, F.softplus(raw)).to_event(1))
            loc, raw = self.q2(torch.cat([h, z1], -1)).chunk(2, -1)
            pyro.sample("z2", _NoRsample(loc, F.softplus(raw)).to_event(1))


class _NoRsample(dist.Normal):
    has_rsample = False


class ParamOutsideTheModule(TwoLatents):
    def model(self, x):
        pyro.param("stray_scale", torch.ones(()))
        super().model(x)


class Unrecorded(TwoLatents):
    """Keeps its ``hidden`` option under another name: a run folder cannot rebuild it."""

    def __init__(self, *, data_shape=(1, 6, 6), width: int = 16):
        super().__init__(data_shape=data_shape, hidden=width)


class Doubled(TwoLatents):
    """Keeps twice its ``hidden`` option under that name: an attribute that is not the option."""

    def __init__(self, *, data_shape=(1, 6, 6), hidden: int = 8):
        super().__init__(data_shape=data_shape, hidden=2 * hidden)


# -- programs of other shapes: what each probe of the library must read off the trace, never assume


class FlatPoisson(nn.Module):
    """A Poisson VAE on pixel counts that flattens its images inside the model: the observed site
    holds ``x.reshape(B, -1)``, not x, and its likelihood is outside the registry."""

    def __init__(self, *, data_shape=(1, 6, 6), latent_dim: int = 2, hidden: int = 16):
        super().__init__()
        self.data_shape, self.latent_dim, self.hidden = tuple(data_shape), latent_dim, hidden
        d = math.prod(self.data_shape)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, d))
        self.encoder = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent_dim))

    def model(self, x):
        batch = x.shape[0]
        with pyro.plate("data", batch):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Poisson(F.softplus(self.decoder(z))).to_event(1), obs=x.reshape(batch, -1))

    def guide(self, x):
        batch = x.shape[0]
        with pyro.plate("data", batch):
            loc, raw = self.encoder(x.reshape(batch, -1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, F.softplus(raw)).to_event(1))

    def prepare_train_set(self, x):
        return (x * 8).round()  # grey values in [0, 1] as counts 0..8

    prepare_eval_set = prepare_train_set


class PixelPlate(nn.Module):
    """A Bernoulli VAE that flattens x and declares its pixels by a second plate, not ``to_event``:
    log p(x|z) per datapoint is the sum over the inner plate."""

    stochastic_batches = True

    def __init__(self, *, data_shape=(1, 6, 6), latent_dim: int = 3, hidden: int = 16):
        super().__init__()
        self.data_shape, self.latent_dim, self.hidden = tuple(data_shape), latent_dim, hidden
        d = math.prod(self.data_shape)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, d))
        self.encoder = nn.Sequential(nn.Flatten(-3), nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent_dim))

    def model(self, x):
        batch, pixels = x.shape[0], math.prod(self.data_shape)
        with pyro.plate("data", batch, dim=-2):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1).expand([batch, 1]))
            logits = self.decoder(z.squeeze(-2))
            with pyro.plate("pixels", pixels, dim=-1):
                pyro.sample("x", dist.Bernoulli(logits=logits), obs=x.reshape(batch, pixels))

    def guide(self, x):
        with pyro.plate("data", x.shape[0], dim=-2):
            loc, raw = self.encoder(x).unsqueeze(-2).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, F.softplus(raw)).to_event(1))

    def prepare_eval_set(self, x):
        return torch.bernoulli(x, generator=torch.Generator(device=x.device).manual_seed(2))

    def prepare_batch(self, x, generator):
        return torch.bernoulli(x, generator=generator)


class MatrixLatent(nn.Module):
    """A latent of event shape (2, 2) (a matrix, not a vector) and a Gaussian on grey pixels."""

    def __init__(self, *, data_shape=(1, 6, 6), hidden: int = 16):
        super().__init__()
        self.data_shape, self.hidden = tuple(data_shape), hidden
        d = math.prod(self.data_shape)
        self.decoder = nn.Sequential(nn.Flatten(-2), nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, d),
                                     nn.Unflatten(-1, self.data_shape))
        self.encoder = nn.Sequential(nn.Flatten(-3), nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, 8),
                                     nn.Unflatten(-1, (2, 2, 2)))
        self.log_scale = nn.Parameter(torch.zeros(()))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2, 2), 1.0).to_event(2))
            pyro.sample("x", dist.Normal(self.decoder(z), self.log_scale.exp()).to_event(3), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            h = self.encoder(x)
            pyro.sample("z", dist.Normal(h[..., 0], F.softplus(h[..., 1])).to_event(2))
