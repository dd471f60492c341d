"""Counts held sparse: bytes against dense, and the time to draw a training batch.

    python benchmarks/count_memory.py --rows 100000 --columns 2000 --density 0.03

A rows x columns count matrix is generated (each entry non-zero with probability ``--density``,
about the 97% zeros of 20 Newsgroups and PBMC 3k; a non-zero count k = 1, 2, ... with probability 2^-k), in chunks
of rows so that no dense copy is ever made, and handed to the library's
``data.SparseRows.from_scipy``: what a count run holds as its training rows. Reported: the bytes
held (int64 row offsets, int32 column indices, float32 values) against the same rows dense in
float32 (``dense_nbytes``), the process's peak resident memory, and the time to draw a batch as the
trainer does (``rows[index].float()``: a random index of ``--batch-size`` rows, gathered sparse,
then made dense), median over ``--draws`` draws. ``--dense-reference`` also times the same draw
from a dense float32 copy of the rows (allocating ``dense_nbytes``): what holding them dense would buy.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # this checkout's library, and common.py


def generate(rows: int, columns: int, density: float, seed: int, chunk: int = 5000):
    """A SciPy CSR count matrix (int32), built chunk by chunk: never dense."""
    import scipy.sparse

    rng = np.random.default_rng(seed)
    parts = []
    for first in range(0, rows, chunk):
        n = min(chunk, rows - first)
        nnz = rng.binomial(columns, density, size=n)
        cols = [np.sort(rng.choice(columns, size=k, replace=False)) for k in nnz]
        indptr = np.concatenate([[0], np.cumsum(nnz)])
        values = rng.geometric(0.5, size=int(indptr[-1])).astype(np.int32)  # 1, 2, ...: P(k) = 2^-k
        parts.append(scipy.sparse.csr_matrix((values, np.concatenate(cols).astype(np.int32), indptr), shape=(n, columns)))
    return scipy.sparse.vstack(parts, format="csr")


def median_seconds(draw, draws: int) -> float:
    times = []
    for _ in range(draws):
        start = time.perf_counter()
        draw()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(args) -> dict:
    from pyro_vae.data import SparseRows

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # (torch and the library imported)
    start = time.perf_counter()
    matrix = generate(args.rows, args.columns, args.density, args.seed)
    generated = time.perf_counter() - start
    held = SparseRows.from_scipy(matrix)
    del matrix
    g = torch.Generator().manual_seed(args.seed)
    index = [torch.randint(0, args.rows, (args.batch_size,), generator=g) for _ in range(args.draws)]
    it = iter(index * 2)
    sparse_draw = median_seconds(lambda: held[next(it)].float(), args.draws)
    result = {"rows": args.rows, "columns": args.columns, "density": args.density, "nnz": held.nnz,
              "bytes_sparse": held.nbytes, "bytes_dense_float32": held.dense_nbytes,
              "ratio": held.dense_nbytes / held.nbytes, "generate_seconds": generated,
              "batch_size": args.batch_size, "draws": args.draws, "sparse_batch_seconds": sparse_draw,
              "rss_mib_after_imports": baseline, "peak_rss_mib_sparse_only": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if args.dense_reference:
        dense = held.float()
        it = iter(index * 2)
        result["dense_batch_seconds"] = median_seconds(lambda: dense[next(it)], args.draws)
        result["peak_rss_mib_with_dense"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def lines_of(result: dict, argv: list[str]) -> list[str]:
    from common import machine

    r = result
    lines = [f"machine: {machine()}", f"command: python benchmarks/count_memory.py {' '.join(argv)}", "",
             "| rows x columns | non-zeros | held sparse | dense float32 | dense / sparse | batch draw (sparse) | "
             "batch draw (dense copy) | peak RSS |", "| --- | --- | --- | --- | --- | --- | --- | --- |",
             f"| {r['rows']:,} x {r['columns']:,} | {r['nnz']:,} ({r['nnz'] / (r['rows'] * r['columns']):.1%}) | "
             f"{r['bytes_sparse'] / 2**20:.1f} MiB | {r['bytes_dense_float32'] / 2**20:.1f} MiB | {r['ratio']:.1f}x | "
             f"{r['sparse_batch_seconds'] * 1e3:.2f} ms ({r['batch_size']} rows) | "
             + (f"{r['dense_batch_seconds'] * 1e3:.2f} ms" if "dense_batch_seconds" in r else "not run")
             + f" | {r['peak_rss_mib_sparse_only']:.0f} MiB sparse only ({r['rss_mib_after_imports']:.0f} after imports)"
             + (f", {r['peak_rss_mib_with_dense']:.0f} MiB with the dense copy |" if "peak_rss_mib_with_dense" in r
                else " |")]
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--columns", type=int, default=2_000)
    p.add_argument("--density", type=float, default=0.03)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dense-reference", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "count-memory"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    result = measure(args)
    lines = lines_of(result, argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.md").write_text("\n".join(lines) + "\n")
    from common import machine

    (out / "result.json").write_text(json.dumps({"command": ["python", "benchmarks/count_memory.py", *argv],
                                                 "machine": machine(), **result}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
