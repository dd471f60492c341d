"""The comparison harness: equal budgets, deterministic numbers, complete outputs, clear refusals."""

from __future__ import annotations

import json

import pytest

from pyro_vae import ConfigError
from pyro_vae.cli import main
from pyro_vae.compare import Budget, Comparison, parse_objectives
from pyro_vae.config import DATASETS
from pyro_vae.trained import load_run

from conftest import tiny_config

TINY = ["--set", "data=synthetic", "--set", "data.n_train=64", "--set", "data.n_test=16", "--set", "data.side=6",
        "--set", "model.latent_dim=2", "--set", "model.network.hidden=[8]", "--set", "eval.samples=20",
        "--set", "eval.train_subset=32"]


@pytest.mark.parametrize("text, budget", [("2000", Budget(steps=2000)), ("150steps", Budget(steps=150)),
                                          ("90s", Budget(seconds=90.0)), ("1.5min", Budget(seconds=90.0))])
def test_budgets_parse(text, budget):
    assert Budget.parse(text) == budget


@pytest.mark.parametrize("text", ["fast", "12.5steps", "0", "-3s"])
def test_bad_budgets_are_refused(text):
    with pytest.raises(ConfigError, match="--budget"):
        Budget.parse(text)


def test_objective_lists_parse_with_a_shared_or_own_k():
    specs = parse_objectives("elbo, iwae:64,dreg", particles=5)
    assert specs == [{"name": "elbo", "num_particles": 5}, {"name": "iwae", "num_particles": 64},
                     {"name": "dreg", "num_particles": 5}]
    with pytest.raises(ConfigError, match="unknown objective 'ewae'"):
        parse_objectives("elbo,ewae", 5)
    with pytest.raises(ConfigError, match="twice"):
        parse_objectives("elbo,elbo", 5)
    with pytest.raises(ConfigError, match="NAME:K"):
        parse_objectives("iwae:many", 5)


def small_comparison(out, objectives="elbo,iwae,dreg", budget="12"):
    config = tiny_config(data={"n_train": 64, "n_test": 16}, eval={"samples": 20, "train_subset": 32})
    return Comparison(config, parse_objectives(objectives, 3), Budget.parse(budget), out, particles=3,
                      curve_points=2, curve_samples=5, grad_draws=5, grad_batch=8, snr_ks=(1, 4),
                      progress=False, log=lambda s: None)


def without_timings(payload):
    if isinstance(payload, dict):
        return {k: without_timings(v) for k, v in payload.items() if k not in ("train_seconds", "ms_per_step", "time")}
    if isinstance(payload, list):
        return [without_timings(v) for v in payload]
    return payload


def test_a_comparison_is_deterministic_and_complete(tmp_path):
    first = small_comparison(tmp_path / "a")
    first.run()
    small_comparison(tmp_path / "b").run()
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert without_timings(a) == without_timings(b)
    for name in ("results.md", "results.csv", "results.json", "curves.png", "snr_vs_k.png", "config.toml"):
        assert (tmp_path / "a" / name).is_file()
    rows = a["rows"]
    assert [r["objective"] for r in rows] == ["elbo", "iwae", "dreg"] and all(r["steps"] == 12 for r in rows)
    for entry in a["objectives"]:
        assert [p["step"] for p in entry["curve"]] == [0, 6, 12]
        assert [entry["gradients"][s]["step"] for s in ("start", "middle", "end")] == [0, 6, 12]
    assert set(a["snr_vs_k"]["encoder_snr"]) == {"iwae", "dreg"}
    assert a["snr_vs_k"]["parameters"] == "end of the iwae (K=3) run"


def test_every_objective_starts_from_the_same_parameters(tmp_path):
    comparison = small_comparison(tmp_path / "c", objectives="elbo,stl", budget="4")
    comparison.run()
    elbo, stl = comparison.results
    assert elbo.curve[0] == stl.curve[0]  # step 0: same initialization, same evaluation
    assert elbo.gradients["start"]["decoder"] == pytest.approx(stl.gradients["start"]["decoder"])


def test_each_objective_leaves_a_run_folder_that_evaluate_accepts(tmp_path, capsys):
    small_comparison(tmp_path / "d", objectives="stl", budget="4").run()
    run = load_run(tmp_path / "d" / "stl-K3")
    assert run.config.train.objective == {"name": "stl", "num_particles": 3} and run.checkpoint["step"] == 4
    assert main(["evaluate", str(tmp_path / "d" / "stl-K3"), "--samples", "5"]) == 0


def test_a_time_budget_trains_for_about_that_long(tmp_path):
    comparison = small_comparison(tmp_path / "e", objectives="elbo", budget="0.3s")
    comparison.run()
    (result,) = comparison.results
    assert result.steps > 0 and 0.3 <= result.train_seconds < 5.0  # it stops at the first step past the budget


def test_compare_cli_prints_the_table(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["compare", *TINY, "--objectives", "elbo,dreg", "--particles", "2", "--budget", "6",
            "--curve-points", "1", "--curve-samples", "4", "--grad-draws", "4", "--grad-batch", "8",
            "--snr-k", "1,2", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| elbo | 2 | 6 |" in printed and "| dreg | 2 | 6 |" in printed and "encoder gradient SNR against K" in printed
    assert "comparing elbo, dreg on synthetic" in printed
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err


def test_compare_takes_data_as_train_does(tmp_path, capsys):
    """--data PATH: the same dataset a train --data would read, its options by --set data.*."""
    import numpy as np

    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", (rng.random((60, 6, 6)) < 0.3).astype(np.float32))
    argv = ["compare", "--data", str(tmp_path / "x.npy"), "--set", "model.latent_dim=2",
            "--set", "model.network.hidden=[8]", "--set", "model.likelihood.binarize=none", "--set", "train.batch_size=20",
            "--set", "eval.samples=4", "--set", "eval.train_subset=10", "--objectives", "elbo", "--budget", "2",
            "--curve-points", "1", "--curve-samples", "2", "--grad-draws", "2", "--grad-batch", "4", "--snr-k", "1",
            "--final-samples", "4", "--out", str(tmp_path / "c"), "--no-progress", "--yes"]
    assert main(argv) == 0
    run = load_run(tmp_path / "c" / "elbo-K10")
    assert run.config.data["name"] == "array" and run.config.data["path"] == str(tmp_path / "x.npy")


def test_on_data_with_known_factors_the_table_carries_the_disentanglement_scores(tmp_path, capsys, monkeypatch):
    """beta = 1 against beta = 4 on the generated dSprites: MIG, DCI, SAP and the FactorVAE score beside
    log p(x), the scores those of each saved run (disentanglement_scores on its folder)."""
    from pyro_vae import compare
    from pyro_vae.disentanglement import disentanglement_scores

    monkeypatch.setattr(compare, "DISENTANGLEMENT_RESAMPLES", 2)
    argv = ["compare", "--set", "data=dsprites", "--set", "data.n_train=64", "--set", "data.n_test=40",
            "--set", "model.latent_dim=3", "--set", "model.network.hidden=[8]", "--set", "eval.samples=4",
            "--set", "eval.train_subset=8", "--set", "train.batch_size=16", "--objectives", "beta(beta=1),beta(beta=4)",
            "--particles", "1", "--budget", "2", "--curve-points", "1", "--curve-samples", "2", "--grad-draws", "2",
            "--grad-batch", "4", "--snr-k", "1", "--final-samples", "4", "--out", str(tmp_path / "c"),
            "--no-progress", "--yes"]
    assert main(argv) == 0
    table = (tmp_path / "c" / "results.md").read_text()
    assert "| MIG | DCI dis. | SAP | FactorVAE score |" in table
    assert (tmp_path / "c" / "price.png").stat().st_size > 0
    for folder in ("beta-beta-1-K1", "beta-beta-4-K1"):
        assert (tmp_path / "c" / folder / "traversals.png").stat().st_size > 0
    result = json.loads((tmp_path / "c" / "results.json").read_text())
    migs = sorted(row["mig"] for row in result["rows"])
    folders = [p for p in (tmp_path / "c").iterdir() if p.is_dir()]
    assert len(migs) == len(folders) == 2 and all(0 <= row["sap"] <= 1 for row in result["rows"])
    assert migs == pytest.approx(sorted(disentanglement_scores(load_run(p), resamples=2, factorvae_options={"train_votes": 1})["mig"]
                                        for p in folders))


def test_compare_refuses_warmup_and_unknown_objectives(tmp_path, capsys):
    assert main(["compare", *TINY, "--set", "train.kl_warmup_epochs=3", "--out", str(tmp_path / "w")]) == 2
    assert "without KL warm-up" in capsys.readouterr().err
    assert main(["compare", *TINY, "--objectives", "elbo,iwea", "--out", str(tmp_path / "u")]) == 2
    assert "Did you mean 'iwae'" in capsys.readouterr().err


def test_compare_curves_start_after_the_start_and_keep_close_curves_apart():
    """The step-0 point (untrained, far below the rest) is not drawn; the y-range is set by the last
    half, so two curves one nat apart there are not squashed into one line; seeds draw a band."""
    from matplotlib.collections import PolyCollection

    from pyro_vae.plots import comparison_figure

    def curve(values, shift=0.0):
        return [{"step": s, "train_seconds": s / 10, "test_log_px": v + shift, "test_elbo": v + shift - 5}
                for s, v in zip((0, 50, 100, 150, 200), values)]

    curves = {"elbo": [curve((-540.0, -130.0, -118.0, -111.0, -110.0)), curve((-541.0, -131.0, -119.0, -112.0, -110.5))],
              "iwae": [curve((-545.0, -128.0, -117.0, -110.0, -109.0)), curve((-546.0, -129.0, -117.5, -110.5, -109.2))]}
    fig = comparison_figure(curves)
    for ax in fig.axes:
        lo, hi = ax.get_ylim()
        assert hi - lo < 10  # the last half spans about 3 nats: the frame is a few nats high
        for line in ax.get_lines():
            xs, ys = line.get_xdata(), line.get_ydata()
            assert 0 not in xs and min(ys) > -200  # no step-0 point
            assert lo <= ys[-1] <= hi and lo <= ys[-2] <= hi  # the last half in the frame
        assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 2  # a band per objective


def test_compare_tells_the_semi_supervised_story_sampled_enumerated_and_with_the_classification_term(tmp_path):
    """Pyro's tutorial in one table: M2's y sampled (score function), enumerated, and enumerated with
    alpha log q(y|x) on the labelled batches; each row with its test accuracy."""
    import torch

    config = tiny_config(data={"binary": True, "labels": 8}, eval={"samples": 5, "train_subset": 16},
                         model={"program": "m2", "num_classes": 4, "latent_dim": 2, "network": {"name": "mlp", "hidden": [16]}})
    comparison = Comparison(config, parse_objectives("score-function,enumerate,enumerate(classifier_weight=20)", 2),
                            Budget.parse("10"), tmp_path / "m2", particles=2, curve_points=1, curve_samples=3,
                            grad_draws=4, grad_batch=8, snr_ks=(1, 2), progress=False, log=lambda s: None)
    comparison.run()
    payload = json.loads((tmp_path / "m2" / "results.json").read_text())
    rows = {r["objective"]: r for r in payload["rows"]}
    assert list(rows) == ["score-function", "enumerate", "enumerate(classifier_weight=20)"]
    for row in rows.values():
        assert 0.0 <= row["test_accuracy"] <= 1.0 and row["test_accuracy_stderr"] > 0 and row["steps"] == 10
    assert "test accuracy" in (tmp_path / "m2" / "results.md").read_text()
    first = [r.curve[0] for r in comparison.results]
    assert first[0] == first[1] == first[2]  # one initialization
    # the classification term fits q(y|x) to the labels: log q(y|x) of the test labels, summed, without and with it
    fits = {}
    for name in ("enumerate", "enumerate-classifier_weight-20"):
        run = load_run(tmp_path / "m2" / name)
        _, q_y = run.classify(run.data.prepared_test)
        fits[name] = torch.log(q_y[torch.arange(len(q_y)), run.data.test_labels]).sum().item()
    assert fits["enumerate-classifier_weight-20"] > fits["enumerate"]


# -- paired differences, seeds, the time estimate, the exact estimator's SNR ------------------------


def stored_values(folder):
    """A run folder's per_datapoint.csv as {column: [floats]}."""
    import csv

    with open(folder / "per_datapoint.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in rows[0] if k != "datapoint"}


def test_paired_differences_are_those_of_the_stored_per_datapoint_values(tmp_path):
    import math

    comparison = small_comparison(tmp_path / "p", objectives="elbo,iwae", budget="6")
    comparison.run()
    ref, other = stored_values(tmp_path / "p" / "elbo-K3"), stored_values(tmp_path / "p" / "iwae-K3")
    assert set(ref) == {"elbo", "iwae_bound_K3", "log_px_K20"} and len(ref["elbo"]) == 16
    paired = json.loads((tmp_path / "p" / "results.json").read_text())["paired_differences"]
    for metric, column in (("elbo", "elbo"), ("log_px", "log_px_K20"), ("iwae_bound", "iwae_bound_K3")):
        d = [b - a for a, b in zip(ref[column], other[column])]
        mean = sum(d) / len(d)
        se = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1)) / math.sqrt(len(d))
        got = paired[metric]["iwae (K=3)"]
        assert got["mean"] == pytest.approx(mean, abs=1e-9) and got["paired_stderr"] == pytest.approx(se, rel=1e-9)
        assert got["beyond_two_stderr"] == (abs(mean) > 2 * se)
    row = comparison.paired_markdown().splitlines()[3]
    assert row.startswith("| iwae | ") and f"{paired['log_px']['iwae (K=3)']['mean']:+.2f} ± " in row


def test_the_same_objective_twice_differs_by_zero_with_zero_paired_error(tmp_path):
    config = tiny_config(data={"n_train": 64, "n_test": 16}, eval={"samples": 20, "train_subset": 32})
    spec = {"name": "elbo", "num_particles": 2}
    comparison = Comparison(config, [spec, dict(spec)], Budget.parse("5"), tmp_path / "twice", particles=2,
                            curve_points=1, curve_samples=4, grad_draws=3, grad_batch=8, snr_ks=(1, 2),
                            progress=False, log=lambda s: None)
    comparison.run()
    assert sorted(p.name for p in (tmp_path / "twice").iterdir() if p.is_dir()) == ["elbo-K2", "elbo-K2-2"]
    for metric, rows in comparison.paired().items():
        (d,) = rows.values()
        assert d["mean"] == 0.0 and d["paired_stderr"] == 0.0 and not d["beyond_two_stderr"], metric
    assert "| elbo #2 | +0.00 ± 0.00 | no |" in comparison.paired_markdown()


def test_seeds_change_the_initialization_and_nothing_else(tmp_path):
    import torch

    comparison = small_comparison(tmp_path / "s", objectives="elbo", budget="4")
    comparison.splits = DATASETS.build(comparison.config.data, "data").load()
    seen = []
    for offset in (0, 1):
        trainer = comparison._trainer(comparison.specs[0], offset, "elbo-K3", quiet=True)
        stream = trainer.batch_stream()
        seen.append({"parameters": torch.cat([p.detach().flatten() for p in trainer.program.module.parameters()]),
                     "batches": torch.cat([next(stream) for _ in range(6)]),  # (64 datapoints, batch 32: 3 epochs)
                     "test": trainer.data.test.clone(), "noise": torch.rand(5)})
    first, second = seen
    assert not torch.equal(first["parameters"], second["parameters"])
    for key in ("batches", "test", "noise"):
        assert torch.equal(first[key], second[key]), key


def test_several_seeds_report_the_spread_beside_the_paired_error(tmp_path):
    comparison = Comparison(tiny_config(data={"n_train": 64, "n_test": 16}, eval={"samples": 10, "train_subset": 32}),
                            parse_objectives("elbo,iwae", 2), Budget.parse("4"), tmp_path / "n", particles=2,
                            curve_points=1, curve_samples=3, grad_draws=3, grad_batch=8, snr_ks=(1, 2), seeds=2,
                            reference="iwae", progress=False, log=lambda s: None)
    comparison.run()
    assert sorted(p.name for p in (tmp_path / "n").iterdir() if p.is_dir()) == \
        ["elbo-K2-seed0", "elbo-K2-seed1", "iwae-K2-seed0", "iwae-K2-seed1"]
    d = comparison.paired()["log_px"]["elbo (K=2)"]
    assert len(d["per_seed"]) == 2 and d["seed_sd"] > 0 and d["dominant"] in ("seeds", "datapoints")
    starts = {(r.key, r.seed): r.curve[0]["test_log_px"] for r in comparison.results}
    assert starts["elbo (K=2)", 0] == starts["iwae (K=2)", 0] != starts["elbo (K=2)", 1] == starts["iwae (K=2)", 1]
    text = (tmp_path / "n" / "results.md").read_text()
    assert "s.d. over seeds" in text and "dominates" in text and "(reference)" in text
    assert (tmp_path / "n" / "differences.png").is_file()


def test_the_announced_estimate_is_within_a_factor_of_two_of_the_whole_run(tmp_path):
    said = []
    comparison = small_comparison(tmp_path / "t", objectives="elbo,dreg", budget="40")
    comparison.log = said.append
    comparison.run()
    estimated, took = comparison.estimated["total"], comparison.timings["total"]
    assert any(line.startswith(f"estimate: {estimated:.0f} s in all (up to {comparison.estimated['limit']:.0f} s")
               for line in said)
    assert 0.5 <= took / estimated <= 2.0, (estimated, took, comparison.estimated, comparison.timings)
    # the upper figure: the estimate past the calibration (spent already) with the stated margin
    from pyro_vae.compare import ESTIMATE_MARGIN

    calibration = comparison.estimated["calibration"]
    assert comparison.estimated["limit"] == pytest.approx(calibration + (estimated - calibration) * (1 + ESTIMATE_MARGIN))


def test_default_measuring_is_scaled_to_the_training_and_a_total_is_kept(tmp_path, capsys):
    config = tiny_config(data={"n_train": 64, "n_test": 16}, eval={"samples": 200, "train_subset": 32})
    comparison = Comparison(config, parse_objectives("elbo", 2), Budget.parse("3"), tmp_path / "d", particles=2,
                            grad_batch=8, snr_ks=(1, 2), progress=False, log=lambda s: None)
    comparison.splits = DATASETS.build(config.data, "data").load()
    comparison.plan()  # three steps of training: the default measuring (K = 200, 100 draws ...) is cut to its floors
    m = comparison.measuring
    assert m.curve_samples < 100 and m.grad_draws < 100 and m.final_samples < 200 and m.snr_ks == (1, 2)
    assert "measuring scaled down to fit 50% on top of the training" in comparison.scaled_note
    out = tmp_path / "refused"
    assert main(["compare", *TINY, "--objectives", "elbo", "--budget", "3", "--total", "0.01s", "--out", str(out),
                 "--no-progress"]) == 2
    assert "exceeds --total 0.01 s" in capsys.readouterr().err and not out.exists()
    # --total bounds the announced upper figure: the measuring fits (estimate - calibration) * 1.15 + calibration
    comparison = Comparison(config, parse_objectives("elbo", 2), Budget.parse("3"), tmp_path / "d2", particles=2,
                            grad_batch=8, snr_ks=(1, 2), progress=False, log=lambda s: None, total=20.0)
    comparison.splits = DATASETS.build(config.data, "data").load()
    assert comparison.plan()["limit"] <= 20.0
    assert main(["compare", *TINY, "--total", "30steps", "--out", str(out)]) == 2
    assert "--total '30steps': give the whole run's time" in capsys.readouterr().err
    assert main(["compare", *TINY, "--objectives", "elbo,iwae", "--reference", "dreg", "--out", str(out)]) == 2
    assert "--reference 'dreg' is none of the compared objectives" in capsys.readouterr().err


def test_the_exact_estimators_snr_is_infinite_not_nan(tmp_path):
    import math

    from pyro_vae.compare import snr_of

    config = tiny_config(data={"binary": True, "n_train": 64, "n_test": 16}, eval={"samples": 5, "train_subset": 32},
                         model={"latent_dim": 4, "prior": {"name": "categorical", "classes": 2},
                                "guide": {"name": "categorical", "classes": 2}, "network": {"name": "mlp", "hidden": [8]}})
    comparison = Comparison(config, parse_objectives("enumerate,score-function", 2), Budget.parse("3"), tmp_path / "x",
                            particles=2, curve_points=1, curve_samples=3, grad_draws=3, grad_batch=8, snr_ks=(1, 2),
                            progress=False, log=lambda s: None)
    comparison.run()
    exact, sampled = comparison.rows()
    assert exact["encoder_grad_snr"] == math.inf and exact["decoder_grad_snr"] == math.inf
    assert math.isfinite(sampled["encoder_grad_snr"])
    assert "exact (∞)" in comparison.markdown() and "nan" not in comparison.markdown()
    assert snr_of({"variance": 0.0, "snr": float("nan")}) == math.inf


def test_the_budget_benchmark_reports_the_estimate_against_the_measured_time(tmp_path):
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(folder))  # (its `common`, as `python benchmarks/compare_budget.py` has it)
    try:
        spec = importlib.util.spec_from_file_location("compare_budget", folder / "compare_budget.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        assert bench.main(["--smoke", "--budget", "5steps", "--objectives", "elbo,dreg", "--out", str(tmp_path)]) == 0
    finally:
        sys.path.remove(str(folder))
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["measured_over_estimate"] == pytest.approx(result["measured"]["total"] / result["estimate"]["total"])
    assert result["announced"].startswith("estimate: ") and "| training |" in (tmp_path / "result.md").read_text()


# -- model variants (--variants): priors, likelihoods, networks, learning rates compared on the same data --

def test_variants_parse_into_named_override_lists_and_refuse_what_a_variant_may_not_set():
    from pyro_vae.compare import parse_variants

    config = tiny_config()
    text = 'n: model.prior=standard-normal | mix: model.prior={name = "mixture", components = 3}; train.lr=3e-3 | model.prior=vamp'
    assert parse_variants(text, config) == [
        {"variant": "n", "set": ["model.prior=standard-normal"]},
        {"variant": "mix", "set": ['model.prior={name = "mixture", components = 3}', "train.lr=3e-3"]},
        {"variant": "model.prior=vamp", "set": ["model.prior=vamp"]}]
    assert parse_variants(None, config) == [] and parse_variants("  ", config) == []
    for bad, message in (("a: data.side=8", "model.* and train.* only"), ("a: seed=3", "--seeds varies"),
                         ("a: train.objective=iwae", "that is --objectives"),
                         ("a: model.prior=gausian", "unknown prior 'gausian'"),
                         ("a: model.prior=vamp | a: model.prior=flow", "twice"), ("a:", "sets nothing")):
        with pytest.raises(ConfigError, match=message):
            parse_variants(bad, config)


def variant_comparison(out, variants, objectives="elbo", budget="6", **options):
    from pyro_vae.compare import parse_variants

    config = tiny_config(data={"n_train": 64, "n_test": 16}, eval={"samples": 20, "train_subset": 32})
    return Comparison(config, parse_objectives(objectives, 3), Budget.parse(budget), out, particles=3,
                      curve_points=1, curve_samples=5, grad_draws=3, grad_batch=8, snr_ks=(1, 2), progress=False,
                      log=lambda s: None, variants=parse_variants(variants, config), **options)


def test_each_objective_is_trained_under_each_variant_and_paired_on_the_same_test_data(tmp_path):
    """A variant that restates the config is the same maths (difference 0, paired error 0); a variant with
    another prior or learning rate trains that model (its run folder's config says so) and its paired
    difference is the one of the stored per-datapoint values."""
    comparison = variant_comparison(tmp_path / "v", "same: model.prior.name=standard-normal | n: train.lr=1e-2 | "
                                    "mix: model.prior=mixture; model.prior.components=3 | fast: train.lr=5e-2",
                                    objectives="elbo,iwae", reference="n / elbo")
    comparison.run()
    folders = sorted(p.name for p in (tmp_path / "v").iterdir() if p.is_dir())
    assert folders == sorted(f"{v}-{o}-K3" for v in ("same", "n", "mix", "fast") for o in ("elbo", "iwae"))
    prior = load_run(tmp_path / "v" / "mix-iwae-K3").config.model.prior
    assert prior["name"] == "mixture" and prior["components"] == 3
    assert load_run(tmp_path / "v" / "fast-elbo-K3").config.train.lr == 5e-2
    assert load_run(tmp_path / "v" / "mix-iwae-K3").config.train.objective["name"] == "iwae"
    paired = comparison.paired()["log_px"]
    assert paired["same / elbo (K=3)"]["mean"] == 0.0 and paired["same / elbo (K=3)"]["paired_stderr"] == 0.0
    for key in ("mix / elbo (K=3)", "fast / elbo (K=3)"):
        assert paired[key]["mean"] != 0.0
    ref, mix = stored_values(tmp_path / "v" / "n-elbo-K3"), stored_values(tmp_path / "v" / "mix-elbo-K3")
    d = [b - a for a, b in zip(ref["log_px_K20"], mix["log_px_K20"])]
    assert paired["mix / elbo (K=3)"]["mean"] == pytest.approx(sum(d) / len(d), abs=1e-9)
    assert "| mix / iwae | 3 | 6 |" in comparison.markdown()
    # each variant's curve starts at its own model's step 0 (not the first variant's)
    starts = {r.key: r.curve[0]["test_log_px"] for r in comparison.results}
    assert starts["same / elbo (K=3)"] == starts["n / elbo (K=3)"] != starts["mix / elbo (K=3)"]


def test_a_variant_scored_on_other_test_data_is_refused_before_training(tmp_path):
    """Continuous Bernoulli takes the grey pixels as they are; the Bernoulli default binarizes them:
    their log p(x) would be of different datapoints, so they cannot be paired."""
    comparison = variant_comparison(tmp_path / "g", "bin: model.likelihood=bernoulli | grey: model.likelihood=continuous-bernoulli")
    with pytest.raises(ConfigError, match="other test data than bin / elbo"):
        comparison.run()
    assert not (tmp_path / "g").exists()


def test_compare_cli_takes_variants_and_names_them_in_its_tables(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["compare", *TINY, "--objectives", "elbo", "--variants", "a: model.prior=standard-normal | b: model.prior=vamp; "
            "model.prior.components=4", "--reference", "b", "--particles", "2", "--budget", "4", "--curve-points", "1",
            "--curve-samples", "4", "--grad-draws", "3", "--grad-batch", "8", "--snr-k", "1,2", "--out", str(out),
            "--no-progress", "--yes"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "comparing a / elbo, b / elbo on synthetic" in printed and "differences from b / elbo (K=2)" in printed
    assert "| a / elbo | +" in printed or "| a / elbo | -" in printed
    assert main(["compare", *TINY, "--variants", "a: data.n_test=8", "--out", str(tmp_path / "x")]) == 2
    assert "a variant may set model.* and train.* only" in capsys.readouterr().err


def test_topic_models_compared_over_priors_carry_coherence_and_perplexity(tmp_path):
    """The logistic-normal prior against the Gaussian-softmax one on the same documents: NPMI and the
    per-word perplexity beside log p(x), the perplexity that of the stored per-document log p(x)."""
    import math

    from pyro_vae.compare import parse_variants

    from test_count_models import counts_config, write_counts

    counts = write_counts(tmp_path / "c.npz", rows=60, columns=12)
    config = counts_config(tmp_path / "c.npz", latent_dim=3, likelihood="multinomial",
                           prior={"name": "logistic-normal", "alpha": 1.0},
                           network={"name": "topic", "hidden": [8], "dropout": 0.0})
    variants = parse_variants("ln: model.prior=logistic-normal | gs: model.prior=standard-normal", config)
    comparison = Comparison(config, parse_objectives("elbo-analytic-kl", 1), Budget.parse("4"), tmp_path / "t",
                            particles=2, curve_points=1, curve_samples=2, grad_draws=2, grad_batch=4, snr_ks=(1,),
                            final_samples=4, progress=False, log=lambda s: None, variants=variants)
    comparison.run()
    table = comparison.markdown()
    assert "| NPMI (10 top words) | test perplexity |" in table
    run = load_run(tmp_path / "t" / "gs-elbo-analytic-kl-K1")
    assert run.config.model.prior == {"name": "standard-normal"}
    test = run.prepared.splits.held("test")
    test = test.to_scipy() if hasattr(test, "to_scipy") else test
    log_px = stored_values(tmp_path / "t" / "gs-elbo-analytic-kl-K1")["log_px_K4"]
    import numpy as np

    totals = np.asarray(test.sum(axis=1)).ravel()
    coefficient = sum(math.lgamma(n + 1) for n in totals) - sum(math.lgamma(v + 1) for v in np.asarray(test.todense() if hasattr(test, "todense") else test).ravel())
    expected = math.exp(-(sum(log_px) - coefficient) / totals.sum())
    row = next(r for r in comparison.rows() if r["objective"].startswith("gs /"))
    assert row["test_perplexity"] == pytest.approx(expected, rel=1e-6) and -1 <= row["test_npmi"] <= 1
    assert counts.sum() > 0


def test_the_estimate_counts_each_variant_s_evaluations_at_its_own_cost():
    """A variant whose evaluation costs three times the first's per sample and per datapoint (a negative
    binomial against a Poisson) adds three first-run evaluations to the curves and final scores, not one."""
    from pyro_vae.compare import Costs, Measuring, estimate

    costs = Costs(build=0.0, step={"a": 0.01, "b": 0.01}, draw={"a": (0.0, 0.0), "b": (0.0, 0.0)}, pair=1e-4, point=0.0,
                  call=0.0, exact_point=0.0, exact_gradient=0.0, snr_draw={}, writing=0.0)
    m = Measuring(curve_points=2, curve_samples=10, grad_draws=1, grad_batch=8, snr_ks=(1,), final_samples=100)
    shape = dict(keys=["a", "b"], seeds=2, budget=Budget(steps=10), n_test=50, particles=5)
    alike = estimate(costs, m, **shape)
    costs.evaluation_scale = {"a": (1.0, 1.0), "b": (3.0, 3.0)}
    apart = estimate(costs, m, **shape)
    one = lambda k: 50 * k * 1e-4  # noqa: E731  (an evaluation of the first run at K = k)
    assert alike["curves"] == pytest.approx(2 * (2 * 2 + 1) * one(10))
    assert apart["curves"] == pytest.approx(2 * (4 * 2 + 1) * one(10))
    assert apart["final"] == pytest.approx(2 * 4 * (one(100) + one(5))) and alike["final"] == pytest.approx(2 * 2 * (one(100) + one(5)))
    assert apart["training"] == alike["training"] == pytest.approx(2 * 2 * 10 * 0.01)


def test_parameters_made_non_finite_by_the_last_step_stop_the_comparison(tmp_path, monkeypatch):
    """A step whose loss is finite can write a non-finite gradient into the parameters; within a run the
    next step's loss shows it, after the budget's last step only a check of the parameters can."""
    import torch

    from pyro_vae.errors import TrainingDiverged
    from pyro_vae.training import Trainer

    step = Trainer.train_step

    def last_step_breaks(self, index, **kwargs):
        loss = step(self, index, **kwargs)
        if self.step == 12:  # the budget's last step: its loss finite, the decoder's weights not
            with torch.no_grad():
                next(self.program.vae.decoder.parameters()).fill_(float("nan"))
        return loss

    monkeypatch.setattr(Trainer, "train_step", last_step_breaks)
    with pytest.raises(TrainingDiverged, match=r"objective elbo \(K=3\): parameters decoder\..* stopped being finite in its last step"):
        small_comparison(tmp_path / "c", objectives="elbo").run()
    assert not (tmp_path / "c" / "results.md").exists()  # no table of NaN scores
