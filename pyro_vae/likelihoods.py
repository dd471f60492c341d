"""Likelihoods p(x|z): the decoder's output read as a distribution over every pixel.

A likelihood owns three things:

* the decoder head: ``head_shape = (params_per_pixel, C, H, W)``; the decoder emits that many
  numbers per image and ``forward(head)`` turns them into a distribution whose event covers the
  whole image (``event_shape == (C, H, W)``), so ``log_prob(x)`` is log p(x|z) summed over pixels,
  in nats, one number per datapoint;
* the data contract: ``check_data`` refuses data the distribution cannot score (grey pixels under
  a Bernoulli, values outside [0, 1] under a continuous Bernoulli, NaN anywhere) with the fix named;
* input preparation: binarization, done once for evaluation sets (with a fixed seed) and, for
  dynamic binarization, afresh for every training batch.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pyro import distributions as dist
from torch import nn
from torch.distributions import constraints

from .config import LIKELIHOODS, Component, require
from .errors import DataError
from .priors import inverse_softplus

# Binarization seeds are constants, not the run's seed, so every run scores the same binary test set.
TRAIN_BINARIZATION_SEED = 1
EVAL_BINARIZATION_SEED = 2


class Likelihood(Component, nn.Module):
    """Base class. Subclasses set ``params_per_pixel`` and implement ``forward(head)``."""

    params_per_pixel: ClassVar[int] = 1
    #: True when log p(x|z) is a log-probability mass (discrete data); False for densities.
    discrete: ClassVar[bool] = False

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.event_shape: tuple[int, ...] = ()

    def setup(self, event_shape: tuple[int, ...]) -> "Likelihood":
        self.event_shape = tuple(event_shape)
        return self

    @property
    def head_shape(self) -> tuple[int, ...]:
        """What the decoder must output per datapoint: ``(params_per_pixel, *event_shape)``."""
        return (self.params_per_pixel, *self.event_shape)

    def forward(self, head: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def split_head(self, head: torch.Tensor) -> list[torch.Tensor]:
        """The head (*batch, P, *event_shape) as P tensors shaped (*batch, *event_shape).

        (A squeeze for P = 1, whose backward is a view; indexing would zero-fill a copy.)"""
        dim = -1 - len(self.event_shape)
        return [head.squeeze(dim)] if self.params_per_pixel == 1 else list(head.unbind(dim))

    def mean(self, head: torch.Tensor) -> torch.Tensor:
        """E[x|z], shaped like the data (used for pictures)."""
        return self(head).mean

    # -- data contract -------------------------------------------------------------------------

    def check_data(self, x: torch.Tensor, split: str) -> None:
        """Refuse data this likelihood cannot score. Default: any finite real number."""

    def prepare_train_set(self, x: torch.Tensor) -> torch.Tensor:
        """The training set as the model will see it (e.g. statically binarized), done once."""
        return x

    def prepare_eval_set(self, x: torch.Tensor) -> torch.Tensor:
        """An evaluation set as the model will see it, done once with a fixed seed."""
        return x

    def prepare_batch(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A training batch, drawn afresh each time (e.g. dynamic binarization)."""
        return x


def _require_unit_interval(x: torch.Tensor, split: str, who: str, fixes: str) -> None:
    low, high = x.min().item(), x.max().item()
    if low < 0.0 or high > 1.0:
        raise DataError(
            f"the {split} data has values in [{low:g}, {high:g}], but the {who} likelihood needs "
            f"pixel intensities in [0, 1]. {fixes}"
        )


class BernoulliImage(dist.TorchDistribution):
    """Independent Bernoulli pixels over the rightmost ``event_dim`` dimensions, from logits.

    The same distribution as ``Bernoulli(logits=logits).to_event(event_dim)``, in one object:
    log_prob = -(binary cross-entropy summed over the event), negated after the sum. (Fewer objects
    and full-image passes per step than the composed form; ``tests/test_likelihoods.py`` checks
    that both agree.)
    """

    arg_constraints = {"logits": constraints.real}
    has_rsample = False

    def __init__(self, logits: torch.Tensor, event_dim: int, validate_args: bool | None = None) -> None:
        self.logits = logits
        cut = logits.dim() - event_dim
        super().__init__(logits.shape[:cut], logits.shape[cut:], validate_args=validate_args)

    @constraints.dependent_property
    def support(self):
        return constraints.independent(constraints.boolean, len(self.event_shape))

    def expand(self, batch_shape, _instance=None) -> "BernoulliImage":
        new = self._get_checked_instance(BernoulliImage, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        super(BernoulliImage, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    @property
    def variance(self) -> torch.Tensor:
        p = torch.sigmoid(self.logits)
        return p * (1 - p)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return torch.bernoulli(torch.sigmoid(self.logits).expand(self._extended_shape(sample_shape)))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits = self.logits
        if logits.shape != value.shape:
            logits, value = torch.broadcast_tensors(logits, value)
        bce = F.binary_cross_entropy_with_logits(logits, value, reduction="none")
        return -bce.sum(tuple(range(-len(self.event_shape), 0)))

    def log_prob_sum(self, value: torch.Tensor) -> torch.Tensor:
        """``log_prob(value).sum()`` (over the batch too), with the sum fused into the cross-entropy."""
        if self._validate_args:
            self._validate_sample(value)
        logits = self.logits
        if logits.shape != value.shape:
            logits, value = torch.broadcast_tensors(logits, value)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="sum")


def _binarize(x: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator(device=x.device).manual_seed(seed)
    return torch.bernoulli(x, generator=generator)


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(Likelihood):
    """p(x|z) = prod_i Bern(x_i; sigmoid(f(z)_i)); log p(x|z) = -binary cross-entropy, summed over pixels.

    Options:
        binarize: "dynamic" draws x ~ Bern(intensity) afresh for every training batch (evaluation sets are binarized once, with a fixed seed); "static" binarizes train and evaluation sets once, with fixed seeds; "none" takes data that is already exactly 0/1.
    """

    discrete = True

    def __init__(self, *, binarize: Literal["dynamic", "static", "none"] = "dynamic") -> None:
        super().__init__()
        self.binarize = binarize

    def forward(self, head: torch.Tensor) -> dist.TorchDistribution:
        (logits,) = self.split_head(head)
        return BernoulliImage(logits, len(self.event_shape))

    def mean(self, head: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.split_head(head)[0])

    def check_data(self, x: torch.Tensor, split: str) -> None:
        if self.binarize == "none":
            grey = ((x != 0) & (x != 1)).sum().item()
            if grey:
                raise DataError(
                    f"the {split} data has {grey} pixel values that are not exactly 0 or 1, but the "
                    f"bernoulli likelihood with binarize = \"none\" scores only binary data. Either "
                    f"binarize it: set model.likelihood.binarize = \"dynamic\" (a fresh draw each "
                    f"batch) or \"static\" (one fixed draw); or keep the grey levels and use a "
                    f"likelihood for [0, 1] intensities: model.likelihood = \"continuous-bernoulli\"."
                )
        else:
            _require_unit_interval(
                x, split, "bernoulli",
                "Rescale the data to [0, 1] (binarization treats each value as a probability).",
            )

    def prepare_train_set(self, x: torch.Tensor) -> torch.Tensor:
        return _binarize(x, TRAIN_BINARIZATION_SEED) if self.binarize == "static" else x

    def prepare_eval_set(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.binarize == "none" else _binarize(x, EVAL_BINARIZATION_SEED)

    def prepare_batch(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.binarize != "dynamic":
            return x
        # x_i = [u_i < intensity_i], u ~ U(0, 1): a Bern(intensity) draw (faster than torch.bernoulli on CPU)
        return torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype).lt_(x)


@LIKELIHOODS.register("continuous-bernoulli")
class ContinuousBernoulliLikelihood(Likelihood):
    """p(x|z) = prod_i CB(x_i; sigmoid(f(z)_i)), the normalized density on [0, 1] (Loaiza-Ganem & Cunningham 2019)."""

    def __init__(self) -> None:
        super().__init__()

    def forward(self, head: torch.Tensor) -> dist.TorchDistribution:
        (logits,) = self.split_head(head)
        return dist.ContinuousBernoulli(logits=logits).to_event(len(self.event_shape))

    def check_data(self, x: torch.Tensor, split: str) -> None:
        _require_unit_interval(x, split, "continuous-bernoulli", "Rescale the data to [0, 1].")


class _LocationScaleLikelihood(Likelihood):
    """Shared by Gaussian and Laplace: the decoder gives the location; the scale is fixed or learned."""

    family: ClassVar[type[dist.TorchDistribution]]

    def __init__(
        self,
        *,
        scale: float = 1.0,
        learn_scale: Literal["none", "global", "per-pixel"] = "none",
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__()
        require(scale > 0, f"scale must be > 0, got {scale}.")
        require(min_scale >= 0, f"min_scale must be >= 0, got {min_scale}.")
        require(
            learn_scale == "none" or scale > min_scale,
            f"scale (the initial learned scale, {scale}) must exceed min_scale ({min_scale}).",
        )
        self.scale = scale
        self.learn_scale = learn_scale
        self.min_scale = min_scale

    def setup(self, event_shape: tuple[int, ...]) -> "_LocationScaleLikelihood":
        super().setup(event_shape)
        if self.learn_scale == "none":
            self.register_buffer("fixed_scale", torch.tensor(self.scale))
        else:
            shape = (1,) * len(event_shape) if self.learn_scale == "global" else event_shape
            start = inverse_softplus(self.scale - self.min_scale)
            self.raw_scale = nn.Parameter(start.expand(shape).clone())
        return self

    def pixel_scale(self) -> torch.Tensor:
        """The scale of every pixel: fixed, or min_scale + softplus(raw) when learned."""
        if self.learn_scale == "none":
            return self.fixed_scale
        return self.min_scale + F.softplus(self.raw_scale)

    def forward(self, head: torch.Tensor) -> dist.TorchDistribution:
        (loc,) = self.split_head(head)
        return self.family(loc, self.pixel_scale().expand(loc.shape)).to_event(len(self.event_shape))

    def mean(self, head: torch.Tensor) -> torch.Tensor:
        return self.split_head(head)[0]


@LIKELIHOODS.register("gaussian")
class GaussianLikelihood(_LocationScaleLikelihood):
    """p(x|z) = prod_i N(x_i; f(z)_i, s^2); scale 1 fixed is the seeds' identity covariance, -log p = squared error / 2 + const.

    Options:
        scale: the fixed scale s, or the starting value of a learned one.
        learn_scale: "none" keeps s fixed; "global" learns one s; "per-pixel" learns one s per pixel.
        min_scale: learned scales are min_scale + softplus(r), so the density stays bounded on pixels that never vary.
    """

    family = dist.Normal


@LIKELIHOODS.register("laplace")
class LaplaceLikelihood(_LocationScaleLikelihood):
    """p(x|z) = prod_i Laplace(x_i; f(z)_i, b); -log p = |x - f(z)| / b + log 2b, summed over pixels.

    Options:
        scale: the fixed scale b, or the starting value of a learned one.
        learn_scale: "none" keeps b fixed; "global" learns one b; "per-pixel" learns one b per pixel.
        min_scale: learned scales are min_scale + softplus(r), so the density stays bounded on pixels that never vary.
    """

    family = dist.Laplace

