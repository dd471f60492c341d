"""Streaming from disk: peak memory flat in the number of rows, speed against the same rows in memory.

For each of ``--rows`` (default 100k, 1M and 4M) this writes a sparse count matrix of that many rows
x ``--columns`` (2,000) into the streaming layout (``pyro_vae.data.LayoutWriter``, a block of rows
at a time; about ``--density`` = 5% non-zeros, counts 1 + NB(mean mu_g, shape 2) with a log-normal
mean per column), plus one test layout of 2,000 rows, in ``--work`` (kept: a later run reuses them).
Then, each in a fresh process (so its peak resident memory is its own):

* ``stream``: the scVI-style count model (``model.likelihood = negative-binomial``, observed library,
  one hidden layer of 128, log1p input; ``examples/configs/scvi.toml``'s) trained for ``--steps``
  steps of 128 rows on the layout: chunked order, keyed noise, a batch read ahead;
* ``memory`` (at the smallest size only): the same rows from a SciPy .npz held in memory (dataset
  ``counts``), with the same order and noise (so the same steps), and ``memory, defaults``: its
  default feed (a permutation, the run's streams);
* ``read``: the layout read alone in the chunked order, batch by batch (disk read throughput; the
  files are first dropped from the page cache where the machine lets us, else said); at the
  smallest size also the same batches from the matrix as an ``.h5ad`` read by h5py as a backed
  AnnData reads rows, gzip-compressed (as many published files are) and plain: the measured reason
  for the layout;
* ``2 processes`` (at the smallest size): torchrun, 2 gloo processes on the same steps; its
  parameters against one process's.

Reported per run: steps per second (after ``--warmup`` steps), the peak resident set of the process
(``ru_maxrss``) and what it held after setting up, and for reads MB/s. The table lands in
``--out``/result.md and result.json.

    python benchmarks/streaming.py --out benchmarks/results/streaming
    python benchmarks/streaming.py --rows 2000 5000 --steps 20 --out /tmp/s   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import machine  # noqa: E402  (benchmarks/common.py)


def generate(folder: Path, rows: int, columns: int, density: float, seed: int) -> Path:
    """The layout of a rows x columns count matrix, written a block at a time (reused where there)."""
    import scipy.sparse as sp

    from pyro_vae.data import LayoutWriter, is_stream, read_manifest

    if is_stream(folder) and read_manifest(folder)["shape"] == [rows, columns]:
        return folder
    rng = np.random.default_rng(seed)
    mu = np.exp(rng.normal(0.0, 1.0, columns)).astype(np.float32)  # the same columns' means at every size
    rng = np.random.default_rng(seed + rows)
    with LayoutWriter(folder, columns, chunk_rows=4096, overwrite=True) as writer:
        for start in range(0, rows, 4096):
            b = min(4096, rows - start)
            r, c = np.nonzero(rng.random((b, columns), dtype=np.float32) < density)
            values = 1 + rng.negative_binomial(2, 2 / (2 + mu[c]))
            writer.append(sp.csr_matrix((values.astype(np.float32), (r, c)), shape=(b, columns)))
    return folder


def config(data: dict, steps: int, feed: dict) -> dict:
    return {"seed": 0, "data": data,
            "model": {"latent_dim": 10, "likelihood": {"name": "negative-binomial", "library": "observed",
                                                       "dispersion": "feature"},
                      "network": {"name": "mlp", "hidden": [128], "activation": "relu", "input": "log1p"}},
            "train": {"objective": "elbo-analytic-kl", "batch_size": 128, "epochs": 1, **feed},
            "eval": {"samples": 1, "train_subset": 128, "exact_points": 0}}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def child_train(spec: dict) -> dict:
    """Train ``spec["steps"]`` steps (after a warm-up) in this process; its numbers."""
    import tempfile

    import torch

    from pyro_vae import Config
    from pyro_vae.distributed import Distributed
    from pyro_vae.training import Trainer, read_ahead

    torch.set_num_threads(spec.get("threads", 1))
    dist = Distributed.from_environment("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(Config.from_dict(spec["config"]), Path(tmp) / "run", progress=False, log=lambda m: None,
                          dist=dist).start()
        held = rss_mb()
        batches = trainer.batch_stream()
        feed = read_ahead(batches, trainer.read_batch) if trainer.feed.on_disk else ((i, None) for i in batches)
        steps, warmup = spec["steps"], spec["warmup"]
        for _ in range(warmup):
            index, rows = next(feed)
            trainer.train_step(index, rows=rows)
        started = time.perf_counter()
        for _ in range(steps):
            index, rows = next(feed)
            trainer.train_step(index, rows=rows)
        seconds = time.perf_counter() - started
        params = {k: v.tolist() for k, v in trainer.program.module.state_dict().items()} if spec.get("params") else None
    dist.close()
    return {"steps_per_s": steps / seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "held_after_setup_mb": held, "rank": dist.rank, "params": params}


def child_read(spec: dict) -> dict:
    """Read the layout's rows batch by batch in the chunked order: MB/s of the files' bytes read."""
    from pyro_vae.data import StreamedRows, chunk_batches

    rows = StreamedRows(Path(spec["path"]))
    dropped = drop_page_cache(rows.folder)
    m = rows.manifest
    bytes_per_value = 8  # an int32 column index and a float32 count a stored value
    read_values, started, n = 0, time.perf_counter(), 0
    for index in chunk_batches(len(rows), 128, rows.chunk_rows, 16, seed=0, epoch=0):
        batch = rows[index]
        read_values += batch.nnz
        n += 1
        if n == spec["batches"]:
            break
    seconds = time.perf_counter() - started
    return {"mb_per_s": read_values * bytes_per_value / seconds / 1e6, "rows_per_s": n * 128 / seconds,
            "cold": dropped, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "nnz_per_row": m["nnz"] / m["shape"][0]}


def child_read_h5ad(spec: dict) -> dict:
    """The same batches read from an .h5ad's CSR matrix with h5py, as a backed AnnData reads rows:
    indptr in memory (8 bytes a row, as the layout's index), each row's slice of data and indices."""
    import h5py

    from pyro_vae.data import chunk_batches

    path = Path(spec["path"])
    dropped = drop_page_cache(path)
    read_values, started, n = 0, time.perf_counter(), 0
    with h5py.File(path, "r") as f:
        x = f["X"]
        indptr = x["indptr"][:]
        data, indices = x["data"], x["indices"]
        for index in chunk_batches(len(indptr) - 1, 128, spec["chunk_rows"], 16, seed=0, epoch=0):
            for r in np.sort(index.numpy()):
                start, end = indptr[r], indptr[r + 1]
                values, _ = data[start:end], indices[start:end]  # (a row's two slices, as AnnData reads it)
                read_values += len(values)
            n += 1
            if n == spec["batches"]:
                break
    seconds = time.perf_counter() - started
    return {"mb_per_s": read_values * 8 / seconds / 1e6, "rows_per_s": n * 128 / seconds, "cold": dropped,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "nnz_per_row": read_values / (n * 128)}


def write_h5ad(layout: Path, path: Path, compression: str | None) -> Path:
    """The layout's matrix as an .h5ad's X (CSR: data, indices, indptr), gzip-compressed in h5py's
    chunks or plain, a block of rows at a time (reused where there)."""
    import h5py

    from pyro_vae.data import StreamedRows

    if path.exists():
        return path
    rows = StreamedRows(layout)
    nnz, (n, d) = rows.manifest["nnz"], rows.manifest["shape"]
    with h5py.File(path.with_suffix(".tmp"), "w") as f:
        x = f.create_group("X")
        x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n, d)})
        data = x.create_dataset("data", (nnz,), "float32", compression=compression, chunks=True)
        indices = x.create_dataset("indices", (nnz,), "int32", compression=compression, chunks=True)
        indptr, at = np.zeros(n + 1, np.int64), 0
        for start in range(0, n, 65536):
            block = rows[np.arange(start, min(n, start + 65536))].to_scipy()
            data[at : at + block.nnz], indices[at : at + block.nnz] = block.data, block.indices
            indptr[start + 1 : start + 1 + block.shape[0]] = at + block.indptr[1:]
            at += block.nnz
        x.create_dataset("indptr", data=indptr)
    path.with_suffix(".tmp").rename(path)
    return path


def drop_page_cache(folder: Path) -> bool:
    """Ask the kernel to forget the layout's pages (posix_fadvise DONTNEED): a cold read where it obliges."""
    try:
        for f in ([folder] if folder.is_file() else folder.glob("*.npy")):
            fd = os.open(f, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        return True
    except (AttributeError, OSError):
        return False


def in_child(kind: str, spec: dict, nproc: int = 1) -> list[dict]:
    """Run ``kind`` in fresh processes (torchrun for nproc > 1); their results, by rank."""
    import tempfile

    with tempfile.TemporaryDirectory() as results:
        argv = [__file__, "--child", kind, json.dumps({**spec, "results": results})]
        command = ([sys.executable, *argv] if nproc == 1 else
                   [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *argv])
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if done.returncode != 0:
            raise SystemExit(f"{kind} failed:\n{done.stdout}\n{done.stderr}")
        return [json.loads(p.read_text()) for p in sorted(Path(results).glob("rank*.json"))]


def measure(args) -> dict:
    import scipy.sparse as sp

    from pyro_vae.data import StreamedRows

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    test = generate(work / "test", 2000, args.columns, args.density, 1)
    rows = []
    keyed = {"order": "chunks", "noise": "keyed"}
    for n in args.rows:
        folder = generate(work / f"rows-{n}", n, args.columns, args.density, 0)
        size = sum(v[0] for v in StreamedRows(folder).manifest["files"].values())
        data = {"name": "stream", "path": str(folder), "test_path": str(test)}
        spec = {"config": config(data, args.steps, {}), "steps": args.steps, "warmup": args.warmup}
        for _ in range(args.rounds):
            rows.append({"rows": n, "run": "stream", "disk_mb": size / 1e6, **in_child("train", spec)[0]})
            rows.append({"rows": n, "run": "read", **in_child("read", {"path": str(folder), "batches": args.steps})[0]})
            if n == min(args.rows):
                chunk = StreamedRows(folder).chunk_rows
                for label, compression in ((".h5ad, gzip", "gzip"), (".h5ad, plain", None)):
                    h5ad = write_h5ad(folder, work / f"rows-{n}-{compression or 'plain'}.h5ad", compression)
                    spec_h5 = {"path": str(h5ad), "batches": args.steps, "chunk_rows": chunk}
                    rows.append({"rows": n, "run": f"read {label} (h5py)", **in_child("read-h5ad", spec_h5)[0]})
                npz = work / f"rows-{n}.npz"
                if not npz.exists():
                    sp.save_npz(npz, StreamedRows(folder)[np.arange(n)].to_scipy(), compressed=False)
                memory = {"name": "counts", "path": str(npz), "test_path": str(test_npz(work, test))}
                for label, feed in (("memory", keyed), ("memory, defaults", {})):
                    mem = {**spec, "config": config(memory, args.steps, feed)}
                    rows.append({"rows": n, "run": label, **in_child("train", mem)[0]})
        if n == min(args.rows) and args.processes:
            one = in_child("train", {**spec, "params": True})[0]
            two = in_child("train", {**spec, "params": True}, nproc=2)
            diff = max(float(np.abs(np.asarray(one["params"][k]) - np.asarray(two[0]["params"][k])).max())
                       for k in one["params"])
            for r in two:
                rows.append({"rows": n, "run": f"2 processes, rank {r['rank']}", **r, "params": None,
                             "max_param_diff_vs_1": diff})
    for r in rows:
        r.pop("params", None)
    return {"machine": machine(), "columns": args.columns, "density": args.density, "steps": args.steps,
            "warmup": args.warmup, "rows": rows}


def test_npz(work: Path, test: Path) -> Path:
    import scipy.sparse as sp

    from pyro_vae.data import StreamedRows

    path = work / "test.npz"
    if not path.exists():
        t = StreamedRows(test)
        sp.save_npz(path, t[np.arange(len(t))].to_scipy(), compressed=False)
    return path


def table(result: dict) -> str:
    lines = [f"machine: {result['machine']}",
             f"{result['columns']} columns, ~{result['density']:.0%} non-zeros; {result['steps']} timed steps of 128 rows "
             f"after {result['warmup']} warm-up steps; each run a fresh process, 1 torch thread",
             "", "| rows | run | steps/s | peak RSS (MB) | held after setup (MB) | read MB/s | note |",
             "|---:|---|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        note = (f"disk {r['disk_mb']:,.0f} MB" if "disk_mb" in r else
                f"{'cold' if r.get('cold') else 'warm'} page cache, {r['nnz_per_row']:.0f} values/row, "
                f"{r['rows_per_s']:,.0f} rows/s" if r["run"].startswith("read")
                else f"max |param diff| vs 1 process {r['max_param_diff_vs_1']:.1e}" if "max_param_diff_vs_1" in r else "")
        lines.append(f"| {r['rows']:,} | {r['run']} | {r.get('steps_per_s', float('nan')):.1f} | {r['peak_rss_mb']:,.0f} | "
                     f"{r.get('held_after_setup_mb', float('nan')):,.0f} | {r.get('mb_per_s', float('nan')):,.0f} | {note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000, 4_000_000])
    parser.add_argument("--columns", type=int, default=2000)
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-processes", dest="processes", action="store_false", help="skip the 2-process run")
    parser.add_argument("--work", default="/tmp/pyro-vae-streaming", help="where the generated layouts are kept")
    parser.add_argument("--out")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, spec = args.child
        spec = json.loads(spec)
        out = {"train": child_train, "read": child_read, "read-h5ad": child_read_h5ad}[kind](spec)
        (Path(spec["results"]) / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(out))
        return 0
    if not args.out:
        parser.error("--out is required: the folder of result.md and result.json")
    result = measure(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    text = table(result)
    (out / "result.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
