"""Encoder and decoder bodies: plain ``nn.Module`` s with no probability in them.

A network component is a factory: ``encoder(data_shape)`` returns a module mapping images
``(*batch, C, H, W)`` to features ``(*batch, out_features)``; ``decoder(latent_dim, head_shape)``
returns a module mapping ``(*batch, latent_dim)`` to the likelihood's head ``(*batch, *head_shape)``.
Leading batch dimensions (datapoints, and particles when objectives vectorize) pass through.
Bodies derive from ``Body``, which lets training run them in mixed precision (``train.precision``).
"""

from __future__ import annotations

import contextvars
import math
from contextlib import contextmanager
from typing import Iterator, Literal

import torch
from torch import nn

from .config import NETWORKS, Component, require
from .errors import DataError

ACTIVATIONS = {
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky-relu": nn.LeakyReLU,
}
# The networks' activation option: a name in ACTIVATIONS, or "gated" (``_activated``).
Activation = Literal["relu", "softplus", "tanh", "elu", "gelu", "leaky-relu", "gated"]


class Network(Component):
    """Base class of the encoder/decoder factories."""

    def encoder(self, data_shape: tuple[int, ...]) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def decoder(self, latent_dim: int, head_shape: tuple[int, ...]) -> nn.Module:  # pragma: no cover
        raise NotImplementedError


class Body(nn.Module):
    """Base class of encoder and decoder bodies; a subclass implements ``compute(x)``.

    Inside :func:`mixed_precision` (a training step's context, not an attribute of the module),
    ``compute`` runs under ``torch.autocast`` in that dtype: matrix products and convolutions read
    their inputs and weights in the lower precision, accumulate in float32 and round their outputs
    to it (bfloat16: about 3 significant digits), while the parameters, their gradients and
    everything outside the body stay float32. The body's output is returned in the input's dtype,
    so every density, KL and bound downstream is computed in float32.
    """

    @property
    def compute_dtype(self) -> torch.dtype | None:
        """The dtype this body computes in now (None: its parameters' own, outside mixed_precision)."""
        active = _PRECISION.get()
        return active[1] if active is not None and id(self) in active[0] else None

    def compute(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype
        if dtype is None:
            return self.compute(x)
        with torch.autocast(x.device.type, dtype=dtype):
            out = self.compute(x)
        return out.to(x.dtype)


#: (the ids of the bodies that compute in lower precision, that dtype) inside ``mixed_precision``
_PRECISION: contextvars.ContextVar[tuple[frozenset[int], torch.dtype] | None] = \
    contextvars.ContextVar("mixed_precision", default=None)


@contextmanager
def mixed_precision(bodies: list[nn.Module], dtype: torch.dtype | None) -> Iterator[None]:
    """Inside the block, the given bodies compute in ``dtype`` (see ``Body``); None changes nothing.

    Only ``Body`` subclasses know how; any other module is refused, since running it in float32
    while the user asked for lower precision would be a silent no-op."""
    if dtype is None:
        yield
        return
    for body in bodies:
        require(
            isinstance(body, Body),
            f"mixed precision ({dtype}) needs encoder and decoder bodies derived from "
            f"pyro_vae.networks.Body (which implement compute(x)); {type(body).__name__} is not one. "
            f"Derive it from Body, or train in float32 (train.precision = \"float32\").",
        )
    token = _PRECISION.set((frozenset(id(body) for body in bodies), dtype))
    try:
        yield
    finally:
        _PRECISION.reset(token)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """The module in evaluation mode inside the block (batch norm by its running averages, which no
    call moves; no dropout), its own mode again after it: evaluation, and every call that runs the
    networks on placeholder or single inputs (a program's probes, decode, prior draws, posterior means).
    Each submodule gets back its own mode (one left in evaluation on purpose, a frozen batch norm, stays so)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _activated(make, width: int, activation: str, dim: int = -1) -> list[nn.Module]:
    """A layer of ``width`` outputs, ``make(n)`` building it with n outputs, and its activation.
    ``"gated"`` makes it a gated layer, h = (W1 x + b1) * sigmoid(W2 x + b2) (Dauphin et al. 2017;
    the layers of Tomczak & Welling's VampPrior models): ``make(2 * width)``, then ``nn.GLU(dim)``
    multiplies the first half of its outputs (along ``dim``: features, or channels) by the sigmoid
    of the second half."""
    if activation == "gated":
        return [make(2 * width), nn.GLU(dim=dim)]
    return [make(width), ACTIVATIONS[activation]()]


class RowBatchNorm(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` over the last dimension of (*batch, features): the leading dimensions
    (datapoints, and particles where an objective or an evaluation vectorizes them) are flattened to
    rows and restored. In training it normalizes by the rows' mean and variance and moves the running
    averages; in evaluation (``eval()``) by the running averages. A training call on a single row
    (a batch of one has no variance) also reads the running averages and leaves them as they are.
    (The library's probes and pictures run the networks in evaluation mode: ``eval_mode``.) The parameters and buffers are
    ``nn.BatchNorm1d``'s own (the same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if self.training and rows.shape[0] == 1:
            out = nn.functional.batch_norm(rows, self.running_mean, self.running_var, self.weight, self.bias,
                                           training=False, eps=self.eps)
        else:
            out = super().forward(rows)
        return out.reshape(x.shape)


#: scVI's batch norm after each hidden linear layer (scvi.nn.FCLayers): momentum 0.01, eps 1e-3
SCVI_BATCH_NORM = {"momentum": 0.01, "eps": 1e-3}


def _stack(sizes: list[int], activation: str, final_activation: bool, batch_norm: bool = False,
           dropout: float = 0.0) -> nn.Sequential:
    """Linear layers of the given widths, each followed by the activation (the last one only if
    ``final_activation``); ``"gated"`` makes the activated ones gated dense layers (``_activated``).
    An activated layer is Linear -> [batch norm] -> activation -> [dropout], as scVI's FCLayers:
    ``batch_norm`` adds a ``RowBatchNorm`` of the linear layer's outputs (``SCVI_BATCH_NORM``'s
    momentum and eps), ``dropout`` > 0 an ``nn.Dropout``; off (the defaults), no module is added, so
    the layers and their state dict keys are as they were."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if final_activation or i < len(sizes) - 2:
            linear, *activated = _activated(lambda n, a=a: nn.Linear(a, n), b, activation)
            layers.append(linear)
            if batch_norm:
                layers.append(RowBatchNorm(linear.out_features, **SCVI_BATCH_NORM))
            layers += activated
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        else:
            layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


class ConditionalGaussian(nn.Module):
    """c -> (loc, scale) of a diagonal Gaussian N(loc(c), diag scale(c)^2) over ``out_features``
    coordinates: hidden layers (``_stack``, each activated), then two linear heads, scale = softplus.
    The conditional layers of the hierarchical prior p(z_1|z_2) and guide q(z_1|x, z_2)."""

    def __init__(self, in_features: int, out_features: int, hidden: list[int], activation: str):
        super().__init__()
        self.body = _stack([in_features, *hidden], activation, final_activation=True)
        width = hidden[-1] if hidden else in_features
        self.loc = nn.Linear(width, out_features)
        self.raw_scale = nn.Linear(width, out_features)

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(c)
        return self.loc(h), nn.functional.softplus(self.raw_scale(h))


# What an encoder reads of x (the networks' ``input`` option): see ``read_input``.
Input = Literal["identity", "log1p", "proportions"]


def read_input(x: torch.Tensor, mode: str, network: str) -> torch.Tensor:
    """What an encoder reads of a batch x (*batch, D), flattened: ``"identity"``: x itself (the same
    tensor, no operation); ``"log1p"``: log(1 + x) (as scVI reads counts: a document or cell of
    large counts does not swamp the first layer); ``"proportions"``: x / sum_i x_i per datapoint (a
    row summing to 0 reads as zeros).

    Both transforms are for non-negative data (counts, intensities): below 0, log1p is -inf or NaN
    and proportions are no longer proportions, so a batch with a negative value is refused with a
    DataError naming the fix; the check is one reduction over the batch (where a GPU holds x, one
    synchronization per batch). ``"identity"`` checks nothing."""
    if mode == "identity":
        return x
    low = x.min() if x.numel() else x.new_zeros(())
    if bool(low < 0):
        raise DataError(
            f"the {network} network's input = \"{mode}\" reads "
            f"{'log(1 + x)' if mode == 'log1p' else 'x / (its row total)'}, which needs x >= 0 (counts, "
            f"intensities); this batch has values down to {low.item():g}. Set model.network.input = \"identity\" "
            f"for data of any sign (or shift the data to be non-negative).")
    if mode == "log1p":
        return torch.log1p(x)
    total = x.sum(-1, keepdim=True)
    return torch.where(total > 0, x / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(x))


class MLPEncoder(Body):
    """x (*batch, C, H, W) -> flatten -> read (``read_input``) -> [Linear -> (batch norm) ->
    activation -> (dropout)] per hidden layer -> features."""

    def __init__(self, data_shape: tuple[int, ...], hidden: list[int], activation: str, input: str = "identity",
                 network: str = "mlp", *, batch_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        self.data_ndim = len(data_shape)
        sizes = [math.prod(data_shape), *hidden]
        self.body = _stack(sizes, activation, final_activation=True, batch_norm=batch_norm, dropout=dropout)
        self.out_features = sizes[-1]
        self.input, self.network = input, network

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(read_input(x.flatten(-self.data_ndim), self.input, self.network))


class MLPDecoder(Body):
    """z (*batch, latent_dim) -> [Linear -> (batch norm) -> activation] per hidden layer -> Linear -> head."""

    def __init__(self, latent_dim: int, head_shape: tuple[int, ...], hidden: list[int], activation: str, *,
                 batch_norm: bool = False):
        super().__init__()
        self.head_shape = tuple(head_shape)
        self.body = _stack([latent_dim, *hidden, math.prod(head_shape)], activation, final_activation=False,
                           batch_norm=batch_norm)

    def compute(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z).unflatten(-1, self.head_shape)


@NETWORKS.register("mlp")
class MLPNetwork(Network):
    """Fully connected encoder (hidden sizes in order) and decoder (in reverse); hidden = [] is linear.

    Options:
        hidden: hidden layer widths of the encoder; the decoder uses them reversed.
        activation: nonlinearity after each hidden layer; ``"gated"`` makes every hidden layer a
            gated dense layer, h = (W1 x + b1) * sigmoid(W2 x + b2) (twice the weights per layer).
        input: what the encoder reads of x: "identity" (x itself), "log1p" (log(1 + x), as scVI reads counts) or "proportions" (x / its row total); the last two refuse data with negative values.
        dropout: dropout probability after each hidden layer of the encoder (scVI: 0.1; the decoder has none, as scVI's), in [0, 1); 0 adds no layer.
        batch_norm: batch-normalize each hidden layer of the encoder and decoder between its linear map and its activation, as scVI does (momentum 0.01, eps 1e-3, affine); over the datapoints and particles of a training batch, by the running averages in evaluation.
    """

    def __init__(
        self,
        *,
        hidden: list[int] = (400,),
        activation: Activation = "softplus",
        input: Input = "identity",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        require(all(h >= 1 for h in hidden), f"hidden widths must be >= 1, got {hidden}.")
        require(0.0 <= dropout < 1.0, f"dropout must be in [0, 1), got {dropout}.")
        self.hidden = hidden
        self.activation = activation
        self.input = input
        self.dropout, self.batch_norm = dropout, batch_norm

    def encoder(self, data_shape: tuple[int, ...]) -> MLPEncoder:
        return MLPEncoder(data_shape, self.hidden, self.activation, self.input, batch_norm=self.batch_norm,
                          dropout=self.dropout)

    def decoder(self, latent_dim: int, head_shape: tuple[int, ...]) -> MLPDecoder:
        return MLPDecoder(latent_dim, head_shape, list(reversed(self.hidden)), self.activation,
                          batch_norm=self.batch_norm)


class ConvEncoder(Body):
    """x (*batch, C, H, W) -> [Conv 4x4 stride 2 -> activation] per channel count -> flatten ->
    Linear -> activation -> features. H and W must be divisible by 2^(number of conv layers)."""

    def __init__(self, data_shape: tuple[int, ...], channels: list[int], hidden: int, activation: str):
        super().__init__()
        c, h, w = data_shape
        layers: list[nn.Module] = []
        for out in channels:
            layers += _activated(lambda n, c=c: nn.Conv2d(c, n, 4, stride=2, padding=1), out, activation, dim=1)
            c, h, w = out, h // 2, w // 2
        self.convs = nn.Sequential(*layers)
        self.dense = nn.Sequential(*_activated(lambda n: nn.Linear(c * h * w, n), hidden, activation))
        self.out_features = hidden

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-3]
        features = self.convs(x.reshape(-1, *x.shape[-3:])).flatten(1)
        return self.dense(features).reshape(*batch, -1)


# For each output phase r (row or column parity) of a 4x4 stride-2 padding-1 transposed convolution,
# the kernel tap k that reaches it from input offset u - 1 (u = 0, 1, 2); 4 marks "no tap" (zero).
_SUBPIXEL_TAPS = torch.tensor([[3, 1, 4], [4, 2, 0]])


class UpConv2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d(in, out, 4, stride=2, padding=1)``: the same parameters, state dict and
    function, computed on the CPU the faster of two equal ways.

    PyTorch's CPU transposed convolution is slow on contiguous (NCHW) inputs. With few output
    channels (at most ``SUBPIXEL_MAX_CHANNELS``, as a decoder's last layer for 1- or 3-channel
    images) this layer runs the sub-pixel convolution it equals: a 3x3 convolution to 4 * out
    channels, one per output phase (the 4x4 kernel's taps rearranged, the rest zero), then
    ``pixel_shuffle(2)``. With more, it runs the transposed convolution on a channels-last input.
    Other devices, and inputs that are not (N, C, H, W), use the stock call. Speed-ups on a 2-core
    CPU: ``benchmarks/conv_decoder.py``.
    """

    SUBPIXEL_MAX_CHANNELS = 3

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 4, stride=2, padding=1)

    def subpixel_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The 3x3 convolution (4 * out, in, 3, 3) and bias (4 * out) that pixel_shuffle(2) turns into this layer."""
        taps = _SUBPIXEL_TAPS.to(self.weight.device)
        padded = nn.functional.pad(self.weight, (0, 1, 0, 1))  # (in, out, 5, 5): index 4 is a zero tap
        w = padded[:, :, taps[:, None, :, None], taps[None, :, None, :]]  # (in, out, ry, rx, u, v)
        weight = w.permute(1, 2, 3, 0, 4, 5).reshape(4 * self.out_channels, self.in_channels, 3, 3)
        return weight, self.bias.repeat_interleave(4)

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if x.device.type != "cpu" or output_size is not None or x.dim() != 4:
            return super().forward(x, output_size)
        if self.out_channels <= self.SUBPIXEL_MAX_CHANNELS:
            weight, bias = self.subpixel_weight()
            return nn.functional.pixel_shuffle(nn.functional.conv2d(x, weight, bias, padding=1), 2)
        return super().forward(x.contiguous(memory_format=torch.channels_last))


class ConvDecoder(Body):
    """z (*batch, L) -> Linear -> activation -> Linear -> activation -> reshape (C_last, H/2^n, W/2^n)
    -> [ConvTranspose 4x4 stride 2 -> activation] per channel count, reversed -> ConvTranspose to
    P * C channels -> head (*batch, P, C, H, W)."""

    def __init__(self, latent_dim: int, head_shape: tuple[int, ...], channels: list[int], hidden: int, activation: str):
        super().__init__()
        p, c, h, w = head_shape
        self.head_shape = tuple(head_shape)
        scale = 2 ** len(channels)
        self.start = (channels[-1], h // scale, w // scale)
        self.dense = nn.Sequential(
            *_activated(lambda n: nn.Linear(latent_dim, n), hidden, activation),
            *_activated(lambda n: nn.Linear(hidden, n), math.prod(self.start), activation),
        )
        layers: list[nn.Module] = []
        widths = list(reversed(channels))
        for a, b in zip(widths[:-1], widths[1:]):
            layers += _activated(lambda n, a=a: UpConv2d(a, n), b, activation, dim=1)
        layers.append(UpConv2d(widths[-1], p * c))
        self.deconvs = nn.Sequential(*layers)

    def compute(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        maps = self.dense(z.reshape(-1, z.shape[-1])).reshape(-1, *self.start)
        return self.deconvs(maps).reshape(*batch, *self.head_shape)


@NETWORKS.register("conv")
class ConvNetwork(Network):
    """Convolutional encoder (4x4 stride-2 convolutions, then a dense layer) and its mirror decoder (transposed convolutions), for images like 28x28 or 32x32.

    Each convolution halves the height and width, so they must be divisible by 2^len(channels)
    (28 and 32 are, for two layers). The decoder's last layer has P * C channels, P the number of
    parameters the likelihood needs per pixel (1 for a Bernoulli, 3K for a K-component discretized
    logistic, 256 for a categorical).

    Options:
        channels: output channels of the encoder's convolutions, in order (the decoder mirrors them).
        hidden: width of the dense layer between the convolutions and the latent.
        activation: nonlinearity after each layer; ``"gated"`` makes every layer but the decoder's
            last a gated one, h = (W1 x + b1) * sigmoid(W2 x + b2), the convolutions gated per
            channel (twice the weights and outputs per layer).
    """

    def __init__(
        self,
        *,
        channels: list[int] = (32, 64),
        hidden: int = 256,
        activation: Activation = "elu",
    ) -> None:
        require(len(channels) >= 1 and all(c >= 1 for c in channels), f"channels must be positive, got {channels}.")
        require(hidden >= 1, f"hidden must be >= 1, got {hidden}.")
        self.channels, self.hidden, self.activation = channels, hidden, activation

    def _check(self, data_shape: tuple[int, ...]) -> None:
        scale = 2 ** len(self.channels)
        require(
            len(data_shape) == 3 and data_shape[1] % scale == 0 and data_shape[2] % scale == 0,
            f"the conv network needs images (C, H, W) with H and W divisible by {scale} "
            f"(2 per convolution, {len(self.channels)} convolutions); got {tuple(data_shape)}.",
        )

    def encoder(self, data_shape: tuple[int, ...]) -> ConvEncoder:
        self._check(data_shape)
        return ConvEncoder(tuple(data_shape), self.channels, self.hidden, self.activation)

    def decoder(self, latent_dim: int, head_shape: tuple[int, ...]) -> ConvDecoder:
        self._check(head_shape[1:])
        return ConvDecoder(latent_dim, tuple(head_shape), self.channels, self.hidden, self.activation)


# ---------------------------------------------------------------------------------------------
# Masked convolutions: the pixel-by-pixel half of an autoregressive likelihood (likelihoods.py)


class CausalConv2d(nn.Conv2d):
    """A convolution whose output at pixel (i, j) reads only the pixels before it in raster order
    (rows above, and the same row to the left): mask "A", for the first layer over the data; or
    those and (i, j) itself: mask "B", for layers over features that already exclude it.

    The kernel keeps only its top half and centre row (``kernel // 2 + 1`` rows, padded above and
    not below), so the rows below are never computed rather than multiplied by zero; the centre
    row's taps right of the centre (and, for "A", the centre) are masked.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, mask: Literal["A", "B"]) -> None:
        require(kernel % 2 == 1 and kernel >= 1, f"a causal convolution needs an odd kernel size, got {kernel}.")
        half = kernel // 2
        super().__init__(in_channels, out_channels, (half + 1, kernel))
        keep = torch.ones(half + 1, kernel)
        keep[half, half + (mask == "B"):] = 0
        self.register_buffer("keep", keep, persistent=False)
        self.half, self.mask_type = half, mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = nn.functional.pad(x, (self.half, self.half, self.half, 0))
        return nn.functional.conv2d(padded, self.weight * self.keep, self.bias)


class CausalStack(Body):
    """Features of the pixels before each pixel: a mask-A ``kernel`` x ``kernel`` convolution over
    the image, then ``layers - 1`` mask-B 3x3 ones, with an ELU between layers (none after the last,
    whose ``out_channels`` outputs feed a gate). (N, 1, H, W) -> (N, out_channels, H, W).

    ``rows_seen`` is how many rows above a pixel can reach its feature (so ``sample`` may run the
    stack on that band of rows only)."""

    def __init__(self, channels: int, layers: int, kernel: int, out_channels: int) -> None:
        super().__init__()
        widths = [1] + [channels] * (layers - 1) + [out_channels]
        convs: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            convs.append(CausalConv2d(a, b, kernel, "A") if i == 0 else CausalConv2d(a, b, 3, "B"))
            if i < layers - 1:
                convs.append(nn.ELU())
        self.convs = nn.Sequential(*convs)
        self.rows_seen = kernel // 2 + (layers - 1)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


# ---------------------------------------------------------------------------------------------
# Topic models: ProdLDA's product of experts (Srivastava & Sutton 2017)


class TopicEncoder(Body):
    """x (*batch, *data_shape) -> flatten -> read (``read_input``) -> [Linear -> softplus] per hidden
    layer -> dropout -> features (ProdLDA's inference network, less the guide's head)."""

    def __init__(self, data_shape: tuple[int, ...], hidden: list[int], dropout: float, input: str) -> None:
        super().__init__()
        self.data_ndim = len(data_shape)
        sizes = [math.prod(data_shape), *hidden]
        self.body = _stack(sizes, "softplus", final_activation=True)
        self.drop = nn.Dropout(dropout)
        self.out_features = sizes[-1]
        self.input = input

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.body(read_input(x.flatten(-self.data_ndim), self.input, "topic")))


class TopicDecoder(Body):
    """z (*batch, K) -> theta (softmax(z), or z itself on the simplex) -> dropout -> W theta (no bias)
    -> batch norm without affine parameters (optional) -> the likelihood's head (*batch, *head_shape).

    W (head size x K) holds one column per topic: its word weights (``topic_words``). Under a
    multinomial likelihood, which softmaxes the head over the vocabulary, p(x|theta) =
    Mult(softmax(BN(W theta))): the product of experts, each topic's softmax(W_k) raised to the power
    theta_k and renormalized (Srivastava & Sutton 2017, eq. 5). The batch norm normalizes each head
    entry over the datapoints (and particles) of a training batch, and by its running averages in
    evaluation (``eval()``) and for a batch of one row (``normalized``)."""

    def __init__(self, latent_dim: int, head_shape: tuple[int, ...], latent: str, dropout: float,
                 batch_norm: bool) -> None:
        super().__init__()
        self.head_shape = tuple(head_shape)
        self.latent = latent
        size = math.prod(head_shape)
        self.drop = nn.Dropout(dropout)
        self.topics = nn.Linear(latent_dim, size, bias=False)
        self.norm = RowBatchNorm(size, affine=False) if batch_norm else None

    def proportions(self, z: torch.Tensor) -> torch.Tensor:
        """theta, the topic proportions the decoder reads: softmax(z) for a real z (``latent =
        "softmax"``), z itself on the simplex."""
        return torch.softmax(z, -1) if self.latent == "softmax" else z

    def compute(self, z: torch.Tensor) -> torch.Tensor:
        logits = self.topics(self.drop(self.proportions(z)))
        if self.norm is not None:
            logits = self.norm(logits)
        return logits.unflatten(-1, self.head_shape)

    def normalized(self, rows: torch.Tensor) -> torch.Tensor:
        """The batch norm of (rows, head size) (``RowBatchNorm``): over the rows in training, by the
        running averages in evaluation and for a single row (such a call leaves them as they are)."""
        return self.norm(rows)

    def topic_words(self) -> torch.Tensor:
        """(K, V): row k is W's column k, topic k's weight on each of the V head entries (V = the
        vocabulary for a likelihood of one parameter per word, the multinomial), detached."""
        return self.topics.weight.detach().t()


@NETWORKS.register("topic")
class TopicNetwork(Network):
    """ProdLDA's networks: an MLP encoder (softplus, dropout) and the product-of-experts decoder, logits = BN(W softmax(z)) (Srivastava & Sutton 2017).

    Encoder: x read as ``input`` says, then linear layers of the ``hidden`` widths, each followed by
    a softplus, then dropout on the features. The guide's head reads them (the recipe also batch-
    normalizes the guide's mean and log-variance; the diagonal-gaussian guide's head is plain linear).
    Decoder (``TopicDecoder``): theta = softmax(z) for a real z (the logistic-normal prior), or z
    itself for a z on the simplex (the dirichlet prior and guide), dropout on theta, then W theta with
    no bias, batch-normalized without affine parameters: the likelihood's head (a multinomial
    likelihood softmaxes it over the vocabulary). ``vae.decoder.topic_words()`` gives W's columns,
    each topic's word weights. The prior must be over the latent space this decoder reads
    (``latent_space``): the VAE refuses another.

    Options:
        hidden: hidden layer widths of the encoder (ProdLDA: [100, 100]).
        dropout: dropout probability on the encoder's features and on theta (ProdLDA: 0.2).
        batch_norm: batch-normalize the decoder's output (without affine parameters), as the ProdLDA recipe does.
        latent: "softmax": z is real (log topic weights) and theta = softmax(z); "simplex": z is theta, a point of the simplex (a Dirichlet latent), read as is.
        input: what the encoder reads of x: "identity" (the counts), "log1p" (log(1 + x), as scVI does) or "proportions" (x / its row total); the last two refuse data with negative values.
    """

    def __init__(self, *, hidden: list[int] = (100, 100), dropout: float = 0.2, batch_norm: bool = True,
                 latent: Literal["softmax", "simplex"] = "softmax", input: Input = "identity") -> None:
        require(all(h >= 1 for h in hidden), f"hidden widths must be >= 1, got {hidden}.")
        require(0.0 <= dropout < 1.0, f"dropout must be in [0, 1), got {dropout}.")
        self.hidden, self.dropout, self.batch_norm, self.latent, self.input = hidden, dropout, batch_norm, latent, input

    def latent_space(self) -> str:
        """What the decoder reads z as, in words (the prior checks it is its own)."""
        return "real vectors" if self.latent == "softmax" else "the simplex"

    def latent_space_fix(self, space: str) -> str:
        """How to make the decoder read a z of ``space`` (the prior's), for the VAE's refusal."""
        if space == "the simplex":
            return ("set model.network.latent = \"simplex\" (the decoder reads theta as it is), or use a prior over "
                    "real vectors (\"logistic-normal\": theta = softmax(z)).")
        return ("set model.network.latent = \"softmax\" (the decoder reads theta = softmax(z)), or use a prior and "
                "guide over the simplex (model.prior = \"dirichlet\", model.guide = \"dirichlet\").")

    def encoder(self, data_shape: tuple[int, ...]) -> TopicEncoder:
        return TopicEncoder(tuple(data_shape), self.hidden, self.dropout, self.input)

    def decoder(self, latent_dim: int, head_shape: tuple[int, ...]) -> TopicDecoder:
        return TopicDecoder(latent_dim, tuple(head_shape), self.latent, self.dropout, self.batch_norm)
