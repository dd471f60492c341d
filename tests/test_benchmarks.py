"""The benchmarks keep running (smoke settings: tiny sizes, one round); their numbers live in benchmarks/README.md."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from pyro_vae import evaluation
from pyro_vae.runs import CHECKPOINT_FORMAT, CONFIG

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    if str(BENCHMARKS) not in sys.path:  # as `python benchmarks/NAME.py` has it: benchmarks/common.py
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_discrete_step_runs_the_same_maths(capsys):
    bench = load("discrete_step")
    assert bench.main(["--groups", "2", "--classes", "3", "--batch-size", "8", "--rounds", "1", "--steps", "1",
                       "--warmup", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and line.split(" | ")[0][2:] in bench.ESTIMATORS]
    assert len(rows) == 4
    for row in rows:  # each hand-written step is the library's maths: the same loss and gradients
        loss, grad = (float(v) for v in row.rstrip(" |").rsplit(" | ", 1)[1].split(", "))
        assert loss < 1e-6 and grad < 1e-4, row


@pytest.mark.parametrize("labelled", [False, True])
def test_m2_step_runs_the_same_maths(labelled, capsys):
    bench = load("m2_step")
    argv = ["--batch-size", "6", "--classes", "3", "--latent-dim", "2", "--hidden", "8", "--rounds", "1", "--steps", "1",
            "--warmup", "1"]
    assert bench.main(argv + (["--labelled"] if labelled else [])) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| M2, y enumerated")]
    loss, grad = (float(v) for v in row.rstrip(" |").rsplit(" | ", 1)[1].split(", "))
    assert loss < 1e-6 and grad < 1e-4, row  # the hand-written step is the library's maths


def test_semi_supervised_runs_m2_and_the_classifier_alone(capsys, tmp_path):
    bench = load("semi_supervised")
    assert bench.main(["--labels", "20", "--seeds", "0", "1", "--minutes", "0.01", "--classifier-steps", "50",
                       "--samples", "1", "--validation", "100", "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "| 20 | 0 | 1 (1) |" in out and "| 20 | 1 | 1 (1) |" in out and "Across the 2 label draws" in out
    result = json.loads((tmp_path / "s" / "result.json").read_text())
    accuracies = [r["m2_test_accuracy"]["mean"] for r in result["rows"]]
    mean, sd = result["across_seeds"]["20"]["m2_test_accuracy"]
    assert mean == pytest.approx(sum(accuracies) / 2) and sd == pytest.approx(abs(accuracies[0] - accuracies[1]) / 2 ** 0.5)
    assert [r["classifier_alone_as_given"]["images"] for r in result["rows"]] == ["as given (grey)"] * 2
    # the baselines again on the same label draws, beside the earlier M2 numbers (no M2 trained)
    assert bench.main(["--labels", "20", "--seeds", "0", "1", "--classifier-steps", "50", "--validation", "100",
                       "--out", str(tmp_path / "b"), "--baselines-only", str(tmp_path / "s" / "result.json")]) == 0
    again = json.loads((tmp_path / "b" / "result.json").read_text())
    assert [r["m2_test_accuracy"] for r in again["rows"]] == [r["m2_test_accuracy"] for r in result["rows"]]
    assert [r["classifier_alone_as_given"] for r in again["rows"]] == [r["classifier_alone_as_given"]
                                                                       for r in result["rows"]]  # (seeded: the same)
    assert not (tmp_path / "b" / "m2-labels20-seed0").exists()


def test_quadrants_runs_the_cvae_and_the_network(capsys, tmp_path):
    bench = load("quadrants")
    assert bench.main(["--visible", "2", "--minutes", "0.005", "--samples", "2", "--latent-dim", "2",
                       "--validation", "100", "--out", str(tmp_path / "q")]) == 0
    out = capsys.readouterr().out
    assert out.count("| 2 | ") == 1 and (tmp_path / "q" / "completions-2.png").is_file()


def test_discrete_estimators_runs(capsys, tmp_path):
    bench = load("discrete_estimators")
    assert bench.main(["--smoke", "--out", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "categorical: 4 one-hot groups of 3 classes" in out and "bernoulli: 12 binary units" in out
    assert out.count("| straight-through-gumbel(final_temperature=0.5; anneal_epochs=1.0) | 1 | 3 |") == 2


def test_cli_startup_runs(capsys, tmp_path):
    from conftest import tiny_config
    from pyro_vae import Trainer

    Trainer(tiny_config(), tmp_path / "run", progress=False, log=lambda line: None).fit()
    bench = load("cli_startup")
    assert bench.main(["--rounds", "1", "--run", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert out.count("x |") == len(bench.COMMANDS) and "pyro-vae --help" in out and "pyro-vae sample RUN --n 16" in out
    assert "| import torch |" in out and "| the rest: interpreter start" in out


def test_step_overhead_runs(capsys):
    bench = load("step_overhead")
    assert bench.main(["--batch-sizes", "8", "--rounds", "1", "--steps", "1", "--warmup", "1", "--particles", "2"]) == 0
    out = capsys.readouterr().out
    for row in ("hand-written PyTorch", "pyro-vae: stock VAE (direct terms)", "pyro-vae: user program (traced)",
                "pyro-vae: stock VAE as a subclass (traced)", "stock Pyro SVI (Trace_ELBO), validation on",
                "iwae (K=2)", "renyi (K=2, alpha=0.5)", "data handling"):
        assert row in out
    checks = [line for line in out.splitlines() if line.startswith("# same maths")]
    assert len(checks) == 2 * 6  # every objective, for the stock VAE and the user program
    for line in checks:  # each is the hand-written step's maths: the same loss and gradients
        loss, grad = (float(line.split(key)[1].split(",")[0].split()[0]) for key in
                      ("relative loss difference ", "relative gradient difference "))
        assert loss < 1e-5 and grad < 1e-4, line


def test_evidence_runs_and_both_estimators_agree(capsys):
    bench = load("evidence")
    assert bench.main(["--images", "20", "--samples", "30", "--batch", "10", "--memory-samples"]) == 0
    out = capsys.readouterr().out
    assert "| pyro-vae metrics.log_evidence |" in out
    difference = float(out.split("one image: ")[1].split()[0])
    assert difference < 1e-3


def test_conv_decoder_runs_and_both_decoders_agree(capsys):
    bench = load("conv_decoder")
    assert bench.main(["--rounds", "1", "--steps", "1", "--pairs", "16", "--batch", "8", "--images", "2",
                       "--samples", "8", "--set", "model.network.channels=[4, 8]", "--set", "model.prior.components=3"]) == 0
    out = capsys.readouterr().out
    assert "| decoder forward, 16 draws |" in out and "| training step (elbo, batch 8), per step |" in out
    output_gap, gradient_gap = (float(out.split(key)[1].split()[0].rstrip(";")) for key in
                                ("decoder-output difference ", "relative gradient difference "))
    assert output_gap < 1e-5 and gradient_gap < 1e-4


def test_precision_runs_and_bfloat16_stays_near_float32(capsys):
    bench = load("precision")
    assert bench.main(["--configs", "fashion-mlp", "--batch", "8", "--rounds", "1", "--steps", "1"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| fashion-mlp |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    loss, difference, cosine = float(cells[5]), float(cells[6]), float(cells[7])
    assert difference != 0 and abs(difference) < 0.01 * abs(loss)  # it ran in bfloat16, and stayed close
    assert cosine > 0.99


def test_eval_chunks_runs_and_the_chunk_does_not_change_the_estimate(capsys):
    bench = load("eval_chunks")
    assert bench.main(["--configs", "fashion-mlp", "--chunks", "64,32", "--images", "4", "--samples", "20",
                       "--rounds", "1"]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| fashion-mlp |")]
    assert [row[1] for row in rows] == ["16384", "4012 (default)", "64", "32"]  # 12 MiB / (4 bytes x 784 pixels)
    means = [float(row[-1].rstrip(" |")) for row in rows]  # the same seed: the same draws in any chunking
    assert max(means) - min(means) < 1e-3


def test_eval_processes_runs_both_arrangements_with_the_same_estimate(capsys):
    bench = load("eval_processes")
    assert bench.main(["--config", "fashion-mlp", "--images", "4", "--samples", "6", "--processes", "2",
                       "--threads", "2", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| 1 process") or line.startswith("| 2 processes")]
    assert [row[0] for row in rows] == ["| 1 process x 2 threads", "| 2 processes x 1 threads"]
    assert rows[0][2] == "1.00x |" and float(rows[1][1]) > 0
    means = [float(m) for m in out.split("mean log p(x) in every process: ")[1].split(" nats")[0].split(", ")]
    assert max(means) - min(means) < 1e-3  # the same seed and images: the same estimate in every arrangement


def test_scaling_runs(capsys):
    bench = load("scaling")
    tiny = ["--set", "data=synthetic", "--set", "data.side=6", "--set", "model.latent_dim=2",
            "--set", "model.network.hidden=[8]", "--set", "eval.train_subset=8"]
    assert bench.main(["--nprocs", "1", "--epochs", "2", *tiny]) == 0
    assert "| 1 | " in capsys.readouterr().out


def write_idx_folder(folder: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """A tiny dataset in the IDX format of Fashion-MNIST (28x28 8-bit images, gzip)."""
    import gzip
    import struct

    import numpy as np

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        images = (rng.random((n, 28, 28)) ** 3 * 255).astype(np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        with gzip.open(folder / f"{stem}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">HBBIII", 0, 0x08, 3, n, 28, 28) + images.tobytes())
        with gzip.open(folder / f"{stem}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">HBBI", 0, 0x08, 1, n) + labels.tobytes())


def test_fashion_mnist_driver_trains_selects_on_validation_evaluates_and_resumes(tmp_path, capsys, monkeypatch):
    bench = load("fashion_mnist")
    data = tmp_path / "idx"
    write_idx_folder(data, n_train=60, n_test=12)
    smoke = ["--data-dir", str(data), "--out", str(tmp_path / "runs"), "--samples", "4",
             "--time-to-reach", "--snapshot-samples", "2",
             "--set", "train.epochs=2", "--set", "train.validation=20", "--set", "train.batch_size=20",
             "--set", "model.network.hidden=[8]", "--set", "model.latent_dim=2", "--set", "train.snapshot_minutes=1e-9",
             "--set", "eval.train_subset=8", "--set", "eval.batch_size=5"]
    assert bench.main([*smoke, "--settings", "mlp"]) == 0
    assert bench.main([*smoke, "--settings", "vamp", "--set", "model.prior.components=3"]) == 0
    out = capsys.readouterr().out
    assert "| conv | `fashion-conv.toml` | 225.38 (ConvHVAE) | not run" in out
    assert "| conv-pixelcnn | `fashion-conv-pixelcnn.toml` | 225.38 (ConvHVAE) | not run" in out
    # each row names its config file and the keys the --set overrides changed in it, read back from the run folder
    mlp_changes = {"model.latent_dim=2", "model.network.hidden=[8]", "train.epochs=2", "train.batch_size=20",
                   "train.validation=20", "train.snapshot_minutes=1e-09", "eval.train_subset=8",
                   "eval.batch_size=5"}
    assert set(bench.changed_keys("mlp", tmp_path / "runs" / "mlp")) == mlp_changes
    assert set(bench.changed_keys("vamp", tmp_path / "runs" / "vamp")) == mlp_changes | {"model.prior.components=3"}
    mlp_row = next(line for line in out.splitlines() if line.startswith("| mlp |"))
    assert mlp_row.startswith("| mlp | `fashion-mlp.toml` with `") and "`model.network.hidden=[8]`" in mlp_row
    assert "| 228.70 (VAE, Gaussian prior) |" in mlp_row
    result = bench.json.loads((tmp_path / "runs" / "mlp" / bench.RESULT).read_text())
    assert result["samples"] == 4 and result["epochs"] == 2 and result["best_epoch"] in (1, 2)
    assert result["nll"] > 0 and result["train_minutes"] > 0
    assert result["eval_minutes_cover"] == "the whole evaluation"
    rows = (tmp_path / "runs" / "mlp" / bench.PER_IMAGE).read_text().splitlines()[1:]  # each test image's values
    log_px = [float(r.split(",")[4]) for r in rows]
    assert len(rows) == 12 and -sum(log_px) / 12 == pytest.approx(result["nll"], abs=1e-4)
    assert not list((tmp_path / "runs" / "mlp").glob("*.batches"))  # the evaluation's working folder is gone once done
    # the two runs compared image by image: the mean difference is the difference of the two NLLs
    vamp = bench.json.loads((tmp_path / "runs" / "vamp" / bench.RESULT).read_text())
    d = bench.paired_difference(tmp_path / "runs" / "mlp", tmp_path / "runs" / "vamp")
    assert d["images"] == 12 and d["mean"] == pytest.approx(vamp["nll"] - result["nll"], abs=1e-4) and d["stderr"] > 0
    assert bench.main(["--paired", str(tmp_path / "runs" / "mlp"), str(tmp_path / "runs" / "vamp")]) == 0
    assert f"{d['mean']:+.3f} ± {d['stderr']:.3f} nats" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="evaluate .* with this driver first"):
        bench.paired_difference(tmp_path / "runs" / "mlp", tmp_path / "runs" / "conv")
    reach = bench.json.loads((tmp_path / "runs" / "mlp" / bench.REACH).read_text())
    assert reach["complete"] and reach["minutes"] is None and len(reach["points"]) == 2  # random data: not reached
    # a second call finds everything done: nothing retrained, the same numbers
    assert bench.main([*smoke, "--settings", "mlp"]) == 0
    assert "resuming" not in capsys.readouterr().out
    assert bench.json.loads((tmp_path / "runs" / "mlp" / bench.RESULT).read_text()) == result
    # --evaluate-only scores a folder afresh once its result is gone, training nothing: the same numbers
    metrics_before = (tmp_path / "runs" / "mlp" / "metrics.jsonl").read_text()
    (tmp_path / "runs" / "mlp" / bench.RESULT).unlink()
    # ... and an evaluation killed after its first batch (of three) resumes from the second
    scored, real = [], evaluation.evidence_terms
    def killed_in_the_second_batch(*args, **kwargs):
        if scored:
            raise KeyboardInterrupt
        scored.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(evaluation, "evidence_terms", killed_in_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        bench.main([*smoke, "--settings", "mlp", "--evaluate-only"])
    assert [p.name for p in (tmp_path / "runs" / "mlp" / f"{bench.RESULT}.batches").glob("batch-*")] == ["batch-000000.pt"]
    monkeypatch.setattr(evaluation, "evidence_terms", real)
    assert bench.main([*smoke, "--settings", "mlp", "--evaluate-only"]) == 0
    assert "resuming the evaluation, 1 batches already scored" in capsys.readouterr().out
    rescored = bench.json.loads((tmp_path / "runs" / "mlp" / bench.RESULT).read_text())
    assert rescored["eval_minutes_cover"] == "the batches scored by this call"
    assert {k: rescored[k] for k in ("nll", "nll_stderr", "best_epoch", "epochs")} == \
        {k: result[k] for k in ("nll", "nll_stderr", "best_epoch", "epochs")}
    assert (tmp_path / "runs" / "mlp" / "metrics.jsonl").read_text() == metrics_before
    # --processes 2: two child processes score every other batch each; the same numbers, image by image
    per_image = (tmp_path / "runs" / "mlp" / bench.PER_IMAGE).read_text()
    (tmp_path / "runs" / "mlp" / bench.RESULT).unlink()
    assert bench.main([*smoke, "--settings", "mlp", "--evaluate-only", "--processes", "2"]) == 0
    assert "scoring in 2 processes of" in capsys.readouterr().out
    parallel = bench.json.loads((tmp_path / "runs" / "mlp" / bench.RESULT).read_text())
    assert parallel["eval_processes"] == 2 and parallel["eval_minutes_cover"] == "the whole evaluation"
    assert {k: parallel[k] for k in ("nll", "nll_stderr")} == {k: result[k] for k in ("nll", "nll_stderr")}
    assert (tmp_path / "runs" / "mlp" / bench.PER_IMAGE).read_text() == per_image
    with pytest.raises(SystemExit):  # nothing trained there yet: refused, not trained
        bench.main([*smoke, "--settings", "conv", "--evaluate-only"])
    assert "no trained run in" in capsys.readouterr().err


@pytest.mark.parametrize("nll, snapshot_minutes, expected", [
    (228.5, 30.0, "| 30 (K = 1000) |"),  # a snapshot reached 228.70
    (228.5, None, "| 59: the reported parameters (K = 5000), no snapshot (K = 1000) |"),  # saved at 58.8 min
    (229.5, None, "| not reached |"),
])
def test_fashion_mnist_table_reports_the_time_to_reach(tmp_path, nll, snapshot_minutes, expected):
    bench = load("fashion_mnist")
    run_dir = tmp_path / "mlp"
    run_dir.mkdir()
    bench.Config.load(bench.HERE / "configs" / "fashion-mlp.toml").save(run_dir / CONFIG)
    result = {"samples": 5000, "nll": nll, "nll_stderr": 0.76, "best_epoch": 300, "epochs": 310,
              "train_minutes": 59.8, "eval_minutes": 11.0}
    (run_dir / bench.RESULT).write_text(bench.json.dumps(result))
    reach = {"samples": 1000, "complete": True, "minutes": snapshot_minutes, "points": []}
    (run_dir / bench.REACH).write_text(bench.json.dumps(reach))
    torch.save({"format": CHECKPOINT_FORMAT, "progress": {"elapsed": 58.8 * 60}}, run_dir / bench.BEST)
    row = next(line for line in bench.table(tmp_path).splitlines() if line.startswith("| mlp |"))
    assert row.startswith("| mlp | `fashion-mlp.toml` | 228.70 (VAE, Gaussian prior) |")  # no --set changes
    assert f"| {nll:.2f} ± 0.76 (K = 5000) | {nll - 228.70:+.2f} | 300 / 310 | 59.8 | 11.0 " in row
    assert row.endswith(expected)


SMALL_HVAE = ["model.latent_dim=4", "model.prior.top_dim=2", "model.guide.top_dim=2",
              "model.prior.top.components=3", "model.prior.hidden=[8]", "model.guide.hidden=[8]"]
SMALL_CONV = {  # the conv settings at toy sizes: --set overrides beyond the shared ones
    "conv-pixelcnn": ["model.latent_dim=2", "model.prior.components=3", "model.likelihood.channels=4"],
    "conv-hvae": SMALL_HVAE,
    "conv-hvae-pixelcnn": [*SMALL_HVAE, "model.likelihood.channels=4"],
}


@pytest.mark.parametrize("setting", SMALL_CONV)
def test_fashion_mnist_driver_runs_the_autoregressive_and_two_layer_conv_settings(setting, tmp_path, capsys):
    bench = load("fashion_mnist")
    data = tmp_path / "idx"
    write_idx_folder(data, n_train=40, n_test=6)
    shared = ["train.epochs=1", "train.validation=10", "train.batch_size=10", "model.network.channels=[4, 4]",
              "model.network.hidden=8", "eval.train_subset=4"]
    sets = [arg for key in shared + SMALL_CONV[setting] for arg in ("--set", key)]
    assert bench.main(["--data-dir", str(data), "--out", str(tmp_path / "runs"), "--samples", "3",
                       "--settings", setting, *sets]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {setting} |"))
    assert "| 225.38 (ConvHVAE) |" in row and "not run" not in row and f"`{SMALL_CONV[setting][-1]}`" in row
    result = bench.json.loads((tmp_path / "runs" / setting / bench.RESULT).read_text())
    assert result["samples"] == 3 and result["nll"] > 0 and result["epochs"] == 1


def test_own_data_runs_the_png_folder_the_levels_and_encode(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path))  # (the script points it at its own folder too)
    bench = load("own_data")
    assert bench.main(["--images", "120", "--encode", "40", "--samples", "4", "--rounds", "1", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "| PNG folder | 120 files |" in out and "(median of 3)" in out
    assert "| training set until batching |" in out and "ratio" in out and "| encode vs evaluate | 40 images" in out


def test_gpu_check_runs_its_checks_on_the_cpu(capsys):
    bench = load("gpu_check")  # (on a machine with CUDA: benchmarks/gpu_check.sh; here the same code, CPU twice)
    assert bench.main(["--device", "cpu", "--epochs", "1", "--samples", "2", "--rows", "1500"]) == 0
    out = capsys.readouterr().out
    assert out.count("| yes |") == 5 and "streamed count model" in out


def test_streaming_measures_each_run_in_a_process_of_its_own(tmp_path, capsys):
    bench = load("streaming")
    assert bench.main(["--rows", "1500", "--columns", "50", "--steps", "3", "--warmup", "1", "--no-processes",
                       "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert [r["run"] for r in result["rows"]] == ["stream", "read", "read .h5ad, gzip (h5py)", "read .h5ad, plain (h5py)",
                                                  "memory", "memory, defaults"]
    assert all(r["peak_rss_mb"] > 0 for r in result["rows"])


def test_disentangle_trains_scores_and_times_each_objective(tmp_path, capsys):
    bench = load("disentangle")
    assert bench.main(["--epochs", "1", "--seeds", "0", "--n-train", "64", "--n-test", "40",
                       "--points", "40", "--evidence-points", "10", "--resamples", "2", "--samples", "2", "--hidden", "8", "--latent-dim", "3",
                       "--factorvae-votes", "20", "10", "100", "--timing-batch", "16", "--timing-rounds", "1",
                       "--timing-steps", "1", "--models", "beta-TC", "Factor", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert list(result["summary"]) == ["beta-TC-VAE, TC weight 6", "FactorVAE, gamma 35"]
    for runs in result["runs"].values():
        (run,) = runs
        assert all(0 <= run[k] <= 1 for k in bench.SCORES) and run["log_px"] < 0
        parts = sum(run["decomposition_" + k] for k in ("mutual_information", "total_correlation", "dimension_wise_kl"))
        assert parts == pytest.approx(run["decomposition_kl"], abs=1e-3)
    assert result["timing"]["ratio"] > 0 and "| FactorVAE, gamma 35 |" in (tmp_path / "result.md").read_text()
    assert (tmp_path / "price.png").stat().st_size > 0


def _count_file(path, rows: int, columns: int, seed: int = 0):
    """A small cells x genes (or documents x words) SciPy .npz and its names, one a line, beside it."""
    import numpy as np
    import scipy.sparse

    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.gamma(1.0, 2.0, size=columns) * rng.gamma(4.0, 0.25, size=(rows, 1))).astype(np.int32)
    counts[:, 0] += 1  # (no empty row)
    scipy.sparse.save_npz(path, scipy.sparse.csr_matrix(counts))
    return counts


def test_scvi_tools_runs_the_library_side_on_its_split_and_genes(tmp_path, capsys):
    bench = load("scvi_tools")  # (the scvi-tools side needs the bench extra: run with --peer-python)
    _count_file(tmp_path / "cells.npz", rows=60, columns=15)
    assert bench.main(["--data", str(tmp_path / "cells.npz"), "--sides", "pyro-vae", "--likelihoods", "nb",
                       "--genes", "8", "--min-cells", "2", "--epochs", "1", "--samples", "3", "--in-process",
                       "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["split"]["train_cells"] == 54 and result["split"]["test_cells"] == 6 and result["split"]["genes"] == 8
    assert len((tmp_path / "out" / "genes.txt").read_text().splitlines()) == 8
    (row,) = result["rows"]
    assert row["side"] == "pyro-vae" and row["samples"] == 3 and row["log_px"][0] < 0 and row["seconds_per_epoch"] > 0
    assert "| NB | pyro-vae |" in capsys.readouterr().out


def test_scvi_tools_pairs_the_sides_seed_by_seed_and_over_the_seeds():
    import numpy as np

    bench = load("scvi_tools")
    # two seeds, three cells: differences (1, 2, 3) at seed 0 and (3, 4, 5) at seed 1
    results = {("nb", "pyro-vae", 0): {"log_px": [1.0, 2.0, 3.0]}, ("nb", "scvi-tools", 0): {"log_px": [0.0] * 3},
               ("nb", "pyro-vae", 1): {"log_px": [5.0, 6.0, 7.0]}, ("nb", "scvi-tools", 1): {"log_px": [2.0] * 3}}
    seed0, seed1, both = bench.paired(results, "nb", [0, 1])
    assert "seed 0" in seed0 and "+2.00 ± 0.58" in seed0 and "seed 1" in seed1 and "+4.00 ± 0.58" in seed1
    # over the seeds: mean of (2, 4) = 3, s.e. sd/sqrt(2) = 1; seed-averaged per cell (2, 3, 4): s.e. 0.58
    assert "+3.00 nats per cell, ± 1.00 (s.e. over the seeds), ± 0.58" in both
    assert f"± {np.hypot(1.0, 1 / np.sqrt(3)):.2f} (both)" in both
    assert bench.paired(results, "zinb", [0, 1]) == []  # (a side missing: no line)
    with pytest.raises(SystemExit):
        bench.parse(["--seeds", "0"])


def test_topics_scores_the_library_s_priors_and_lda_by_the_same_code(tmp_path, capsys):
    import math
    from types import SimpleNamespace

    import numpy as np

    bench = load("topics")
    _count_file(tmp_path / "train.npz", rows=60, columns=10)
    _count_file(tmp_path / "test.npz", rows=20, columns=10, seed=1)
    (tmp_path / "vocab.txt").write_text("".join(f"w{j}\n" for j in range(10)))
    assert bench.main(["--data", str(tmp_path), "--sides", "pyro-vae", "--topics", "3", "--epochs", "1",
                       "--samples", "3", "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    models = [r["model"] for r in result["rows"]]
    assert models[:3] == [f"pyro-vae ProdLDA, prior {p}" for p in bench.PRIORS] and models[3].startswith("unigram")
    assert all(-1 <= r["npmi_test"] <= 1 and r["perplexity"] > 1 for r in result["rows"][:3])
    assert (tmp_path / "out" / "topics-dirichlet.txt").read_text().startswith("0: w")
    # LDA's log p(x_d | beta) by importance sampling: a one-word document's is exact, E[theta] . beta_v
    beta = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    lda = SimpleNamespace(doc_topic_prior_=0.5, n_components=2, components_=beta * 10,
                          transform=lambda x: np.full((x.shape[0], 2), 0.5))
    import scipy.sparse

    one_word = scipy.sparse.csr_matrix(np.array([[0, 0, 1]]))
    log_px = bench.lda_log_px(lda, one_word, samples=20000, seed=0)
    assert log_px.item() == pytest.approx(math.log(0.5 * 0.1 + 0.5 * 0.8), abs=0.01)


def test_count_memory_holds_the_rows_sparse_and_draws_batches(tmp_path, capsys):
    bench = load("count_memory")
    assert bench.main(["--rows", "3000", "--columns", "40", "--density", "0.05", "--draws", "3",
                       "--dense-reference", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["bytes_dense_float32"] == 3000 * 40 * 4
    assert result["bytes_sparse"] == 3001 * 8 + result["nnz"] * (4 + 4)  # offsets, int32 columns, float32 values
    assert abs(result["nnz"] / (3000 * 40) - 0.05) < 0.01 and result["ratio"] > 1
    assert result["sparse_batch_seconds"] > 0 and result["dense_batch_seconds"] > 0
