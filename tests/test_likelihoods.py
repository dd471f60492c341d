"""Likelihoods p(x|z): each is a normalized mass or density over whole images, and guards its data."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pyro_vae import ConfigError, DataError
from pyro_vae.likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    GaussianLikelihood,
    LaplaceLikelihood,
    PixelCNNBernoulliLikelihood,
)


def trapezoid_mass(log_prob, grid: torch.Tensor) -> float:
    density = log_prob(grid).double().exp()
    return torch.trapezoid(density, grid.double()).item()


def test_bernoulli_sums_to_one_over_all_binary_images():
    lik = BernoulliLikelihood().setup((1, 2, 2))
    head = torch.randn(1, 1, 2, 2) * 2  # (params_per_pixel, C, H, W)
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4))).reshape(16, 1, 2, 2)
    total = lik(head).log_prob(images).exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-6)


def test_bernoulli_log_likelihood_is_minus_binary_cross_entropy_summed():
    lik = BernoulliLikelihood().setup((1, 3, 3))
    head = torch.randn(4, 1, 1, 3, 3)
    x = torch.bernoulli(torch.full((4, 1, 3, 3), 0.5))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(head[:, 0], x, reduction="none").sum((1, 2, 3))
    torch.testing.assert_close(lik(head).log_prob(x), -bce)


@pytest.mark.parametrize("logit", [-6.0, -1.0, 0.0, 1e-3, 2.0, 7.0])
def test_continuous_bernoulli_integrates_to_one_on_the_unit_interval(logit):
    lik = ContinuousBernoulliLikelihood().setup((1, 1, 1))
    head = torch.full((1, 1, 1, 1), logit)
    grid = torch.linspace(0, 1, 20001)
    mass = trapezoid_mass(lambda x: lik(head).log_prob(x.reshape(-1, 1, 1, 1)), grid)
    assert mass == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("cls", [GaussianLikelihood, LaplaceLikelihood])
@pytest.mark.parametrize("scale, learn", [(1.0, "none"), (0.3, "global"), (0.05, "per-pixel")])
def test_location_scale_likelihoods_integrate_to_one(cls, scale, learn):
    lik = cls(scale=scale, learn_scale=learn).setup((1, 1, 1))
    head = torch.full((1, 1, 1, 1), 0.4)
    grid = torch.linspace(0.4 - 40 * scale, 0.4 + 40 * scale, 200001)
    mass = trapezoid_mass(lambda x: lik(head).log_prob(x.reshape(-1, 1, 1, 1)), grid)
    assert mass == pytest.approx(1.0, abs=1e-4)


def test_unit_gaussian_is_half_squared_error_plus_a_constant():
    lik = GaussianLikelihood().setup((1, 2, 3))
    head, x = torch.randn(5, 1, 1, 2, 3), torch.randn(5, 1, 2, 3)
    expected = -0.5 * ((x - head[:, 0]) ** 2).sum((1, 2, 3)) - 6 * 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(lik(head).log_prob(x), expected)


def test_learned_scales_have_the_declared_shape_and_floor():
    glob = GaussianLikelihood(scale=0.5, learn_scale="global").setup((1, 4, 4))
    per_pixel = LaplaceLikelihood(scale=0.5, learn_scale="per-pixel", min_scale=0.01).setup((1, 4, 4))
    fixed = GaussianLikelihood(scale=0.5).setup((1, 4, 4))
    assert glob.raw_scale.shape == (1, 1, 1) and per_pixel.raw_scale.shape == (1, 4, 4)
    assert list(fixed.parameters()) == []
    torch.testing.assert_close(glob.pixel_scale(), torch.full((1, 1, 1), 0.5))
    with torch.no_grad():
        per_pixel.raw_scale.fill_(-50.0)
    assert per_pixel.pixel_scale().min().item() == pytest.approx(0.01)


def test_bernoulli_none_refuses_grey_pixels_and_names_both_fixes():
    with pytest.raises(DataError) as e:
        BernoulliLikelihood(binarize="none").check_data(torch.tensor([0.0, 0.5, 1.0]), "train")
    message = str(e.value)
    assert "not exactly 0 or 1" in message
    assert 'binarize = "dynamic"' in message and "continuous-bernoulli" in message
    BernoulliLikelihood(binarize="none").check_data(torch.tensor([0.0, 1.0]), "train")


@pytest.mark.parametrize("lik", [BernoulliLikelihood(), ContinuousBernoulliLikelihood()])
def test_unit_interval_likelihoods_refuse_data_outside_it(lik):
    with pytest.raises(DataError, match=r"values in \[0, 255\]"):
        lik.check_data(torch.tensor([0.0, 255.0]), "test")


def test_dynamic_binarization_draws_afresh_each_batch_and_fixes_evaluation_sets():
    lik = BernoulliLikelihood(binarize="dynamic")
    x = torch.full((2000,), 0.3)
    g = torch.Generator().manual_seed(0)
    a, b = lik.prepare_batch(x, g), lik.prepare_batch(x, g)
    assert set(a.unique().tolist()) <= {0.0, 1.0} and not torch.equal(a, b)
    assert a.mean().item() == pytest.approx(0.3, abs=0.05)
    assert torch.equal(lik.prepare_eval_set(x), lik.prepare_eval_set(x))
    assert torch.equal(lik.prepare_train_set(x), x)


def test_static_binarization_happens_once():
    lik = BernoulliLikelihood(binarize="static")
    x = torch.full((500,), 0.5)
    train = lik.prepare_train_set(x)
    assert set(train.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(train, lik.prepare_train_set(x))
    assert torch.equal(lik.prepare_batch(train, torch.Generator()), train)


def test_head_shape_sizes_the_decoder():
    assert BernoulliLikelihood().setup((1, 28, 28)).head_shape == (1, 1, 28, 28)
    assert GaussianLikelihood().setup((3, 8, 8)).head_shape == (1, 3, 8, 8)


def test_bernoulli_image_is_the_independent_bernoulli_it_replaces():
    from pyro import distributions as dist

    from pyro_vae.likelihoods import BernoulliImage

    logits = torch.randn(4, 1, 3, 3)
    fast, plain = BernoulliImage(logits, 3), dist.Bernoulli(logits=logits).to_event(3)
    x = torch.rand(4, 1, 3, 3).bernoulli()
    assert fast.batch_shape == plain.batch_shape and fast.event_shape == plain.event_shape
    torch.testing.assert_close(fast.log_prob(x), plain.log_prob(x))
    torch.testing.assert_close(fast.log_prob_sum(x), plain.log_prob(x).sum())
    torch.testing.assert_close(fast.mean, plain.mean)
    expanded = fast.expand((2, 4))
    assert expanded.batch_shape == (2, 4) and expanded.sample().shape == (2, 4, 1, 3, 3)
    torch.testing.assert_close(expanded.log_prob(x), plain.expand((2, 4)).log_prob(x))


# -- the autoregressive Bernoulli (pixelcnn-bernoulli) --------------------------------------------


def pixelcnn(shape=(1, 3, 3), spread: float = 0.8, **options):
    """A pixelcnn-bernoulli likelihood with weights spread wide, so pixels depend strongly on earlier ones."""
    lik = PixelCNNBernoulliLikelihood(**{"context": 3, "channels": 5, "layers": 2, "kernel": 3, **options}).setup(shape)
    with torch.no_grad():
        for p in lik.parameters():
            p.normal_(0.0, spread)
    return lik


def all_binary_images(side_h: int, side_w: int) -> torch.Tensor:
    n = side_h * side_w
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n))).reshape(2**n, 1, side_h, side_w)


def test_pixelcnn_bernoulli_sums_to_one_over_all_binary_images():
    lik = pixelcnn()
    head = torch.randn(2, 3, 1, 3, 3)  # two z's: (batch, context, C, H, W)
    log_p = lik(head).log_prob(all_binary_images(3, 3).unsqueeze(1))  # (512, 2): every image under both
    torch.testing.assert_close(log_p.logsumexp(0), torch.zeros(2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("layers, kernel", [(1, 3), (2, 3), (3, 5)])
def test_pixelcnn_bernoulli_logit_of_a_pixel_reads_only_the_pixels_before_it(layers, kernel):
    lik = pixelcnn(shape=(1, 4, 5), layers=layers, kernel=kernel)
    d = lik(torch.randn(1, 3, 1, 4, 5))
    x = torch.bernoulli(torch.full((1, 1, 4, 5), 0.5)).requires_grad_()
    logits = d.logits(x).flatten()
    for i in range(20):
        (grad,) = torch.autograd.grad(logits[i], x, retain_graph=True)
        grad = grad.flatten()
        assert grad[i:].abs().max() == 0, f"pixel {i} reads pixels at or after it"
        row, col = divmod(i, 5)
        if i > 0:  # and it does read its left neighbour (the one above, at the start of a row)
            assert grad[i - 1 if col else i - 5] != 0


def test_pixelcnn_bernoulli_draws_follow_its_probabilities():
    lik = pixelcnn(shape=(1, 2, 2), spread=0.5)
    d = lik(torch.randn(1, 3, 1, 2, 2))
    images = all_binary_images(2, 2)
    exact = d.log_prob(images.unsqueeze(1))[:, 0].exp()
    torch.manual_seed(1)
    draws = d.sample((20000,))[:, 0].reshape(20000, 4)
    index = (draws * torch.tensor([8.0, 4.0, 2.0, 1.0])).sum(1).long()
    frequency = torch.bincount(index, minlength=16) / 20000.0
    assert 0.5 * (frequency - exact).abs().sum() < 0.02  # total variation; sampling noise ~0.01
    # the check has power: pixels drawn independently from their marginals would fail it
    bits = images.reshape(16, 4)
    marginal = (exact[:, None] * bits).sum(0)
    independent = (bits * marginal + (1 - bits) * (1 - marginal)).prod(1)
    assert 0.5 * (independent - exact).abs().sum() > 0.04


def test_pixelcnn_bernoulli_observing_reuses_the_pixel_features_and_changes_nothing():
    lik = pixelcnn(shape=(1, 4, 4))
    x = torch.bernoulli(torch.full((3, 1, 4, 4), 0.5))
    heads = [torch.randn(k, 3, 3, 1, 4, 4) for k in (1, 5)]
    plain = [lik(h).log_prob(x) for h in heads]
    calls = []
    hook = lik.stack.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad(), lik.observing(x):
        cached = [lik(h).log_prob(x) for h in heads]
    assert len(calls) == 1  # once for x, however many z's
    for a, b in zip(plain, cached):
        torch.testing.assert_close(a, b)
    with lik.observing(x):  # with gradients on nothing is cached, so gradients still reach the stack
        lik(heads[0]).log_prob(x).sum().backward()
    with torch.inference_mode():  # inference tensors carry no version counter: computed afresh, still right
        frozen = x.clone()
        with lik.observing(frozen):
            torch.testing.assert_close(lik(heads[0]).log_prob(frozen), plain[0])
    hook.remove()
    assert len(calls) == 3 and lik.stack.convs[0].weight.grad.abs().sum() > 0


def test_pixelcnn_bernoulli_refuses_colour_images_and_grey_pixels_unbinarized():
    with pytest.raises(ConfigError, match="one-channel images"):
        PixelCNNBernoulliLikelihood().setup((3, 8, 8))
    with pytest.raises(ConfigError, match="kernel must be odd"):
        PixelCNNBernoulliLikelihood(kernel=4)
    with pytest.raises(DataError, match='pixelcnn-bernoulli likelihood with binarize = "none"'):
        PixelCNNBernoulliLikelihood(binarize="none").check_data(torch.tensor([0.0, 0.5]), "train")
    lik = PixelCNNBernoulliLikelihood(context=6).setup((1, 28, 28))
    assert lik.head_shape == (6, 1, 28, 28) and not lik.mean_available
    with pytest.raises(NotImplementedError, match="no closed-form mean"):
        lik.mean(torch.zeros(6, 1, 28, 28))


def test_pixelcnn_bernoulli_draws_each_pixel_from_its_conditional_on_the_pixels_drawn_before():
    # 6 x 5 images, a stack that reaches 2 rows up: sampling runs it on bands of 3 rows; the full-image
    # logits of the finished draw must give back every pixel, x_i = [u_i < sigmoid(l_i(x_<i))]
    lik = pixelcnn(shape=(1, 6, 5), layers=2, kernel=3)
    assert lik.stack.rows_seen == 2
    d = lik(torch.randn(4, 3, 1, 6, 5))
    torch.manual_seed(3)
    x = d.sample((2,))  # (2, 4, 1, 6, 5)
    torch.manual_seed(3)
    u = torch.stack([torch.rand(2, 4, 1, 1) for _ in range(30)], -1).reshape(2, 4, 6, 5)  # the draws, pixel by pixel
    expected = (u < torch.sigmoid(d.logits(x))).float()
    assert torch.equal(x[:, :, 0], expected)
    assert 0 < x.mean() < 1
