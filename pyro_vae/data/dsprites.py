"""A dSprites-like dataset rendered procedurally from its factors of variation, for
disentanglement objectives and metrics.

dSprites (Matthey, Higgins, Hassabis and Lerchner 2017; used by Higgins et al. 2017, beta-VAE) is
every combination of five factors, one white sprite on black in a 64 x 64 binary image:

===============  ======  =====================================================================
factor           values  real value of index k (:func:`factor_values`)
===============  ======  =====================================================================
``shape``        3       0 square, 1 ellipse, 2 heart
``scale``        6       0.5 + 0.1 k: linearly spaced in [0.5, 1]
``orientation``  40      2 pi k / 40 radians: linearly spaced in [0, 2 pi), steps of 9 degrees
``position_x``   32      k / 31: linearly spaced in [0, 1], left to right
``position_y``   32      k / 31: linearly spaced in [0, 1], top to bottom
===============  ======  =====================================================================

3 x 6 x 40 x 32 x 32 = 737,280 combinations, numbered as the official file orders them (shape
slowest, position_y fastest; :func:`flat_index`, :func:`factor_index`).

**The rendering rule** (:func:`render`). The canvas is the square [0, 64] x [0, 64] in pixel units,
x to the right and y downwards; pixel (row i, column j) covers [j, j + 1] x [i, i + 1] and its centre
is (j + 0.5, i + 0.5). The sprite's centre is at (8 + 48 position_x, 8 + 48 position_y): positions 0
and 1 put it 8 pixels from the left (top) and right (bottom) edges. Each shape is defined in a unit
frame (u to the right, v upwards, in pixels at scale 1, its centre of area at the origin):

* square: |u| <= 5.2 and |v| <= 5.2 (side 10.4);
* ellipse: (u / 7.2)^2 + (v / 3.6)^2 <= 1 (semi-axes 7.2 along u and 3.6 along v: lying flat);
* heart: a^2 + (b - |a|^(2/3))^2 <= 1, a unit disc sheared upwards by |a|^(2/3) (two lobes over a
  notch 0.51 deep, a pointed tip at the bottom), with a = u / 4.75 and b = v / 4.75 + 0.53488
  (0.53488 = (2 / pi) B(5/6, 3/2): the height of the region's centre of area), so 9.5 pixels wide
  and 11.9 tall at scale 1, lobes up and tip down, of area pi 4.75^2 = 70.9 pixels.

A pixel is white (255) iff its centre, taken into the unit frame, lies inside the shape (<=: on
the boundary counts as inside), else black (0). Into the unit frame: (dx, dv) = (x - cx, cy - y)
from the sprite's centre (v upwards), rotated by -orientation (the sprite turns counterclockwise on
the screen as orientation grows, about its centre of area), divided by scale. The cosine and sine
are rounded to 12 decimals, so that quarter turns are exact (cos pi/2 = 0). Every shape lies within
7.4 pixels of its centre at scale 1 (the square's half-diagonal is 7.35, the heart's tip 7.29), so
the sprite always lies inside the canvas with a margin: rows and columns 0 and 63 are always black.

Symmetries, as in the original: the square looks the same every quarter turn (orientation k and
k + 10 render the same image) and the ellipse every half turn (k and k + 20); the heart has none.
An orientation, for them, is identifiable only modulo these turns.

**What differs from the official file** (``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``):
its images were drawn by the authors' own code, which is not published, so the exact pixels,
sizes and outlines of the sprites differ from ours (ours follow the rule above). Its orientations
are ``linspace(0, 2 pi, 40)`` (steps of 2 pi / 39, the first and last the same rotation); ours are
2 pi k / 40, 40 distinct rotations. Its ``latents_classes`` carry a sixth, constant ``color``
column first, and ``latents_values`` number the shapes 1, 2, 3; ours are the five factors above,
shapes 0, 1, 2. Its images are 0/1; ours are 8-bit 0/255, read by :class:`Levels` as exactly 0/1.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from ..config import DATASETS, require
from ..errors import DataError
from .datasets import Dataset
from .storage import DataSplits, Levels

DSPRITES_FACTORS = ("shape", "scale", "orientation", "position_x", "position_y")
DSPRITES_SIZES = (3, 6, 40, 32, 32)
DSPRITES_SHAPES = ("square", "ellipse", "heart")
DSPRITES_COMBINATIONS = math.prod(DSPRITES_SIZES)  # 737,280
IMAGE_SIDE = 64

SQUARE_HALF_SIDE = 5.2  #: pixels at scale 1
ELLIPSE_SEMI_AXES = (7.2, 3.6)  #: (along u, along v), pixels at scale 1
HEART_UNIT = 4.75  #: pixels per unit of the heart at scale 1
#: the height of the heart's centre of area in its units: the mean of |a|^(2/3) over the unit disc
HEART_CENTROID = 2 / math.pi * math.gamma(5 / 6) * math.gamma(1.5) / math.gamma(7 / 3)  # 0.53488
POSITION_FIRST, POSITION_SPAN = 8.0, 48.0  #: the centre at position t is POSITION_FIRST + POSITION_SPAN t
MEMORY_SHARE = 0.5  #: a load may hold at most this share of the memory available
BYTES_PER_IMAGE = IMAGE_SIDE * IMAGE_SIDE + 8 + 8 * len(DSPRITES_FACTORS)  # uint8 image, int64 label and factors

_WINDOW = 17  # pixels of a window that holds any sprite (radius < 7.5 around a centre in [8, 56])
_CHUNK = 4096  # images rendered at a time (about 10 MB of float64 per array)
_STRIDES = tuple(math.prod(DSPRITES_SIZES[i + 1:]) for i in range(len(DSPRITES_SIZES)))


def _as_int_tensor(x, what: str) -> torch.Tensor:
    if torch.is_tensor(x):
        t = x
    else:
        t = torch.as_tensor(np.asarray(x))
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise DataError(f"{what} must be integers, got {t.dtype} values: pass factor indices (e.g. an int64 "
                        f"tensor), not their real values.")
    return t.long()


def _as_factors(factors, what: str = "factors") -> torch.Tensor:
    """``factors`` as an int64 tensor (N, 5) of valid indices (a single row (5,) is one datapoint)."""
    f = _as_int_tensor(factors, what)
    if f.dim() == 1 and f.shape[0] == len(DSPRITES_SIZES):
        f = f.unsqueeze(0)
    if f.dim() != 2 or f.shape[1] != len(DSPRITES_SIZES):
        raise DataError(f"{what} has shape {tuple(f.shape)}: dSprites needs one row of {len(DSPRITES_SIZES)} factor "
                        f"indices ({', '.join(DSPRITES_FACTORS)}) per image, shape (N, {len(DSPRITES_SIZES)}).")
    sizes = torch.tensor(DSPRITES_SIZES, device=f.device)
    bad = (f < 0) | (f >= sizes)
    if bool(bad.any()):
        row, col = (int(i) for i in torch.nonzero(bad)[0])
        sizes_text = ", ".join(f"{name} {size}" for name, size in zip(DSPRITES_FACTORS, DSPRITES_SIZES))
        raise DataError(f"{what}[{row}] has {DSPRITES_FACTORS[col]} = {int(f[row, col])}, outside "
                        f"0..{DSPRITES_SIZES[col] - 1}: each factor is an index below its size ({sizes_text}).")
    return f


def factor_values(factors) -> dict[str, torch.Tensor]:
    """The real values of factor indices (N, 5): ``shape`` (the index: 0 square, 1 ellipse, 2 heart),
    ``scale`` (0.5 + 0.1 k), ``orientation`` (2 pi k / 40 radians), ``position_x`` and ``position_y``
    (k / 31, in [0, 1]); float64 tensors (N,) but the shape's int64."""
    f = _as_factors(factors)
    d = f.to(torch.float64)
    return {
        "shape": f[:, 0].clone(),
        "scale": 0.5 + 0.5 * d[:, 1] / (DSPRITES_SIZES[1] - 1),
        "orientation": 2 * math.pi * d[:, 2] / DSPRITES_SIZES[2],
        "position_x": d[:, 3] / (DSPRITES_SIZES[3] - 1),
        "position_y": d[:, 4] / (DSPRITES_SIZES[4] - 1),
    }


def flat_index(factors) -> torch.Tensor:
    """The index in [0, 737280) of factor indices (N, 5) (or one row (5,): a 0-d tensor), in the
    official file's order: shape slowest, then scale, orientation, position_x, position_y fastest."""
    one = (factors.dim() if torch.is_tensor(factors) else np.ndim(factors)) == 1
    f = _as_factors(factors)
    flat = (f * torch.tensor(_STRIDES, device=f.device)).sum(1)
    return flat[0] if one else flat


def factor_index(flat) -> torch.Tensor:
    """The factor indices (N, 5) of flat indices (N,) in [0, 737280) (an integer: a row (5,)); the
    inverse of :func:`flat_index`."""
    i = _as_int_tensor(flat, "flat index")
    if i.dim() > 1:
        raise DataError(f"flat indices must be an integer or a 1-D array, got shape {tuple(i.shape)}.")
    if i.numel() and bool(((i < 0) | (i >= DSPRITES_COMBINATIONS)).any()):
        bad = int(i.reshape(-1)[(i.reshape(-1) < 0) | (i.reshape(-1) >= DSPRITES_COMBINATIONS)][0])
        raise DataError(f"flat index {bad} is outside 0..{DSPRITES_COMBINATIONS - 1}: dSprites has "
                        f"{DSPRITES_COMBINATIONS:,} combinations of its factors.")
    columns = [(i // stride) % size for stride, size in zip(_STRIDES, DSPRITES_SIZES)]
    return torch.stack(columns, dim=-1)


def sample_factors(n: int, generator: torch.Generator | None = None, *, fixed: dict | None = None) -> torch.Tensor:
    """``n`` factor rows (n, 5), int64, drawn uniformly over the 737,280 combinations (each factor
    independent and uniform over its values) by ``generator``. ``fixed``: factors held at one index,
    by name or column, e.g. ``{"shape": 2}`` (what the FactorVAE score draws)."""
    require(isinstance(n, int) and n >= 0, f"n must be an integer >= 0, got {n!r}.")
    f = torch.stack([torch.randint(size, (n,), generator=generator) for size in DSPRITES_SIZES], dim=1)
    for key, value in (fixed or {}).items():
        column = DSPRITES_FACTORS.index(key) if key in DSPRITES_FACTORS else key
        if not isinstance(column, int) or not 0 <= column < len(DSPRITES_SIZES):
            raise DataError(f"fixed names the factor {key!r}: use one of {', '.join(DSPRITES_FACTORS)} or a "
                            f"column 0..4.")
        if not isinstance(value, int) or not 0 <= value < DSPRITES_SIZES[column]:
            raise DataError(f"fixed {DSPRITES_FACTORS[column]} = {value!r}: an index 0..{DSPRITES_SIZES[column] - 1} "
                            f"is needed.")
        f[:, column] = value
    return f


def render(factors) -> torch.Tensor:
    """The images of factor indices (N, 5): uint8 (N, 1, 64, 64), 255 where a pixel's centre lies
    inside the sprite, else 0 (the rule in the module's docstring). Computed with NumPy on the CPU
    (vectorized, single-threaded: a fraction of a second for 10,000 images), returned on the factors' device."""
    f = _as_factors(factors)
    rows = f.cpu().numpy()
    out = np.zeros((len(rows), IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    for start in range(0, len(rows), _CHUNK):
        _render_into(rows[start:start + _CHUNK], out[start:start + _CHUNK])
    return torch.from_numpy(out).unsqueeze(1).to(f.device)


def _render_into(f: np.ndarray, canvas: np.ndarray) -> None:
    """Draw the sprites of valid factors (n, 5) into ``canvas`` (n, 64, 64), each computed on a
    17 x 17 window around its centre (no sprite reaches further), in float64."""
    d = f.astype(np.float64)
    scale = 0.5 + 0.5 * d[:, 1] / (DSPRITES_SIZES[1] - 1)  # (as factor_values)
    theta = 2 * math.pi * d[:, 2] / DSPRITES_SIZES[2]
    cx = POSITION_FIRST + POSITION_SPAN * (d[:, 3] / (DSPRITES_SIZES[3] - 1))
    cy = POSITION_FIRST + POSITION_SPAN * (d[:, 4] / (DSPRITES_SIZES[4] - 1))
    step = np.arange(_WINDOW)
    ox = np.clip(np.floor(cx).astype(np.int64) - _WINDOW // 2, 0, IMAGE_SIDE - _WINDOW)
    oy = np.clip(np.floor(cy).astype(np.int64) - _WINDOW // 2, 0, IMAGE_SIDE - _WINDOW)
    cols, rows = ox[:, None] + step, oy[:, None] + step  # (n, W) pixel columns and rows of each window
    dx = (cols + 0.5) - cx[:, None]  # (n, W): from the centre, x to the right
    dv = cy[:, None] - (rows + 0.5)  # upwards
    cos = np.round(np.cos(theta), 12)[:, None, None]  # (quarter turns exact: cos pi/2 = 0)
    sin = np.round(np.sin(theta), 12)[:, None, None]
    inside = np.empty((len(f), _WINDOW, _WINDOW), dtype=bool)
    for shape, unit in enumerate((SQUARE_HALF_SIDE, ELLIPSE_SEMI_AXES[0], HEART_UNIT)):
        these = np.flatnonzero(f[:, 0] == shape)
        if not len(these):
            continue
        # from the centre into the shape's unit frame: divided by scale and the shape's unit, rotated by -theta
        k = 1.0 / (scale[these, None] * unit)
        x, y, c, s = dx[these] * k, dv[these] * k, cos[these], sin[these]
        u = c * x[:, None, :] + s * y[:, :, None]  # (m, rows, cols)
        v = c * y[:, :, None] - s * x[:, None, :]
        if shape == 0:  # |u| <= h and |v| <= h, here in units of h
            inside[these] = np.maximum(np.abs(u), np.abs(v)) <= 1
        elif shape == 1:  # (u / A)^2 + (v / B)^2 <= 1, here in units of A
            ratio = ELLIPSE_SEMI_AXES[0] / ELLIPSE_SEMI_AXES[1]
            inside[these] = u * u + (v * ratio) ** 2 <= 1
        else:  # a^2 + (b - |a|^(2/3))^2 <= 1 with a = u, b = v + the centre of area's height, in units of the heart
            a2 = u * u
            inside[these] = a2 + (v + HEART_CENTROID - np.cbrt(a2)) ** 2 <= 1
    n = np.arange(len(f))[:, None, None]
    canvas[n, rows[:, :, None], cols[:, None, :]] = inside.astype(np.uint8) * 255


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable, else the free pages), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


@DATASETS.register("dsprites")
class DSprites(Dataset):
    """dSprites-like 64x64 binary sprites rendered from 5 factors (shape, scale, orientation, x, y); labels = shape.

    Generated procedurally from the recipe of Matthey et al. (2017), not read from the official file:
    the same factors and 737,280 combinations, rendered by the rule of ``pyro_vae.data.dsprites``.
    The splits carry each image's factor indices (``DataSplits.factors``, named by
    ``factor_names``). ``render``, ``sample_factors``, ``factor_values``, ``flat_index`` and
    ``factor_index`` are offered on the class, so a metric can draw images with a factor fixed.

    Options:
        n_train: number of training images: distinct combinations drawn without replacement by seed
            (n_train + n_test at most 737,280).
        n_test: number of test images: other distinct combinations, drawn after the training ones (none of
            them in the training set unless full).
        seed: seed of the draw; the same seed gives the same images, factors and order.
        full: every one of the 737,280 combinations, in the official order, as the training set (n_train
            unused; the test set is n_test of them drawn by seed, so also in training): 3.06 GB with the
            default n_test (4 KB a 64x64 uint8 image, with its label and factors), about 13 s to render;
            refused where that is above half of the memory available (MemAvailable).
    """

    factor_names = DSPRITES_FACTORS
    factor_sizes = DSPRITES_SIZES
    shapes = DSPRITES_SHAPES
    render = staticmethod(render)
    sample_factors = staticmethod(sample_factors)
    factor_values = staticmethod(factor_values)
    flat_index = staticmethod(flat_index)
    factor_index = staticmethod(factor_index)

    def __init__(self, *, n_train: int = 20000, n_test: int = 2000, seed: int = 0, full: bool = False) -> None:
        require(n_train >= 1 and n_test >= 1, f"dataset 'dsprites': n_train and n_test must be >= 1, got {n_train} "
                                              f"and {n_test}.")
        require(0 <= seed < 2 ** 63, f"dataset 'dsprites': seed must be in 0..2^63-1, got {seed}.")
        if full:
            require(n_test <= DSPRITES_COMBINATIONS, f"dataset 'dsprites': n_test = {n_test:,} is more than the "
                                                     f"{DSPRITES_COMBINATIONS:,} combinations of its factors.")
        else:
            require(n_train + n_test <= DSPRITES_COMBINATIONS,
                    f"dataset 'dsprites': n_train + n_test = {n_train + n_test:,} distinct images are asked for, and "
                    f"its factors have {DSPRITES_COMBINATIONS:,} combinations: lower them, or set full = true for "
                    f"every combination as the training set.")
        self.n_train, self.n_test, self.seed, self.full = n_train, n_test, seed, full

    def nbytes_needed(self) -> int:
        """Bytes the loaded splits hold: a uint8 image, an int64 label and 5 int64 factors per image."""
        n = (DSPRITES_COMBINATIONS if self.full else self.n_train) + self.n_test
        return n * BYTES_PER_IMAGE

    def _check_memory(self) -> None:
        need, available = self.nbytes_needed(), _available_memory()
        if available is None or need <= MEMORY_SHARE * available:
            return
        what = (f"full = true holds all {DSPRITES_COMBINATIONS:,} images" if self.full else
                f"n_train + n_test = {self.n_train + self.n_test:,} images hold")
        raise DataError(
            f"dataset 'dsprites': {what} and their factors in {_gb(need)} (64x64 uint8 each), and "
            f"{_gb(available)} of memory is available: a load may take at most half of it. Draw a subset instead "
            f"(full = false with a smaller n_train, e.g. the default 20000: {_gb(22000 * BYTES_PER_IMAGE)}), or run "
            f"where more memory is free.")

    def load(self) -> DataSplits:
        self._check_memory()
        g = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(DSPRITES_COMBINATIONS, generator=g)
        if self.full:
            train_index, test_index = torch.arange(DSPRITES_COMBINATIONS), order[: self.n_test]
        else:
            train_index, test_index = order[: self.n_train], order[self.n_train: self.n_train + self.n_test]
        train_factors, test_factors = factor_index(train_index), factor_index(test_index)
        how = (f"all {DSPRITES_COMBINATIONS:,} combinations in the official order as train, {self.n_test:,} of them "
               f"drawn by seed {self.seed} as test" if self.full else
               f"{self.n_train:,} train / {self.n_test:,} test distinct combinations drawn without replacement by "
               f"seed {self.seed}")
        return DataSplits(
            "dsprites", Levels(render(train_factors)), train_factors[:, 0].clone(),
            Levels(render(test_factors)), test_factors[:, 0].clone(),
            f"dsprites, generated procedurally from the dSprites recipe (not the official file): {how}, of the "
            f"{DSPRITES_COMBINATIONS:,} = 3 shapes x 6 scales x 40 orientations x 32 x 32 positions; 1x64x64 binary; "
            f"deterministic: the same seed gives the same images",
            factors={"train": train_factors, "test": test_factors}, factor_names=DSPRITES_FACTORS,
        )
