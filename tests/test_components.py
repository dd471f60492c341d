"""The fuller menu: VampPrior, flow prior, discretized logistic, categorical, Beta, IAF guide, conv nets.

Each is checked on the numbers that define it: normalization, the identity it is built on, shapes.
"""

from __future__ import annotations

import math
import typing
import warnings

import pytest
import torch

from pyro_vae import VAE, ConfigError, DataError, Trainer
from pyro_vae.likelihoods import (
    BetaLikelihood,
    CategoricalLikelihood,
    DiscretizedLogisticLikelihood,
    DiscretizedLogisticMixtureImage,
)
from pyro_vae.config import OBJECTIVES
from pyro_vae.networks import ACTIVATIONS, ConvNetwork, MLPNetwork, UpConv2d
from pyro_vae.priors import DiagonalGaussianMixture, FlowPrior
from pyro_vae.training import svi_step

from conftest import tiny_config, tiny_vae
from test_priors import grid_2d

LEVELS = torch.arange(256, dtype=torch.float32) / 255


def mass_2d(log_prob, half_width: float = 8.0, n: int = 401) -> float:
    zz, cell = grid_2d(half_width, n)
    with torch.no_grad():
        return log_prob(zz.float()).double().exp().sum().item() * cell


# ---------------------------------------------------------------------------------------------
# priors


def test_vamp_prior_is_the_guides_posterior_averaged_over_pseudo_inputs():
    vae = tiny_vae(prior={"name": "vamp", "components": 7})
    u = vae.prior.pseudo_inputs()
    assert u.shape == (7, 1, 6, 6) and 0 <= u.min() and u.max() <= 1
    z = torch.randn(5, 2)
    with torch.no_grad():
        q = vae.q_z_given_x(u)  # the same encoder and head as the guide
        expected = torch.logsumexp(q.log_prob(z.unsqueeze(1)), 1) - math.log(7)
        torch.testing.assert_close(vae.p_z().log_prob(z), expected, rtol=1e-5, atol=1e-5)
        before = vae.p_z().log_prob(z)
        vae.encoder.body[0].weight.mul_(1.5)  # moving the encoder moves the prior
        assert not torch.allclose(vae.p_z().log_prob(z), before)
    assert mass_2d(vae.p_z().log_prob) == pytest.approx(1.0, abs=1e-3)


def test_vamp_pseudo_inputs_start_at_training_images_in_the_data_range():
    vae = tiny_vae(prior={"name": "vamp", "components": 4, "init": "data"})
    x = torch.rand(20, 1, 6, 6) * 0.5 + 0.25  # data in [0.25, 0.75]
    vae.prior.fit_to_data(x, torch.Generator().manual_seed(0))
    u = vae.prior.pseudo_inputs()
    assert vae.prior.low.item() == pytest.approx(x.min().item()) and vae.prior.high.item() == pytest.approx(x.max().item())
    distances = torch.cdist(u.flatten(1), x.flatten(1)).min(1).values
    assert distances.max() < 0.02  # each pseudo-input is (nearly) one of the images


def test_vamp_prior_trains_its_pseudo_inputs_and_the_shared_encoder(tmp_path):
    vae = tiny_vae(prior={"name": "vamp", "components": 10})
    x = torch.rand(32, 1, 6, 6).bernoulli()
    vae.prior.fit_to_data(x, torch.Generator().manual_seed(0))
    start = vae.prior.raw_inputs.detach().clone()
    vae.p_z().log_prob(torch.randn(4, 2)).sum().backward()  # log p(z) alone reaches the encoder
    assert vae.encoder.body[0].weight.grad.abs().sum() > 0 and vae.prior.raw_inputs.grad.abs().sum() > 0
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)
    for _ in range(3):
        svi_step(vae, OBJECTIVES.build("elbo"), optimizer, x)
    assert not torch.equal(vae.prior.raw_inputs, start)
    state = vae.state_dict()  # the encoder is saved once, under the VAE, not again under the prior
    assert "prior.raw_inputs" in state and not any(k.startswith("prior.") and "body" in k for k in state)


def test_mixture_log_density_by_matrix_products_matches_the_direct_formula():
    torch.manual_seed(0)
    locs, scales = torch.randn(40, 6) * 2, torch.rand(40, 6) * 0.9 + 0.05
    logits = torch.randn(40)
    z = torch.randn(100, 6) * 2.5
    mix = DiagonalGaussianMixture(logits, locs, scales)
    direct = torch.distributions.Normal(locs.double(), scales.double()).log_prob(z.double()[:, None]).sum(-1)
    expected = torch.logsumexp(direct + torch.log_softmax(logits.double(), -1), -1)
    torch.testing.assert_close(mix.log_prob(z).double(), expected, atol=2e-4, rtol=0)
    assert mix.sample((3, 2)).shape == (3, 2, 6) and mix.expand((4,)).log_prob(z[:4]).shape == (4,)


@pytest.mark.parametrize("kind, spread", [("affine", 0.2), ("spline", 0.1)])
def test_flow_prior_density_is_exact(kind, spread):
    """The grid integral of p(z) over a box equals the fraction of samples z ~ p(z) that land in it."""
    torch.manual_seed(1)
    prior = FlowPrior(depth=3, hidden=16, kind=kind).setup(2)
    z = torch.randn(50, 2) * 2
    standard = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    # starts at N(0, I) (Pyro's float32 spline is off by up to ~3e-3 nats near its bound at +-3)
    torch.testing.assert_close(prior().log_prob(z), standard, atol=1e-5 if kind == "affine" else 5e-3, rtol=0)
    with torch.no_grad():  # move away from the identity
        for p in prior.parameters():
            p.add_(torch.randn_like(p) * spread)
    z = prior().sample((200_000,))
    inside = (z.abs() <= 6).all(-1).double().mean().item()
    assert mass_2d(prior().log_prob, half_width=6.0, n=601) == pytest.approx(inside, abs=1e-3)
    assert torch.isfinite(prior().log_prob(z[:10])).all()


def test_flow_prior_needs_two_latent_dimensions():
    with pytest.raises(ConfigError, match="latent_dim >= 2"):
        VAE(data_shape=(1, 4, 4), latent_dim=1, prior="flow", network={"name": "mlp", "hidden": [8]})


# ---------------------------------------------------------------------------------------------
# likelihoods of 8-bit data


def head_for(components: int, pixels: int = 5, scale: float = 1.0) -> torch.Tensor:
    torch.manual_seed(components)
    return torch.randn(1, 3 * components, 1, 1, pixels) * scale


@pytest.mark.parametrize("scale", [0.1, 1.0, 4.0])
def test_discretized_logistic_probabilities_sum_to_one_over_the_256_levels(scale):
    params = head_for(4, scale=scale)
    params[:, 8:12] -= 3.0  # some components sharp (small log-scales) ...
    params[:, 4] = 3.0  # ... and some locations outside [-1, 1]
    d = DiscretizedLogisticMixtureImage(params, 4, 3)
    log_p = d.level_log_probs(LEVELS.reshape(256, 1, 1, 1, 1))  # (256, 1, 1, 1, 5)
    assert torch.isfinite(log_p).all()
    torch.testing.assert_close(log_p.double().exp().sum(0), torch.ones(1, 1, 1, 5, dtype=torch.float64), atol=1e-5, rtol=0)


def test_discretized_logistic_matches_the_cdf_differences_in_float64():
    params = head_for(3)
    d = DiscretizedLogisticMixtureImage(params, 3, 3)
    x = LEVELS[[0, 1, 100, 254, 255]].reshape(1, 1, 1, 5)
    w, mu, raw = params.double().split(3, dim=1)
    log_s = -7 + torch.nn.functional.softplus(raw + 7)
    y = (2 * x.double() - 1).unsqueeze(1)
    cdf = lambda t: torch.sigmoid((t - mu) / log_s.exp())  # noqa: E731
    upper = torch.where(y > 0.999, torch.ones_like(mu), cdf(y + 1 / 255))
    lower = torch.where(y < -0.999, torch.zeros_like(mu), cdf(y - 1 / 255))
    expected = (torch.softmax(w, 1) * (upper - lower)).sum(1).log()
    torch.testing.assert_close(d.level_log_probs(x).double(), expected, atol=1e-5, rtol=1e-5)
    sample = d.sample((10,))
    assert ((sample * 255 - (sample * 255).round()).abs() < 1e-4).all() and sample.min() >= 0 and sample.max() <= 1


def test_categorical_likelihood_sums_to_one_and_is_a_lookup():
    lik = CategoricalLikelihood().setup((1, 1, 3))
    head = torch.randn(256, 1, 1, 3)
    log_p = torch.stack([lik(head).log_prob(torch.full((1, 1, 3), v.item())) for v in LEVELS])
    # each pixel's 256 probabilities sum to 1, so over all 256^3 images the mass is 1 as well
    per_pixel = torch.log_softmax(head, 0)
    assert per_pixel.exp().sum(0).sub(1).abs().max() < 1e-5
    torch.testing.assert_close(log_p, per_pixel.sum((1, 2, 3)))


@pytest.mark.parametrize("cls", [DiscretizedLogisticLikelihood, CategoricalLikelihood])
def test_eight_bit_likelihoods_refuse_other_data_and_name_the_fix(cls):
    with pytest.raises(DataError) as e:
        cls().check_data(torch.tensor([0.0, 0.5, 1.0]), "train")
    assert "8-bit data" in str(e.value) and "quantize = true" in str(e.value)
    cls().check_data(LEVELS, "train")


def test_squeezed_beta_reports_the_density_of_the_original_data():
    """x' = eps + (1 - 2 eps) x: the reported p(x) = Beta(x') (1 - 2 eps) integrates over x in [0, 1]
    to the Beta's mass on [eps, 1 - eps], at most 1 (so reported log-densities are conservative)."""
    lik = BetaLikelihood(dequantize="none", squeeze=0.05).setup((1, 1, 1))
    head = torch.tensor([1.2, -0.3]).reshape(2, 1, 1, 1)  # a = 1.46, b = 0.55: mass piles up near 1
    x = torch.linspace(0, 1, 200001)
    density = lik(head).log_prob(lik.prepare_eval_set(x.reshape(-1, 1, 1, 1))).double().exp()
    beta = lik(head).base_dist  # the Beta itself, per pixel
    t = torch.linspace(0.05, 0.95, 200001)
    truncated = torch.trapezoid(beta.log_prob(t.reshape(-1, 1, 1, 1)).double().exp().flatten(), t.double())
    assert torch.trapezoid(density, x.double()).item() == pytest.approx(truncated.item(), abs=1e-4)
    assert truncated.item() < 1.0
    with pytest.raises(DataError):
        lik.check_data(torch.tensor([-0.1, 0.5]), "train")


def test_dequantized_beta_is_a_bound_on_the_probability_of_the_levels():
    """sum over the 256 levels of exp(log p) integrated over the dequantization noise is 1, so
    log p (reported with - log 256 per pixel) is a lower bound on the level's log-probability."""
    lik = BetaLikelihood().setup((1, 1, 1))
    head = torch.tensor([0.7, 0.2]).reshape(2, 1, 1, 1)
    u = (torch.arange(200) + 0.5) / 200  # midpoint rule over the noise in each bin
    x = (LEVELS[:, None] * 255 + u[None]) / 256  # (256, 200) dequantized values
    mass = lik(head).log_prob(x.reshape(-1, 1, 1, 1)).double().exp().reshape(256, 200).mean(1).sum()
    assert mass.item() == pytest.approx(1.0, abs=1e-3)
    g = torch.Generator().manual_seed(0)
    batch = lik.prepare_batch(LEVELS.reshape(-1, 1, 1, 1), g)
    assert (batch > 0).all() and (batch < 1).all() and ((batch * 256).floor() == (LEVELS * 255).reshape(-1, 1, 1, 1)).all()
    assert torch.equal(lik.prepare_eval_set(LEVELS.reshape(-1, 1, 1, 1)), lik.prepare_eval_set(LEVELS.reshape(-1, 1, 1, 1)))
    with pytest.raises(DataError, match="8-bit"):
        lik.check_data(torch.tensor([0.3]), "test")


# ---------------------------------------------------------------------------------------------
# the IAF guide and the conv network


def test_iaf_log_density_is_exact_and_its_samples_are_reparameterized():
    torch.manual_seed(2)
    vae = VAE(data_shape=(1, 4, 4), latent_dim=2, guide={"name": "iaf", "steps": 2, "hidden": 8, "context": 4},
              network={"name": "mlp", "hidden": [8]})
    with torch.no_grad():
        for p in vae.posterior.flows.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    x = torch.rand(1, 1, 4, 4)
    q = vae.q_z_given_x(x)
    assert mass_2d(lambda z: q.log_prob(z[:, None]).squeeze(1), half_width=10.0, n=401) == pytest.approx(1.0, abs=2e-3)
    z = q.rsample((3,))
    z.sum().backward()
    assert vae.encoder.body[0].weight.grad is not None and vae.posterior.to_context.weight.grad is not None


def test_iaf_has_no_analytic_kl_and_elbo_analytic_kl_says_so(tmp_path):
    config = tiny_config(model={"guide": {"name": "iaf", "hidden": 8, "context": 4}},
                         train={"epochs": 1, "objective": "elbo-analytic-kl"})
    with pytest.warns(UserWarning, match="estimated by Monte Carlo"):
        Trainer(config, tmp_path / "run", progress=False, log=lambda s: None).fit()


@pytest.mark.parametrize("shape, channels", [((1, 28, 28), [8, 16]), ((3, 32, 32), [8, 16, 16])])
def test_conv_network_shapes(shape, channels):
    vae = VAE(data_shape=shape, latent_dim=3, likelihood={"name": "discretized-logistic", "components": 2},
              network={"name": "conv", "channels": channels, "hidden": 32})
    x = torch.rand(4, *shape)
    assert vae.encoder(x).shape == (4, 32)
    z = torch.randn(5, 4, 3)  # particles x batch
    assert vae.decoder(z).shape == (5, 4, 6, *shape)


@pytest.mark.parametrize("in_channels, out_channels", [(6, 1), (5, 3), (4, 4), (8, 16)])
def test_upconv_computes_the_stock_transposed_convolution_and_its_gradients(in_channels, out_channels):
    """Both CPU paths (sub-pixel convolution for <= 3 output channels, channels-last otherwise) give
    nn.ConvTranspose2d(in, out, 4, stride=2, padding=1)'s output and gradients, odd sizes included."""
    torch.manual_seed(0)
    fast = UpConv2d(in_channels, out_channels)
    stock = torch.nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1)
    stock.load_state_dict(fast.state_dict())  # the same parameters under the same names
    x = torch.randn(3, in_channels, 5, 7, requires_grad=True)
    outputs = [m(x) for m in (fast, stock)]
    assert outputs[0].shape == (3, out_channels, 10, 14)
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)
    target = torch.randn_like(outputs[1])
    grads = [torch.autograd.grad((out * target).sum(), [x, m.weight, m.bias]) for out, m in zip(outputs, (fast, stock))]
    for g_fast, g_stock in zip(*grads):
        torch.testing.assert_close(g_fast, g_stock, atol=1e-4, rtol=1e-5)


def test_conv_decoder_keeps_the_stock_parameter_names():
    """Decoders saved before UpConv2d load into it: the state dict is nn.ConvTranspose2d's."""
    vae = VAE(data_shape=(1, 8, 8), latent_dim=2, network={"name": "conv", "channels": [4, 8], "hidden": 16})
    deconvs = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [type(m) for m in deconvs] == [UpConv2d, UpConv2d]
    assert {k for k in vae.decoder.state_dict() if "deconvs" in k} == {
        "deconvs.0.weight", "deconvs.0.bias", "deconvs.2.weight", "deconvs.2.bias"}


def test_conv_network_refuses_images_it_cannot_halve():
    with pytest.raises(ConfigError, match="divisible by 4"):
        VAE(data_shape=(1, 30, 30), latent_dim=2, network="conv")


def test_every_new_likelihood_trains_with_the_conv_network(tmp_path):
    for likelihood in ("discretized-logistic", "categorical", "beta"):
        config = tiny_config(data={"side": 8, "quantize": True}, model={"likelihood": likelihood,
                             "network": {"name": "conv", "channels": [4, 8], "hidden": 16}}, train={"epochs": 2})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = Trainer(config, tmp_path / likelihood, progress=False, log=lambda s: None).fit()
        first, last = trainer.history[0]["test"]["elbo"], trainer.history[-1]["test"]["elbo"]
        assert math.isfinite(last) and last > first


def test_gated_mlp_layers_compute_linear_times_sigmoid_gate():
    vae = VAE(data_shape=(1, 4, 4), latent_dim=3, network={"name": "mlp", "hidden": [6, 5], "activation": "gated"})
    first = vae.encoder.body[0]
    assert first.weight.shape == (12, 16)  # the value half and the gate half of a 6-wide layer
    x = torch.rand(7, 1, 4, 4)
    h = first(x.flatten(-3))
    expected = h[:, :6] * torch.sigmoid(h[:, 6:])
    assert torch.allclose(vae.encoder.body[1](h), expected)
    assert vae.encoder(x).shape == (7, 5)
    # the decoder's hidden layers are gated, its output layer is a plain Linear to the head
    assert [type(m).__name__ for m in vae.decoder.body] == ["Linear", "GLU", "Linear", "GLU", "Linear"]
    assert vae.decoder.body[-1].out_features == 16
    assert vae.decoder(torch.randn(2, 7, 3)).shape == (2, 7, 1, 1, 4, 4)


def test_gated_conv_layers_gate_each_channel_and_the_decoder_head_is_plain():
    vae = VAE(data_shape=(1, 8, 8), latent_dim=3, network={"name": "conv", "channels": [4, 6], "hidden": 5,
                                                           "activation": "gated"})
    conv, glu = vae.encoder.convs[0], vae.encoder.convs[1]
    assert conv.out_channels == 8  # the value half and the gate half of 4 channels
    x = torch.rand(7, 1, 8, 8)
    h = conv(x)
    assert torch.allclose(glu(h), h[:, :4] * torch.sigmoid(h[:, 4:]))
    assert vae.encoder(x).shape == (7, 5)
    assert [type(m).__name__ for m in vae.encoder.dense] == ["Linear", "GLU"]
    assert [type(m).__name__ for m in vae.decoder.dense] == ["Linear", "GLU", "Linear", "GLU"]
    # the decoder's transposed convolutions are gated, its last layer (to the head) is not
    assert [type(m).__name__ for m in vae.decoder.deconvs] == ["UpConv2d", "GLU", "UpConv2d"]
    assert vae.decoder.deconvs[0].out_channels == 8 and vae.decoder.deconvs[-1].out_channels == 1
    assert vae.decoder(torch.randn(2, 7, 3)).shape == (2, 7, 1, 1, 8, 8)


def test_network_activation_options_name_exactly_the_built_activations():
    """The typed option lists (what the config accepts and --help shows) and the ACTIVATIONS table
    (what gets built) must not drift apart: every listed name builds, every built one is listed."""
    def listed(cls):
        return set(typing.get_args(cls.option_specs()["activation"].annotation))

    assert listed(MLPNetwork) == listed(ConvNetwork) == set(ACTIVATIONS) | {"gated"}


@pytest.mark.parametrize("network", [MLPNetwork(hidden=[32, 16], activation="gated"), ConvNetwork(channels=[4, 8], hidden=16),
                                     ConvNetwork(channels=[4, 8], hidden=16, activation="gated"),
                                     MLPNetwork(hidden=[32, 16], activation="relu", batch_norm=True)],
                         ids=["mlp", "conv", "gated-conv", "mlp-batch-norm"])
def test_mixed_precision_runs_the_bodies_in_bfloat16_and_returns_float32_only_inside_its_block(network):
    from pyro_vae.networks import mixed_precision

    torch.manual_seed(0)
    encoder, decoder = network.encoder((1, 8, 8)), network.decoder(3, (1, 1, 8, 8))
    x, z = torch.rand(5, 1, 8, 8), torch.randn(5, 3)
    full = encoder(x), decoder(z)
    with mixed_precision([encoder, decoder], torch.bfloat16):
        mixed = encoder(x), decoder(z)
    for a, b in zip(full, mixed):
        assert b.dtype == torch.float32 and b.shape == a.shape
        assert not torch.equal(a, b)  # the products really ran in bfloat16 ...
        assert torch.allclose(a, b, rtol=0.05, atol=0.05)  # ... with float32 accumulation: close
    assert all(p.dtype == torch.float32 for p in [*encoder.parameters(), *decoder.parameters()])
    assert torch.equal(encoder(x), full[0]) and torch.equal(decoder(z), full[1])  # float32 again after it


# ---------------------------------------------------------------------------------------------
# the mlp network's batch norm and dropout (scVI's FCLayers)


def test_mlp_defaults_build_the_same_layers_and_parameters_as_before():
    """batch_norm = false and dropout = 0 add no module: the same layers, state dict keys and (from the
    same seed) the same initial values as the plain Linear/activation stack, so old checkpoints load."""
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(16, 6), torch.nn.Softplus(), torch.nn.Linear(6, 5), torch.nn.Softplus(),
                                torch.nn.Linear(3, 5), torch.nn.Softplus(), torch.nn.Linear(5, 6), torch.nn.Softplus(),
                                torch.nn.Linear(6, 16))
    for network in (MLPNetwork(hidden=[6, 5]), MLPNetwork(hidden=[6, 5], batch_norm=False, dropout=0.0)):
        torch.manual_seed(0)
        encoder, decoder = network.encoder((1, 4, 4)), network.decoder(3, (1, 1, 4, 4))
        assert list(encoder.state_dict()) == ["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"]
        assert list(decoder.state_dict()) == [f"body.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")]
        built = [*encoder.body, *decoder.body]
        assert [type(m) for m in built] == [type(m) for m in plain]
        for mine, theirs in zip(built, plain):
            for a, b in zip(mine.parameters(), theirs.parameters()):
                assert torch.equal(a, b)


def test_mlp_batch_norm_normalizes_the_batch_in_training_and_uses_the_running_averages_in_evaluation():
    """Linear -> batch norm (momentum 0.01, eps 1e-3, affine) -> activation in every hidden layer of
    the encoder and decoder (none after the decoder's output layer); any leading dimensions are rows."""
    torch.manual_seed(0)
    network = MLPNetwork(hidden=[8, 6], activation="relu", batch_norm=True)
    encoder, decoder = network.encoder((5,)), network.decoder(3, (2, 5))
    assert [type(m).__name__ for m in encoder.body] == ["Linear", "RowBatchNorm", "ReLU"] * 2
    assert [type(m).__name__ for m in decoder.body] == ["Linear", "RowBatchNorm", "ReLU"] * 2 + ["Linear"]
    norm = encoder.body[1]
    assert (norm.momentum, norm.eps, norm.weight.shape) == (0.01, 1e-3, (8,))
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0), norm.bias.normal_()
    x = torch.rand(4, 6, 5)  # (particles, datapoints, features)
    h = encoder.body[0](x).detach().reshape(-1, 8)
    out = norm(encoder.body[0](x)).detach()
    expected = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-3) * norm.weight + norm.bias
    torch.testing.assert_close(out, expected.reshape(4, 6, 8))  # over all 24 rows
    running_mean = 0.01 * h.mean(0)
    torch.testing.assert_close(norm.running_mean, running_mean)
    torch.testing.assert_close(norm.running_var, 0.99 + 0.01 * h.var(0, unbiased=True))
    encoder(torch.rand(1, 5))  # one row in training (a probe's placeholder): the running averages stay
    torch.testing.assert_close(norm.running_mean, running_mean)
    encoder.eval(), decoder.eval()
    with torch.no_grad():
        norm.running_mean.normal_(), norm.running_var.uniform_(0.5, 2.0)
    out = norm(encoder.body[0](x)).detach()
    expected = (h - norm.running_mean) / torch.sqrt(norm.running_var + 1e-3) * norm.weight + norm.bias
    torch.testing.assert_close(out, expected.reshape(4, 6, 8))
    z = torch.randn(4, 6, 3)
    for body, inputs in ((encoder, x), (decoder, z)):  # deterministic, and each particle as if alone
        assert torch.equal(body(inputs), body(inputs))
        torch.testing.assert_close(body(inputs), torch.stack([body(row) for row in inputs]))
    assert decoder(z).shape == (4, 6, 2, 5)


def test_a_program_s_probes_and_pictures_run_the_networks_in_evaluation_mode_and_leave_the_modes_as_found():
    """The probes (two placeholder rows), decode, prior draws and posterior means must not move batch
    norm's running averages (nor draw dropout masks); each submodule keeps its own mode after them."""
    from pyro_vae.programs import Program

    vae = VAE(data_shape=(1, 4, 4), latent_dim=2, network={"name": "mlp", "hidden": [8], "batch_norm": True, "dropout": 0.5})
    vae.train()
    vae.decoder.body[1].eval()  # a batch norm frozen on purpose
    state = {k: v.clone() for k, v in vae.state_dict().items()}
    program = Program(vae)
    program.code_groups, program.prior_draws(3)
    x = torch.rand(5, 1, 4, 4)
    means = program.posterior_means(x)["z"]
    torch.testing.assert_close(means, program.posterior_means(x)["z"], rtol=0, atol=0)  # no dropout mask drawn
    program.decode({"z": means})
    for key, value in vae.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert vae.training and vae.encoder.body[1].training and not vae.decoder.body[1].training


def test_mlp_dropout_acts_after_each_encoder_hidden_layer_in_training_only():
    network = MLPNetwork(hidden=[16, 12], dropout=0.5)
    encoder, decoder = network.encoder((12,)), network.decoder(3, (1, 12))
    assert [type(m).__name__ for m in encoder.body] == ["Linear", "Softplus", "Dropout"] * 2
    assert encoder.body[2].p == 0.5
    assert "Dropout" not in [type(m).__name__ for m in decoder.body]  # scVI's decoder has none
    x = torch.rand(8, 12)
    assert not torch.equal(encoder(x), encoder(x))
    encoder.eval()
    assert torch.equal(encoder(x), encoder(x))


@pytest.mark.parametrize("dropout", [-0.1, 1.0])
def test_mlp_dropout_outside_zero_to_one_is_refused(dropout):
    with pytest.raises(ConfigError, match=rf"^model.network \(network 'mlp'\): dropout must be in \[0, 1\), got {dropout}\.$"):
        VAE(data_shape=(1, 4, 4), latent_dim=2, network={"name": "mlp", "dropout": dropout})


def test_mixed_precision_refuses_a_body_that_cannot_honour_it():
    from pyro_vae.networks import mixed_precision

    with pytest.raises(ConfigError, match=r"derived from\s+pyro_vae.networks.Body.*Sequential.*float32"):
        with mixed_precision([torch.nn.Sequential(torch.nn.Linear(2, 2))], torch.bfloat16):
            pass


def test_mixed_precision_training_includes_an_autoregressive_likelihoods_causal_stack():
    from pyro_vae.networks import mixed_precision
    from pyro_vae.programs import Program

    def network_bodies(vae):
        return Program(vae).network_bodies()

    vae = VAE(data_shape=(1, 8, 8), latent_dim=3, network={"name": "mlp", "hidden": [16]},
              likelihood={"name": "pixelcnn-bernoulli", "channels": 8, "kernel": 5})
    assert network_bodies(vae) == [vae.encoder, vae.decoder, vae.likelihood.stack]
    plain = tiny_vae()
    assert network_bodies(plain) == [plain.encoder, plain.decoder]  # a factorized likelihood adds none
    x = torch.bernoulli(torch.full((4, 1, 8, 8), 0.5))
    full = vae.likelihood.pixel_part(x)
    with mixed_precision(network_bodies(vae), torch.bfloat16):
        mixed = vae.likelihood.pixel_part(x)
    assert mixed.dtype == torch.float32 and not torch.equal(full, mixed)
    assert torch.allclose(full, mixed, rtol=0.05, atol=0.05)
