"""Data bigger than memory: a streaming layout on disk, read a batch at a time.

The layout (a folder, written by ``pyro-vae convert`` / :func:`convert`) holds the rows of one
matrix as plain ``.npy`` files, read through memory maps:

    manifest.json      format, version, kind ("csr" or "dense"), shape, dtype, chunk_rows, and
                       each file's size and SHA-256 (written last: a folder without it is unfinished)
    indptr.npy         (csr) int64 offsets, n + 1 of them
    indices.npy        (csr) int32 column of each stored value, sorted within a row
    values.npy         (csr) float32 counts (whole numbers, exact)
    x.npy              (dense) float32 (N, *shape), or uint8 8-bit levels (read as v / 255)
    labels.npy         (optional) int64 label per row
    features.txt       (optional) the column names, one a line

Why three ``.npy`` files of CSR (and not an ``.h5ad`` opened backed, or Zarr): a memory map reads
exactly the bytes of the rows a batch draws, with no decompression and no library beyond NumPy;
``.h5ad`` stores X gzip-compressed in chunks, so reading 128 random cells decompresses whole chunks
around each (and h5py reads are single-threaded); Zarr is not a dependency here. Measured in
``benchmarks/streaming.py``.

Memory stays flat in the number of rows: a batch's rows are gathered from the maps, and the maps'
pages are handed back to the operating system (``madvise(MADV_DONTNEED)``) as training moves on
(:meth:`StreamedRows.release`), so the resident set does not grow as an epoch touches the whole
file. What is held per row is the epoch's order: with the chunked order of the trainer
(``training.ChunkOrder``: chunks in a seeded order, rows shuffled within a window of chunks) not
even that, only the chunk table (8 bytes a chunk) and one window's permutation.

A folder that changes under a running job is detected: every epoch the files' sizes and times are
compared with those seen when the job opened them, and a file that changed is hashed again and
refused where its SHA-256 differs from the manifest's.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..config import DATASETS, require
from ..errors import DataChanged, DataError
from .datasets import Dataset
from .storage import DataSplits, Levels, RowsOnDisk, SparseRows, dense_limit

MANIFEST = "manifest.json"
STREAM_FORMAT = "pyro-vae-stream"
STREAM_VERSION = 1
DEFAULT_CHUNK_ROWS = 4096
CSR_FILES = ("indptr.npy", "indices.npy", "values.npy")
DENSE_FILE = "x.npy"
#: reads between two hand-backs of the maps' pages (:meth:`StreamedRows.release`)
RELEASE_EVERY = 16


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def is_stream(path) -> bool:
    """Whether ``path`` is a streaming layout's folder (it holds a manifest of this format)."""
    manifest = Path(path).expanduser() / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("format") == STREAM_FORMAT
    except (ValueError, OSError):
        return False


def read_manifest(folder: Path) -> dict:
    """A layout's manifest, checked: this format, a version this pyro-vae reads (an older one is
    refused naming the conversion command), every file present at its recorded size."""
    path = folder / MANIFEST
    if not path.is_file():
        raise DataError(f"{folder} is not a streaming layout (no {MANIFEST}): write one with `pyro-vae convert SOURCE "
                        f"--out {folder}` (an unfinished conversion leaves no manifest: run it again).")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise DataError(f"{path} is not readable JSON ({e}): convert the data again (pyro-vae convert).") from None
    if manifest.get("format") != STREAM_FORMAT:
        raise DataError(f"{path} is not a pyro-vae streaming manifest (format {manifest.get('format')!r}).")
    version = manifest.get("version")
    if version != STREAM_VERSION:
        newer = isinstance(version, int) and version > STREAM_VERSION
        raise DataError(
            f"{folder} is a streaming layout of version {version}, and this pyro-vae reads version {STREAM_VERSION}: "
            + ("upgrade pyro-vae." if newer else f"convert the source again, `pyro-vae convert SOURCE --out {folder}` "
                                                   f"(with --overwrite to replace this folder)."))
    for name, (size, _) in manifest["files"].items():
        file = folder / name
        if not file.is_file():
            raise DataError(f"{file} is missing from the streaming layout {folder}: restore it (the run resumes once it "
                            f"is back), or convert the source again.")
        if file.stat().st_size != size:
            raise DataError(f"{file} is {file.stat().st_size:,} bytes and the manifest records {size:,}: the file is "
                            f"truncated or was replaced. Restore it (a run on it resumes then: `pyro-vae train --resume RUN`), "
                               f"or convert the source again.")
    return manifest


class StreamedRows(RowsOnDisk):
    """The rows of a streaming layout, read from disk a batch at a time: a read-only container of
    datapoints like :class:`Levels` and :class:`SparseRows` (``rows[index]``, ``shape``, ``len``),
    whose ``rows[index]`` reads exactly those rows (a :class:`SparseRows`, a float32 tensor or
    :class:`Levels`). ``rows`` (a 1-D int64 array of file rows, or None for all of them in order) makes
    it a view of some of the file's rows: a split. ``read_log``, where set, records every file row read
    (tests check that a process reads only its share)."""

    def __init__(self, folder: Path, manifest: dict | None = None, rows: np.ndarray | None = None) -> None:
        self.folder = Path(folder)
        self.manifest = manifest or read_manifest(self.folder)
        self.kind = self.manifest["kind"]
        self.rows = rows
        self.read_log: list[np.ndarray] | None = None
        self._maps: dict[str, np.memmap] = {}
        self._seen = self._stat()
        self._reads = 0

    # -- what it is --------------------------------------------------------------------------------

    @property
    def shape(self) -> torch.Size:
        n = self.manifest["shape"][0] if self.rows is None else len(self.rows)
        return torch.Size((n, *self.manifest["shape"][1:]))

    dtype = torch.float32

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def chunk_rows(self) -> int:
        """Rows a chunk of the layout holds (what the chunked epoch order shuffles)."""
        return self.manifest["chunk_rows"]

    @property
    def nbytes(self) -> int:
        """Bytes held in memory: the row map of a view (the file's rows are on disk)."""
        return 0 if self.rows is None else self.rows.nbytes

    def digest(self) -> str:
        """SHA-256 of what this container holds, from the manifest's file checksums (no file read)
        and the view's rows: what a run's fingerprint records."""
        h = hashlib.sha256()
        h.update(json.dumps({"kind": self.kind, "shape": self.manifest["shape"], "dtype": self.manifest["dtype"],
                             "files": self.manifest["files"]}, sort_keys=True).encode())
        if self.rows is not None:
            h.update(self.rows.astype(np.int64).tobytes())
        return h.hexdigest()

    def value_stats(self) -> dict:
        """The values' range and kind as the conversion found them (every value was read then)."""
        return self.manifest["values"]

    def view(self, rows: np.ndarray) -> "StreamedRows":
        """The rows ``rows`` of this container (positions in it) as a container of their own."""
        file_rows = np.asarray(rows, dtype=np.int64) if self.rows is None else self.rows[np.asarray(rows)]
        out = StreamedRows(self.folder, self.manifest, file_rows)
        out._maps, out._seen = self._maps, self._seen
        return out

    # -- reading -----------------------------------------------------------------------------------

    def _map(self, name: str) -> np.memmap:
        if name not in self._maps:
            self._maps[name] = np.load(self.folder / name, mmap_mode="c")  # (copy-on-write: never written)
        return self._maps[name]

    def _file_rows(self, index) -> np.ndarray:
        n = len(self)
        if isinstance(index, slice):
            positions = np.arange(n)[index]
        else:
            positions = index.cpu().numpy() if torch.is_tensor(index) else np.asarray(index)
            if positions.dtype == bool:
                positions = np.nonzero(positions)[0]
            positions = positions.astype(np.int64)
            if positions.size and (positions.min() < -n or positions.max() >= n):
                raise IndexError(f"row index out of range for {n} rows.")
            positions = np.where(positions < 0, positions + n, positions)
        return positions if self.rows is None else self.rows[positions]

    def __getitem__(self, index):
        rows = self._file_rows(index)
        if self.read_log is not None:
            self.read_log.append(rows.copy())
        self._check_sizes()  # (a memory map of a file cut short would end the process with SIGBUS)
        self._reads += 1
        if self._reads % RELEASE_EVERY == 0:
            self.release()
        if self.kind == "csr":
            indptr = self._map("indptr.npy")
            block = SparseRows(torch.from_numpy(np.asarray(indptr)), torch.from_numpy(self._map("indices.npy")),
                               torch.from_numpy(self._map("values.npy")), tuple(self.manifest["shape"]))
            picked = block[torch.from_numpy(rows)]  # (gathers exactly those rows' segments into memory)
            return SparseRows(picked.indptr.clone(), picked.indices.clone(), picked.values.clone(), picked.shape)
        x = torch.from_numpy(np.ascontiguousarray(self._map(DENSE_FILE)[rows]))
        return Levels(x) if x.dtype == torch.uint8 else x

    def float(self) -> torch.Tensor:
        """Every row, dense float32 (refused where too large, before anything is read: see
        :meth:`SparseRows.float`)."""
        size, limit = 4 * math.prod(self.shape), dense_limit("cpu")
        if size > limit:
            raise DataError(f"{len(self):,} rows of {tuple(self.shape[1:])} are {size / 2**30:.1f} GiB dense in float32, "
                            f"more than the {limit / 2**30:.1f} GiB allowed (half this machine's memory): read them a "
                            f"batch at a time (rows[index]), as training and evaluation do.")
        return self[slice(None)].float()

    def to(self, device) -> "StreamedRows":
        """Rows are read onto the CPU; a batch moves to the device after it is read."""
        return self

    def row_totals(self) -> torch.Tensor:
        """Each row's total, float32 (n,) (4 bytes a row), read a chunk of rows at a time."""
        from .storage import row_totals

        out = torch.zeros(len(self), dtype=torch.float32)
        for start in range(0, len(self), DEFAULT_CHUNK_ROWS):
            part = self[slice(start, start + DEFAULT_CHUNK_ROWS)]
            out[start:start + len(part)] = row_totals(part)
        self.release()
        return out

    def release(self) -> None:
        """Hand the maps' resident pages back to the operating system (they are read again from the
        page cache or the disk when next touched): what keeps memory flat in the number of rows."""
        for array in self._maps.values():
            raw = getattr(array, "_mmap", None)
            if raw is not None and hasattr(raw, "madvise"):
                raw.madvise(mmap.MADV_DONTNEED)

    # -- the files under a running job -----------------------------------------------------------------

    def _stat(self) -> dict[str, tuple[int, int]]:
        return {name: (os.stat(self.folder / name).st_size, os.stat(self.folder / name).st_mtime_ns)
                for name in self.manifest["files"]}

    def _check_sizes(self, names=None) -> None:
        for name in self._maps if names is None else names:
            size, path = self.manifest["files"][name][0], self.folder / name
            try:
                now = path.stat().st_size
            except OSError:
                continue  # (removed: an open map still reads the old file; the epoch's check says so)
            if now != size:
                raise DataChanged(f"{path} is now {now:,} bytes and the layout's manifest records {size:,}: it was cut "
                                f"short or replaced under the running job. Restore the file and resume (`pyro-vae "
                                f"train --resume RUN`: the last finished epoch is kept), or convert the data again.")

    def verify(self) -> None:
        """Every file hashed again (read once, a block at a time) and refused where its SHA-256 is not
        the manifest's: what a resumed run checks before its first step."""
        for name, (_, sha) in self.manifest["files"].items():
            if _sha256(self.folder / name) != sha:
                raise DataChanged(f"{self.folder / name}: its SHA-256 is not the one the layout's manifest records (the "
                                f"file changed since it was converted): restore it and resume, or convert the data "
                                f"again and train a new run.")
            self._seen[name] = (os.stat(self.folder / name).st_size, os.stat(self.folder / name).st_mtime_ns)

    def check_unchanged(self) -> None:
        """Refuse files changed on disk since this job opened them: gone, of another size, or (a file
        whose size or time moved) hashed again and of another SHA-256 than the manifest's."""
        for name in self.manifest["files"]:
            if not (self.folder / name).is_file():
                raise DataChanged(f"{self.folder / name} disappeared under the running job: restore it and resume "
                                f"(`pyro-vae train --resume RUN`), or convert the source again.")
        self._check_sizes(self.manifest["files"])
        for name, (size, sha) in self.manifest["files"].items():
            path = self.folder / name
            now = (path.stat().st_size, path.stat().st_mtime_ns)
            if now != self._seen[name] and _sha256(path) != sha:
                raise DataChanged(f"{path} changed on disk while the job ran (its SHA-256 is no longer the manifest's): "
                                f"refusing to go on training on other data. Restore the file and resume (`pyro-vae "
                                f"train --resume RUN`), or convert the data again and train a new run.")
            self._seen[name] = now


# ---------------------------------------------------------------------------------------------
# Converting a user's data into the layout


def convert(source, out, *, chunk_rows: int = DEFAULT_CHUNK_ROWS, overwrite: bool = False,
            progress: bool = True, layer: str | None = None) -> Path:
    """Write the streaming layout of ``source`` into the folder ``out``: a dense ``.npy`` (read
    through a memory map, a chunk of rows at a time), a ``.npz`` (its data array and labels, or a
    SciPy sparse matrix), a 10x folder, an ``.h5ad`` (its ``X`` or ``layer``; a CSR ``X`` copied a
    chunk of rows at a time), LIBSVM text. Counts are checked as the ``counts`` dataset checks them.
    The manifest, with each file's SHA-256, is written last."""
    from tqdm.auto import tqdm

    source, out = Path(source).expanduser(), Path(out).expanduser()
    require(chunk_rows >= 1, f"chunk_rows must be >= 1, got {chunk_rows}.")
    if not source.exists():
        raise DataError(f"{source}: there is no such file or folder to convert.")
    _prepare_out(out, overwrite)
    bar = tqdm(disable=not progress, unit="row", desc=f"converting {source.name}", dynamic_ncols=True)
    try:
        manifest = _write_rows(source, out, chunk_rows, bar, layer)
    finally:
        bar.close()
    return _finish(out, manifest, chunk_rows, str(source.resolve()))


def _finish(out: Path, manifest: dict, chunk_rows: int, source: str) -> Path:
    """The manifest, written last: each file's size and SHA-256 (a folder without it is unfinished)."""
    files = {name: (os.path.getsize(out / name), _sha256(out / name)) for name in sorted(os.listdir(out))
             if name != MANIFEST}
    manifest.update({"format": STREAM_FORMAT, "version": STREAM_VERSION, "chunk_rows": chunk_rows,
                     "source": source, "files": files})
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out} exists and is not empty: choose another --out, or pass --overwrite to replace a "
                            f"streaming layout there.")
        if not (out / MANIFEST).is_file() and not all(p.suffix in (".npy", ".txt") for p in out.iterdir()):
            raise DataError(f"{out} is not a streaming layout (no {MANIFEST}): pyro-vae replaces only its own "
                            f"layouts. Choose another --out.")
        for p in out.iterdir():
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write_rows(source: Path, out: Path, chunk_rows: int, bar, layer: str | None) -> dict:
    """The data files of the layout from ``source``; returns the manifest's description of them."""
    from .counts import count_format, read_counts

    if source.suffix.lower() == ".npy":
        return _write_dense(np.load(source, mmap_mode="r"), None, out, chunk_rows, bar)
    if source.suffix.lower() == ".h5ad":
        chunked = _write_h5ad_csr(source, out, chunk_rows, bar, layer)
        if chunked is not None:
            return chunked
    if count_format(source) is not None:
        m = read_counts(source, layer=layer)
        if m.columns is not None:
            (out / "features.txt").write_text("".join(f"{c}\n" for c in m.columns))
        return _write_csr(m.counts.tocsr(), out, chunk_rows, bar)
    if source.suffix.lower() == ".npz":
        with np.load(source, allow_pickle=False) as f:
            key = next((k for k in ("x", "x_train", "images", "data", "X") if k in f.files), None)
            if key is None:
                raise DataError(f"{source} holds no data array (x, x_train, images, data or X) and no sparse matrix.")
            labels = next((f[k] for k in ("y", "y_train", "labels", "targets", "Y") if k in f.files), None)
            return _write_dense(f[key], labels, out, chunk_rows, bar)
    raise DataError(f"{source}: pyro-vae convert reads a .npy or .npz array, a SciPy sparse .npz, a 10x folder, an "
                    f".h5ad file or LIBSVM text (.feat/.svm/.libsvm).")


def _write_dense(x: np.ndarray, labels, out: Path, chunk_rows: int, bar) -> dict:
    """x.npy: uint8 levels kept as they are (read as v / 255), anything else as float32 (integers:
    counts, exact below 2^24), every value checked finite; labels.npy where there are labels."""
    bar.reset(total=len(x))
    dtype = np.uint8 if x.dtype == np.uint8 else np.float32
    if x.ndim < 2 or len(x) == 0:
        raise DataError(f"an array of shape {x.shape}: the layout holds rows (N, ...) of one shape, at least one.")
    if labels is not None and len(labels) != len(x):
        raise DataError(f"{len(labels)} labels for {len(x)} rows: one label per row is needed.")
    target = np.lib.format.open_memmap(out / DENSE_FILE, mode="w+", dtype=dtype, shape=x.shape)
    stats = _Stats()
    for start in range(0, len(x), chunk_rows):
        part = np.asarray(x[start:start + chunk_rows]).astype(dtype)
        if dtype == np.float32 and not np.isfinite(part).all():
            raise DataError(f"rows {start}..{start + len(part) - 1} hold NaN or infinite values: clean the data "
                            f"before converting it.")
        target[start:start + len(part)] = part
        stats.add(part / 255.0 if dtype == np.uint8 else part)
        bar.update(len(part))
    target.flush()
    del target
    if labels is not None:
        np.save(out / "labels.npy", np.asarray(labels).astype(np.int64))
    return {"kind": "dense", "shape": list(x.shape), "dtype": np.dtype(dtype).name,
            "values": stats.result(levels=dtype == np.uint8)}


class _Stats:
    """The range and kind of values seen chunk by chunk (what the data summary line says)."""

    def __init__(self) -> None:
        self.low, self.high, self.binary, self.whole = math.inf, -math.inf, True, True

    def add(self, v: np.ndarray) -> None:
        if v.size:
            self.low, self.high = min(self.low, float(v.min())), max(self.high, float(v.max()))
            self.binary = self.binary and bool(((v == 0) | (v == 1)).all())
            self.whole = self.whole and bool((v == np.round(v)).all())

    def result(self, levels: bool = False) -> dict:
        kind = ("binary" if self.binary else "8-bit levels" if levels else
                "counts: whole numbers >= 0" if self.whole and self.low >= 0 else "real values")
        return {"min": self.low, "max": self.high, "kind": kind}


def _write_csr(m, out: Path, chunk_rows: int, bar) -> dict:
    """A SciPy sparse matrix in memory (the readers' result), written a chunk of rows at a time."""
    m = m.tocsr()
    bar.reset(total=m.shape[0])
    writer = LayoutWriter(out, m.shape[1], chunk_rows=chunk_rows, overwrite=True)  # (out: emptied by convert)
    for start in range(0, m.shape[0], chunk_rows):
        writer.append(m[start:start + chunk_rows])
        bar.update(min(m.shape[0], start + chunk_rows) - start)
    return writer.close()


def _write_h5ad_csr(source: Path, out: Path, chunk_rows: int, bar, layer: str | None) -> dict | None:
    """An .h5ad whose matrix is stored as CSR, copied a chunk of rows at a time (never whole in
    memory); None where it is stored otherwise (the whole-file reader then reads it)."""
    import h5py
    import scipy.sparse as sp

    with h5py.File(source, "r") as f:
        group = f[f"layers/{layer}"] if layer else f.get("X")
        if not isinstance(group, h5py.Group) or group.attrs.get("encoding-type") not in ("csr_matrix", b"csr_matrix"):
            return None
        n, d = (int(v) for v in group.attrs["shape"])
        bar.reset(total=n)
        indptr = group["indptr"][:].astype(np.int64)
        writer = LayoutWriter(out, d, chunk_rows=chunk_rows, overwrite=True, names=_h5ad_names(f))
        for start in range(0, n, chunk_rows):
            stop = min(n, start + chunk_rows)
            a, b = int(indptr[start]), int(indptr[stop])
            writer.append(sp.csr_matrix((group["data"][a:b], group["indices"][a:b], indptr[start:stop + 1] - a),
                                        shape=(stop - start, d)), f"{source} rows {start}..{stop - 1}")
            bar.update(stop - start)
        return writer.close()


def _h5ad_names(f) -> list[str] | None:
    """The column names of an open .h5ad (var's index), where it has them."""
    var = f.get("var")
    if var is None:
        return None
    key = var.attrs.get("_index", "_index")
    key = key.decode() if isinstance(key, bytes) else key
    return [v.decode() if isinstance(v, bytes) else str(v) for v in var[key][:]] if key in var else None


class _NpyAppender:
    """A 1-D ``.npy`` file written by appending, its length unknown until it is closed: a header of
    fixed size (128 bytes) holds the final shape, rewritten on close (a valid ``.npy`` then)."""

    HEADER = 128

    def __init__(self, path: Path, dtype) -> None:
        self.path, self.dtype, self.count = path, np.dtype(dtype), 0
        self.file = open(path, "wb")
        self.file.write(self._header(0))

    def _header(self, n: int) -> bytes:
        text = repr({"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (n,)})
        body = text.encode("latin1").ljust(self.HEADER - 10 - 1) + b"\n"
        return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body

    def append(self, values: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(values, dtype=self.dtype).tobytes())
        self.count += len(values)

    def close(self) -> None:
        self.file.seek(0)
        self.file.write(self._header(self.count))
        self.file.close()


class LayoutWriter:
    """A CSR streaming layout written a block of rows at a time, for data made or read in pieces
    (the whole matrix is never in memory): ``with LayoutWriter(out, columns) as w: w.append(block)``
    for SciPy CSR blocks of counts (each checked), then the manifest on a clean exit."""

    def __init__(self, out, columns: int, *, chunk_rows: int = DEFAULT_CHUNK_ROWS, overwrite: bool = False,
                 names: list[str] | None = None) -> None:
        self.out, self.columns, self.chunk_rows = Path(out).expanduser(), int(columns), chunk_rows
        require(chunk_rows >= 1, f"chunk_rows must be >= 1, got {chunk_rows}.")
        _prepare_out(self.out, overwrite)
        if names is not None:
            (self.out / "features.txt").write_text("".join(f"{c}\n" for c in names))
        self.indptr = _NpyAppender(self.out / "indptr.npy", np.int64)
        self.indices, self.values = _NpyAppender(self.out / "indices.npy", np.int32), _NpyAppender(self.out / "values.npy", np.float32)
        self.indptr.append(np.zeros(1))
        self.rows, self.nnz, self.high, self.binary = 0, 0, 0.0, True

    def append(self, block, where: str | None = None) -> None:
        """Rows of counts (a SciPy sparse matrix), checked (``where`` names them in a refusal)."""
        from .counts import check_counts

        block = block.tocsr()
        if block.shape[1] != self.columns:
            raise DataError(f"a block of {block.shape[1]} columns for a layout of {self.columns}.")
        check_counts(block, where or f"rows {self.rows}..{self.rows + block.shape[0] - 1}", "")
        block.sort_indices()
        self.indptr.append(block.indptr[1:].astype(np.int64) + self.nnz)
        self.indices.append(block.indices)
        self.values.append(block.data)
        if block.nnz:
            self.high = max(self.high, float(block.data.max()))
            self.binary = self.binary and bool(np.isin(block.data, (0, 1)).all())
        self.rows, self.nnz = self.rows + block.shape[0], self.nnz + block.nnz

    def __enter__(self) -> "LayoutWriter":
        return self

    def close(self) -> dict:
        """The files closed; the manifest's description of them."""
        for f in (self.indptr, self.indices, self.values):
            f.close()
        stats = {"min": 0.0, "max": self.high, "kind": "binary" if self.binary else "counts: whole numbers >= 0"}
        return {"kind": "csr", "shape": [self.rows, self.columns], "dtype": "float32", "nnz": self.nnz, "values": stats}

    def __exit__(self, kind, *_) -> None:
        description = self.close()
        if kind is None:
            _finish(self.out, description, self.chunk_rows, "(written in blocks)")


# ---------------------------------------------------------------------------------------------
# The dataset


@DATASETS.register("stream")
class StreamDataset(Dataset):
    """A streaming layout on disk (``pyro-vae convert``): rows read a batch at a time, memory flat in the number of rows.

    Options:
        path: the layout's folder (its manifest.json).
        test_path: a second layout of the test rows (the same columns); unset: a seeded test_fraction of path's chunks.
        test_fraction: without test_path, the fraction of the chunks of rows held out as the test set (by split_seed).
        split_seed: seed of that split.
    """

    def __init__(self, *, path: str = "", test_path: str | None = None, test_fraction: float = 0.1,
                 split_seed: int = 0) -> None:
        require(bool(path), "data.path must name a streaming layout's folder (dataset 'stream'; pyro-vae convert).")
        require(0.0 < test_fraction < 1.0, f"test_fraction must be in (0, 1), got {test_fraction}.")
        self.path, self.test_path, self.test_fraction, self.split_seed = path, test_path, test_fraction, split_seed

    def load(self) -> DataSplits:
        folder = Path(self.path).expanduser()
        rows = StreamedRows(folder)
        labels = self._labels(folder, len(rows))
        if self.test_path is not None:
            test = StreamedRows(Path(self.test_path).expanduser())
            if tuple(test.shape[1:]) != tuple(rows.shape[1:]):
                raise DataError(f"{self.test_path} holds rows of shape {tuple(test.shape[1:])} and {folder} of "
                                f"{tuple(rows.shape[1:])}: the test layout must hold the same columns.")
            train, test_labels = rows, self._labels(Path(self.test_path).expanduser(), len(test))
            train_labels = labels
            where = f"test: {self.test_path}"
        else:
            train_rows, test_rows = split_chunks(len(rows), rows.manifest["chunk_rows"], self.test_fraction,
                                                 self.split_seed)
            train, test = rows.view(train_rows), rows.view(test_rows)
            train_labels = labels[train_rows] if labels is not None else None
            test_labels = labels[test_rows] if labels is not None else None
            held = math.ceil(len(test_rows) / rows.manifest["chunk_rows"])
            where = f"{len(test_rows)} rows in {held} chunk{'s' if held != 1 else ''} held out by seed {self.split_seed}"
        names_file = folder / "features.txt"
        names = tuple(names_file.read_text().splitlines()) if names_file.is_file() else None
        m = rows.manifest
        nnz = f", {m['nnz']:,} stored values" if "nnz" in m else ""
        description = (f"stream {folder} ({m['kind']}, {m['shape'][0]:,} x {' x '.join(map(str, m['shape'][1:]))}"
                       f"{nnz}; read from disk a batch at a time); {where}: {len(train):,} train / {len(test):,} test")
        return DataSplits("stream", train, train_labels, test, test_labels, description, feature_names=names)

    @staticmethod
    def _labels(folder: Path, n: int) -> torch.Tensor | None:
        path = folder / "labels.npy"
        if not path.is_file():
            return None
        labels = torch.from_numpy(np.load(path).astype(np.int64))
        if len(labels) != n:
            raise DataError(f"{path} holds {len(labels)} labels for {n} rows: convert the data again.")
        return labels


def split_chunks(n: int, chunk_rows: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows): a seeded ``fraction`` of the chunks of ``chunk_rows`` rows held out as
    the test set (at least one chunk, and at least one left), each part in file order."""
    chunks = math.ceil(n / chunk_rows)
    if chunks < 2:
        raise DataError(f"a layout of {n} rows in {chunks} chunk of {chunk_rows} cannot hold out a test set by chunks: "
                        f"convert it with a smaller --chunk-rows, or give data.test_path.")
    order = torch.randperm(chunks, generator=torch.Generator().manual_seed(seed)).numpy()
    held = np.sort(order[:min(chunks - 1, max(1, round(chunks * fraction)))])
    mask = np.zeros(n, dtype=bool)
    for c in held:
        mask[c * chunk_rows:(c + 1) * chunk_rows] = True
    return np.nonzero(~mask)[0], np.nonzero(mask)[0]


def chunked_rows(n: int, chunk_rows: int) -> Iterable[slice]:
    """Slices of ``chunk_rows`` rows covering range(n)."""
    return (slice(s, min(n, s + chunk_rows)) for s in range(0, n, chunk_rows))

