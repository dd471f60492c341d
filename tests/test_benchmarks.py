"""The benchmarks keep running (smoke settings: tiny sizes, one round); their numbers live in benchmarks/README.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_step_overhead_runs(capsys):
    bench = load("step_overhead")
    assert bench.main(["--batch-sizes", "8", "--rounds", "1", "--steps", "1", "--warmup", "1", "--particles", "2"]) == 0
    out = capsys.readouterr().out
    for row in ("hand-written PyTorch", "pyro-vae (engine direct)", "stock Pyro SVI (Trace_ELBO), validation on",
                "iwae (K=2)", "renyi (K=2, alpha=0.5)", "data handling"):
        assert row in out


def test_evidence_runs_and_both_estimators_agree(capsys):
    bench = load("evidence")
    assert bench.main(["--images", "20", "--samples", "30", "--batch", "10", "--memory-samples"]) == 0
    out = capsys.readouterr().out
    assert "| pyro-vae metrics.log_evidence |" in out
    difference = float(out.split("one image: ")[1].split()[0])
    assert difference < 1e-3


def test_scaling_runs(capsys):
    bench = load("scaling")
    tiny = ["--set", "data=synthetic", "--set", "data.side=6", "--set", "model.latent_dim=2",
            "--set", "model.network.hidden=[8]", "--set", "eval.train_subset=8"]
    assert bench.main(["--nprocs", "1", "--epochs", "2", *tiny]) == 0
    assert "| 1 | " in capsys.readouterr().out
