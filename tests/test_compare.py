"""The comparison harness: equal budgets, deterministic numbers, complete outputs, clear refusals."""

from __future__ import annotations

import json

import pytest

from pyro_vae import ConfigError
from pyro_vae.cli import main
from pyro_vae.compare import Budget, Comparison, parse_objectives
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
        return {k: without_timings(v) for k, v in payload.items() if k not in ("train_seconds", "ms_per_step")}
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


def test_compare_refuses_warmup_and_unknown_objectives(tmp_path, capsys):
    assert main(["compare", *TINY, "--set", "train.kl_warmup_epochs=3", "--out", str(tmp_path / "w")]) == 2
    assert "without KL warm-up" in capsys.readouterr().err
    assert main(["compare", *TINY, "--objectives", "elbo,iwea", "--out", str(tmp_path / "u")]) == 2
    assert "Did you mean 'iwae'" in capsys.readouterr().err


def test_compare_curves_hold_every_point_in_the_frame():
    """The step-0 point (untrained, far below the rest) stays inside the axes, as every later one."""
    from pyro_vae.plots import comparison_figure

    curves = {name: [{"step": s, "train_seconds": s / 10, "test_log_px": v, "test_elbo": v - 5}
                     for s, v in zip((0, 50, 100), values)]
              for name, values in (("elbo", (-540.0, -120.0, -110.0)), ("iwae", (-545.0, -118.0, -109.0)))}
    fig = comparison_figure(curves)
    for ax in fig.axes:
        lo, hi = ax.get_ylim()
        for line in ax.get_lines():
            ys = line.get_ydata()
            assert lo <= min(ys) and max(ys) <= hi


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
