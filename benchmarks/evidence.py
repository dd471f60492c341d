"""Importance-sampled log p(x): pyro-vae's estimator vs a hand-written vectorized PyTorch one.

Both compute, per test image, log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x) with z_k ~ q(z|x), in
chunks of samples reduced by a streaming log-sum-exp (K = 5000 over 10,000 images is 50 million
decoder passes: no implementation can hold them at once). They run interleaved in one process on
the same model and images; the table gives seconds, images per second and the ratio to the
hand-written estimator, and (each in a fresh subprocess) the peak resident memory.

    python benchmarks/step_overhead.py ...   # the training step
    python benchmarks/evidence.py --data-dir ../shared/data/mnist-test --samples 5000   # the full test set
    python benchmarks/evidence.py --images 500 --samples 1000 --rounds 3                # a quick look

Without --data-dir the images are the embedded MNIST subset's 1,000 test digits. With --run, the
model is a trained run folder's; otherwise the default VAE at its (seeded) initialization.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F

from pyro_vae import VAE, BernoulliLikelihood, load_run
from pyro_vae.data import MNIST5k, load_idx_split
from pyro_vae.metrics import log_evidence


def hand_log_evidence(vae: VAE, x: torch.Tensor, k: int, chunk_pairs: int) -> torch.Tensor:
    """The same estimator in plain tensor code (reads the VAE's weights, uses no distributions)."""
    xf = x.flatten(1)
    h = vae.encoder.body(xf)
    mu, sigma = vae.posterior.loc(h), F.softplus(vae.posterior.raw_scale(h))
    log_sigma = sigma.log().sum(-1)
    per_chunk = max(1, chunk_pairs // x.shape[0])
    total = torch.full((x.shape[0],), -math.inf)
    done = 0
    while done < k:
        n = min(per_chunk, k - done)
        eps = torch.randn(n, *mu.shape)
        z = mu + sigma * eps
        logits = vae.decoder.body(z)
        log_px = -F.binary_cross_entropy_with_logits(logits, xf.expand_as(logits), reduction="none").sum(-1)
        log_w = log_px - 0.5 * z.pow(2).sum(-1) + 0.5 * eps.pow(2).sum(-1) + log_sigma  # 2 pi terms cancel
        total = torch.logaddexp(total, log_w.logsumexp(0))
        done += n
    return total - math.log(k)


def library_log_evidence(vae: VAE, x: torch.Tensor, k: int, chunk_pairs: int) -> torch.Tensor:
    return log_evidence(vae, x, k, chunk_pairs)


ESTIMATORS = {"hand-written PyTorch": hand_log_evidence, "pyro-vae metrics.log_evidence": library_log_evidence}


def load(args) -> tuple[VAE, torch.Tensor, str]:
    torch.manual_seed(0)
    if args.run:
        run = load_run(args.run, device="cpu", with_data=False)
        vae = run.model
    else:
        vae = VAE(latent_dim=50)
    if args.data_dir:
        images, _ = load_idx_split(Path(args.data_dir), "test")  # only the t10k files are read
        source = f"{args.data_dir} test set"
    else:
        images = MNIST5k().load().test
        source = "mnist5k test split"
    x = BernoulliLikelihood().prepare_eval_set(images[: args.images])
    vae.eval()
    return vae, x, f"{x.shape[0]} images from the {source}"


def run_estimator(name: str, vae: VAE, x: torch.Tensor, args) -> tuple[float, torch.Tensor]:
    fn = ESTIMATORS[name]
    torch.manual_seed(1)
    start = time.perf_counter()
    with torch.inference_mode(), pyro.validation_enabled(False):
        parts = [fn(vae, x[i : i + args.batch], args.samples, args.chunk_pairs) for i in range(0, x.shape[0], args.batch)]
    return time.perf_counter() - start, torch.cat(parts)


def resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_child(args) -> int:
    """Run one estimator once; print (as JSON) the largest resident memory seen while it ran, sampled
    every 2 ms, minus the resident memory just before it started (MiB)."""
    vae, x, _ = load(args)
    before = resident_mib()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident_mib())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    run_estimator(args.memory_of, vae, x, args)
    done.set()
    sampler.join()
    print(json.dumps({"growth_mib": max(peak[0], resident_mib()) - before}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="a folder with t10k-images-idx3-ubyte(.gz), e.g. ../shared/data/mnist-test")
    parser.add_argument("--run", help="a trained run folder (default: the default VAE, untrained)")
    parser.add_argument("--images", type=int, default=10_000, help="at most this many test images")
    parser.add_argument("--samples", type=int, default=5000, help="K importance samples per image")
    parser.add_argument("--batch", type=int, default=250, help="images per data chunk")
    parser.add_argument("--chunk-pairs", type=int, default=16384, help="(image, sample) pairs per chunk")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (order rotates)")
    parser.add_argument("--memory-images", type=int, default=200, help="images for the peak-memory runs")
    parser.add_argument("--memory-samples", type=int, nargs="*", default=[500, 5000],
                        help="K values for the peak-memory runs (bounded memory: the peak should not grow with K)")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_of:
        return memory_child(args)

    vae, x, what = load(args)
    print(f"# evidence: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), pyro {pyro.__version__}, device cpu")
    print(f"# {' '.join(sys.argv)}")
    print(f"# {what}; K = {args.samples}; {args.batch} images x {args.chunk_pairs // args.batch} samples per chunk; "
          f"{args.rounds} interleaved round(s), median")
    names = list(ESTIMATORS)
    times: dict[str, list[float]] = {n: [] for n in names}
    estimates: dict[str, torch.Tensor] = {}
    for r in range(args.rounds):
        for name in names[r % 2 :] + names[: r % 2]:
            seconds, est = run_estimator(name, vae, x, args)
            times[name].append(seconds)
            estimates[name] = est
    memory: dict[str, dict[int, float]] = {name: {} for name in names}
    for name in names:
        for k in args.memory_samples:
            cmd = [sys.executable, __file__, "--memory-of", name, "--images", str(args.memory_images), "--samples",
                   str(k), "--batch", str(args.batch), "--chunk-pairs", str(args.chunk_pairs)]
            cmd += ["--data-dir", args.data_dir] if args.data_dir else []
            cmd += ["--run", args.run] if args.run else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            memory[name][k] = json.loads(out.strip().splitlines()[-1])["growth_mib"]
    base = statistics.median(times[names[0]])
    mem_head = "".join(f" memory growth, K={k} (MiB) |" for k in args.memory_samples)
    print(f"| estimator | seconds | images/s | ratio | mean log p(x) (nats) |{mem_head}")
    print("|" + " --- |" * (5 + len(args.memory_samples)))
    for name in names:
        t = statistics.median(times[name])
        mem = "".join(f" {memory[name][k]:.0f} |" for k in args.memory_samples)
        print(f"| {name} | {t:.1f} | {x.shape[0] / t:.1f} | {t / base:.3f}x | {estimates[name].mean():.3f} |{mem}")
    gap = (estimates[names[0]] - estimates[names[1]]).abs().max().item()
    print(f"# largest |difference| between the two estimates of one image: {gap:.2e} nats (same seed, same draws)")
    if args.memory_samples:
        print(f"# memory growth: largest resident memory while estimating minus just before (sampled every 2 ms), "
              f"{args.memory_images} images, one fresh process per cell")
    return 0


if __name__ == "__main__":
    sys.exit(main())
