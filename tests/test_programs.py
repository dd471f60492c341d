"""Your own Pyro program through the whole library: trained, resumed, evaluated, sampled, compared
as written; never silently replaced by the stock VAE's maths; refused in words where it breaks
the protocol."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vae import VAE, Config, ConfigError, ProgramError, Trainer, finish_run, load_run
from pyro_vae.cli import main
from pyro_vae.config import OBJECTIVES
from pyro_vae.exact import exact_evidence
from pyro_vae.evaluation import evaluate
from pyro_vae.metrics import elbo_terms, log_evidence_diagnostics
from pyro_vae.programs import Program
from pyro_vae.terms import DirectSource, TraceSource
from pyro_vae.runs import CHECKPOINT, CONFIG, load_checkpoint
from pyro_vae.training import svi_step

import user_programs
from conftest import TracedVAE, tiny_config, tiny_vae

QUIET = dict(progress=False, log=lambda s: None)
TINY_VAE = dict(data_shape=(1, 6, 6), latent_dim=2, network={"name": "mlp", "hidden": [16]})


def own_config(program: str | None = "user_programs:TwoLatents", side: int = 6, **options) -> Config:
    """Tiny synthetic data; the model program ``program`` with ``options`` (None: the stock default)."""
    raw = {"data": {"name": "synthetic", "n_train": 64, "n_test": 16, "side": side},
           "train": {"epochs": 2, "batch_size": 32, "lr": 1e-2},
           "eval": {"samples": 20, "train_subset": 32, "exact_points": 2}}
    if program is not None:
        raw["model"] = {"program": program, **options}
    return Config.from_dict(raw)


def parameters(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# -- a subclass is honoured ----------------------------------------------------------------------


def test_a_subclass_that_tempers_the_likelihood_is_trained_and_evaluated_as_written(binary_splits):
    torch.manual_seed(0)
    stock = tiny_vae()
    tempered = user_programs.TemperedVAE(temperature=0.1, **TINY_VAE)
    tempered.load_state_dict(stock.state_dict())
    assert Program(stock).direct and not Program(tempered).direct  # its model is not VAE.model: traced
    x = binary_splits.train[:16]
    elbo = OBJECTIVES.build("elbo")
    with pyro.validation_enabled(False):
        torch.manual_seed(3)
        ours = elbo.step(Program(tempered).source, x)[1].item()
        torch.manual_seed(3)
        pyros = Trace_ELBO().loss(tempered.model, tempered.guide, x)
        torch.manual_seed(3)
        terms = DirectSource(stock).draw(x, 1)  # the same draws, the untempered terms
        expected = -(0.1 * terms.log_likelihood + terms.log_prior - terms.log_q).sum().item()
        torch.manual_seed(3)
        untempered = elbo.step(Program(stock).source, x)[1].item()
    assert ours == pytest.approx(pyros, rel=1e-5) and ours == pytest.approx(expected, rel=1e-5)
    assert abs(ours - untempered) > 0.5 * abs(untempered)  # the override counts
    a, b = (evaluate(m, x, seed=1) for m in (tempered, stock))
    torch.testing.assert_close(a.reconstruction, 0.1 * b.reconstruction)  # evaluation runs the model as written
    torch.testing.assert_close(a.kl, b.kl)


def test_the_tempered_subclass_trains_through_the_trainer_and_its_run_folder_rebuilds_it(tmp_path):
    config = tiny_config(train={"epochs": 1})
    stock = Trainer(config, tmp_path / "stock", **QUIET).fit()
    torch.manual_seed(config.seed)
    tempered = user_programs.TemperedVAE(temperature=0.1, **TINY_VAE)
    trainer = Trainer(config, tmp_path / "tempered", model=tempered, **QUIET).fit()
    assert trainer.history[0]["objective"] > 0.5 * stock.history[0]["objective"]  # about a tenth of the loss
    table = Config.load(tmp_path / "tempered" / CONFIG).model.table()
    assert table["program"] == "user_programs:TemperedVAE" and table["temperature"] == 0.1
    assert table["prior"] == {"name": "standard-normal"} and table["code"]["sha256"]
    run = load_run(tmp_path / "tempered", trust_code=True)
    assert isinstance(run.model, user_programs.TemperedVAE) and run.model.temperature == 0.1
    for name, value in parameters(tempered).items():
        assert torch.equal(run.model.state_dict()[name], value)


def test_a_subclass_that_only_changes_components_keeps_the_direct_terms_and_one_that_rewrites_them_is_traced():
    class OwnPrior(VAE):
        def p_z(self):
            return super().p_z()

    assert Program(OwnPrior(**TINY_VAE)).direct  # model and guide are VAE's: the same program
    assert not Program(TracedVAE(**TINY_VAE)).direct
    patched = tiny_vae()
    patched.model = lambda x: None  # an instance attribute counts too
    assert not Program(patched).direct


def test_the_traced_stock_program_trains_to_the_parameters_of_the_direct_one(binary_splits):
    """TracedVAE's model and guide are VAE's, written again: traced, the same maths as the direct terms."""
    torch.manual_seed(0)
    direct = tiny_vae()
    traced = TracedVAE(**TINY_VAE)
    traced.load_state_dict(direct.state_dict())
    programs = [Program(direct), Program(traced)]
    assert isinstance(programs[1].source, TraceSource)
    for program, seed in zip(programs, (5, 5)):
        torch.manual_seed(seed)
        optimizer = torch.optim.Adam(program.module.parameters(), lr=1e-2)
        with pyro.validation_enabled(False):
            for i in range(20):
                svi_step(program, OBJECTIVES.build({"name": "iwae", "num_particles": 3}), optimizer,
                         binary_splits.train[(i % 4) * 32 : (i % 4 + 1) * 32])
    for name, value in direct.state_dict().items():
        torch.testing.assert_close(traced.state_dict()[name], value, rtol=1e-4, atol=1e-5)


# -- a user program, end to end --------------------------------------------------------------------


def test_a_user_program_trains_resumes_bit_identically_and_is_evaluated_from_python(tmp_path):
    config = own_config()
    torch.manual_seed(0)
    whole = Trainer(config, tmp_path / "whole", model=user_programs.TwoLatents(), **QUIET).fit()
    torch.manual_seed(0)
    Trainer(config, tmp_path / "part", model=user_programs.TwoLatents(), **QUIET).fit(stop_after=1)
    resumed = Trainer(Config.load(tmp_path / "part" / CONFIG), tmp_path / "part", **QUIET).fit(resume=True)
    for name, value in parameters(whole.program.module).items():
        assert torch.equal(resumed.program.module.state_dict()[name], value), name
    recorded = Config.load(tmp_path / "whole" / CONFIG).model
    assert recorded.program == "user_programs:TwoLatents" and recorded.options == {"dim": 2, "hidden": 16}
    assert recorded.code["file"] == str(Path(user_programs.__file__).resolve())
    run = load_run(tmp_path / "whole", trust_code=True)
    result = finish_run(run, log=lambda s: None)
    summary = json.loads((tmp_path / "whole" / "evaluation.json").read_text())
    assert summary["model_program"] == "user_programs:TwoLatents" and summary["importance_samples"] == 20
    assert math.isfinite(summary["log_px"]["stderr"]) and summary["log_px"]["mean"] >= summary["elbo"]["mean"] - 1.0
    assert "active_units" not in summary  # two latent sites: not one continuous vector
    assert summary["kl_estimator"] == "closed form per site, given the draws before it"  # z2's KL depends on z1's draw
    for picture in ("samples.png", "reconstructions.png", "curves.png"):
        assert (tmp_path / "whole" / picture).is_file()
    assert not (tmp_path / "whole" / "latent.png").exists() and result.posterior_mean is None


def test_a_single_vector_latent_program_reports_active_units_and_draws_its_latent_picture(tmp_path):
    Trainer(own_config("user_programs:LinearGaussian", side=3, latent_dim=2), tmp_path / "run", **QUIET).fit()
    result = finish_run(load_run(tmp_path / "run", trust_code=True), log=lambda s: None)
    summary = result.summary()
    assert summary["latent_dim"] == 2 and 0 <= summary["active_units"] <= 2 and summary["kl_estimator"] == "closed form"
    assert "exact" in summary and summary["exact"]["method"].startswith("quadrature")  # a 2-D latent: quadrature
    assert (tmp_path / "run" / "latent.png").is_file()


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    (root / "own.toml").write_text(
        'seed = 1\n[data]\nname = "synthetic"\nn_train = 64\nn_test = 16\nside = 6\n'
        '[model]\nprogram = "user_programs:TwoLatents"\nhidden = 12\n'
        '[train]\nepochs = 2\nbatch_size = 32\nlr = 0.01\n[eval]\nsamples = 10\ntrain_subset = 16\n')
    assert main(["train", str(root / "own.toml"), "--out", str(root / "run"), "--no-progress"]) == 0
    return root


def test_the_cli_trains_a_user_program_and_records_how_to_rebuild_it(cli_run):
    text = (cli_run / "run" / CONFIG).read_text()
    assert 'program = "user_programs:TwoLatents"' in text and "hidden = 12" in text and "dim = 2" in text
    assert "[model.code]" in text and "sha256 = " in text
    assert (cli_run / "run" / "evaluation.json").is_file() and (cli_run / "run" / "samples.png").is_file()


def test_a_run_of_user_code_is_loaded_only_with_trust_code(cli_run, capsys):
    for command in (["evaluate", str(cli_run / "run")], ["sample", str(cli_run / "run")],
                    ["explain", str(cli_run / "run"), "--samples", "20"],
                    ["train", "--resume", str(cli_run / "run"), "--set", "train.epochs=3", "--no-progress"]):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert "names user code" in err and "--trust-code" in err and "user_programs.py" in err
    assert main(["evaluate", str(cli_run / "run"), "--trust-code", "--samples", "12"]) == 0
    assert "log p(x)  [importance sampled, K=12]" in capsys.readouterr().out
    assert main(["sample", str(cli_run / "run"), "--trust-code", "--n", "4"]) == 0
    assert list((cli_run / "run").glob("samples-n4-*.png"))
    assert main(["explain", str(cli_run / "run"), "--trust-code", "--samples", "20", "--index", "0"]) == 0
    assert "importance sampled, K = 20" in capsys.readouterr().out


def test_resuming_a_user_program_through_the_cli(cli_run):
    before = load_checkpoint(cli_run / "run" / CHECKPOINT)["epoch"]
    assert main(["train", "--resume", str(cli_run / "run"), "--trust-code", "--set", "train.epochs=3",
                 "--no-progress"]) == 0
    assert load_checkpoint(cli_run / "run" / CHECKPOINT)["epoch"] == before + 1 == 3


def test_compare_trains_a_user_program_under_each_objective(cli_run, capsys):
    out = cli_run / "cmp"
    assert main(["compare", str(cli_run / "own.toml"), "--objectives", "elbo,iwae:2,stl,dreg:2", "--budget", "4steps",
                 "--curve-points", "1", "--curve-samples", "4", "--grad-draws", "3", "--grad-batch", "8",
                 "--snr-k", "1,2", "--set", "eval.samples=8", "--out", str(out), "--no-progress"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["objective"] for r in rows] == ["elbo", "iwae", "stl", "dreg"] and all(r["steps"] == 4 for r in rows)
    assert all(math.isfinite(r["encoder_grad_variance"]) for r in rows)
    assert main(["evaluate", str(out / "stl-K10"), "--trust-code", "--samples", "5"]) == 0


def test_a_program_whose_code_changed_since_training_is_refused_naming_the_file(tmp_path, monkeypatch, capsys):
    source = Path(user_programs.__file__).read_text()
    (tmp_path / "edited_programs.py").write_text(source)
    monkeypatch.chdir(tmp_path)  # the current directory is where model.program is imported from
    monkeypatch.delitem(sys.modules, "edited_programs", raising=False)
    config = own_config("edited_programs:TwoLatents")
    Trainer(config, tmp_path / "run", **QUIET).fit()
    load_run(tmp_path / "run", trust_code=True)  # unchanged: fine
    (tmp_path / "edited_programs.py").write_text(source + "\n# an edit\n")
    with pytest.raises(ProgramError, match="code changed since .*/edited_programs.py has SHA-256"):
        load_run(tmp_path / "run", trust_code=True)
    assert main(["evaluate", str(tmp_path / "run"), "--trust-code"]) == 2
    assert "edited_programs.py" in capsys.readouterr().err
    with pytest.raises(ProgramError, match="code changed"):
        Trainer(Config.load(tmp_path / "run" / CONFIG), tmp_path / "run", **QUIET).fit(resume=True)


def test_a_program_whose_options_cannot_be_recorded_is_loaded_with_model_and_refused_without(tmp_path):
    notes = []
    program = user_programs.Unrecorded(width=8)
    Trainer(own_config(None), tmp_path / "run", model=program, progress=False, log=notes.append).fit()
    assert any("cannot rebuild its program by itself" in n and "width" in n for n in notes)
    with pytest.raises(ProgramError, match=r"option\(s\) width of user_programs:Unrecorded were not recorded"):
        load_run(tmp_path / "run", trust_code=True)
    run = load_run(tmp_path / "run", model=user_programs.Unrecorded(width=8))
    assert torch.equal(run.model.decoder[0].weight, program.decoder[0].weight)
    with pytest.raises(ProgramError, match="was trained with model program 'user_programs:Unrecorded'"):
        load_run(tmp_path / "run", model=user_programs.TwoLatents())


# -- the evidence of a user program is the same maths -------------------------------------------


def test_the_importance_sampled_evidence_of_a_linear_gaussian_user_program_is_its_closed_form():
    torch.manual_seed(4)
    program = user_programs.LinearGaussian().guide_near_the_posterior()
    with torch.no_grad():
        x = program.marginal().sample((6,)).reshape(6, 1, 3, 3)
        exact = program.marginal().log_prob(x.flatten(1))
        torch.manual_seed(0)
        estimate = log_evidence_diagnostics(program, x, 4000)
        quadrature = exact_evidence(program, x)  # one 2-D latent site: the grid reads the traced terms
    assert ((estimate["log_px"] - exact).abs() < 4 * estimate["stderr"] + 1e-3).all()
    assert (estimate["stderr"] < 0.1).all()  # a check that can fail
    assert quadrature.method.startswith("quadrature") and quadrature.log_px_error.max() < 1e-3
    torch.testing.assert_close(quadrature.log_px.float(), exact, atol=2e-3, rtol=0)
    terms = elbo_terms(program, x, num_samples=2000)  # the ELBO is below log p(x), by the exact KL(q || p(z|x))
    assert (terms["elbo"] < exact).all() and ((quadrature.kl_q_posterior.float() - (exact - terms["elbo"])).abs() < 0.2).all()


# -- bad programs get a clear error ---------------------------------------------------------------


@pytest.mark.parametrize("program,fragment", [
    (user_programs.NoObservedX, 'has no observed site "x"'),
    (user_programs.GuideHasExtraSite, "the guide samples site 'z3' but the model has no site 'z3'"),
    (user_programs.ModelHasExtraLatent, "the model samples latent site 'w' but the guide has no site 'w'"),
    (user_programs.NoDataPlate, "site 'x' in the model is outside the data plate"),
    (user_programs.NotReparameterized, "the guide's site 'z2' (_NoRsample) is not reparameterized"),
    (user_programs.ParamOutsideTheModule, "pyro.param('stray_scale'), which is not one of its nn.Module parameters"),
], ids=lambda p: p.__name__ if isinstance(p, type) else "")
def test_a_program_that_breaks_the_protocol_is_refused_before_training(program, fragment, tmp_path):
    with pytest.raises(ProgramError) as e:
        Trainer(own_config(None), tmp_path / "run", model=program(), **QUIET).fit()
    assert fragment in str(e.value)
    assert not (tmp_path / "run" / CHECKPOINT).exists()


@pytest.mark.parametrize("setting,fragment", [
    ("model.program=no_such_module:Program", "cannot import module 'no_such_module' (no module named 'no_such_module')"),
    ("model.program=user_programs:Nope", "module 'user_programs' ("),
    ("model.program=user_programs", 'Give "vae" (the stock VAE, the default), "gmvae", "cvae", "m2", "quadrant-cvae", "scvi", "scvi-batch", or the import path'),
    ("model.program=math:pi", "is not an nn.Module class"),
    ("model.width=3", "unknown option 'width' for model program user_programs:TwoLatents. Its options: dim (default 2), "
                      "hidden (default 16)"),
    ("model.code=3", "model.code is reserved"),
])
def test_a_program_that_cannot_be_built_is_refused_in_words(setting, fragment, capsys, tmp_path):
    argv = ["train", "--set", "data=synthetic", "--set", "data.side=6", "--set", "model.program=user_programs:TwoLatents",
            "--set", setting, "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 2
    assert fragment in capsys.readouterr().err


def test_options_the_class_does_not_take_are_refused_in_python_too(tmp_path):
    with pytest.raises(ConfigError, match="unknown option 'depth'"):
        Trainer(own_config(depth=3), tmp_path / "run", **QUIET).fit()


@pytest.mark.parametrize("particles", [1, 3])
def test_the_traced_terms_are_the_log_densities_of_pyros_own_trace(particles, binary_splits):
    """terms.TraceSource reads each site off its own lean trace, with log q of Normal draws from their
    noise and Bernoulli log-likelihoods inside one cross-entropy: the numbers of Pyro's trace."""
    program = user_programs.TwoLatents()
    x = binary_splits.train[:5]
    vectorize = (lambda f: pyro.plate("num_particles_vectorized", particles, dim=-2)(f)) if particles > 1 else \
        (lambda f: f)
    with torch.no_grad():
        torch.manual_seed(2)
        fused = TraceSource(program.model, program.guide).draw(x, particles).total_log_likelihood()
        torch.manual_seed(2)
        terms = TraceSource(program.model, program.guide).draw(x, particles)
        torch.manual_seed(2)
        guide = pyro.poutine.trace(vectorize(program.guide)).get_trace(x)
        model = pyro.poutine.trace(pyro.poutine.replay(vectorize(program.model), trace=guide)).get_trace(x)
    lp = {name: site["fn"].log_prob(site["value"]).reshape(particles, 5) for name, site in model.nodes.items()
          if site["type"] == "sample" and name != "data"}
    lq = {name: site["fn"].log_prob(site["value"]).reshape(particles, 5) for name, site in guide.nodes.items()
          if site["type"] == "sample" and name != "data"}
    torch.testing.assert_close(terms.log_likelihood, lp["x"])
    torch.testing.assert_close(terms.log_prior, lp["z1"] + lp["z2"])
    torch.testing.assert_close(terms.log_q, lq["z1"] + lq["z2"])
    torch.testing.assert_close(fused, lp["x"].sum())  # (the fused cross-entropy, before any per-datapoint term)
    for name in ("z1", "z2"):
        assert torch.equal(terms.z[name], guide.nodes[name]["value"])  # the same draws, in the same order


def test_a_program_built_from_a_config_records_the_options_that_built_it(tmp_path):
    """Not its attributes: Doubled keeps 2 * hidden as self.hidden; its run records hidden = 8, the default
    that built it, and rebuilds the same network."""
    Trainer(own_config("user_programs:Doubled"), tmp_path / "run", **QUIET).fit()
    assert Config.load(tmp_path / "run" / CONFIG).model.options == {"hidden": 8}
    run = load_run(tmp_path / "run", trust_code=True)
    assert run.model.hidden == 16 and run.model.decoder[0].out_features == 16
