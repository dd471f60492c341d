"""Likelihoods p(x|z): the decoder's output read as a distribution over every pixel.

A likelihood owns four things:

* the decoder head: ``head_shape = (params_per_pixel, C, H, W)``; the decoder emits that many
  numbers per image and ``forward(head)`` turns them into a distribution whose event covers the
  whole image (``event_shape == (C, H, W)``), so ``log_prob(x)`` is log p(x|z) summed over pixels,
  in nats, one number per datapoint;
* the data contract: ``check_data`` refuses data the distribution cannot score (grey pixels under
  a Bernoulli, values outside [0, 1] under a continuous Bernoulli, NaN anywhere) with the fix named;
* input preparation: binarization, done once for evaluation sets (with a fixed seed) and, for
  dynamic binarization, afresh for every training batch;
* what p(x|z) observes: ``check_observed`` refuses, at ``VAE.model``, a batch outside the
  distribution's support (grey pixels under any Bernoulli: the trainer binarizes before the model
  sees them), also with Pyro's validation off, in a few reductions over x when all is well.

Most likelihoods are factorized: pixels independent given z. ``pixelcnn-bernoulli`` is
autoregressive: pixel i's Bernoulli also reads the pixels before it, so log p(x|z) needs x itself
(one pass, exact), drawing takes one pass per pixel, and E[x|z] has no closed form
(``mean_available = False``: pictures show draws).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, ClassVar, Iterator, Literal

import torch
import torch.nn.functional as F
from pyro import distributions as dist
from torch import nn

from .config import LIKELIHOODS, Component, require
from .data.checks import check_batch, require_finite
from .data.storage import row_totals
from .distributions import (COUNT_RATE_FLOOR, AutoregressiveBernoulliImage, BernoulliImage, CategoricalImage,
                            DiscretizedLogisticMixtureImage, LibraryScaled, MultinomialEvent, NegativeBinomial,
                            ShiftedImage, ZeroInflatedNegativeBinomial, inverse_softplus)
from .errors import ConfigError, DataError
from .networks import CausalStack
from .numerics import uniform

# Binarization seeds are constants, not the run's seed, so every run scores the same binary test set.
TRAIN_BINARIZATION_SEED = 1
EVAL_BINARIZATION_SEED = 2


class Likelihood(Component, nn.Module):
    """Base class. Subclasses set ``params_per_pixel`` and implement ``forward(head)``."""

    params_per_pixel: ClassVar[int] = 1
    #: True when log p(x|z) is a log-probability mass (discrete data); False for densities.
    discrete: ClassVar[bool] = False
    #: True when ``prepare_batch`` draws afresh (dynamic binarization, dequantization noise).
    stochastic_batches: bool = False
    #: False when E[x|z] has no closed form (autoregressive likelihoods): pictures show draws instead.
    mean_available: ClassVar[bool] = True

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

    def bodies(self) -> list[nn.Module]:
        """Networks of the likelihood's own that mixed-precision training runs like the encoder and
        decoder (``networks.Body``); none for likelihoods that only read the decoder's head."""
        return []

    @contextmanager
    def observing(self, x: torch.Tensor) -> Iterator[None]:
        """Inside the block, log p(x|z) of this very tensor x, for any number of z, may reuse the work
        that depends on x alone (evaluation scores one x under thousands of z). Default: none to reuse."""
        yield

    # -- data contract -------------------------------------------------------------------------

    def example(self, grey: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Data this likelihood's contract takes, made from grey values in [0, 1]: what the shared
        test suites train every likelihood on, so that a new likelihood is tested by its class alone
        (binary pixels drawn from the grey levels, 8-bit levels rounded from them, counts drawn with
        them as rates, ...). Default: the grey values themselves."""
        return grey

    def check_data(self, x: torch.Tensor, split: str) -> None:
        """Refuse data this likelihood cannot score. Default: any finite real number."""

    def prepare_train_set(self, x: torch.Tensor) -> torch.Tensor:
        """The training set as the model will see it (e.g. statically binarized), done once."""
        return x

    def fit_to_data(self, x: torch.Tensor) -> None:
        """Once, before training, the prepared training set: what the likelihood records from the data
        (the count likelihoods' library size, at which they draw and picture counts). Default: nothing."""

    def prepare_eval_set(self, x: torch.Tensor) -> torch.Tensor:
        """An evaluation set as the model will see it, done once with a fixed seed."""
        return x

    def prepare_batch(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A training batch, drawn afresh each time (e.g. dynamic binarization)."""
        return x

    # -- what p(x|z) observes: the Python boundary ---------------------------------------------

    #: a value every observation may take (placeholders for runs of the model that only need z)
    placeholder: ClassVar[float] = 0.0

    def check_observed(self, x: torch.Tensor, where: str = "input", like: nn.Module | None = None) -> None:
        """Refuse a batch that p(x|z) cannot score as it is (the prepared data, after binarization
        or dequantization): shaped other than (batch, *event_shape), not floating point (or not in
        ``like``'s dtype and device), NaN or infinite, outside the support; with the message the
        CLI gives and the fix named. A few reductions over x when all is well (``observable``)."""
        check_batch(x, self.event_shape, where, like)
        if not self.observable(x):  # the fast filter; the exact checks below say what is wrong
            require_finite(x, where)
            self.refuse_observed(x, where)

    def observable(self, x: torch.Tensor) -> bool:
        """Whether p(x|z) surely scores every value of x: fast (reductions, no elementwise
        comparisons), may answer False for data that is fine (``refuse_observed`` then decides).
        Default: finite real numbers."""
        return math.isfinite(x.sum().item())  # NaN and inf propagate (an overflowing sum goes to the exact count)

    def refuse_observed(self, x: torch.Tensor, where: str) -> None:
        """The exact check of finite x, raising the DataError that says why p(x|z) cannot score it."""


def _in_unit_interval(x: torch.Tensor, open_: bool = False) -> bool:
    low, high = torch.aminmax(x)  # NaN propagates: refused
    return bool(low > 0 and high < 1) if open_ else bool(low >= 0 and high <= 1)


def _require_binary(x: torch.Tensor, split: str, who: str, fixes: str) -> None:
    grey = ((x != 0) & (x != 1)).sum().item()
    if grey:
        raise DataError(f"the {split} data has {grey} pixel values that are not exactly 0 or 1, but the {who} "
                        f"likelihood {fixes}")


def _require_unit_interval(x: torch.Tensor, split: str, who: str, fixes: str) -> None:
    low, high = x.min().item(), x.max().item()
    if low < 0.0 or high > 1.0:
        raise DataError(
            f"the {split} data has values in [{low:g}, {high:g}], but the {who} likelihood needs "
            f"pixel intensities in [0, 1]. {fixes}"
        )


def _binarize(x: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator(device=x.device).manual_seed(seed)
    return torch.bernoulli(x, generator=generator)


class _BinaryImageLikelihood(Likelihood):
    """Shared by the Bernoulli likelihoods: binary pixels, and how grey images become binary.

    Options:
        binarize: "dynamic" draws x ~ Bern(intensity) afresh for every training batch (evaluation sets are binarized once, with a fixed seed); "static" binarizes train and evaluation sets once, with fixed seeds; "none" takes data that is already exactly 0/1.
    """

    discrete = True

    def __init__(self, *, binarize: Literal["dynamic", "static", "none"] = "dynamic") -> None:
        super().__init__()
        self.binarize = binarize
        self.stochastic_batches = binarize == "dynamic"

    def example(self, grey: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.bernoulli(grey, generator=generator) if self.binarize == "none" else grey

    def check_data(self, x: torch.Tensor, split: str) -> None:
        if self.binarize == "none":
            _require_binary(x, split, self.name,
                            "with binarize = \"none\" scores only binary data. Either binarize it: set "
                            "model.likelihood.binarize = \"dynamic\" (a fresh draw each batch) or \"static\" (one "
                            "fixed draw); or keep the grey levels and use a likelihood for [0, 1] intensities: "
                            "model.likelihood = \"continuous-bernoulli\".")
        else:
            _require_unit_interval(
                x, split, self.name,
                "Rescale the data to [0, 1] (binarization treats each value as a probability).",
            )

    def observable(self, x: torch.Tensor) -> bool:
        if not _in_unit_interval(x):  # (NaN is not)
            return False
        flat = x.reshape(-1)
        return torch.dot(flat, 1 - flat).item() == 0  # a sum of x (1 - x) >= 0: zero iff every x is 0 or 1

    def refuse_observed(self, x: torch.Tensor, where: str) -> None:
        if self.binarize == "none":
            self.check_data(x, where)
        _require_binary(x, where, self.name,
                        "scores binary pixels, and p(x|z) observes x as it is given (the trainer binarizes each "
                        "batch before the model sees it). Binarize it the same way: "
                        "vae.likelihood.prepare_batch(x, generator) (a fresh draw) or prepare_eval_set(x) (a fixed "
                        "one); or score grey levels with model.likelihood = \"continuous-bernoulli\".")

    def prepare_train_set(self, x: torch.Tensor) -> torch.Tensor:
        return _binarize(x, TRAIN_BINARIZATION_SEED) if self.binarize == "static" else x

    def prepare_eval_set(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.binarize == "none" else _binarize(x, EVAL_BINARIZATION_SEED)

    def prepare_batch(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.binarize != "dynamic":
            return x
        # x_i = [u_i < intensity_i], u ~ U(0, 1): a Bern(intensity) draw (faster than torch.bernoulli on CPU)
        return uniform(x.shape, x.dtype, x.device, generator).lt_(x)


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(_BinaryImageLikelihood):
    """p(x|z) = prod_i Bern(x_i; sigmoid(f(z)_i)); log p(x|z) = -binary cross-entropy, summed over pixels."""

    def __init__(self, *, binarize: Literal["dynamic", "static", "none"] = "dynamic") -> None:
        super().__init__(binarize=binarize)

    def forward(self, head: torch.Tensor) -> dist.TorchDistribution:
        (logits,) = self.split_head(head)
        return BernoulliImage(logits, len(self.event_shape))

    def mean(self, head: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.split_head(head)[0])


@LIKELIHOODS.register("pixelcnn-bernoulli")
class PixelCNNBernoulliLikelihood(_BinaryImageLikelihood):
    """p(x|z) = prod_i Bern(x_i; sigmoid(l_i(x_<i, z))) in raster order: an autoregressive (PixelCNN-style) Bernoulli over the pixels of a one-channel image, conditioned on z.

    The logit of pixel i joins two halves in a gated 1x1 layer: a causal convolution stack over the
    pixels before i (rows above, and to the left in row i; mask A then mask B, van den Oord et al.
    2016), whose last layer gives 2 * channels pre-activations a_i(x_<i), computed once per image
    and shared by every z drawn for it; and the decoder's ``context`` feature maps at pixel i, one
    set per z: l_i = w . GLU(a_i(x_<i) + V c_i(z)) + w_0. ``log_prob`` is exact and one pass; sampling
    takes H * W passes. E[x|z] has no closed form, so pictures show draws x ~ p(x|z). Binarization
    as for ``bernoulli``.

    Options:
        context: feature maps per pixel that the decoder gives (the head's P).
        channels: width of the causal stack and of the gated layer.
        layers: causal convolutions over the image: the first kernel x kernel (mask A), the rest 3x3 (mask B).
        kernel: size of the first causal convolution (odd); with layers L a pixel's logit sees
            kernel // 2 + L - 1 rows above it.
    """

    mean_available = False

    def __init__(
        self,
        *,
        binarize: Literal["dynamic", "static", "none"] = "dynamic",
        context: int = 4,
        channels: int = 16,
        layers: int = 2,
        kernel: int = 7,
    ) -> None:
        super().__init__(binarize=binarize)
        require(context >= 1, f"context must be >= 1, got {context}.")
        require(channels >= 1, f"channels must be >= 1, got {channels}.")
        require(layers >= 1, f"layers must be >= 1, got {layers}.")
        require(kernel >= 3 and kernel % 2 == 1, f"kernel must be odd and >= 3, got {kernel}.")
        self.context, self.channels, self.layers, self.kernel = context, channels, layers, kernel
        self.params_per_pixel = context

    def setup(self, event_shape: tuple[int, ...]) -> "PixelCNNBernoulliLikelihood":
        require(
            len(event_shape) == 3 and event_shape[0] == 1,
            f"the pixelcnn-bernoulli likelihood orders the pixels of one-channel images (1, H, W); "
            f"got data of shape {tuple(event_shape)}. For colour images and vectors use a factorized likelihood, "
            f"all of which take any shape: bernoulli (binary data), continuous-bernoulli, gaussian, laplace, beta, "
            f"or discretized-logistic and categorical (8-bit data).",
        )
        super().setup(event_shape)
        self.stack = CausalStack(self.channels, self.layers, self.kernel, out_channels=2 * self.channels)
        self.context_in = nn.Linear(self.context, 2 * self.channels, bias=False)
        self.out = nn.Linear(self.channels, 1)
        self._observed: tuple[torch.Tensor, int, torch.Tensor] | None = None
        return self

    def bodies(self) -> list[nn.Module]:
        return [self.stack]

    @contextmanager
    def observing(self, x: torch.Tensor) -> Iterator[None]:
        """Inside the block, the causal stack's features of x are computed once and reused by every
        log_prob(x): only without gradients (a cached tensor would carry no graph), only for this
        very tensor unchanged (not modified in place; writes through ``x.data`` or a NumPy view
        are invisible to torch and so not allowed), and only while the parameters stay as they
        were on entry (nothing in the block may train or swap them). A tensor made under
        ``torch.inference_mode`` keeps no version counter, so it is never cached."""
        if torch.is_grad_enabled() or x.is_inference():
            yield
            return
        outer = self._observed
        self._observed = (x, x._version, self._pixel_part(x))
        try:
            yield
        finally:
            self._observed = outer

    def pixel_part(self, x: torch.Tensor) -> torch.Tensor:
        """a_i(x_<i) for images (*batch, 1, H, W): (*batch, H, W, 2 * channels)."""
        cached = self._observed
        if cached is not None and x is cached[0] and x._version == cached[1] and not torch.is_grad_enabled():
            return cached[2]
        return self._pixel_part(x)

    def _pixel_part(self, x: torch.Tensor) -> torch.Tensor:
        features = self.stack(x.reshape(-1, *x.shape[-3:]))  # its last layer gives the gate pre-activations a_i
        return features.permute(0, 2, 3, 1).reshape(*x.shape[:-3], *features.shape[-2:], -1)

    def context_part(self, head: torch.Tensor) -> torch.Tensor:
        """V c_i(z) for a head (*batch, P, 1, H, W): (*batch, H, W, 2 * channels)."""
        return self.context_in(head.squeeze(-3).movedim(-3, -1))

    def logits(self, pixel_part: torch.Tensor, context_part: torch.Tensor) -> torch.Tensor:
        """l_i from the two halves (broadcast over their batch dimensions): (*batch, H, W)."""
        return self.out(F.glu(pixel_part + context_part, dim=-1)).squeeze(-1)

    def forward(self, head: torch.Tensor) -> dist.TorchDistribution:
        return AutoregressiveBernoulliImage(head, self)

    def mean(self, head: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "the pixelcnn-bernoulli likelihood has no closed-form mean E[x|z] (each pixel depends on "
            "the ones drawn before it); draw images with likelihood(head).sample() instead."
        )


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

    def observable(self, x: torch.Tensor) -> bool:
        return _in_unit_interval(x)

    def refuse_observed(self, x: torch.Tensor, where: str) -> None:
        self.check_data(x, where)


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


# ---------------------------------------------------------------------------------------------
# 8-bit data: discrete likelihoods over the 256 grey levels, and a dequantized density


def _require_8bit(x: torch.Tensor, split: str, who: str) -> None:
    _require_unit_interval(x, split, who, "Rescale 8-bit images by /255.")
    levels = x * 255
    off = (levels - levels.round()).abs()
    if off.max().item() > 1e-4:
        example = x.flatten()[off.flatten().argmax()].item()
        raise DataError(
            f"the {who} likelihood scores 8-bit data (the 256 grey levels k/255), but the {split} data "
            f"has values between levels (e.g. {example:.6f}). Use it on 8-bit image data (mnist5k, "
            f"mnist, fashion-mnist, kmnist; synthetic with quantize = true), or choose a likelihood for "
            f"continuous values (gaussian, laplace, continuous-bernoulli, or beta with dequantize = \"none\")."
        )


def _is_8bit(x: torch.Tensor) -> bool:
    levels = x * 255
    return _in_unit_interval(x) and (levels - levels.round()).abs().amax().item() <= 1e-4


def _as_8bit(grey: torch.Tensor) -> torch.Tensor:
    """Grey values in [0, 1] rounded to the 256 levels k/255 of 8-bit data."""
    return (grey * 255).round() / 255


class _EightBitObserved:
    """Observes the data as loaded: 8-bit levels k/255 (the discrete likelihoods)."""

    def example(self, grey: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return _as_8bit(grey)

    def observable(self, x: torch.Tensor) -> bool:
        return _is_8bit(x)

    def refuse_observed(self, x: torch.Tensor, where: str) -> None:
        self.check_data(x, where)


@LIKELIHOODS.register("discretized-logistic")
class DiscretizedLogisticLikelihood(_EightBitObserved, Likelihood):
    """p(x_i|z) = a K-component logistic mixture discretized to the 256 levels of 8-bit data, edge bins open (PixelCNN++); a true probability mass.

    The decoder gives, per pixel, K mixture logits, K locations and K log-scales (log-scales are
    min_log_scale + softplus(.), bounded below as in PixelCNN++). Needs 8-bit data (levels k/255).

    Options:
        components: K, the number of logistic components per pixel.
        min_log_scale: lower bound of the components' log-scales (in units of the [-1, 1] data range).
    """

    discrete = True

    def __init__(self, *, components: int = 5, min_log_scale: float = -7.0) -> None:
        super().__init__()
        require(components >= 1, f"components must be >= 1, got {components}.")
        self.components = components
        self.min_log_scale = min_log_scale
        self.params_per_pixel = 3 * components

    def forward(self, head: torch.Tensor) -> dist.TorchDistribution:
        return DiscretizedLogisticMixtureImage(head, self.components, len(self.event_shape), self.min_log_scale)

    def check_data(self, x: torch.Tensor, split: str) -> None:
        _require_8bit(x, split, "discretized-logistic")


@LIKELIHOODS.register("categorical")
class CategoricalLikelihood(_EightBitObserved, Likelihood):
    """p(x_i|z) = Cat(x_i; softmax(f(z)_i)) over the 256 levels of 8-bit data: one logit per level per pixel; a true probability mass.

    The decoder's head has 256 outputs per pixel (for an MLP decoder, a 256-times larger last layer).
    Needs 8-bit data (levels k/255).
    """

    discrete = True
    params_per_pixel = 256

    def __init__(self) -> None:
        super().__init__()

    def forward(self, head: torch.Tensor) -> dist.TorchDistribution:
        return CategoricalImage(head, len(self.event_shape))

    def check_data(self, x: torch.Tensor, split: str) -> None:
        _require_8bit(x, split, "categorical")


@LIKELIHOODS.register("beta")
class BetaLikelihood(Likelihood):
    """p(x_i|z) = Beta(x'_i; a(z)_i, b(z)_i) on data moved into the open interval (0, 1); reported in the units of the original data.

    With dequantize = "uniform" (8-bit data): x' = (255 x + u) / 256, u ~ U(0, 1) drawn afresh for
    every training batch and once, with a fixed seed, for evaluation sets; the log-density is
    reported minus D log 256, which makes it (in expectation) a lower bound on the log-probability
    of the 256 levels (Theis et al. 2016), comparable in bits/dim with discrete likelihoods. With
    dequantize = "none" (continuous data in [0, 1]): x' = eps + (1 - 2 eps) x, eps = squeeze, and
    the log-density is reported plus D log(1 - 2 eps): the density of x under the change of
    variables, which integrates to the Beta's mass on [eps, 1 - eps] (at most 1: conservative
    numbers). a, b = softplus(.) + 1e-6.

    Options:
        dequantize: "uniform" for 8-bit data (a bound on the discrete log-likelihood), "none" for continuous data in [0, 1].
        squeeze: eps of the squeeze x' = eps + (1 - 2 eps) x used when dequantize = "none".
    """

    params_per_pixel = 2

    def __init__(self, *, dequantize: Literal["uniform", "none"] = "uniform", squeeze: float = 1e-3) -> None:
        super().__init__()
        require(0 < squeeze < 0.5, f"squeeze must be in (0, 0.5), got {squeeze}.")
        self.dequantize = dequantize
        self.squeeze = squeeze
        self.discrete = dequantize == "uniform"
        self.stochastic_batches = dequantize == "uniform"

    def setup(self, event_shape: tuple[int, ...]) -> "BetaLikelihood":
        super().setup(event_shape)
        pixels = math.prod(event_shape)
        # log dx'/dx per pixel, summed: what turns the density of x' into the reported units
        self.log_jacobian = -pixels * math.log(256) if self.dequantize == "uniform" else pixels * math.log1p(-2 * self.squeeze)
        return self

    def forward(self, head: torch.Tensor) -> dist.TorchDistribution:
        a, b = self.split_head(head)
        base = dist.Beta(F.softplus(a) + 1e-6, F.softplus(b) + 1e-6)
        return ShiftedImage(base, len(self.event_shape), self.log_jacobian)

    def mean(self, head: torch.Tensor) -> torch.Tensor:
        m = self(head).mean
        return (256 * m - 0.5) / 255 if self.dequantize == "uniform" else (m - self.squeeze) / (1 - 2 * self.squeeze)

    def example(self, grey: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return _as_8bit(grey) if self.dequantize == "uniform" else grey

    def check_data(self, x: torch.Tensor, split: str) -> None:
        if self.dequantize == "uniform":
            _require_8bit(x, split, "beta (dequantize = \"uniform\")")
        else:
            _require_unit_interval(x, split, "beta", "Rescale the data to [0, 1].")

    placeholder = 0.5

    def observable(self, x: torch.Tensor) -> bool:
        return _in_unit_interval(x, open_=True)

    def refuse_observed(self, x: torch.Tensor, where: str) -> None:
        low, high = x.min().item(), x.max().item()
        moved = ("dequantized, (255 x + u) / 256 with u ~ U(0, 1)" if self.dequantize == "uniform"
                 else f"squeezed, eps + (1 - 2 eps) x with eps = {self.squeeze}")
        raise DataError(f"the {where} data has values in [{low:g}, {high:g}], but the beta likelihood observes values "
                        f"in the open interval (0, 1): the trainer moves the data there before the model sees it "
                        f"({moved}). Do the same: vae.likelihood.prepare_batch(x, generator) or prepare_eval_set(x).")

    def _dequantized(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        u = uniform(x.shape, x.dtype, x.device, generator)
        return (255 * x + u) / 256

    def prepare_train_set(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.dequantize == "uniform" else self.squeeze + (1 - 2 * self.squeeze) * x

    def prepare_eval_set(self, x: torch.Tensor) -> torch.Tensor:
        if self.dequantize == "uniform":
            return self._dequantized(x, torch.Generator(device=x.device).manual_seed(EVAL_BINARIZATION_SEED))
        return self.squeeze + (1 - 2 * self.squeeze) * x

    def prepare_batch(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self._dequantized(x, generator) if self.dequantize == "uniform" else x


class LikelihoodDataContract:
    """A model program's data contract (``programs.py``), its likelihood's: the checks, the
    preparation of the training and evaluation sets and of each batch; and the bodies mixed
    precision runs in bfloat16. Mixed into a program that keeps ``likelihood``, ``encoder`` and
    ``decoder`` attributes (the GMVAE, the conditional and semi-supervised VAEs)."""

    @property
    def stochastic_batches(self) -> bool:
        return self.likelihood.stochastic_batches

    def check_data(self, x, split):
        self.likelihood.check_data(x, split)

    def prepare_train_set(self, x):
        return self.likelihood.prepare_train_set(x)

    def prepare_eval_set(self, x):
        return self.likelihood.prepare_eval_set(x)

    def prepare_batch(self, x, generator):
        return self.likelihood.prepare_batch(x, generator)

    def fit_to_data(self, x, generator):
        """Once, before training: the likelihood's ``fit_to_data`` (the count likelihoods' library size)."""
        self.likelihood.fit_to_data(x)

    def network_bodies(self) -> list:
        return [self.encoder, self.decoder, *self.likelihood.bodies()]


# ---------------------------------------------------------------------------------------------
# Count data: the counts of a datapoint's features (a cell's genes, a document's words), over an
# event of any shape (vectors (D,), images (C, H, W)): proportions and totals over all of its features

#: What grey level 1 becomes in the examples the shared suites train on: counts x ~ Poisson(20 grey).
COUNT_EXAMPLE_RATE = 20.0
#: Added to every learned inverse dispersion theta = softplus(.) + 1e-6, so that theta > 0 in float32
#: too (softplus underflows to 0 below -104); a theta this small is a count that is 0 with probability
#: (theta / (theta + mu))^theta ~ 1 - 1e-6 log(1 + mu / 1e-6), far from any data's fit.
THETA_FLOOR = 1e-6
RAW_COUNTS = 'give the raw counts, e.g. an .h5ad\'s layers["counts"] with data.layer = "counts"'


def _require_counts(x: torch.Tensor, split: str, who: str) -> None:
    """Refuse anything but whole numbers >= 0 (held in a float tensor), with the fix named."""
    require_finite(x, split)
    low = x.min().item()
    if low < 0:
        raise DataError(f"the {split} data has {int((x < 0).sum())} negative values (the least {low:g}), but the {who} "
                        f"likelihood scores counts, whole numbers >= 0: centred or scaled data is not counts; "
                        f"{RAW_COUNTS}.")
    fractional = torch.frac(x) != 0
    if bool(fractional.any()):
        raise DataError(f"the {split} data has {int(fractional.sum())} values that are not whole numbers (e.g. "
                        f"{x[fractional][0].item():g}): it looks normalized or log-transformed, not raw counts. The "
                        f"{who} likelihood scores counts: {RAW_COUNTS}.")


class _CountLikelihood(Likelihood):
    """Shared by the count likelihoods: data of whole numbers >= 0, and the library size l (a buffer:
    the median row total of the training set, recorded by ``fit_to_data``) at which ``sample`` and
    ``mean`` draw and picture counts (NaN, and refused by both, until it is recorded)."""

    discrete = True
    placeholder = 0.0

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("library_size", torch.tensor(float("nan")))

    def fit_to_data(self, x: torch.Tensor) -> None:
        """library_size = the median of the rows' totals sum_i x_i (the lower median for an even number
        of rows: an observed total, a whole number)."""
        self.library_size.fill_(row_totals(x).median())  # (of rows on disk too, read a chunk at a time)

    def example(self, grey: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.poisson(COUNT_EXAMPLE_RATE * grey, generator=generator)

    def check_data(self, x: torch.Tensor, split: str) -> None:
        _require_counts(x, split, self.name)

    def observable(self, x: torch.Tensor) -> bool:
        # min >= 0 (NaN is not) and no fractional part (frac of inf is NaN, which counts as one)
        return bool(x.amin() >= 0) and not bool(torch.frac(x).any())

    def refuse_observed(self, x: torch.Tensor, where: str) -> None:
        self.check_data(x, where)


class _ScaledCountLikelihood(_CountLikelihood):
    """Shared by the Poisson, NB and ZINB likelihoods: counts x_i ~ family(mu_i, ...) independent
    given z, the rates mu from the head's first channel f(z).

    With library = "observed", mu = l softmax(f(z)) + 1e-8 over all of the datapoint's features, l = sum_i x_i
    the observed total (scVI's default: the decoder gives proportions, the observed library size scales
    them). log p(x|z) is then log p(x | z, l = sum_i x_i): conditional on the total, normalized over x
    for each fixed l but not a mass over x (its nats are not comparable with library = "none"'s, nor
    with the multinomial's). A row of total 0 has mu = 0: log p = 0 exactly. With library = "none",
    mu = softplus(f(z)) + 1e-8, the rates themselves, and log p(x|z) a true log-mass.
    (``distributions.COUNT_RATE_FLOOR``: the 1e-8, and the error it makes.)

    Options:
        library: "observed": mu = l softmax(f(z)), l = sum_i x_i the datapoint's observed total (log p(x | z, l), conditional on the total); "none": mu = softplus(f(z)), the rates themselves (both + 1e-8).
    """

    family: ClassVar[Callable]

    def __init__(self, *, library: Literal["observed", "none"] = "observed") -> None:
        super().__init__()
        self.library = library

    def counts(self, logits: torch.Tensor, *params: torch.Tensor, library: torch.Tensor | None = None
               ) -> dist.TorchDistribution:
        """p(x|z) over the whole datapoint, rates from ``logits`` (the head's first channel). Given a
        ``library`` l per datapoint (a program's latent library size: scVI's other option), mu = l
        softmax(f(z)) + 1e-8, a true mass over x whatever this likelihood's own ``library`` option."""
        k = len(self.event_shape)
        if library is not None:
            proportions = torch.softmax(logits.flatten(-k), -1).reshape(logits.shape)
            mu = library.reshape(*library.shape, *[1] * k) * proportions + COUNT_RATE_FLOOR
            return type(self).family(mu, *params).to_event(k)
        if self.library == "observed":
            return LibraryScaled(type(self).family, logits, params, self.library_size, k)
        return type(self).family(F.softplus(logits) + COUNT_RATE_FLOOR, *params).to_event(k)


@LIKELIHOODS.register("poisson")
class PoissonLikelihood(_ScaledCountLikelihood):
    """p(x|z) = prod_i Poisson(x_i; mu_i), mu = (sum_i x_i) softmax(f(z)) (library "observed", conditional on the total) or softplus(f(z)) (library "none").

    With library = "observed" it is the multinomial plus a term free of z: since a Poisson vector
    given its total n is Multinomial(n, p), log p(x | z, l = n) = log Mult(x; n, p) + log Poisson(n; n).
    """

    family = dist.Poisson

    def __init__(self, *, library: Literal["observed", "none"] = "observed") -> None:
        super().__init__(library=library)

    def forward(self, head: torch.Tensor, group: torch.Tensor | None = None,
                library: torch.Tensor | None = None) -> dist.TorchDistribution:
        (logits,) = self.split_head(head)
        return self.counts(logits, library=library)


class _DispersedCountLikelihood(_ScaledCountLikelihood):
    """Shared by NB and ZINB: the inverse dispersion theta (Var[x] = mu + mu^2 / theta under the NB),
    learned per feature, per (group, feature) or given by the decoder per datapoint and feature.

    Options:
        dispersion: "feature": theta_i = exp(r_i) + 1e-6, one learned log-dispersion r per feature (scVI's; an optimizer step moves theta by a factor, so it can travel from its start to the data's 0.1 or 1,000); "feature-label": one per (group, feature), the group of each datapoint (a label, a batch) passed by the program, likelihood(head, group=y); "datapoint-feature": theta = softplus(g(z)) + 1e-6, a channel of the decoder's head.
        init_dispersion: theta at the start, for "feature" and "feature-label".
        groups: the number of groups (>= 2) of dispersion = "feature-label" (a label's classes, the batches); unset otherwise.
    """

    #: the head's channels before the dispersion's: the rates (and the ZINB's zero-inflation logits)
    channels: ClassVar[int] = 1

    def __init__(self, *, library: Literal["observed", "none"] = "observed",
                 dispersion: Literal["feature", "feature-label", "datapoint-feature"] = "feature",
                 init_dispersion: float = 1.0, groups: int | None = None) -> None:
        super().__init__(library=library)
        require(init_dispersion > THETA_FLOOR, f"init_dispersion must be > {THETA_FLOOR:g}, got {init_dispersion}.")
        if dispersion == "feature-label":
            require(groups is not None and groups >= 2,
                    f"dispersion = \"feature-label\" keeps one theta per (group, feature): set groups to the number of "
                    f"groups (>= 2: a label's classes, the batches), got {groups}.")
        else:
            require(groups is None, f"groups ({groups}) is for dispersion = \"feature-label\"; with dispersion = "
                                    f"\"{dispersion}\" leave it unset.")
        self.dispersion, self.init_dispersion, self.groups = dispersion, init_dispersion, groups
        self.params_per_pixel = self.channels + (dispersion == "datapoint-feature")

    def setup(self, event_shape: tuple[int, ...]) -> "_DispersedCountLikelihood":
        super().setup(event_shape)
        if self.dispersion != "datapoint-feature":
            shape = (self.groups, *event_shape) if self.dispersion == "feature-label" else tuple(event_shape)
            start = torch.tensor(math.log(self.init_dispersion - THETA_FLOOR))
            self.log_dispersion = nn.Parameter(start.expand(shape).clone())
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A checkpoint of before the log-dispersion (theta = softplus(raw) + 1e-6) loads with the same theta:
        log_dispersion = log softplus(raw), exactly (a resumed run's optimizer moments for it are kept as
        they were, the moments of the other parametrization: Adam renews them within a few hundred steps)."""
        old = state_dict.pop(prefix + "raw_dispersion", None)
        if old is not None and prefix + "log_dispersion" not in state_dict:
            state_dict[prefix + "log_dispersion"] = F.softplus(old).clamp_min(torch.finfo(old.dtype).tiny).log()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def theta(self, channels: list[torch.Tensor], group: torch.Tensor | None) -> torch.Tensor:
        """theta from the head's channels (datapoint-feature) or the learned table."""
        if self.dispersion == "datapoint-feature":
            return F.softplus(channels[-1]) + THETA_FLOOR
        if self.dispersion == "feature":
            return self.log_dispersion.exp() + THETA_FLOOR
        if group is None:
            raise ConfigError(f"the {self.name} likelihood with dispersion = \"feature-label\" needs each datapoint's "
                              f"group: it needs a program passing labels, likelihood(head, group=y) with y the integer "
                              f"group of each datapoint (the stock VAE passes none). Use dispersion = \"feature\" or "
                              f"\"datapoint-feature\" with the stock VAE.")
        if group.is_floating_point() or group.is_complex() or group.dtype == torch.bool:
            raise ConfigError(f"group must be an integer tensor of each datapoint's group in 0..{self.groups - 1} "
                              f"(one-hot labels: y.argmax(-1)), got dtype {group.dtype}.")
        low, high = int(group.min()), int(group.max())
        require(0 <= low and high < self.groups, f"group values must be in 0..{self.groups - 1} (groups = "
                                                  f"{self.groups}), got values in {low}..{high}.")
        return self.log_dispersion[group].exp() + THETA_FLOOR

    def mean(self, head: torch.Tensor, group: torch.Tensor | None = None) -> torch.Tensor:
        return self(head, group).mean


@LIKELIHOODS.register("negative-binomial")
class NegativeBinomialLikelihood(_DispersedCountLikelihood):
    """p(x|z) = prod_i NB(x_i; mu_i, theta_i), mean mu, Var = mu + mu^2 / theta; mu = (sum_i x_i) softmax(f(z)) (library "observed", conditional on the total) or softplus(f(z)) (library "none").

    scVI's mean / inverse-dispersion parametrization (``distributions.NegativeBinomial``). The head's
    channels: the rates f(z), then theta's g(z) for dispersion = "datapoint-feature".
    """

    family = NegativeBinomial

    def forward(self, head: torch.Tensor, group: torch.Tensor | None = None,
                library: torch.Tensor | None = None) -> dist.TorchDistribution:
        channels = self.split_head(head)
        return self.counts(channels[0], self.theta(channels, group), library=library)


@LIKELIHOODS.register("zero-inflated-negative-binomial")
class ZeroInflatedNegativeBinomialLikelihood(_DispersedCountLikelihood):
    """p(x_i|z) = pi_i [x_i = 0] + (1 - pi_i) NB(x_i; mu_i, theta_i), pi = sigmoid(h(z)); mu = (sum_i x_i) softmax(f(z)) (library "observed", conditional on the total) or softplus(f(z)) (library "none").

    scVI's ZINB (``distributions.ZeroInflatedNegativeBinomial``). The head's channels: the rates f(z),
    the zero-inflation logits h(z), then theta's g(z) for dispersion = "datapoint-feature".
    """

    family = ZeroInflatedNegativeBinomial
    channels = 2

    def forward(self, head: torch.Tensor, group: torch.Tensor | None = None,
                library: torch.Tensor | None = None) -> dist.TorchDistribution:
        channels = self.split_head(head)
        return self.counts(channels[0], self.theta(channels, group), channels[1], library=library)


@LIKELIHOODS.register("multinomial")
class MultinomialLikelihood(_CountLikelihood):
    """p(x|z) = Mult(x; n = sum_i x_i, softmax(f(z))) over all of the datapoint's features: log p(x | z, n), each row's own total n.

    A mass over the compositions of the row's own total (Pyro's ProdLDA tutorial gives one total to the
    whole batch); a row of total 0 scores exactly 0. Draws and pictures use n = the library size.
    """

    def __init__(self) -> None:
        super().__init__()

    def forward(self, head: torch.Tensor) -> dist.TorchDistribution:
        (logits,) = self.split_head(head)
        return MultinomialEvent(logits, self.library_size, len(self.event_shape))
