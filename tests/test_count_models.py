"""Count data through the whole library: held sparse until a batch is drawn, the scVI-class
program (latent library size, batch covariate), topic models' reports, encode of new count files
by the run's column names."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse
import torch

from pyro_vae import Config, Trainer
from pyro_vae.cli import main
from pyro_vae.data import SparseRows
from pyro_vae.programs import Program
from pyro_vae.single_cell import SingleCellVAE
from pyro_vae.trained import load_run

QUIET = dict(progress=False, log=lambda s: None)


def write_counts(path, rows: int = 80, columns: int = 12, seed: int = 0, names: bool = True) -> np.ndarray:
    """A cells x genes .h5ad-free count file: a SciPy .npz (and a vocabulary of gene names beside it)."""
    rng = np.random.default_rng(seed)
    mean = rng.gamma(1.0, 3.0, size=columns)
    counts = rng.poisson(mean * rng.gamma(4.0, 0.25, size=(rows, 1))).astype(np.int32)
    counts[:, 0] += 1
    scipy.sparse.save_npz(path, scipy.sparse.csr_matrix(counts))
    if names:
        path.with_suffix(".txt").write_text("".join(f"gene{j}\n" for j in range(columns)))
    return counts


def counts_config(path, **model) -> Config:
    return Config.from_dict({
        "data": {"name": "counts", "path": str(path), "vocabulary": str(path.with_suffix(".txt")),
                 "test_fraction": 0.25},
        "model": {"latent_dim": 2, "likelihood": "negative-binomial",
                  "network": {"name": "mlp", "hidden": [16], "input": "log1p"}, **model},
        "train": {"epochs": 2, "batch_size": 20, "lr": 1e-2},
        "eval": {"samples": 8, "train_subset": 16, "exact_points": 0}})


def test_counts_train_from_rows_held_sparse_and_every_batch_is_the_dense_values(tmp_path):
    counts = write_counts(tmp_path / "c.npz")
    trainer = Trainer(counts_config(tmp_path / "c.npz"), tmp_path / "run", **QUIET).start()
    assert isinstance(trainer.data.train, SparseRows)  # held sparse until a batch is drawn
    index = torch.tensor([3, 0, 7])
    dense = trainer.data.train[index].float()
    rows = torch.from_numpy(trainer.data.splits.held("train").to_scipy().toarray()).float()[index]
    assert torch.equal(dense, rows) and dense.sum() > 0 and counts.shape[1] == dense.shape[1]


@pytest.mark.parametrize("program", ["vae", "scvi"])
def test_no_step_before_training_makes_the_whole_training_set_dense(program, tmp_path, monkeypatch):
    """The summary, the data checks (a block of rows at a time), the library size and the scVI prior
    of log l read the sparse rows as they are held: no call makes every training row dense."""
    write_counts(tmp_path / "c.npz", rows=400)
    made_dense = []
    dense = SparseRows.float
    monkeypatch.setattr(SparseRows, "float", lambda self: made_dense.append(len(self)) or dense(self))
    monkeypatch.setattr("pyro_vae.data.prepare._check_data.__defaults__", (64,))  # blocks of 64 rows
    trainer = Trainer(counts_config(tmp_path / "c.npz", program=program), tmp_path / "run", **QUIET).start()
    assert made_dense and max(made_dense) < len(trainer.data.train) == 300
    totals = torch.from_numpy(trainer.data.train.to_scipy().sum(1).A1).float()
    if program == "vae":  # (what the rows were read for: the totals' median, the log totals' mean)
        assert trainer.program.contract.library_size.item() == totals.median().item()
    else:
        assert trainer.program.module.library_loc.item() == pytest.approx(totals[totals > 0].double().log().mean().item())


@pytest.mark.parametrize("library", ["observed", "latent"])
def test_the_scvi_program_trains_evaluates_and_records_its_library_prior(library, tmp_path):
    write_counts(tmp_path / "c.npz")
    config = counts_config(tmp_path / "c.npz", program="scvi", latent_dim=2, library=library,
                           network={"name": "mlp", "hidden": [16], "input": "log1p"})
    Trainer(config, tmp_path / "run", **QUIET).fit()
    run = load_run(tmp_path / "run")
    totals = run.data.train.sum(1).double().log()
    if library == "latent":  # p(log l) = N(mean, sd^2) of the training cells' log totals
        assert run.program.latent_shapes == {"z": (2,), "log_library": (1,)}
        assert run.model.library_loc.item() == pytest.approx(totals.mean().item(), rel=1e-6)
        assert run.model.library_scale.item() == pytest.approx(totals.std().item(), rel=1e-6)
    from pyro_vae.trained import finish_run

    summary = finish_run(run, log=lambda s: None).summary()
    assert math.isfinite(summary["log_px"]["mean"]) and summary["log_px"]["mean"] > summary["elbo"]["mean"] - 5
    assert (tmp_path / "run" / "features.txt").read_text().splitlines()[:2] == ["gene0", "gene1"]


def test_the_latent_library_is_a_true_mass_over_counts_and_the_observed_one_conditional():
    """With l latent, p(x|z, l) sums to 1 over x: checked on one gene, the event of a 1-gene program."""
    program = SingleCellVAE(data_shape=(1,), latent_dim=1, library="latent",
                            network={"name": "mlp", "hidden": [4], "input": "log1p"})
    head = torch.zeros(1, 1, 1)
    p = program.likelihood(head, library=torch.tensor([3.0]))
    grid = torch.arange(0, 200.0).view(-1, 1, 1)
    assert p.log_prob(grid).exp().sum().item() == pytest.approx(1.0, abs=1e-6)


def test_a_batch_covariate_enters_as_the_program_s_label(tmp_path):
    write_counts(tmp_path / "c.npz")
    program = Program(__import__("pyro_vae.single_cell", fromlist=["x"]).BatchSingleCellVAE(
        data_shape=(12,), num_classes=2, latent_dim=2, network={"name": "mlp", "hidden": [8], "input": "log1p"}))
    assert program.policy.name == "conditional" and program.num_classes == 2
    x = torch.poisson(torch.full((4, 12), 3.0))
    with torch.no_grad():
        terms = program.labelled(torch.tensor([0, 1, 0, 1])).source.draw(x, 2)
    assert terms.log_weights.shape == (2, 4) and torch.isfinite(terms.log_weights).all()


def test_encode_takes_a_new_count_file_by_the_run_s_gene_names(tmp_path, capsys):
    import scipy.io

    write_counts(tmp_path / "c.npz")
    Trainer(counts_config(tmp_path / "c.npz"), tmp_path / "run", **QUIET).fit()
    # a 10x folder of the same genes in another order, and one gene more: taken by name
    rng = np.random.default_rng(5)
    names = ["other", *(f"gene{j}" for j in reversed(range(12)))]
    cells = rng.poisson(2.0, size=(6, 13)).astype(np.int32)
    folder = tmp_path / "tenx"
    folder.mkdir()
    scipy.io.mmwrite(folder / "matrix.mtx", scipy.sparse.coo_matrix(cells.T))  # genes x cells, as 10x writes
    (folder / "genes.tsv").write_text("".join(f"{n}\t{n}\n" for n in names))
    (folder / "barcodes.tsv").write_text("".join(f"cell{i}\n" for i in range(6)))
    capsys.readouterr()
    assert main(["encode", str(tmp_path / "run"), "--data", str(folder), "--out", str(tmp_path / "z.npz"),
                 "--samples", "3", "--no-progress"]) == 0
    by_name = torch.from_numpy(cells[:, [names.index(f"gene{j}") for j in range(12)]]).float()
    mean, _ = load_run(tmp_path / "run").encode(by_name)
    np.testing.assert_allclose(np.load(tmp_path / "z.npz")["mean"], mean.numpy(), rtol=1e-5, atol=1e-6)
    # a file that names no columns is taken by position: it must have the run's 12
    scipy.sparse.save_npz(tmp_path / "new.npz", scipy.sparse.csr_matrix(cells))
    assert main(["encode", str(tmp_path / "run"), "--data", str(tmp_path / "new.npz"), "--out",
                 str(tmp_path / "y.npz"), "--no-progress"]) == 2
    assert "13 columns without names, and the run trained on 12" in capsys.readouterr().err
    (folder / "genes.tsv").write_text("".join(f"{n}x\t{n}x\n" for n in names))  # none of the run's genes
    assert main(["encode", str(tmp_path / "run"), "--data", str(folder), "--out", str(tmp_path / "w.npz"),
                 "--no-progress"]) == 2
    assert "lacks 12 of the run's 12 columns (e.g. gene0" in capsys.readouterr().err


def test_a_topic_model_writes_its_top_words_coherence_and_perplexity(tmp_path):
    counts = write_counts(tmp_path / "c.npz", rows=120, columns=12)
    config = counts_config(tmp_path / "c.npz", latent_dim=3, likelihood="multinomial",
                           prior={"name": "logistic-normal", "alpha": 1.0},
                           network={"name": "topic", "hidden": [16], "dropout": 0.0})
    Trainer(config, tmp_path / "run", **QUIET).fit()
    from pyro_vae.trained import finish_run

    finish_run(load_run(tmp_path / "run"), log=lambda s: None)
    lines = (tmp_path / "run" / "topics.txt").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("0: gene")
    topics = json.loads((tmp_path / "run" / "evaluation.json").read_text())["topics"]
    assert -1 <= topics["npmi"] <= 1 and topics["perplexity"] > 1 and topics["unigram_perplexity"] > 1
    assert "test documents" in topics["npmi_reference_corpus"]
    assert counts.sum() > 0


def test_a_count_run_shuffles_documents_sorted_by_group_every_epoch(tmp_path, monkeypatch):
    """20 Newsgroups' files are sorted by newsgroup: a trainer taking batches in file order would
    show each batch one group. The run draws a fresh permutation of the rows every epoch: every
    batch mixes the two halves of a file sorted by group, each epoch visits every row once, and
    the two epochs' orders differ."""
    from pyro_vae import training

    rng = np.random.default_rng(0)
    rows = np.zeros((80, 12), dtype=np.int32)  # rows 0-39 use words 0-5 only, rows 40-79 words 6-11
    rows[:40, :6] = rng.poisson(3.0, size=(40, 6)) + 1
    rows[40:, 6:] = rng.poisson(3.0, size=(40, 6)) + 1
    scipy.sparse.save_npz(tmp_path / "train.npz", scipy.sparse.csr_matrix(rows))
    scipy.sparse.save_npz(tmp_path / "test.npz", scipy.sparse.csr_matrix(rows[::8]))
    config = Config.from_dict({
        "data": {"name": "counts", "path": str(tmp_path / "train.npz"), "test_path": str(tmp_path / "test.npz")},
        "model": {"latent_dim": 2, "likelihood": "multinomial", "prior": {"name": "logistic-normal"},
                  "network": {"name": "topic", "hidden": [8], "dropout": 0.0}},
        "train": {"epochs": 2, "batch_size": 20, "lr": 1e-2},
        "eval": {"samples": 2, "train_subset": 8, "exact_points": 0}})
    drawn, read = [], training.Feed.read

    def spy(self, train, index, dist, device):
        drawn.append(index.clone())
        return read(self, train, index, dist, device)

    monkeypatch.setattr(training.Feed, "read", spy)
    Trainer(config, tmp_path / "run", **QUIET).fit()
    assert [len(b) for b in drawn] == [20] * 8  # two epochs of four batches
    epochs = [torch.cat(drawn[:4]), torch.cat(drawn[4:])]
    assert all(sorted(e.tolist()) == list(range(80)) for e in epochs)  # each row once an epoch
    assert not torch.equal(epochs[0], epochs[1]) and epochs[0].tolist() != list(range(80))
    assert all(0 < int((b < 40).sum()) < 20 for b in drawn)  # every batch holds both groups


def test_a_count_run_with_batch_norm_and_dropout_trains_resumes_and_evaluates(tmp_path):
    """scVI's recipe (batch norm in both networks, dropout 0.1 in the encoder): the steps run the
    networks in training mode (the running averages move), a resumed run ends with the parameters and
    running averages of an uninterrupted one, and evaluation runs in evaluation mode (the same numbers
    twice), leaving the mode it found."""
    from pyro_vae.evaluation import evaluate
    from pyro_vae.runs import CHECKPOINT, CONFIG, load_checkpoint

    write_counts(tmp_path / "c.npz")
    network = {"name": "mlp", "hidden": [16], "input": "log1p", "activation": "relu", "batch_norm": True, "dropout": 0.1}
    config = counts_config(tmp_path / "c.npz", network=network)
    Trainer(config, tmp_path / "whole", **QUIET).fit()
    Trainer(config, tmp_path / "parts", **QUIET).fit(stop_after=1)
    Trainer(Config.load(tmp_path / "parts" / CONFIG), tmp_path / "parts", **QUIET).fit(resume=True)
    whole, parts = (load_checkpoint(tmp_path / run / CHECKPOINT)["model"] for run in ("whole", "parts"))
    assert list(whole) == list(parts)
    norms = [k for k in whole if k.endswith("running_mean")]
    assert len(norms) == 2 and all(whole[k].abs().sum() > 0 for k in norms)  # moved from their zeros in training
    for key in whole:
        assert torch.equal(whole[key], parts[key]), key
    run = load_run(tmp_path / "parts")
    torch.testing.assert_close(run.program.module.state_dict()[norms[0]], whole[norms[0]])
    run.program.module.train()
    first = evaluate(run.program, run.data.test, samples=4, seed=1, posterior_means=False)
    assert run.program.module.training  # the mode it found
    second = evaluate(run.program, run.data.test, samples=4, seed=1, posterior_means=False)
    assert torch.equal(first.log_px, second.log_px) and torch.isfinite(first.log_px).all()
    assert torch.equal(run.program.module.state_dict()[norms[0]], whole[norms[0]])  # evaluation moved nothing


def test_train_prints_a_topic_model_s_coherence_and_perplexity(tmp_path, capsys):
    write_counts(tmp_path / "c.npz", rows=60, columns=12)
    argv = ["train", "--data", str(tmp_path / "c.npz"), "--set", f"data.vocabulary={tmp_path / 'c.txt'}",
            "--set", "data.test_fraction=0.25", "--set", "model.latent_dim=3", "--set", "model.likelihood=multinomial",
            "--set", "model.prior=logistic-normal", "--set", "model.network=topic", "--set", "model.network.hidden=[8]",
            "--set", "train.epochs=1", "--set", "train.batch_size=15", "--set", "eval.samples=4",
            "--set", "eval.train_subset=8", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    scores = json.loads((tmp_path / "run" / "evaluation.json").read_text())["topics"]
    assert f"topics: NPMI of the 10 top words {scores['npmi']:.3f} (over the 15 test documents" in printed
    assert f"test perplexity {scores['perplexity']:.1f} per word" in printed and "topics.txt" in printed


def test_topic_proportions_on_the_simplex_have_no_active_units_count(tmp_path):
    """Var_x E_q[z_u] > 0.01 tests a coordinate of a N(0, I)-scaled latent; proportions of 50 topics
    vary by less than that and would all read inactive: a Dirichlet guide's evaluation leaves it out."""
    from pyro_vae.evaluation import EvaluationSettings, evaluate

    write_counts(tmp_path / "c.npz", rows=40, columns=12)
    for prior, guide, latent, has in (("dirichlet", "dirichlet", "simplex", False),
                                      ("logistic-normal", "diagonal-gaussian", "softmax", True)):
        config = counts_config(tmp_path / "c.npz", latent_dim=3, likelihood="multinomial", prior=prior, guide=guide,
                               network={"name": "topic", "hidden": [8], "dropout": 0.0, "latent": latent})
        trainer = Trainer(config, tmp_path / f"run-{prior}", **QUIET).start()
        assert trainer.program.simplex_sites == ([] if has else ["z"])
        result = evaluate(trainer.program, trainer.data.test, EvaluationSettings.of(config, 2))
        assert ("active_units" in result.summary()) == has
        assert ("active units" in result.table()) == has
