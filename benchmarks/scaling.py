"""Data-parallel throughput: training images per second with N = 1, 2, ... processes.

Each N trains the same config for a few epochs with ``pyro-vae train`` (``--nproc N`` for N > 1,
which runs torchrun with the gloo backend on CPU, nccl on GPUs); throughput is the training set's
size over the median training seconds of an epoch (the first epoch, warm-up, is left out;
evaluation is not timed). Efficiency = throughput(N) / (N x throughput(1)).

    python benchmarks/scaling.py                       # N = 1, 2 on the default model and data
    python benchmarks/scaling.py --nprocs 1 2 4 --set train.batch_size=1024

On a 2-core CPU this can only show overhead, not speed-up: one process already uses both cores
(two intra-op threads), and two processes get one core each (torchrun sets OMP_NUM_THREADS=1) and
add an all-reduce of every gradient per step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from pyro_vae.config import DATASETS, Config


def throughput(nproc: int, args, root: Path) -> tuple[float, list[float]]:
    out = root / f"n{nproc}"
    command = [sys.executable, "-m", "pyro_vae", "train", *(["--nproc", str(nproc)] if nproc > 1 else []),
               "--out", str(out), "--no-progress", "--set", f"train.epochs={args.epochs}",
               "--set", "eval.samples=10", "--set", "eval.exact_points=0"]
    for item in args.set:
        command += ["--set", item]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"N = {nproc} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = [m["seconds"]["train"] for m in lines[1:]] or [lines[0]["seconds"]["train"]]
    config = Config.load(out / "config.toml")
    images = DATASETS.build(config.data).load().train.shape[0]
    return images / statistics.median(seconds), config.train.batch_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args(argv)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"# scaling: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, device {device}")
    print(f"# {' '.join(sys.argv)}")
    print(f"# throughput = training images / median epoch training seconds (epochs 2..{args.epochs})")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.nprocs:
            rows[n], batch = throughput(n, args, Path(tmp))
    base = rows.get(1)
    print(f"| processes (global batch {batch}) | images/s | efficiency |")
    print("| --- | --- | --- |")
    for n, value in rows.items():
        efficiency = f"{value / (n * base):.2f}" if base else "-"
        print(f"| {n} | {value:.0f} | {efficiency} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
