"""The library's scVI-class model against scvi-tools' ``scvi.model.SCVI`` on the same cells and genes.

    python benchmarks/scvi_tools.py --peer-python /work/venv-bench/bin/python --epochs 100 --samples 1000

One run, side by side, on PBMC 3k's raw UMI counts (``../shared/data/pbmc3k/pbmc3k_raw.h5ad``; any
count file the library reads, via ``--data``):

* cells: a 90/10 split by a fixed seed (``--split-seed``: ``numpy.random.default_rng(seed).permutation``,
  the first 10% held out); the same cells for both;
* genes: those seen (count > 0) in >= 3 training cells, then the 2,000 of largest variance of
  log1p(x / total * 1e4) over the training cells (Seurat's LogNormalize; the library's
  ``data.top_variable`` rule, ``pyro_vae.data.top_variable_columns``); the list is saved (genes.txt);
  cells left with no count over those genes are dropped from both sides (said);
* models: latent 10, one hidden layer of 128, NB or ZINB with one inverse dispersion per gene, the
  library size observed (each cell's own total: scVI's default): the library's
  ``examples/configs/scvi.toml``, and ``scvi.model.SCVI(n_latent=10, gene_likelihood=...)`` at its
  defaults except what makes the objective the same: no KL warm-up (``n_epochs_kl_warmup=None``; the
  library's config has none), all training cells used (``train_size=1.0``), batch 128, lr 1e-3, the
  same number of epochs, one CPU thread each;
* per held-out cell, in nats, summed over the genes: log p(x | l) by importance sampling with K
  draws of z from q(z|x) (the library's ``evaluation.evaluate``; scvi's ``get_marginal_ll``, both
  log mean_k p(x|z_k, l) p(z_k) / q(z_k|x) with l the cell's observed total, the NB/ZINB mass with its
  log x! term), and the reconstruction term E_q[log p(x|z, l)] (the library: over the same K draws;
  scvi's ``get_reconstruction_error``: one draw, its sign flipped);
* seconds per training epoch (the library: its metrics.jsonl "seconds.train", the per-epoch scoring
  excluded; scvi: a Lightning callback from epoch start to end) and the peak resident memory of the
  process that trained (ru_maxrss, read after training), and that peak less the resident memory just
  before training.

Each (seed, likelihood, side) trains in a subprocess of its own, interleaved (library NB, scvi NB,
library ZINB, scvi ZINB, then the next seed), so peak memory is each one's own. With ``--seeds S`` each
side trains S times (seeds ``--seed`` .. ``--seed`` + S - 1, the same seed for both sides of a pair): one
training run's log p(x) moves by about a nat per cell from seed to seed, as much as the difference the table
is for, so a claim of "level" or "better" needs the spread over seeds beside the spread over cells. The scvi-tools side runs under
``--peer-python`` (a venv with the ``bench`` extra: ``pip install -e .[bench]``); ``--sides pyro-vae``
runs the library alone (the smoke test's setting, with ``--in-process``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # this checkout's library, and common.py
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "pbmc3k" / "pbmc3k_raw.h5ad"
SIDES = ("pyro-vae", "scvi-tools")
LIKELIHOODS = {"nb": ("negative-binomial", "nb"), "zinb": ("zero-inflated-negative-binomial", "zinb")}


def rss_mib() -> float:
    """This process's peak resident memory so far (ru_maxrss, KiB on Linux), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """This process's resident memory now (/proc/self/statm), in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- the data both sides train on ------------------------------------------------------------------


def prepare(data: Path, out: Path, genes: int, min_cells: int, test_fraction: float, seed: int) -> dict:
    """Split the cells, choose the genes on the training cells, write train.npz / test.npz / genes.txt."""
    import scipy.sparse

    from pyro_vae.data.counts import read_counts, top_variable_columns

    m = read_counts(data)
    counts = m.counts.tocsr()
    n = counts.shape[0]
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(test_fraction * n))
    test_rows, train_rows = np.sort(order[:n_test]), np.sort(order[n_test:])
    kept, dropped = top_variable_columns(counts[train_rows], genes, min_cells)
    names = m.columns or [f"column{j}" for j in range(counts.shape[1])]
    x = counts[:, kept].astype(np.int32)
    totals = np.asarray(x.sum(axis=1)).reshape(-1)
    empty = {"train": int((totals[train_rows] == 0).sum()), "test": int((totals[test_rows] == 0).sum())}
    train_rows, test_rows = train_rows[totals[train_rows] > 0], test_rows[totals[test_rows] > 0]
    out.mkdir(parents=True, exist_ok=True)
    scipy.sparse.save_npz(out / "train.npz", scipy.sparse.csr_matrix(x[train_rows]))
    scipy.sparse.save_npz(out / "test.npz", scipy.sparse.csr_matrix(x[test_rows]))
    (out / "genes.txt").write_text("".join(f"{names[j]}\n" for j in kept))
    np.save(out / "test_cells.npy", test_rows)
    return {"data": str(data), "cells": n, "genes_in_file": counts.shape[1], "train_cells": len(train_rows),
            "test_cells": len(test_rows), "genes": len(kept), "genes_seen_in_fewer_than_min_cells": int(dropped),
            "min_cells": min_cells, "split_seed": seed, "test_fraction": test_fraction,
            "empty_cells_dropped": empty, "rule": "seen in >= min_cells training cells, then the top "
            "variance of log1p(x / total * 1e4) over the training cells (pyro_vae.data.top_variable_columns)"}


def read_split(folder: Path) -> tuple:
    import scipy.sparse

    return scipy.sparse.load_npz(folder / "train.npz"), scipy.sparse.load_npz(folder / "test.npz")


# -- one side, one likelihood (run in a subprocess) ------------------------------------------------


def library_worker(folder: Path, likelihood: str, epochs: int, samples: int, seed: int, run_dir: Path,
                   overrides: tuple[str, ...] = ()) -> dict:
    """Train examples/configs/scvi.toml on the split (with ``overrides``, --set's KEY=VALUE); per test
    cell log p(x|l) (K draws) and E_q log p(x|z,l)."""
    import tomllib

    from pyro_vae import Config, Trainer
    from pyro_vae.config import apply_overrides
    from pyro_vae.evaluation import evaluate
    from pyro_vae.trained import load_run

    raw = tomllib.loads((ROOT / "examples" / "configs" / "scvi.toml").read_text())
    raw["seed"] = seed
    raw["data"] = {"name": "counts", "path": str(folder / "train.npz"), "test_path": str(folder / "test.npz"),
                   "vocabulary": str(folder / "genes.txt")}
    raw["model"]["likelihood"]["name"] = LIKELIHOODS[likelihood][0]
    raw["train"].update(epochs=epochs, curve_every=max(epochs, 1))
    raw["eval"] = {"samples": samples, "exact_points": 0}
    before = current_rss_mib()
    Trainer(Config.from_dict(apply_overrides(raw, list(overrides))), run_dir, progress=False, log=lambda s: None).fit()
    peak = rss_mib()
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]
    seconds = [line["seconds"]["train"] for line in lines if "seconds" in line]
    run = load_run(run_dir)
    ev = evaluate(run.program, run.data.test, samples=samples, seed=seed, posterior_means=False)
    return {"log_px": ev.log_px.tolist(), "reconstruction": ev.reconstruction.tolist(), "epoch_seconds": seconds,
            "peak_rss_mib": peak, "rss_before_training_mib": before, "samples": samples,
            "what": "library: examples/configs/scvi.toml, likelihood " + LIKELIHOODS[likelihood][0]
            + "".join(f", {o}" for o in overrides)}


class _EpochTimer:
    """A Lightning callback: the wall seconds of each training epoch."""

    def __init__(self):
        import lightning.pytorch as pl

        class Timer(pl.Callback):
            def on_train_epoch_start(cb, trainer, module):
                cb.start = time.perf_counter()

            def on_train_epoch_end(cb, trainer, module):
                self.seconds.append(time.perf_counter() - cb.start)

        self.seconds: list[float] = []
        self.callback = Timer()


def scvi_worker(folder: Path, likelihood: str, epochs: int, samples: int, seed: int) -> dict:
    """scvi.model.SCVI on the same split; per test cell get_marginal_ll (K) and get_reconstruction_error."""
    import anndata
    import scvi
    import torch

    scvi.settings.seed = seed
    train, test = read_split(folder)
    genes = (folder / "genes.txt").read_text().splitlines()

    def adata(m):
        a = anndata.AnnData(m.astype(np.float32))
        a.var_names = genes
        return a

    a_train, a_test = adata(train), adata(test)
    scvi.model.SCVI.setup_anndata(a_train)
    model = scvi.model.SCVI(a_train, n_latent=10, n_hidden=128, n_layers=1, gene_likelihood=LIKELIHOODS[likelihood][1])
    timer = _EpochTimer()
    before = current_rss_mib()
    model.train(max_epochs=epochs, train_size=1.0, batch_size=128, accelerator="cpu", devices=1,
                early_stopping=False, enable_progress_bar=False, callbacks=[timer.callback],
                plan_kwargs={"lr": 1e-3, "n_epochs_kl_warmup": None, "n_steps_kl_warmup": None})
    peak = rss_mib()
    model.module.eval()
    torch.manual_seed(seed)
    log_px = model.get_marginal_ll(a_test, n_mc_samples=samples, return_mean=False, batch_size=128)
    recon = model.get_reconstruction_error(a_test, return_mean=False, batch_size=128)["reconstruction_loss"]
    return {"log_px": torch.as_tensor(log_px).double().tolist(), "reconstruction": (-recon).double().tolist(),
            "epoch_seconds": timer.seconds, "peak_rss_mib": peak, "rss_before_training_mib": before,
            "samples": samples, "what": f"scvi-tools {scvi.__version__}: SCVI(n_latent=10, "
            f"gene_likelihood={LIKELIHOODS[likelihood][1]!r}), no KL warm-up, train_size=1.0"}


def worker(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    folder, out = Path(args.out), Path(args.worker_out)
    if args.worker == "pyro-vae":
        result = library_worker(folder, args.likelihood, args.epochs, args.samples, args.seed,
                                folder / f"run-{args.likelihood}-seed{args.seed}", tuple(args.set))
    else:
        result = scvi_worker(folder, args.likelihood, args.epochs, args.samples, args.seed)
    result["torch"], result["threads"] = torch.__version__, torch.get_num_threads()
    out.write_text(json.dumps(result))
    return 0


# -- the driver --------------------------------------------------------------------------------------


def run_side(args, side: str, likelihood: str, seed: int) -> dict:
    """One (side, likelihood, seed) trained and scored in a subprocess; its JSON, with the wall seconds."""
    if args.in_process:  # (the smoke test's: no process start; the memory is then not the side's own)
        start = time.perf_counter()
        result = library_worker(Path(args.out), likelihood, args.epochs, args.samples, seed,
                                Path(args.out) / f"run-{likelihood}-seed{seed}", tuple(args.set))
        return {**result, "wall_seconds": time.perf_counter() - start}
    python = args.peer_python if side == "scvi-tools" else args.python
    result_file = Path(args.out) / f"{side}-{likelihood}-seed{seed}.json"
    cmd = [python, str(Path(__file__).resolve()), "--worker", side, "--likelihood", likelihood, "--out", args.out,
           "--worker-out", str(result_file), "--epochs", str(args.epochs), "--samples", str(args.samples),
           "--seed", str(seed), "--threads", str(args.threads), *(f"--set={o}" for o in args.set)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=str(ROOT), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{side} {likelihood} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(result_file.read_text())
    result["wall_seconds"] = time.perf_counter() - start
    return result


def mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0


def summary(runs: list[dict]) -> dict:
    """One (likelihood, side) over its seeds: per cell, log p(x) averaged over the seeds (mean ± s.e. over
    the cells), each seed's mean over the cells, the median epoch's seconds of all seeds, the largest peak."""
    epochs = [t for r in runs for t in r["epoch_seconds"]]
    return {"log_px": mean_se(np.mean([r["log_px"] for r in runs], axis=0)),
            "reconstruction": mean_se(np.mean([r["reconstruction"] for r in runs], axis=0)),
            "log_px_per_seed": [float(np.mean(r["log_px"])) for r in runs],
            "seconds_per_epoch": float(np.median(epochs)) if epochs else float("nan"),
            "seconds_per_epoch_mean": float(np.mean(epochs)) if epochs else float("nan"),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            "training_rss_mib": max(r["peak_rss_mib"] - r["rss_before_training_mib"] for r in runs),
            "samples": runs[0]["samples"], "what": runs[0]["what"], "torch": runs[0].get("torch"),
            "wall_seconds": [r.get("wall_seconds") for r in runs]}


def table(rows: dict) -> list[str]:
    lines = ["| likelihood | side | log p(x) [nats/cell] | each seed's | E_q log p(x\\|z) | s/epoch (median) | "
             "peak RSS MiB (during training) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for (likelihood, side), s in rows.items():
        lp, rc = s["log_px"], s["reconstruction"]
        seeds = ", ".join(f"{m:.2f}" for m in s["log_px_per_seed"])
        lines.append(f"| {likelihood.upper()} | {side} | {lp[0]:.2f} ± {lp[1]:.2f} | {seeds} | {rc[0]:.2f} ± {rc[1]:.2f} | "
                     f"{s['seconds_per_epoch']:.3f} | {s['peak_rss_mib']:.0f} (+{s['training_rss_mib']:.0f}) |")
    return lines


def paired(results: dict, likelihood: str, seeds: list[int]) -> list[str]:
    """The per-cell difference library - scvi of log p(x) (the same cells, the same seed), mean ± its s.e.
    over the cells, for each seed; over several seeds also the mean of the seeds' differences ± its s.e.
    over the seeds, and the two s.e.s combined (sqrt of the sum of squares: conservative, it counts the
    seed-by-cell noise twice)."""
    pairs = [(results.get((likelihood, "pyro-vae", s)), results.get((likelihood, "scvi-tools", s))) for s in seeds]
    if any(a is None or b is None for a, b in pairs):
        return []
    cells = np.array([np.asarray(a["log_px"]) - np.asarray(b["log_px"]) for a, b in pairs])  # (seeds, cells)
    name = likelihood.upper()
    lines = [f"{name} seed {s}: pyro-vae - scvi-tools, log p(x) per cell, paired over the same cells: "
             f"{mean_se(d)[0]:+.2f} ± {mean_se(d)[1]:.2f} nats" for s, d in zip(seeds, cells)]
    if len(seeds) > 1:
        (over_seeds, se_seeds), (_, se_cells) = mean_se(cells.mean(axis=1)), mean_se(cells.mean(axis=0))
        lines.append(f"{name} over {len(seeds)} seeds: pyro-vae - scvi-tools {over_seeds:+.2f} nats per cell, "
                     f"± {se_seeds:.2f} (s.e. over the seeds), ± {se_cells:.2f} (s.e. over the cells of the seed-"
                     f"averaged difference), ± {math.hypot(se_seeds, se_cells):.2f} (both)")
    return lines


def write_results(args, split: dict, results: dict, seeds: list[int], argv: list[str]) -> list[str]:
    from common import machine

    rows = {(lk, side): summary([results[(lk, side, s)] for s in seeds])
            for lk in args.likelihoods for side in args.sides}
    differences = [line for lk in args.likelihoods for line in paired(results, lk, seeds)]
    load = os.getloadavg()
    lines = [f"machine: {machine()}; load average at the end (1, 5, 15 min): {load[0]:.1f}, {load[1]:.1f}, "
             f"{load[2]:.1f} (other jobs share the cores)", f"command: python benchmarks/scvi_tools.py {' '.join(argv)}",
             f"data: {split['data']}: {split['train_cells']} train / {split['test_cells']} test cells x "
             f"{split['genes']} genes (split seed {split['split_seed']}); K = {args.samples} importance samples; "
             f"{args.epochs} epochs; {args.threads} thread(s) a side; training seeds {', '.join(map(str, seeds))} "
             f"(log p(x): per cell averaged over the seeds, mean ± s.e. over the cells)", "", *table(rows), "",
             *differences]
    out = Path(args.out)
    (out / "result.md").write_text("\n".join(lines) + "\n")
    (out / "result.json").write_text(json.dumps({
        "command": ["python", "benchmarks/scvi_tools.py", *argv], "machine": machine(), "split": split,
        "epochs": args.epochs, "samples": args.samples, "threads": args.threads, "seeds": seeds,
        "rows": [{"likelihood": lk, "side": side, **s} for (lk, side), s in rows.items()],
        "paired_differences": differences}, indent=1))
    return lines


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="a count file the library reads (cells x genes)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scvi-tools-pbmc3k"))
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--min-cells", type=int, default=3)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="the (first) training and evaluation seed of both sides")
    p.add_argument("--seeds", type=int, default=1, help="train each side this many times, seeds --seed, --seed + 1, ...")
    p.add_argument("--epochs", type=int, default=400)
    p.add_argument("--samples", type=int, default=1000, help="K importance samples per held-out cell")
    p.add_argument("--likelihoods", nargs="+", choices=sorted(LIKELIHOODS), default=["nb", "zinb"])
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    p.add_argument("--python", default=sys.executable, help="the library side's python")
    p.add_argument("--peer-python", default=sys.executable, help="a python with scvi-tools (the bench extra)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override of the library's config (e.g. train.validation=243), as pyro-vae train --set")
    p.add_argument("--in-process", action="store_true", help="train the library side in this process (a smoke test)")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--likelihood", choices=sorted(LIKELIHOODS), help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.worker:
        return worker(args)
    split = prepare(Path(args.data), Path(args.out), args.genes, args.min_cells, args.test_fraction, args.split_seed)
    seeds = [args.seed + i for i in range(args.seeds)]
    results = {}
    for seed in seeds:  # interleaved: each likelihood's sides one after the other, then the next seed
        for likelihood in args.likelihoods:
            for side in args.sides:
                result = results[(likelihood, side, seed)] = run_side(args, side, likelihood, seed)
                print(f"seed {seed} {likelihood} {side}: {result['wall_seconds']:.0f} s", flush=True)
    print("\n".join(write_results(args, split, results, seeds, argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
