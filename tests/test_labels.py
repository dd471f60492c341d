"""Labels in the generative story: the conditional VAE (cvae) and the semi-supervised M2 (m2), checked
against sums over the classes by hand, quadrature, known classifiers and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pyro_vae import Config, Trainer, load_run
from pyro_vae.cli import main
from pyro_vae.config import OBJECTIVES
from pyro_vae.data import DataSplits, labelled_subset
from pyro_vae.errors import ConfigError, DataError, ProgramError
from pyro_vae.evaluation import evaluate
from pyro_vae.labelled import ConditionalVAE, SemiSupervisedVAE
from pyro_vae.metrics import enumerated_elbo_terms, enumerated_log_evidence, label_predictions, log_evidence
from pyro_vae.numerics import seeded
from pyro_vae.programs import as_program, label_use
from pyro_vae.runs import CHECKPOINT, load_checkpoint

from conftest import tiny_config

NET = {"name": "mlp", "hidden": [16]}


def m2(**options):
    return SemiSupervisedVAE(data_shape=(1, 6, 6), num_classes=3, latent_dim=2, network=NET, **options)


def cvae(**options):
    return ConditionalVAE(data_shape=(1, 6, 6), num_classes=3, latent_dim=2, network=NET, **options)


def batch(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 1, 6, 6), 0.3), generator=g), torch.randint(0, 3, (n,), generator=g)


def labelled_config(program: str, objective="enumerate", labels=0, **model) -> Config:
    """Synthetic 6x6 data (4 clusters, labels = cluster), binarized, a tiny program over its 4 classes."""
    return tiny_config(data={"binary": True, "labels": labels},
                       model={"program": program, "num_classes": 4, "latent_dim": 2, "network": NET, **model},
                       train={"objective": {"name": objective} if isinstance(objective, str) else objective,
                              "epochs": 2, "validation": 16})


# -- the protocol ------------------------------------------------------------------------------


def test_how_a_program_takes_labels_is_read_off_its_signature():
    assert label_use(ConditionalVAE) == "required" and label_use(SemiSupervisedVAE) == "optional"
    from pyro_vae.vae import VAE

    assert label_use(VAE) is None

    class Mismatched(torch.nn.Module):
        def model(self, x, y):
            pass

        def guide(self, x):
            pass

    with pytest.raises(ProgramError, match="model and guide must take labels alike"):
        label_use(Mismatched)


def test_labels_are_refused_unless_integer_classes_of_the_program():
    program = as_program(cvae())
    with pytest.raises(DataError, match="integer classes"):
        program.labelled(torch.tensor([0.0, 1.0]))
    with pytest.raises(DataError, match=r"values in \[0, 3\].*num_classes = 3, so labels are 0..2"):
        program.labelled(torch.tensor([0, 3]))
    with pytest.raises(ProgramError, match="conditional program .* give them"):
        OBJECTIVES.build("elbo").step(program.source, batch()[0])  # a conditional program never runs without y
    with pytest.raises(ProgramError, match="does not take labels"):
        as_program(tiny_vae_program()).labelled(torch.tensor([0]))


def tiny_vae_program():
    from conftest import tiny_vae

    return tiny_vae()


# -- the maths ---------------------------------------------------------------------------------


def test_enumerated_elbo_equals_the_sum_over_classes_by_hand():
    """ELBO(x) = sum_y q(y|x) [log p(x|y, z_y) + log p(y) + log p(z_y) - log q(z_y|x, y) - log q(y|x)]
    at the z_y the enumeration drew, computed from the program's own distributions."""
    torch.manual_seed(0)
    module = m2()
    x, _ = batch(4)
    program = as_program(module)
    objective = OBJECTIVES.build("enumerate")
    with torch.no_grad():
        terms = objective.terms(program.source, x)
        z = terms.z["z"]  # (3, 4, 2): one draw per class and datapoint
        features = module.encoder(x)
        q_y = module.q_y_given_features(features)
        by_hand = torch.zeros(4)
        for c in range(3):
            y = F.one_hot(torch.full((4,), c), 3).float()
            log_q_y = q_y.log_prob(y)
            bound = (module.p_x_given_z_y(z[c], y).log_prob(x) + module.p_y().expand([4]).log_prob(y)
                     + module.p_z().log_prob(z[c]) - module.q_z_given_x_y(features, y).log_prob(z[c]) - log_q_y)
            by_hand += log_q_y.exp() * bound
        loss = objective.surrogate(terms)[1]
        evaluated = enumerated_elbo_terms(program, x)
    assert torch.allclose(-loss, by_hand.sum(), rtol=1e-5)
    assert evaluated["elbo"].shape == (4,)
    assert torch.allclose(evaluated["reconstruction"] - evaluated["kl"], evaluated["elbo"])


def test_log_evidence_with_y_summed_exactly_matches_quadrature():
    """A 1-D z: p(x) = sum_y p(y) int p(x|y, z) N(z; 0, 1) dz by a fine grid, against the estimator
    that sums y exactly and importance-samples z given each class; and the joint estimator (y and z
    sampled) agrees too."""
    torch.manual_seed(1)
    module = SemiSupervisedVAE(data_shape=(1, 2, 2), num_classes=3, latent_dim=1, network=NET)
    x = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]], [[[0.0, 0.0], [0.0, 1.0]]]])
    grid = torch.linspace(-8, 8, 4001)
    dz = grid[1] - grid[0]
    with torch.no_grad():
        exact = []
        for i in range(2):
            per_class = []
            for c in range(3):
                y = F.one_hot(torch.full((len(grid),), c), 3).float()
                log_joint = module.p_x_given_z_y(grid[:, None], y).log_prob(x[i].expand(len(grid), 1, 2, 2)) \
                    + torch.distributions.Normal(0.0, 1.0).log_prob(grid) + math.log(1 / 3)
                per_class.append(torch.logsumexp(log_joint, 0) + dz.log())
            exact.append(torch.logsumexp(torch.stack(per_class), 0))
        exact = torch.stack(exact)
        summed = enumerated_log_evidence(as_program(module), x, 4000)
        joint = log_evidence(as_program(module), x, 20000)
    assert torch.allclose(summed, exact, atol=0.01), (summed, exact)
    assert torch.allclose(joint, exact, atol=0.03), (joint, exact)


def test_the_standard_error_of_log_px_with_y_summed_matches_its_spread_over_repeats():
    """s.e.(log p_hat(x)) = sqrt(sum_y Var(w_y) / K) / p_hat(x) (the delta method over independent
    classes): over 150 repeats at K = 1024 its mean is the spread of the estimates, within 15%, where
    the weights are light-tailed (datapoints 0 and 1 here; the third's heavier tail makes the
    estimated variance low, as for any importance sampler's)."""
    from pyro_vae.metrics import enumerated_log_evidence_diagnostics

    torch.manual_seed(0)
    program = as_program(m2())
    x = batch(3)[0]
    torch.manual_seed(5)
    first = enumerated_log_evidence_diagnostics(program, x, 8)
    torch.manual_seed(5)
    torch.testing.assert_close(first["log_px"], enumerated_log_evidence(program, x, 8))  # the same estimate
    repeats = [enumerated_log_evidence_diagnostics(program, x, 1024) for _ in range(150)]
    spread = torch.stack([r["log_px"] for r in repeats]).std(0)
    reported = torch.stack([r["stderr"] for r in repeats]).mean(0)
    assert torch.allclose(reported[:2], spread[:2], rtol=0.15), (reported, spread)
    assert (reported < 2 * spread).all() and (reported > spread / 2).all()


def test_accuracy_and_confusion_of_a_classifier_set_by_hand():
    """q(y|x) reads pixel c for class c (weights set by hand): the predictions, accuracy and
    confusion matrix are known."""
    module = SemiSupervisedVAE(data_shape=(1, 1, 3), num_classes=3, latent_dim=1, network={"name": "mlp", "hidden": []})
    with torch.no_grad():
        module.q_y_logits.weight.copy_(10 * torch.eye(3))
        module.q_y_logits.bias.zero_()
    x = torch.tensor([[[[1.0, 0, 0]]], [[[0, 1.0, 0]]], [[[0, 0, 1.0]]], [[[0, 1.0, 0]]]])
    truth = torch.tensor([0, 1, 2, 0])  # the last one is a 0 that looks like a 1
    predicted, probs = label_predictions(as_program(module), x)
    assert predicted.tolist() == [0, 1, 2, 1] and torch.allclose(probs.sum(1), torch.ones(4))
    result = evaluate(module, x, samples=0, labels=truth)
    summary = result.summary()["classification"]
    assert summary["accuracy"]["mean"] == pytest.approx(0.75)
    assert summary["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_a_conditional_program_scores_x_given_its_labels():
    """evaluate(labels=y) of a CVAE is the labelled program's ELBO and log p(x|y); and log p(x|y)
    differs between labels (the decoder reads y)."""
    torch.manual_seed(0)
    module = cvae(prior_given_label=True)
    x, y = batch(6)
    result = evaluate(module, x, samples=200, seed=3, labels=y)
    other = evaluate(module, x, samples=200, seed=3, labels=(y + 1) % 3)
    assert result.summary()["conditional"].startswith("every value given the datapoint's label")
    assert not torch.allclose(result.log_px, other.log_px)
    by_hand = log_evidence(as_program(module).labelled(y), x, 200)
    assert torch.all((result.log_px - by_hand).abs() < 0.5)  # the same estimate, other draws
    with pytest.raises(ProgramError, match="conditional program"):
        evaluate(module, x)


def test_a_semi_supervised_program_given_its_labels_has_z_alone_for_latent_whichever_view_is_probed_first():
    y = torch.tensor([0, 1, 2, 0, 1])
    base = as_program(m2())
    assert base.latent_shapes == {"y": (3,), "z": (2,)} and base.labelled(y).latent_shapes == {"z": (2,)}
    other = as_program(m2())
    assert other.labelled(y).latent_dim == 2 and other.latent_dim is None


def test_m2_posterior_means_and_analogies_are_q_and_the_decoder_at_the_labels_by_hand():
    from pyro_vae.plots import analogies

    torch.manual_seed(0)
    module = m2()
    x, y = batch(4)
    program = as_program(module)
    result = evaluate(program, x, samples=0, labels=y)
    features = module._features(x)
    loc = module.q_z_given_x_y(features, module.one_hot(y)).mean  # E_q[z|x, y] at each one's own label
    torch.testing.assert_close(result.posterior_mean, loc)
    grid = analogies(program, x, y).reshape(4, 4, 1, 6, 6)  # a row per input: the input, then classes 0..2
    torch.testing.assert_close(grid[:, 0], x)
    for c in range(3):
        by_hand = module.p_x_given_z_y(loc, module.one_hot(torch.full_like(y, c))).mean
        torch.testing.assert_close(grid[:, c + 1], by_hand)


def test_the_relaxation_and_the_score_function_train_m2_on_unlabelled_batches():
    program = as_program(m2())
    x, _ = batch(5)
    for name in ("gumbel-softmax", "score-function", "vimco"):
        surrogate, loss = OBJECTIVES.build(name).step(program.source, x)
        surrogate.backward()
        assert torch.isfinite(loss)
    with pytest.raises(ProgramError, match="not reparameterized"):
        OBJECTIVES.build("elbo").step(program.source, x)  # y latent: a pathwise objective cannot take it
    with pytest.raises(ProgramError, match="needs a discrete latent"):
        OBJECTIVES.build("enumerate").step(as_program(cvae()).labelled(batch(5)[1]).source, x)


# -- the labelled subset -----------------------------------------------------------------------


def test_the_labelled_subset_is_stratified_and_reproducible():
    labels = torch.arange(60) % 4
    first = labelled_subset(labels, 12, seed=0)
    assert torch.bincount(labels[first], minlength=4).tolist() == [3, 3, 3, 3]
    assert torch.equal(first, labelled_subset(labels, 12, seed=0))
    assert not torch.equal(first, labelled_subset(labels, 12, seed=1))
    with pytest.raises(ConfigError, match="multiple of the 4 classes"):
        labelled_subset(labels, 10, seed=0)
    with pytest.raises(ConfigError, match="class 3 has 1 in the training split: ask for at most 4"):
        labelled_subset(torch.tensor([0, 0, 0, 1, 1, 2, 2, 3]), 8, seed=0)
    with pytest.raises(ConfigError, match="has 7 labelled datapoints"):
        labelled_subset(torch.tensor([0, 0, 1, 1, 2, 2, 3]), 8 * 4, seed=0)


# -- training, evaluation, resume --------------------------------------------------------------


def test_m2_trains_with_few_labels_and_reports_accuracy(tmp_path):
    config = labelled_config("m2", {"name": "enumerate", "classifier_weight": 10.0}, labels=8)
    lines = []
    trainer = Trainer(config, tmp_path, progress=False, log=lines.append).fit()
    assert any("labels: 8 of 112 training datapoints labelled (2 per class, seed 0); 104 unlabelled" in line
               for line in lines)
    assert all(0 <= m["test"]["accuracy"] <= 1 and math.isfinite(m["test"]["elbo"]) for m in trainer.history)
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["data"]["labelled"]["count"] == 8
    run = load_run(tmp_path, trust_code=False)  # a library program: no --trust-code
    result = evaluate(run.program, run.data.prepared_test, samples=5, labels=run.data.test_labels)
    summary = result.summary()
    assert summary["labels_summed"].startswith("y summed") and len(summary["classification"]["confusion"]) == 4
    assert "accuracy  argmax_y q(y|x)" in result.table()
    per_class = tiny_config(**{**config.to_dict(), "data": {**config.data, "labels": 0, "labels_per_class": 2}})
    other = Trainer(per_class, tmp_path / "per-class", progress=False, log=lambda line: None).fit()
    assert torch.equal(other.labelled_index, trainer.labelled_index)  # 2 per class of 4: the same draw as 8
    both = tiny_config(**{**config.to_dict(), "data": {**config.data, "labels_per_class": 2}})
    with pytest.raises(ConfigError, match="data.labels = 8 and data.labels_per_class = 2: set one of the two"):
        Trainer(both, tmp_path / "both", progress=False, log=lambda line: None).fit()


def test_a_loaded_m2_scores_with_y_summed_classifies_and_the_cli_encodes_and_explains(tmp_path, capsys):
    Trainer(labelled_config("m2", {"name": "enumerate", "classifier_weight": 5.0}, labels=8), tmp_path / "m2",
            progress=False, log=lambda line: None).fit()
    run = load_run(tmp_path / "m2", trust_code=False)
    x = run.data.prepared_test[:6]
    with seeded(3, "cpu"):
        elbo = enumerated_elbo_terms(run.program, x)["elbo"]
    with seeded(3, "cpu"):
        by_hand = enumerated_log_evidence(run.program, x, 7)
    torch.testing.assert_close(run.elbo(x, seed=3), elbo)
    torch.testing.assert_close(run.log_prob(x, 7, seed=3)["log_px"], by_hand)
    predicted, q_y = run.classify(x)
    assert torch.equal(predicted, label_predictions(run.program, x)[0]) and torch.allclose(q_y.sum(1), torch.ones(6))
    Trainer(labelled_config("cvae", "elbo"), tmp_path / "cv", progress=False, log=lambda line: None).fit()
    cv_run = load_run(tmp_path / "cv", trust_code=False)
    predicted, p_y = cv_run.classify(x, samples=20, seed=4)  # a conditional program: Bayes' rule over p(x|y)
    with seeded(4, "cpu"):  # by hand: log p(x|y = c) for c = 0..3 in turn, K = 20, p(y) uniform
        log_px_y = torch.stack([log_evidence(cv_run.program.labelled(torch.full((6,), c)), x, 20) for c in range(4)], 1)
    torch.testing.assert_close(p_y, log_px_y.softmax(1))
    assert torch.equal(predicted, log_px_y.argmax(1))
    assert torch.equal(cv_run.classify(x, samples=20, prior=[0.0, 0.0, 1.0, 0.0])[0], torch.full((6,), 2))
    with pytest.raises(ConfigError, match="prior must be 4 class probabilities"):
        cv_run.classify(x, prior=[0.5, 0.5])
    assert main(["encode", str(tmp_path / "m2"), "--out", str(tmp_path / "m2.npz"), "--samples", "3", "--no-progress"]) == 0
    table = np.load(tmp_path / "m2.npz")
    assert table["q_y"].shape == (len(run.data.prepared_test), 4) and table["mean"].shape == (len(run.data.prepared_test), 2)
    assert np.array_equal(table["predicted"], table["q_y"].argmax(1)) and "label" in table
    # the conditional run: z, ELBO(x|y) and log p(x|y) given each datapoint's label; refused without labels
    assert main(["encode", str(tmp_path / "cv"), "--out", str(tmp_path / "cv.csv"), "--samples", "3",
                 "--no-progress"]) == 0
    cv = load_run(tmp_path / "cv", trust_code=False)
    header, first = (tmp_path / "cv.csv").read_text().splitlines()[:2]
    assert header.startswith("index,label,elbo,log_px,log_px_stderr,elbo_stderr,mean_0")
    elbo = float(first.split(",")[2])
    from pyro_vae.evaluation import batch_seed  # (encode seeds batch b by batch_seed(seed, b), as evaluate does)

    first_batch = slice(0, cv.config.eval.batch_size)
    assert elbo == pytest.approx(cv.evidence(cv.data.test[first_batch], 3, seed=batch_seed(cv.config.seed, 0),
                                             labels=cv.data.test_labels[first_batch])["elbo"][0].item(), rel=1e-5)
    np.save(tmp_path / "unlabelled.npy", cv.data.splits.test[:4, 0].numpy())
    assert main(["encode", str(tmp_path / "cv"), "--data", str(tmp_path / "unlabelled.npy"), "--out",
                 str(tmp_path / "no.npz"), "--no-progress"]) == 2
    assert "has no labels: give --data a file with them" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["explain", str(tmp_path / "cv"), "--index", "0", "--samples", "20"]) == 0
    assert "log p(x|y) = ELBO(x|y) + KL(q(z|x, y) || p(z|x, y))" in capsys.readouterr().out


def test_m2_resumes_bit_identically(tmp_path):
    config = labelled_config("m2", {"name": "enumerate", "classifier_weight": 5.0}, labels=8)
    Trainer(config, tmp_path / "straight", progress=False, log=lambda line: None).fit()
    half = Config.from_dict({**config.to_dict(), "train": {**config.to_dict()["train"], "epochs": 1}})
    Trainer(half, tmp_path / "resumed", progress=False, log=lambda line: None).fit()
    recorded = Config.load(tmp_path / "resumed" / "config.toml").to_dict()  # (as `train --resume` reads it)
    recorded["train"]["epochs"] = 2
    Trainer(Config.from_dict(recorded), tmp_path / "resumed", progress=False, log=lambda line: None).fit(resume=True)
    a, b = (load_checkpoint(tmp_path / d / CHECKPOINT)["model"] for d in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_every_label_shown_trains_m2_on_labelled_batches_alone(tmp_path):
    trainer = Trainer(labelled_config("m2", "score-function"), tmp_path, progress=False, log=lambda line: None).fit()
    assert trainer.pool is trainer.labelled_index and len(trainer.labelled_index) == 112


def test_cvae_trains_loads_and_scores_given_labels(tmp_path):
    Trainer(labelled_config("cvae", "elbo-analytic-kl"), tmp_path, progress=False, log=lambda line: None).fit()
    run = load_run(tmp_path, trust_code=False)
    with pytest.raises(ProgramError, match="conditional program"):
        run.sample(4)  # which classes?
    images = run.sample(labels=[0, 1, 2, 3])
    assert images.shape == (4, 1, 6, 6)
    e = run.elbo(run.data.prepared_test[:4], labels=run.data.test_labels[:4])
    assert e.shape == (4,) and torch.all(torch.isfinite(e))


def test_cvae_samples_carry_their_classes():
    """With the decoder's weights on z zeroed, p(x|z, y) depends on y alone: the conditional sampler's
    row for class c is the decoder's mean at class c, and the classes differ."""
    torch.manual_seed(0)
    module = cvae()
    first = next(m for m in module.decoder.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        first.weight[:, :2] = 0  # the inputs are [z (2), y (3)]
    program = as_program(module)
    labels = torch.tensor([2, 0, 1])
    images = program.labelled(labels).decode(program.labelled(labels).prior_draws(3))
    for row, c in zip(images, labels):
        alone = program.labelled(torch.tensor([int(c)])).decode({"z": torch.randn(1, 2)})[0]
        assert torch.allclose(row, alone, atol=1e-6)
    assert not torch.allclose(images[0], images[1])


# -- bad input -----------------------------------------------------------------------------------


def test_bad_label_settings_are_refused_in_words(tmp_path):
    def refused(config, match, error=ConfigError, splits=None):
        with pytest.raises(error, match=match):
            Trainer(config, tmp_path / "r", progress=False, log=lambda line: None, splits=splits).fit()

    refused(tiny_config(data={"labels": 8}), "data.labels = 8 is for a semi-supervised program")
    refused(labelled_config("cvae", "elbo", labels=8), "takes every label")
    refused(tiny_config(train={"objective": {"name": "elbo", "classifier_weight": 1.0}}),
            "classifier_weight = 1 is for a semi-supervised program")
    refused(labelled_config("m2", labels=10), "multiple of the 4 classes")
    refused(labelled_config("m2", labels=400), "training split has 112")
    refused(labelled_config("m2", num_classes=5), "num_classes = 5, and the training labels take 4 distinct values",
            DataError)
    x = np.random.default_rng(0).random((40, 6, 6)).round().astype(np.float32)
    refused(labelled_config("m2"), "learns from labels, and dataset 'given' has none", DataError, splits=x)
    refused(labelled_config("m2"), r"values in \[0, 7\]", DataError,
            splits=DataSplits.from_arrays(x, np.arange(40) % 8))
    refused(labelled_config("cvae", "enumerate"), "needs a discrete latent", ProgramError)


def test_the_cli_trains_evaluates_and_samples_a_semi_supervised_run(tmp_path, capsys):
    run = tmp_path / "m2"
    argv = ["train", "--set", "data=synthetic", "--set", "data.side=6", "--set", "data.n_train=96",
            "--set", "data.n_test=32", "--set", "data.binary=true", "--set", "data.labels=8",
            "--set", "model.program=m2", "--set", "model.num_classes=4", "--set", "model.latent_dim=2",
            "--set", "model.network.hidden=[16]", "--set", "train.epochs=1", "--set", "train.objective=enumerate",
            "--set", "train.objective.classifier_weight=5", "--set", "eval.samples=3", "--out", str(run),
            "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "accuracy  argmax_y q(y|x)" in out and "ELBO  [y summed exactly]" in out
    assert all((run / name).is_file() for name in ("confusion.png", "samples.png", "latent.png", "analogies.png"))
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert 0 <= evaluation["classification"]["accuracy"]["mean"] <= 1
    assert main(["sample", str(run), "--classes", "0,3", "--n", "2", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["sample", str(run), "--classes", "9", "--n", "2", "--out", str(tmp_path / "t.png")]) == 2
    assert "classes are 0..3" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--samples", "2", "--json"]) == 0
    assert "classification" in json.loads(capsys.readouterr().out)


def test_the_cli_refuses_to_sample_a_conditional_run_without_classes(tmp_path, capsys):
    Trainer(labelled_config("cvae", "elbo"), tmp_path, progress=False, log=lambda line: None).fit()
    assert main(["sample", str(tmp_path), "--n", "2"]) == 2
    assert "--classes all" in capsys.readouterr().err
    assert main(["sample", str(tmp_path), "--classes", "all", "--n", "2", "--out", str(tmp_path / "s.png")]) == 0
