"""Quality at a budget: test log-likelihood on dynamically binarized Fashion-MNIST.

Protocol (the published numbers' one): training images are binarized afresh at every batch
(dynamic binarization); 10,000 of the 60,000 training images are held out as a validation split,
which alone selects the reported parameters (best validation ELBO) and stops training early; the
10,000 test images are binarized once with a fixed seed; the test negative log-likelihood is
importance-sampled with K = 5,000 per image, mean over the test set with its standard error.
Training is capped at ``train.max_minutes`` of wall time (steps plus the per-epoch scoring);
evaluation time is reported separately.

    python benchmarks/fashion_mnist.py --data-dir ../shared/data/fashion-mnist               # all settings
    python benchmarks/fashion_mnist.py --data-dir ../shared/data/fashion-mnist --settings mlp --threads 1
    python benchmarks/fashion_mnist.py --table-only          # the table from the run folders so far
    python benchmarks/fashion_mnist.py --paired RUN_A RUN_B  # log p(x) of A minus B, paired over test images

A run trained with ``--set`` overrides is listed with the keys its config.toml changes.

Each setting is one config in benchmarks/configs/ and one run folder under --out. Runs are
resumable: rerun the same command and a setting continues from its last checkpoint, or, when its
training has finished, goes straight to evaluation (or to the table, once evaluated). Snapshots
taken every ``train.snapshot_minutes`` give the time to reach each published number
(``--time-to-reach``, K = --snapshot-samples importance samples, a conservative estimate: fewer
samples give a lower bound on log p(x)). The evaluation resumes too: its finished batches are kept
in the run folder until it completes. Each image's values are written beside the result, so two
runs can be compared image by image (``--paired``), with a standard error of their difference.
``--processes N`` scores the evaluation's batches in N processes (every N-th batch each, into the
same kept batches): each batch runs under a seed of its own, so the numbers are those of one process.

The MNIST side (the default config trained on the embedded subset's 4,000 training digits,
evaluated on the real 10,000-image MNIST test set with K = 5,000) is measured by
``benchmarks/evidence.py --data-dir ../shared/data/mnist-test --run RUN_DIR --samples 5000``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from pyro_vae import Config, Trainer, load_run  # noqa: E402
from pyro_vae.config import format_value  # noqa: E402
from pyro_vae.distributed import SINGLE, Distributed  # noqa: E402
from pyro_vae.evaluation import EvaluationStore, evaluate  # noqa: E402
from pyro_vae.runs import (BEST, CHECKPOINT, CONFIG, SNAPSHOTS, config_differences, load_checkpoint,  # noqa: E402
                           resumable_evaluation)

# Norouzi et al. 2020 (Exemplar VAE), test NLL in nats, dynamically binarized Fashion-MNIST
PUBLISHED = {
    "VAE, Gaussian prior": 228.70,
    "VAE, VampPrior": 227.35,
    "HVAE": 227.37,
    "ConvHVAE": 225.38,
    "Exemplar ConvHVAE": 224.63,
}
SETTINGS = {  # name: (config, the published model whose number it targets)
    "mlp": ("fashion-mlp.toml", "VAE, Gaussian prior"),
    "vamp": ("fashion-vamp.toml", "VAE, VampPrior"),
    "conv": ("fashion-conv.toml", "ConvHVAE"),
    # the conv VAE with an autoregressive decoder: a stronger likelihood family than ConvHVAE's factorized one
    "conv-pixelcnn": ("fashion-conv-pixelcnn.toml", "ConvHVAE"),
    # the conv VAE with two stochastic layers, the published ConvHVAE's structure
    "conv-hvae": ("fashion-conv-hvae.toml", "ConvHVAE"),
    # both: two stochastic layers under the autoregressive decoder
    "conv-hvae-pixelcnn": ("fashion-conv-hvae-pixelcnn.toml", "ConvHVAE"),
}
RESULT = "fashion-result.json"
PER_IMAGE = "fashion-test-per-image.csv"  # each test image's log p(x) and ELBO terms: paired comparisons between runs
REACH = "time-to-reach.json"  # the scored snapshots of --time-to-reach


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, python {platform.python_version()}")


def train(name: str, out: Path, data_dir: str, log, overrides: list[str] = ()) -> Path:
    config_file, _ = SETTINGS[name]
    run_dir = out / name
    config = Config.load(HERE / "configs" / config_file, [f"data.data_dir={data_dir}", *overrides])
    resume = (run_dir / CHECKPOINT).is_file()
    trainer = Trainer(config, run_dir, progress=False, log=log)
    trainer.fit(resume=resume)
    return run_dir


class Share(Distributed):
    """One of ``world`` independent processes: it scores every world-th batch and returns only
    those (no process group; the batches meet in the evaluation's kept-batches folder)."""

    def map_items(self, count, compute):
        return compute(list(range(self.rank, count, self.world)))


def score_test_set(run, samples: int, store: Path | None = None, share: Share | None = None):
    """The importance-sampled evaluation of ``run`` on its test set with K = ``samples`` (its
    batches kept in ``store`` as they finish, if given; with ``share``, only that process's batches)."""
    cfg = run.config
    return evaluate(run.program, run.data.prepared_test, samples=samples, seed=cfg.seed, batch_size=cfg.eval.batch_size,
                    chunk_pairs=cfg.eval.chunk_pairs, exact_points=0, store=store, dist=share or SINGLE)


def score_in_processes(run_dir: Path, samples: int, processes: int, threads: int, store: Path) -> None:
    """Fill ``store`` with every batch of the test evaluation, scored by ``processes`` child
    processes of ``threads`` torch threads each (``--score-share``); a failed child stops the driver."""
    children = [subprocess.Popen([sys.executable, __file__, "--score-share", str(run_dir), str(store), f"{rank}/{processes}",
                                  "--samples", str(samples), "--threads", str(threads)]) for rank in range(processes)]
    failed = [rank for rank, child in enumerate(children) if child.wait() != 0]
    if failed:
        raise SystemExit(f"{run_dir.name}: evaluation processes {failed} failed; the batches they finished are kept "
                         f"in {store}, so the same command resumes there.")


def evaluate_run(run_dir: Path, samples: int, log, processes: int = 1) -> dict:
    """Test NLL at the best-validation checkpoint, K importance samples (kept in RESULT, with each
    image's values in PER_IMAGE). Interrupted, it resumes at the batches not yet scored. With
    ``processes`` > 1, child processes score the batches (each with an equal share of this
    process's torch threads) and this one gathers them."""
    path = run_dir / RESULT
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["samples"] == samples:
            return saved
    run = load_run(run_dir)
    started = time.perf_counter()
    log(f"{run_dir.name}: evaluating {run.data.prepared_test.shape[0]} test images with K = {samples} ({run.described}) ...")
    with resumable_evaluation(run_dir, RESULT) as store:
        resumed = EvaluationStore.count(store)
        if resumed:
            log(f"{run_dir.name}: resuming the evaluation, {resumed} batches already scored in {store}")
        processes = min(processes, -(-run.data.prepared_test.shape[0] // run.config.eval.batch_size))  # at most one a batch
        if processes > 1:
            threads = max(1, torch.get_num_threads() // processes)
            log(f"{run_dir.name}: scoring in {processes} processes of {threads} threads each")
            score_in_processes(run_dir, samples, processes, threads, store)
        result = score_test_set(run, samples, store)
        summary = result.summary()
        last = load_checkpoint(run_dir / CHECKPOINT)
        progress = last.get("progress", {})
        saved = {
            "samples": samples,
            "nll": -summary["log_px"]["mean"],
            "nll_stderr": summary["log_px"]["stderr"],
            "test_elbo": summary["elbo"]["mean"],
            "active_units": summary["active_units"],
            "latent_dim": summary["latent_dim"],
            "best_epoch": run.epoch,
            "epochs": last["epoch"],
            "train_minutes": progress.get("elapsed", 0.0) / 60,
            "eval_minutes": (time.perf_counter() - started) / 60,
            "eval_minutes_cover": "the batches scored by this call" if resumed else "the whole evaluation",
            "eval_processes": processes,
            "best_valid_elbo": progress.get("best_valid"),
            "machine": machine(),
        }
        result.write_csv(run_dir / PER_IMAGE)
        path.write_text(json.dumps(saved, indent=2) + "\n")
    return saved


def time_to_reach(run_dir: Path, target: float, samples: int, log) -> dict:
    """Evaluate each snapshot (K = samples) in order of training time until one reaches ``target``."""
    path = run_dir / REACH
    done = json.loads(path.read_text()) if path.is_file() else {}
    if done.get("samples") == samples and done.get("complete"):
        return done
    points = done.get("points", []) if done.get("samples") == samples else []
    seen = {p["snapshot"] for p in points}
    for snap in sorted((run_dir / SNAPSHOTS).glob("epoch-*.pt")):
        if any(p["nll"] <= target for p in points):
            break
        if snap.name in seen:
            continue
        run = load_run(run_dir, checkpoint=str(snap))
        result = score_test_set(run, samples)
        minutes = run.checkpoint.get("progress", {}).get("elapsed", 0.0) / 60
        points.append({"snapshot": snap.name, "epoch": run.epoch, "minutes": minutes, "nll": -result.log_px.mean().item()})
        log(f"{run_dir.name}: {snap.name} after {minutes:.1f} min: test NLL {points[-1]['nll']:.2f} (K = {samples})")
        path.write_text(json.dumps({"samples": samples, "points": points, "complete": False}, indent=2) + "\n")
    reached = [p for p in points if p["nll"] <= target]
    done = {"samples": samples, "points": points, "complete": True,
            "minutes": reached[0]["minutes"] if reached else None}
    path.write_text(json.dumps(done, indent=2) + "\n")
    return done


def paired_difference(run_a: Path, run_b: Path) -> dict:
    """Test log p(x) of run A minus run B, image by image (both runs' PER_IMAGE): the mean difference
    and its standard error. Both score the same once-binarized test images, so the paired standard
    error is far smaller than either run's own when the runs agree on which images are hard."""
    columns = []
    for run in (run_a, run_b):
        path = Path(run) / PER_IMAGE
        if not path.is_file():
            raise SystemExit(f"{path} is missing: evaluate {run} with this driver first (it writes each image's values).")
        header, *rows = path.read_text().splitlines()
        at = header.split(",").index("log_px_nats")
        columns.append(torch.tensor([float(r.split(",")[at]) for r in rows], dtype=torch.float64))
    a, b = columns
    if a.shape != b.shape:
        raise SystemExit(f"{run_a} scored {a.numel()} test images and {run_b} {b.numel()}: not the same test set.")
    d = a - b
    return {"images": d.numel(), "mean": d.mean().item(), "stderr": d.std().item() / d.numel() ** 0.5}


def changed_keys(name: str, run_dir: Path) -> list[str]:
    """``key=value`` for each setting of the run folder's resolved config.toml that differs from its
    config file (the --set overrides it was trained with); the data folder is not counted."""
    config_file, _ = SETTINGS[name]
    ran = Config.load(run_dir / CONFIG).to_dict()
    base = Config.load(HERE / "configs" / config_file).to_dict()
    return [f"{'.'.join(path)}={format_value(value)}" for path, _, value in config_differences(base, ran)
            if path != ("data", "data_dir") and value is not None]


def table(out: Path) -> str:
    rows = [
        "| setting | config | published (nats) | ours: test NLL ± s.e. (nats) | vs published | best epoch / epochs "
        "| training min | evaluation min | minutes to reach published |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, (config_file, label) in SETTINGS.items():
        target = PUBLISHED[label]
        run_dir = out / name
        path = run_dir / RESULT
        if not path.is_file():
            rows.append(f"| {name} | `{config_file}` | {target:.2f} ({label}) | not run | | | | | |")
            continue
        r = json.loads(path.read_text())
        changed = changed_keys(name, run_dir)
        config = f"`{config_file}`" + (f" with `{'`, `'.join(changed)}`" if changed else "")
        reach_path = run_dir / REACH
        reach = json.loads(reach_path.read_text()) if reach_path.is_file() else None
        if reach is None or not reach.get("complete"):
            reached = "not measured"
        elif reach["minutes"] is not None:
            reached = f"{reach['minutes']:.0f} (K = {reach['samples']})"
        elif r["nll"] <= target:  # no snapshot did, the reported parameters do: the time they were saved
            minutes = load_checkpoint(run_dir / BEST)["progress"]["elapsed"] / 60
            reached = f"{minutes:.0f}: the reported parameters (K = {r['samples']}), no snapshot (K = {reach['samples']})"
        else:
            reached = "not reached"
        rows.append(
            f"| {name} | {config} | {target:.2f} ({label}) | {r['nll']:.2f} ± {r['nll_stderr']:.2f} "
            f"(K = {r['samples']}) | {r['nll'] - target:+.2f} | {r['best_epoch']} / {r['epochs']} "
            f"| {r['train_minutes']:.1f} | {r['eval_minutes']:.1f} | {reached} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data" / "fashion-mnist"),
                   help="folder of the Fashion-MNIST IDX files (default ../shared/data/fashion-mnist)")
    p.add_argument("--out", default="runs/fashion-mnist", help="folder of the run folders (default runs/fashion-mnist)")
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    p.add_argument("--samples", type=int, default=5000, help="importance samples K of the test NLL (default 5000)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--time-to-reach", action="store_true", help="evaluate snapshots for the time to reach the published numbers")
    p.add_argument("--snapshot-samples", type=int, default=1000, help="K for the snapshots (default 1000)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key in every setting (e.g. for a smoke run; repeatable)")
    p.add_argument("--table-only", action="store_true", help="print the table of what has run so far")
    p.add_argument("--paired", nargs=2, metavar=("RUN_A", "RUN_B"),
                   help="test log p(x) of run folder A minus B, image by image: mean and standard error, then exit")
    p.add_argument("--evaluate-only", action="store_true",
                   help="score run folders that exist, training nothing (a folder without its result is scored afresh)")
    p.add_argument("--processes", type=int, default=1,
                   help="score the test evaluation in N processes, each with an equal share of --threads (default 1)")
    p.add_argument("--score-share", nargs=3, metavar=("RUN_DIR", "STORE", "RANK/N"), help=argparse.SUPPRESS)  # a --processes child
    args = p.parse_args(argv)
    if args.processes < 1:
        p.error(f"--processes must be >= 1, got {args.processes}")
    if args.paired:
        d = paired_difference(*map(Path, args.paired))
        print(f"log p(x) of {args.paired[0]} minus {args.paired[1]}: {d['mean']:+.3f} ± {d['stderr']:.3f} nats "
              f"(mean ± s.e. of the per-image differences, {d['images']} test images)")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.score_share:
        run_dir, store, share = args.score_share
        rank, world = map(int, share.split("/"))
        score_test_set(load_run(run_dir), args.samples, Path(store), Share(rank, world))
        return 0
    out = Path(args.out)
    names = [s for s in args.settings.split(",") if s]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown:
        p.error(f"unknown settings {unknown}; valid: {', '.join(SETTINGS)}")

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    missing = [str(out / n) for n in names if not (out / n / CHECKPOINT).is_file()]
    if args.evaluate_only and missing:
        p.error(f"--evaluate-only: no trained run in {', '.join(missing)}")
    if not args.table_only:
        log(f"machine: {machine()}")
        for name in names:
            run_dir = out / name if args.evaluate_only else train(name, out, args.data_dir, log, args.set)
            r = evaluate_run(run_dir, args.samples, log, args.processes)
            log(f"{name}: test NLL {r['nll']:.2f} ± {r['nll_stderr']:.2f} nats (K = {r['samples']}), "
                f"published {PUBLISHED[SETTINGS[name][1]]:.2f}")
            if args.time_to_reach:
                time_to_reach(run_dir, PUBLISHED[SETTINGS[name][1]], args.snapshot_samples, log)
    print(table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
