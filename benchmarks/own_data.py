"""Your own data at scale: a folder of PNG files (first load, cached reload, memory), and `encode`
against `evaluate` on the same work.

1. Writes ``--images`` PNG files (28x28 grey, in 10 class subfolders) from Fashion-MNIST's training
   set (``--data-dir``, IDX files) or, without one, from the embedded MNIST subset repeated; then
   times the first load of dataset ``image-folder`` (decoding every file: images per second), a
   second load (the uint8 cache), and reports the bytes the loaded splits hold (8-bit levels)
   against a float32 copy; then prepares them as the trainer does (default config) and reports
   the training set's bytes until batching, and the time to draw a batch of 128 from the levels
   (decoded per batch) against from a float32 copy, interleaved.
2. Trains a small MLP VAE on the embedded subset for ``--epochs`` epochs, then scores ``--encode``
   test images with K = ``--samples`` importance samples twice, interleaved ``--rounds`` times:
   `pyro-vae evaluate`'s estimate (metrics.evaluate) and `encode`'s per-datapoint work (Run.encode
   + Run.elbo + Run.log_prob, batch by batch); the ratio is the median over rounds.

    python benchmarks/own_data.py --data-dir ../shared/data/fashion-mnist              # 60,000 PNGs
    python benchmarks/own_data.py --images 2000 --encode 500 --samples 100 --rounds 1   # a quick look
    python benchmarks/own_data.py --data-dir ../shared/data/fashion-mnist --encode 0    # the PNG folder only
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pyro_vae import Config, Trainer, load
from pyro_vae.config import DATASETS
from pyro_vae.data import Levels, MNIST5k, load_idx_split, nbytes, prepare_data
from pyro_vae.programs import build_model
from pyro_vae.evaluation import batch_seed, evaluate


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), python {platform.python_version()}")


def write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    from PIL import Image

    for c in range(10):
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i, (x, y) in enumerate(zip(images, labels)):
        Image.fromarray(x, "L").save(folder / f"class{int(y)}" / f"{i:05d}.png")


def png_folder(args, work: Path) -> dict:
    if args.data_dir:
        x, y = load_idx_split(Path(args.data_dir), "train", "fashion-mnist")
    else:
        splits = MNIST5k().load()
        x, y = splits.held("train"), splits.train_labels
    reps = -(-args.images // len(x))
    images = x.values.repeat(reps, 1, 1, 1)[: args.images, 0].numpy()
    labels = y.repeat(reps)[: args.images].numpy()
    folder = work / "pngs"
    start = time.perf_counter()
    write_pngs(folder, images, labels)
    wrote = time.perf_counter() - start
    os.environ["PYRO_VAE_DATA"] = str(work / "cache")
    spec = {"name": "image-folder", "path": str(folder)}
    start = time.perf_counter()
    first = DATASETS.build(spec, "data").load()
    first_s = time.perf_counter() - start
    reloads = []
    for _ in range(3):
        start = time.perf_counter()
        again = DATASETS.build(spec, "data").load()
        reloads.append(time.perf_counter() - start)
    assert again.fingerprint() == first.fingerprint() and "from the cache" in again.description
    values = sum(first.held(split).shape.numel() for split in ("train", "test"))
    return {"images": args.images, "write_s": wrote, "first_load_s": first_s, "images_per_s": args.images / first_s,
            "cached_reload_s": statistics.median(reloads), "splits": first,
            "held_bytes": sum(nbytes(first.held(split)) for split in ("train", "test")), "float32_bytes": 4 * values}


def held_until_batching(args, splits) -> dict:
    """The training set as the trainer holds it (the default config: dynamic binarization) against a
    float32 copy, and the time to draw a batch of 128 from each, interleaved."""
    config = Config.from_dict({"train": {"epochs": 1}})
    program = build_model(config, splits.event_shape)
    start = time.perf_counter()
    data = prepare_data(config, program, torch.device("cpu"), splits)
    prepared_s = time.perf_counter() - start
    floats = data.train.float()
    assert isinstance(data.train, Levels), "the training set is not held as levels"
    generator = torch.Generator().manual_seed(0)
    indices = [torch.randint(0, len(floats), (128,), generator=generator) for _ in range(200)]
    times: dict[str, list[float]] = {"levels": [], "float32": []}
    for r in range(args.rounds * 5):
        for name in (("levels", "float32") if r % 2 == 0 else ("float32", "levels")):
            start = time.perf_counter()
            for index in indices:
                batch = data.train[index].float() if name == "levels" else floats[index]
            times[name].append((time.perf_counter() - start) / len(indices))
    assert torch.equal(batch, floats[indices[-1]])
    ratios = [a / b for a, b in zip(times["levels"], times["float32"])]
    return {"train_bytes": nbytes(data.train), "train_float32_bytes": 4 * data.train.shape.numel(),
            "prepare_s": prepared_s, "batch_levels_us": 1e6 * statistics.median(times["levels"]),
            "batch_float32_us": 1e6 * statistics.median(times["float32"]), "batch_ratio": statistics.median(ratios)}


def encode_against_evaluate(args, work: Path) -> dict:
    config = Config.from_dict({"model": {"latent_dim": 16}, "train": {"epochs": args.epochs},
                               "eval": {"samples": args.samples, "exact_points": 0}})
    Trainer(config, work / "run", progress=False, log=lambda s: None).fit()
    run = load(work / "run")
    test = MNIST5k().load().test
    x = test.repeat(-(-args.encode // len(test)), 1, 1, 1)[: args.encode]
    prepared = run.program.contract.prepare_eval_set(x)
    size = config.eval.batch_size

    def with_evaluate() -> None:
        evaluate(run.program, prepared, samples=args.samples, seed=0, batch_size=size, exact_points=0,
                 posterior_means=True)

    def with_encode() -> None:
        for b in range(0, len(x), size):
            s = batch_seed(0, b // size)
            run.encode(x[b : b + size], seed=s)
            run.elbo(x[b : b + size], seed=s)
            run.log_prob(x[b : b + size], args.samples, seed=s)

    times: dict[str, list[float]] = {"evaluate": [], "encode": []}
    for r in range(args.rounds):
        for name, fn in ((("evaluate", with_evaluate), ("encode", with_encode)) if r % 2 == 0 else
                         (("encode", with_encode), ("evaluate", with_evaluate))):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ratios = [e / v for e, v in zip(times["encode"], times["evaluate"])]
    return {"datapoints": args.encode, "samples": args.samples, "evaluate_s": statistics.median(times["evaluate"]),
            "encode_s": statistics.median(times["encode"]), "ratio": statistics.median(ratios)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="a folder of Fashion-MNIST's IDX files (default: the embedded subset)")
    parser.add_argument("--images", type=int, default=60000, help="PNG files to write and load")
    parser.add_argument("--encode", type=int, default=10000, help="test images to score (0: skip this part)")
    parser.add_argument("--samples", type=int, default=1000, help="importance samples K")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"# own_data: {machine()}")
    print(f"# {' '.join(sys.argv)}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = png_folder(args, work)
        print(f"| PNG folder | {folder['images']:,} files | first load {folder['first_load_s']:.1f} s "
              f"({folder['images_per_s']:,.0f} images/s) | cached reload {folder['cached_reload_s']:.2f} s (median of 3) "
              f"| loaded splits held in {folder['held_bytes'] / 2**20:.0f} MiB (as float32: "
              f"{folder['float32_bytes'] / 2**20:.0f} MiB) | writing the files took {folder['write_s']:.1f} s |")
        held = held_until_batching(args, folder.pop("splits"))
        print(f"| training set until batching | prepared in {held['prepare_s']:.2f} s | held in "
              f"{held['train_bytes'] / 2**20:.0f} MiB (as float32: {held['train_float32_bytes'] / 2**20:.0f} MiB) | a "
              f"batch of 128 drawn from levels {held['batch_levels_us']:.0f} us, from float32 "
              f"{held['batch_float32_us']:.0f} us: ratio {held['batch_ratio']:.2f} (median of {args.rounds * 5} "
              f"interleaved rounds of 200 batches) |")
        if args.encode == 0:
            return 0
        scored = encode_against_evaluate(args, work)
        print(f"| encode vs evaluate | {scored['datapoints']:,} images, K = {scored['samples']:,} | evaluate "
              f"{scored['evaluate_s']:.1f} s | encode {scored['encode_s']:.1f} s | ratio {scored['ratio']:.3f} "
              f"(median of {args.rounds} interleaved rounds) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
