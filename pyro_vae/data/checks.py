"""The data's boundary checks: what a batch handed in from Python must be before a model scores it.

The lowest part of the data package: priors, likelihoods, guides and programs import it (and
nothing else of ``data``)."""

from __future__ import annotations

import math

import torch

from ..errors import DataError


def check_batch(x, data_shape: tuple[int, ...], where: str = "input", like: torch.nn.Module | None = None) -> None:
    """A batch handed in from Python must be a floating-point tensor shaped (batch, *data_shape), in
    the dtype and on the device of ``like``'s parameters: else refused with the fix named. Reads no
    values (``require_finite`` and the likelihoods' ``check_observed`` do)."""
    shape = tuple(data_shape)
    if not torch.is_tensor(x):
        raise DataError(f"the {where} data is a {type(x).__name__}, not a torch.Tensor: pass torch.as_tensor(x, "
                        f"dtype=torch.float32) shaped (batch, {', '.join(map(str, shape))}).")
    if tuple(x.shape[1:]) != shape:
        wanted = f"(batch, {', '.join(map(str, shape))})"
        if tuple(x.shape) == shape:
            fix = "a single datapoint: add the batch dimension, x.unsqueeze(0)"
        elif x.dim() >= 1 and math.prod(x.shape[1:]) == math.prod(shape):
            fix = f"the same values in another layout: x.reshape(-1, {', '.join(map(str, shape))})"
        else:
            fix = "data of another size than the model was built for (its data_shape)"
        raise DataError(f"the {where} data has shape {tuple(x.shape)}, but the model takes {wanted}: {fix}.")
    if not x.is_floating_point():
        scale = " / 255 (8-bit levels scaled to [0, 1], as pyro-vae's datasets are)" if x.dtype == torch.uint8 else ""
        raise DataError(f"the {where} data is {x.dtype}; the model takes floating-point values: x.float(){scale}.")
    p = next(like.parameters(), None) if like is not None else None
    if p is not None and (x.dtype != p.dtype or x.device != p.device):
        raise DataError(f"the {where} data is {x.dtype} on {x.device}, and the model's parameters are {p.dtype} on "
                        f"{p.device}: x.to({p.device.type!r}, {p.dtype}).")


def require_finite(x: torch.Tensor, where: str = "input") -> None:
    """Refuse NaN or infinite values, counted."""
    if not math.isfinite(x.sum().item()):  # NaN and inf propagate; an overflowing sum only leads to the count
        bad = (~torch.isfinite(x)).sum().item()
        if bad:
            raise DataError(f"the {where} data has {bad} NaN or infinite values; clean the data (or drop those "
                            f"datapoints) first.")
