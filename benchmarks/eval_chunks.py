"""Importance-sampled log p(x) on the CPU: how many (image, sample) pairs a chunk should hold.

``metrics.log_evidence`` draws the K samples of a batch of images in chunks of ``chunk_pairs``
(image, sample) pairs and combines them with a streaming log-sum-exp; left unset, the chunk is
``metrics.chunk_pairs_for(vae, device)``: on the CPU, as many pairs as keep the widest activation of
p(x|z) (the decoder's, or an autoregressive likelihood's own) near 12 MiB. This script times it for
the Fashion-MNIST models of ``benchmarks/configs`` (at their seeded initialization: speed does not
depend on the weights or the pixel values, so the images are random binary 28x28) at several chunk
sizes, interleaved in one process (the order rotates every round), with the minor page faults each
call caused (fresh memory the kernel had to map: glibc serves allocations above its mmap threshold,
at most 32 MiB, from fresh pages every time).

    python benchmarks/eval_chunks.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

from pyro_vae import Config
from pyro_vae.metrics import chunk_pairs_for, log_evidence

from common import seeded_model  # benchmarks/common.py

CONFIGS = Path(__file__).resolve().parent / "configs"
REFERENCE = 16384  # the default before chunk_pairs_for: every ratio is against it


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="fashion-mlp,fashion-vamp,fashion-conv",
                        help="comma-separated config names from benchmarks/configs")
    parser.add_argument("--chunks", default="16384,8192,4096,2048,1024,512", help="chunk sizes to time")
    parser.add_argument("--images", type=int, default=40, help="images (default 40)")
    parser.add_argument("--samples", type=int, default=1000, help="K per image (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base_chunks = {int(c) for c in args.chunks.split(",")} | {REFERENCE}

    print(f"# eval chunks: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), pyro {pyro.__version__}, device cpu")
    print(f"# {' '.join(sys.argv)}")
    print(f"# {args.images} images x K = {args.samples}; {args.rounds} interleaved round(s), median; "
          f"ratio = seconds at {REFERENCE} / seconds at the chunk; (default): chunk_pairs_for's choice on the CPU")
    print("| config | chunk_pairs | seconds | ratio | minor page faults | mean log p(x) (nats) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.configs.split(","):
        vae, x = seeded_model(Config.load(CONFIGS / f"{name}.toml"), args.images)
        vae.eval()
        default = chunk_pairs_for(vae, torch.device("cpu"))
        chunks = sorted(set(base_chunks) | {default}, reverse=True)
        times: dict[int, list[float]] = {c: [] for c in chunks}
        faults: dict[int, list[int]] = {c: [] for c in chunks}
        means: dict[int, float] = {}
        with torch.no_grad(), pyro.validation_enabled(False):
            log_evidence(vae, x[:4], 50)  # warm-up
            for r in range(args.rounds):
                shift = r % len(chunks)
                for c in chunks[shift:] + chunks[:shift]:
                    torch.manual_seed(1)
                    before, start = minor_faults(), time.perf_counter()
                    means[c] = log_evidence(vae, x, args.samples, chunk_pairs=c).mean().item()
                    times[c].append(time.perf_counter() - start)
                    faults[c].append(minor_faults() - before)
        base = statistics.median(times[REFERENCE])
        for c in chunks:
            t = statistics.median(times[c])
            mark = " (default)" if c == default else ""
            print(f"| {name} | {c}{mark} | {t:.2f} | {base / t:.2f}x | {statistics.median(faults[c]):.0f} | {means[c]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
