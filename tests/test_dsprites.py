"""The dSprites-like dataset: its rendering rule checked against pixels worked out by hand, its
symmetries, scale and position, the official order of the flat index, and the seeded load."""

import math

import numpy as np
import pytest
import torch

import pyro_vae.data.dsprites as dsprites
from pyro_vae.config import DATASETS
from pyro_vae.data.dsprites import (DSPRITES_COMBINATIONS, DSPRITES_FACTORS, DSPRITES_SIZES, DSprites, factor_index,
                                    factor_values, flat_index, render, sample_factors)
from pyro_vae.data.storage import Levels
from pyro_vae.errors import ConfigError, DataError

SQUARE, ELLIPSE, HEART = 0, 1, 2


def image(shape, scale, orientation, x, y) -> np.ndarray:
    """One sprite as a (64, 64) array of 0/255."""
    return render(torch.tensor([[shape, scale, orientation, x, y]]))[0, 0].numpy()


def white(img) -> np.ndarray:
    return np.asarray(img) > 0


def test_the_factors_and_their_values():
    assert DSPRITES_FACTORS == ("shape", "scale", "orientation", "position_x", "position_y")
    assert DSPRITES_SIZES == (3, 6, 40, 32, 32) and DSPRITES_COMBINATIONS == 737_280
    every = torch.tensor([[s % 3, s % 6, s % 40, s % 32, (s * 7) % 32] for s in range(240)])
    values = factor_values(every)
    assert torch.equal(values["shape"], every[:, 0])
    assert torch.allclose(values["scale"], 0.5 + 0.1 * every[:, 1].double())
    assert torch.allclose(values["orientation"], 2 * math.pi * every[:, 2].double() / 40)
    assert torch.allclose(values["position_x"], every[:, 3].double() / 31)
    assert torch.allclose(values["position_y"], every[:, 4].double() / 31)
    top = factor_values(torch.tensor([[2, 5, 39, 31, 31]]))
    assert top["scale"].item() == 1.0 and top["position_x"].item() == 1.0 and top["orientation"].item() < 2 * math.pi


# ---------------------------------------------------------------------------------------------
# the rule, by hand: the centre at (8 + 48 x, 8 + 48 y); pixel j's centre at j + 0.5


def test_an_unrotated_square_has_the_pixels_worked_out_by_hand():
    # scale 1 (half-side 5.2), centre (8, 8): |j + 0.5 - 8| <= 5.2 -> j + 0.5 in [2.8, 13.2] -> j = 3..12
    img = image(SQUARE, 5, 0, 0, 0)
    expected = np.zeros((64, 64), bool)
    expected[3:13, 3:13] = True
    assert np.array_equal(white(img), expected) and white(img).sum() == 100
    # scale 0.5 (half-side 2.6): j + 0.5 in [5.4, 10.6] -> j = 5..10, 6 x 6
    expected = np.zeros((64, 64), bool)
    expected[5:11, 5:11] = True
    assert np.array_equal(white(image(SQUARE, 0, 0, 0, 0)), expected)
    # scale 0.7 (half-side 3.64), centre (56, 8): columns j + 0.5 in [52.36, 59.64] -> 52..59; rows 4..11
    img = white(image(SQUARE, 2, 0, 31, 0))
    assert img.sum() == 64 and img[4:12, 52:60].all()
    assert np.array_equal(img[7, 48:64], [0] * 4 + [1] * 8 + [0] * 4)  # a row through the middle
    assert np.array_equal(img[0:16, 55], [0] * 4 + [1] * 8 + [0] * 4)  # a column


def test_an_unrotated_ellipse_has_the_pixels_worked_out_by_hand():
    # semi-axes 7.2 (x) and 3.6 (y) at scale 1, centre (8, 8). Row 7 (dy = 0.5): |dx| <= 7.2 sqrt(1 - (0.5/3.6)^2)
    # = 7.13 -> dx = +-0.5 .. +-6.5 -> columns 1..14. Column 7 (dx = 0.5): |dy| <= 3.6 sqrt(1 - (0.5/7.2)^2) = 3.59
    # -> rows 4..11.
    img = white(image(ELLIPSE, 5, 0, 0, 0))
    assert np.array_equal(img[7], [0] + [1] * 14 + [0] * 49)
    assert np.array_equal(img[:, 7], [0] * 4 + [1] * 8 + [0] * 52)
    assert img.sum() == sum(1 for i in range(64) for j in range(64)
                            if ((j + 0.5 - 8) / 7.2) ** 2 + ((i + 0.5 - 8) / 3.6) ** 2 <= 1)


@pytest.mark.parametrize("scale", range(6))
@pytest.mark.parametrize("x, y", [(0, 0), (31, 0), (0, 31), (31, 31)])
def test_symmetries_a_square_repeats_every_quarter_turn_an_ellipse_every_half_turn(scale, x, y):
    for k in (0, 3, 7):
        assert np.array_equal(image(SQUARE, scale, k + 10, x, y), image(SQUARE, scale, k, x, y))
        assert np.array_equal(image(ELLIPSE, scale, k + 20, x, y), image(ELLIPSE, scale, k, x, y))
    # and the rotation does turn them: a quarter turn of the ellipse is the image turned, not the same
    ellipse, turned = image(ELLIPSE, scale, 0, x, y), image(ELLIPSE, scale, 10, x, y)
    assert not np.array_equal(ellipse, turned)
    rows, cols = (slice(0, 16) if y == 0 else slice(48, 64)), (slice(0, 16) if x == 0 else slice(48, 64))
    assert np.array_equal(turned[rows, cols], np.rot90(ellipse[rows, cols]))


def test_the_heart_is_symmetric_about_its_vertical_axis_and_turns_counterclockwise():
    for scale in range(6):
        for x, cols in ((0, slice(0, 16)), (31, slice(48, 64))):  # its centre on a pixel edge (8 or 56)
            heart = image(HEART, scale, 0, x, 0)
            assert np.array_equal(heart[:, cols], heart[:, cols][:, ::-1])
            assert not np.array_equal(heart[:16], heart[:16][::-1])  # not upside-down symmetric
            window = heart[0:16, cols]
            for turns in (1, 2, 3):  # a quarter turn counterclockwise on the screen, as np.rot90 turns an array
                assert np.array_equal(image(HEART, scale, 10 * turns, x, 0)[0:16, cols], np.rot90(window, turns))
    heart = white(image(HEART, 5, 0, 0, 0))
    rows = np.nonzero(heart.any(1))[0]
    assert heart[rows[-1]].sum() < heart[rows[0]].sum()  # lobes up, the tip down
    assert not heart[rows[0], 7:9].any() and heart[rows[0] + 2, 7:9].all()  # the notch between the lobes


@pytest.mark.parametrize("shape", [SQUARE, ELLIPSE, HEART])
def test_larger_scales_have_more_white_pixels(shape):
    g = torch.Generator().manual_seed(shape)
    base = sample_factors(200, g, fixed={"shape": shape})
    counts = []
    for scale in range(6):
        base[:, 1] = scale
        counts.append(white(render(base)).reshape(200, -1).sum(1))
    counts = np.stack(counts)  # (6 scales, 200)
    assert (np.diff(counts, axis=0) >= 0).all()  # never fewer, at any position and orientation
    assert (counts[5] > counts[0]).all() and (np.diff(counts.mean(1)) > 0).all()
    areas = {SQUARE: 10.4 ** 2, ELLIPSE: math.pi * 7.2 * 3.6, HEART: math.pi * 4.75 ** 2}  # at scale 1
    assert counts[5].mean() == pytest.approx(areas[shape], rel=0.05)


def test_the_position_places_the_centroid_of_the_white_pixels():
    factors = sample_factors(3000, torch.Generator().manual_seed(1))
    img = white(render(factors)[:, 0])
    values = factor_values(factors)
    count = img.sum((1, 2))
    centre = np.arange(64) + 0.5
    x = (img.sum(1) * centre).sum(1) / count
    y = (img.sum(2) * centre).sum(1) / count
    assert np.abs(x - (8 + 48 * values["position_x"].numpy())).max() < 0.5
    assert np.abs(y - (8 + 48 * values["position_y"].numpy())).max() < 0.5
    # from position 0 to 31 the sprite moves by exactly 48 pixels, whatever its shape, scale and orientation
    for shape, scale, k in ((SQUARE, 3, 4), (ELLIPSE, 5, 13), (HEART, 1, 27)):
        first = image(shape, scale, k, 0, 5)
        assert np.array_equal(image(shape, scale, k, 31, 5), np.roll(first, 48, axis=1))
        assert np.array_equal(image(shape, scale, k, 0, 31)[48:], image(shape, scale, k, 0, 0)[:16])
        assert first.any() and not first[:, 16:].any()


def test_every_image_is_binary_non_empty_and_inside_the_canvas():
    extremes = torch.cartesian_prod(torch.arange(3), torch.tensor([5]), torch.arange(40), torch.tensor([0, 31]),
                                    torch.tensor([0, 31]))
    factors = torch.cat([extremes, sample_factors(3000, torch.Generator().manual_seed(2))])
    x = render(factors)
    assert x.dtype == torch.uint8 and x.shape == (len(factors), 1, 64, 64)
    assert set(torch.unique(x).tolist()) == {0, 255}
    assert (x.flatten(1) > 0).sum(1).min() >= 14  # over all 737,280 the fewest are 14 (hearts at scale 0.5)
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)
    assert not border.any()  # never reaches the outer rows and columns: the sprite lies inside the canvas
    assert torch.equal(Levels(x).float().unique(), torch.tensor([0.0, 1.0]))  # read as exactly 0/1


def test_render_takes_factor_indices_and_names_what_is_wrong():
    assert torch.equal(render(np.array([[1, 2, 3, 4, 5]])), render(torch.tensor([[1, 2, 3, 4, 5]])))
    assert render(torch.zeros(0, 5, dtype=torch.long)).shape == (0, 1, 64, 64)
    with pytest.raises(DataError, match="orientation = 40, outside 0..39"):
        render(torch.tensor([[0, 0, 40, 0, 0]]))
    with pytest.raises(DataError, match="must be integers"):
        render(torch.tensor([[0.0, 0.5, 0.0, 0.0, 0.0]]))
    with pytest.raises(DataError, match=r"shape \(N, 5\)"):
        render(torch.zeros(3, 4, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# the flat index: the official file's order


def test_the_flat_index_is_the_official_order():
    assert factor_index(1).tolist() == [0, 0, 0, 0, 1]  # position_y fastest
    assert factor_index(32).tolist() == [0, 0, 0, 1, 0]  # then position_x
    assert factor_index(1024).tolist() == [0, 0, 1, 0, 0]  # orientation
    assert factor_index(40960).tolist() == [0, 1, 0, 0, 0]  # scale
    assert factor_index(245760).tolist() == [1, 0, 0, 0, 0]  # shape slowest
    assert factor_index(DSPRITES_COMBINATIONS - 1).tolist() == [2, 5, 39, 31, 31]
    i = torch.cat([torch.tensor([0, 1, 31, 32, 1023, 1024, DSPRITES_COMBINATIONS - 1]),
                   torch.randint(DSPRITES_COMBINATIONS, (5000,), generator=torch.Generator().manual_seed(3))])
    f = factor_index(i)
    assert f.shape == (len(i), 5) and f.dtype == torch.int64
    assert torch.equal(flat_index(f), i)
    assert np.array_equal(f.numpy(), np.stack(np.unravel_index(i.numpy(), DSPRITES_SIZES), axis=1))  # C order
    assert flat_index([0, 0, 0, 1, 0]).item() == 32
    everything = factor_index(torch.arange(DSPRITES_COMBINATIONS))
    assert torch.equal(flat_index(everything), torch.arange(DSPRITES_COMBINATIONS))
    with pytest.raises(DataError, match="737,280 combinations"):
        factor_index(DSPRITES_COMBINATIONS)


def test_sample_factors_draws_every_value_uniformly_and_can_fix_one():
    f = sample_factors(60000, torch.Generator().manual_seed(4))
    assert f.shape == (60000, 5) and f.dtype == torch.int64
    for column, size in enumerate(DSPRITES_SIZES):
        counts = torch.bincount(f[:, column], minlength=size)
        assert len(counts) == size and counts.min() > 0.8 * 60000 / size and counts.max() < 1.2 * 60000 / size
    again = sample_factors(60000, torch.Generator().manual_seed(4))
    assert torch.equal(f, again)
    fixed = sample_factors(100, torch.Generator().manual_seed(5), fixed={"orientation": 7, 0: 2})
    assert (fixed[:, 2] == 7).all() and (fixed[:, 0] == 2).all() and len(torch.unique(fixed[:, 3])) > 1
    with pytest.raises(DataError, match="index 0..5"):
        sample_factors(3, fixed={"scale": 6})
    with pytest.raises(DataError, match="use one of shape"):
        sample_factors(3, fixed={"colour": 0})


# ---------------------------------------------------------------------------------------------
# the dataset


def test_load_is_deterministic_and_carries_the_factors_of_its_images():
    splits = DATASETS.build({"name": "dsprites", "n_train": 600, "n_test": 150, "seed": 7}).load()
    assert splits.name == "dsprites" and splits.event_shape == (1, 64, 64)
    assert isinstance(splits.held("train"), Levels) and len(splits.held("train")) == 600
    assert len(splits.held("test")) == 150
    assert splits.factor_names == DSPRITES_FACTORS
    for split, labels in (("train", splits.train_labels), ("test", splits.test_labels)):
        factors = splits.factors[split]
        assert factors.dtype == torch.int64 and factors.shape == (len(labels), 5)
        assert torch.equal(render(factors), splits.held(split).values)  # the factors are those of the images
        assert torch.equal(labels, factors[:, 0])
    train, test = flat_index(splits.factors["train"]), flat_index(splits.factors["test"])
    assert len(set(train.tolist())) == 600 and len(set(test.tolist())) == 150
    assert not set(train.tolist()) & set(test.tolist())
    assert set(torch.unique(splits.train).tolist()) == {0.0, 1.0}
    assert "not the official file" in splits.description and "seed 7" in splits.description
    again = DSprites(n_train=600, n_test=150, seed=7).load()
    assert again.fingerprint() == splits.fingerprint()
    assert DSprites(n_train=600, n_test=150, seed=8).load().fingerprint() != splits.fingerprint()
    smaller = DSprites(n_train=100, n_test=150, seed=7).load()  # the same draw, cut shorter
    assert torch.equal(smaller.factors["train"], splits.factors["train"][:100])


def test_the_class_offers_rendering_for_metrics():
    assert DSprites.factor_names == DSPRITES_FACTORS and DSprites.factor_sizes == DSPRITES_SIZES
    f = DSprites.sample_factors(4, torch.Generator().manual_seed(0), fixed={"shape": 1})
    assert torch.equal(DSprites.render(f), render(f)) and torch.equal(DSprites().render(f), render(f))
    assert torch.equal(DSprites.factor_index(DSprites.flat_index(f)), f)
    options = DSprites.option_specs()
    assert {k: options[k].default for k in ("n_train", "n_test", "seed", "full")} == {
        "n_train": 20000, "n_test": 2000, "seed": 0, "full": False}
    assert all(options[k].help for k in ("n_train", "n_test", "seed", "full"))


def test_options_are_checked():
    with pytest.raises(ConfigError, match="n_train and n_test must be >= 1"):
        DSprites(n_train=0)
    with pytest.raises(ConfigError, match="n_train and n_test must be >= 1"):
        DATASETS.build({"name": "dsprites", "n_test": 0})
    with pytest.raises(ConfigError, match="737,280 combinations"):
        DSprites(n_train=737_000, n_test=1000)
    with pytest.raises(ConfigError, match="seed"):
        DSprites(seed=-1)
    with pytest.raises(ConfigError, match="must be bool"):
        DATASETS.build({"name": "dsprites", "full": "yes"})
    with pytest.raises(ConfigError):
        DATASETS.build({"name": "dsprites", "n_images": 10})


def test_full_is_refused_with_its_size_where_it_would_not_fit(monkeypatch):
    full = DSprites(full=True, n_test=1000)
    assert full.nbytes_needed() == (737_280 + 1000) * (64 * 64 + 8 + 5 * 8)  # 3.06 GB
    monkeypatch.setattr(dsprites, "_available_memory", lambda: 4_000_000_000)
    with pytest.raises(DataError, match=r"all 737,280 images .* in 3\.06 GB .* 4\.00 GB of memory is available"):
        full.load()
    monkeypatch.setattr(dsprites, "_available_memory", lambda: 1_000_000)  # a subset too, where memory is short
    with pytest.raises(DataError, match="n_train \\+ n_test = 1,010 images"):
        DSprites(n_train=1000, n_test=10).load()
    monkeypatch.setattr(dsprites, "_available_memory", lambda: None)  # unknown: loads
    assert len(DSprites(n_train=10, n_test=5).load().held("train")) == 10
