"""Encoder and decoder bodies: plain ``nn.Module`` s with no probability in them.

A network component is a factory: ``encoder(data_shape)`` returns a module mapping images
``(*batch, C, H, W)`` to features ``(*batch, out_features)``; ``decoder(latent_dim, head_shape)``
returns a module mapping ``(*batch, latent_dim)`` to the likelihood's head ``(*batch, *head_shape)``.
Leading batch dimensions (datapoints, and particles when objectives vectorize) pass through.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from .config import NETWORKS, Component, require

ACTIVATIONS = {
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky-relu": nn.LeakyReLU,
}


class Network(Component):
    """Base class of the encoder/decoder factories."""

    def encoder(self, data_shape: tuple[int, ...]) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def decoder(self, latent_dim: int, head_shape: tuple[int, ...]) -> nn.Module:  # pragma: no cover
        raise NotImplementedError


def _stack(sizes: list[int], activation: str, final_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if final_activation or i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """x (*batch, C, H, W) -> flatten -> [Linear -> activation] per hidden layer -> features."""

    def __init__(self, data_shape: tuple[int, ...], hidden: list[int], activation: str):
        super().__init__()
        self.data_ndim = len(data_shape)
        sizes = [math.prod(data_shape), *hidden]
        self.body = _stack(sizes, activation, final_activation=True)
        self.out_features = sizes[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(-self.data_ndim))


class MLPDecoder(nn.Module):
    """z (*batch, latent_dim) -> [Linear -> activation] per hidden layer -> Linear -> head."""

    def __init__(self, latent_dim: int, head_shape: tuple[int, ...], hidden: list[int], activation: str):
        super().__init__()
        self.head_shape = tuple(head_shape)
        self.body = _stack([latent_dim, *hidden, math.prod(head_shape)], activation, final_activation=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z).unflatten(-1, self.head_shape)


@NETWORKS.register("mlp")
class MLPNetwork(Network):
    """Fully connected encoder (hidden sizes in order) and decoder (in reverse); hidden = [] is linear.

    Options:
        hidden: hidden layer widths of the encoder; the decoder uses them reversed.
        activation: nonlinearity after each hidden layer.
    """

    def __init__(
        self,
        *,
        hidden: list[int] = (400,),
        activation: Literal["relu", "softplus", "tanh", "elu", "gelu", "leaky-relu"] = "softplus",
    ) -> None:
        require(all(h >= 1 for h in hidden), f"hidden widths must be >= 1, got {hidden}.")
        self.hidden = hidden
        self.activation = activation

    def encoder(self, data_shape: tuple[int, ...]) -> MLPEncoder:
        return MLPEncoder(data_shape, self.hidden, self.activation)

    def decoder(self, latent_dim: int, head_shape: tuple[int, ...]) -> MLPDecoder:
        return MLPDecoder(latent_dim, head_shape, list(reversed(self.hidden)), self.activation)
