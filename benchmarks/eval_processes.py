"""Importance-sampled log p(x) on the CPU: one process with T threads against N processes of T/N threads.

``benchmarks/fashion_mnist.py --processes N`` scores the test evaluation's batches in N processes,
every N-th batch each. This script measures what that buys: the same work (``--images`` random
binary 28x28 images, K = ``--samples``, the library's default chunk) done by one process with
``--threads`` torch threads, and the same work done by each of N processes side by side with
T / N threads each; throughput is images scored per second of wall time (for the side-by-side
processes: N times the work over the slowest one's time). Each process builds the model of a
``benchmarks/configs`` file at its seeded initialization (speed does not depend on the weights or
the pixels) and times only the estimate, after a warm-up. Rounds alternate the two arrangements.

    python benchmarks/eval_processes.py --config fashion-conv-hvae-pixelcnn --rounds 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyro
import torch

from pyro_vae import Config
from pyro_vae.metrics import log_evidence

from common import seeded_model  # benchmarks/common.py

CONFIGS = Path(__file__).resolve().parent / "configs"


def estimate_seconds(config_name: str, images: int, samples: int) -> tuple[float, float]:
    """Seconds for one importance-sampled estimate of ``images`` images with K = ``samples``
    (after a warm-up), and the mean log p(x)."""
    vae, x = seeded_model(Config.load(CONFIGS / f"{config_name}.toml"), images)
    vae.eval()
    with torch.no_grad(), pyro.validation_enabled(False):
        log_evidence(vae, x, max(1, samples // 10))  # warm-up
        torch.manual_seed(1)
        start = time.perf_counter()
        mean = log_evidence(vae, x, samples).mean().item()
        return time.perf_counter() - start, mean


def run_workers(args, processes: int, threads: int) -> list[tuple[float, float]]:
    """``processes`` workers of ``threads`` threads each, started together: (seconds, mean) of each."""
    command = [sys.executable, __file__, "--worker", "--config", args.config, "--images", str(args.images),
               "--samples", str(args.samples), "--threads", str(threads)]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    outputs = [child.communicate()[0] for child in children]
    if any(child.returncode for child in children):
        raise SystemExit(f"a worker failed: {[child.returncode for child in children]}")
    return [tuple(map(float, out.split())) for out in outputs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="fashion-conv-hvae-pixelcnn", help="a config name from benchmarks/configs")
    parser.add_argument("--images", type=int, default=250, help="images (default 250, the evaluation's batch)")
    parser.add_argument("--samples", type=int, default=100, help="K per image (default 100)")
    parser.add_argument("--processes", type=int, default=2, help="N (default 2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="T, threads in all (default: the cores)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both arrangements; medians are reported")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        seconds, mean = estimate_seconds(args.config, args.images, args.samples)
        print(f"{seconds} {mean}")
        return 0
    per_process = max(1, args.threads // args.processes)
    arrangements = {f"1 process x {args.threads} threads": (1, args.threads),
                    f"{args.processes} processes x {per_process} threads": (args.processes, per_process)}
    rates: dict[str, list[float]] = {name: [] for name in arrangements}
    means: set[float] = set()
    for r in range(args.rounds):
        names = list(arrangements) if r % 2 == 0 else list(reversed(arrangements))
        for name in names:
            processes, threads = arrangements[name]
            results = run_workers(args, processes, threads)
            rates[name].append(processes * args.images / max(seconds for seconds, _ in results))
            means.update(round(mean, 4) for _, mean in results)
    print(f"# eval processes: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"pyro {pyro.__version__}, device cpu")
    print(f"# {' '.join(sys.argv)}")
    print(f"# {args.config}: {args.images} images x K = {args.samples} a process; {args.rounds} round(s), median; "
          f"mean log p(x) in every process: {', '.join(f'{m:.4f}' for m in sorted(means))} nats")
    print("| arrangement | images/s | ratio |")
    print("| --- | --- | --- |")
    base = statistics.median(rates[next(iter(arrangements))])
    for name in arrangements:
        rate = statistics.median(rates[name])
        print(f"| {name} | {rate:.2f} | {rate / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
