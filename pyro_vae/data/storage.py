"""Containers of data and how values are held: :class:`Levels` (8-bit data as uint8, read as
v / 255 in float32), :class:`SparseRows` (count rows held in CSR, made dense a batch at a time),
:class:`DataSplits` (train and test, labels, the fingerprint), and the conversions of arrays into
them (images or vectors, labels, a seeded test split)."""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
import torch

from ..errors import DataError


class Levels:
    """8-bit data held as its uint8 levels v, a quarter of float32's bytes, and read as v / 255 in
    float32 (bit for bit the values a float32 copy divided by 255 holds) only where it is used.

    It behaves as a read-only container of datapoints: ``levels[index]`` (a subset, still levels),
    ``shape``, ``len``, ``to(device)``; ``float()`` gives the values. A dataset of 8-bit images
    holds its splits so (``DataSplits``), and the trainer draws its batches from them
    (``PreparedData.train``), decoding one batch at a time."""

    dtype = torch.float32  #: the dtype of the values it holds

    def __init__(self, values: torch.Tensor) -> None:
        if values.dtype != torch.uint8:
            raise TypeError(f"Levels holds uint8 values, got {values.dtype}.")
        self.values = values

    @classmethod
    def exactly(cls, x: torch.Tensor) -> "Levels | None":
        """The levels whose values equal float32 ``x`` in every element (x = v / 255 exactly), or
        None when ``x`` is not such data. Checked in slices, each against the decoding itself."""
        if x.dtype != torch.float32 or x.dim() == 0 or x.numel() == 0:
            return None
        values = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
        step = _rows_per_slice(x)
        for start in range(0, x.shape[0], step):
            part = x[start:start + step]
            scaled = part * 255.0
            low, high = torch.aminmax(scaled)
            if not (low >= 0 and high <= 255):  # NaN compares False: not levels
                return None
            values[start:start + step] = scaled.round_().to(torch.uint8)
            if not torch.equal(_from_levels(values[start:start + step]).view(torch.int32), part.view(torch.int32)):
                return None  # (compared bit for bit: -0.0 is not the level 0)
        return cls(values)

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def nbytes(self) -> int:
        return self.values.numel()

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index) -> "Levels":
        return Levels(self.values[index])

    def to(self, device) -> "Levels":
        return Levels(self.values.to(device))

    def float(self) -> torch.Tensor:
        """The values: v / 255 in float32."""
        return _from_levels(self.values)

    def __repr__(self) -> str:
        return f"Levels(shape={tuple(self.shape)}, device={self.device})"


def _rows_per_slice(x) -> int:
    """Datapoints per slice of a loop over ``x`` (a tensor or Levels): about 4M values, 16 MiB of float32."""
    return max(1, (1 << 22) // max(1, math.prod(x.shape[1:])))


_LEVEL_VALUES = torch.arange(256, dtype=torch.float32).div_(255.0)  # v / 255, divided on the CPU, exactly rounded
_LEVEL_TABLES: dict[torch.device, torch.Tensor] = {}


def _from_levels(values: torch.Tensor) -> torch.Tensor:
    """The one conversion of 8-bit levels to values, v / 255 in float32, bit for bit the datasets'
    float32 division by 255. On the CPU that division itself; elsewhere (where a kernel may multiply
    by the reciprocal instead) read from the table of the 256 values divided on the CPU."""
    return values.float().div_(255.0) if values.device.type == "cpu" else _from_level_table(values)


def _from_level_table(values: torch.Tensor) -> torch.Tensor:
    """v / 255 read from the table of the 256 values divided on the CPU, on values' device."""
    table = _LEVEL_TABLES.get(values.device)
    if table is None:
        table = _LEVEL_TABLES.setdefault(values.device, _LEVEL_VALUES.to(values.device))
    out = torch.empty(values.shape, dtype=torch.float32, device=values.device)
    flat, into = values.reshape(-1), out.view(-1)
    step = 1 << 24  # (the indices are int64: 128 MiB of them at a time)
    for start in range(0, flat.numel(), step):
        into[start:start + step] = table[flat[start:start + step].long()]
    return out


FLOAT32_EXACT = 2 ** 24  #: every integer of magnitude up to this is exact in float32 (2**24 + 1 is not)


def dense_limit(device) -> int:
    """Bytes a dense float32 copy of a whole :class:`SparseRows` may take on ``device``: half of its
    memory (a GPU's total memory; on the CPU the machine's physical memory, 16 GiB where unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 2
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # (not every system says)
        total = 16 << 30
    return total // 2


def _gib(n: int) -> str:
    return f"{n / (1 << 30):,.2f} GiB" if n >= (1 << 30) else f"{n / (1 << 20):,.1f} MiB"


class SparseRows:
    """Count rows held sparse, in CSR as torch tensors, made dense (float32) only where used: the
    rows a batch draws (``rows[index].float()``).

    ``indptr`` (int64, n + 1 offsets starting at 0), ``indices`` (int32 or int64 column of each
    stored value, sorted and unique within a row) and ``values`` (float32 counts, whole numbers held
    exactly) of an (n, D) matrix. It behaves as :class:`Levels` does, a read-only container of
    datapoints: ``rows[index]`` for an integer tensor, a list, a slice or a boolean mask (a subset,
    still sparse: the rows' segments gathered at once, no loop over rows), ``shape``, ``len``,
    ``to(device)``, ``nbytes`` (bytes held) against ``dense_nbytes`` (float32 dense); ``float()``
    gives the (n, D) float32 values, refused where they would take more than half the device's
    memory (:func:`dense_limit`). Build it with :meth:`from_scipy`."""

    dtype = torch.float32  #: the dtype of the values it yields

    def __init__(self, indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
                 shape: tuple[int, int]) -> None:
        n, d = (int(v) for v in shape)
        if indptr.dtype != torch.int64 or indptr.dim() != 1 or len(indptr) != n + 1:
            raise TypeError(f"SparseRows needs indptr int64 of length {n + 1}, got {indptr.dtype} {tuple(indptr.shape)}.")
        if indices.dtype not in (torch.int32, torch.int64) or values.dtype != torch.float32:
            raise TypeError(f"SparseRows needs int32/int64 indices and float32 values, got {indices.dtype}, {values.dtype}.")
        if indices.shape != values.shape or indices.dim() != 1:
            raise TypeError(f"SparseRows needs indices and values of one length, got {tuple(indices.shape)}, "
                            f"{tuple(values.shape)}.")
        self.indptr, self.indices, self.values, self._shape = indptr, indices, values, torch.Size((n, d))

    @classmethod
    def from_scipy(cls, matrix) -> "SparseRows":
        """The rows of a SciPy sparse matrix (any format) or a 2-D array, in canonical CSR (duplicate
        entries summed, stored zeros left out, columns sorted within each row). Values must be exact in
        float32 (whole numbers up to 2**24, as counts are); refused otherwise."""
        import scipy.sparse as sp

        if sp.issparse(matrix):
            m = sp.csr_matrix(matrix, copy=True) if matrix.format == "csr" else sp.csr_matrix(matrix.tocsr())
        else:
            m = sp.csr_matrix(np.asarray(matrix))
        if m.ndim != 2:
            raise DataError(f"SparseRows holds a matrix (rows x columns), got shape {m.shape}.")
        m.sum_duplicates()  # (sorts the columns of each row too)
        m.eliminate_zeros()
        data = m.data
        values = data.astype(np.float32)
        if data.dtype != np.float32 and not np.array_equal(values.astype(data.dtype), data, equal_nan=True):
            big = np.abs(data[np.isfinite(data)]).max() if data.size else 0
            raise DataError(f"counts of type {data.dtype} (up to {big:,}) are not exact in float32, which holds them: "
                            f"whole numbers up to 2**24 = {FLOAT32_EXACT:,} are; these are larger or fractional.")
        index_dtype = np.int32 if m.shape[1] < 2 ** 31 else np.int64
        return cls(torch.from_numpy(m.indptr.astype(np.int64)), torch.from_numpy(m.indices.astype(index_dtype)),
                   torch.from_numpy(np.ascontiguousarray(values)), m.shape)

    def to_scipy(self):
        """The rows as a SciPy ``csr_matrix`` of float32 (on the CPU it shares the values' memory)."""
        import scipy.sparse as sp

        return sp.csr_matrix((self.values.cpu().numpy(), self.indices.cpu().numpy(), self.indptr.cpu().numpy()),
                             shape=tuple(self._shape))

    @property
    def shape(self) -> torch.Size:
        return self._shape

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def nnz(self) -> int:
        """Number of stored (non-zero) values."""
        return self.values.numel()

    @property
    def nbytes(self) -> int:
        """Bytes held: the offsets, the column indices and the values."""
        return sum(t.numel() * t.element_size() for t in (self.indptr, self.indices, self.values))

    @property
    def dense_nbytes(self) -> int:
        """Bytes the same rows take dense in float32."""
        return self._shape[0] * self._shape[1] * 4

    def __len__(self) -> int:
        return self._shape[0]

    def _row_ids(self) -> torch.Tensor:
        """The row of each stored value (int64)."""
        n = self._shape[0]
        return torch.repeat_interleave(torch.arange(n, device=self.device), self.indptr.diff(), output_size=self.nnz)

    def _positions(self, index) -> torch.Tensor | slice:
        """The rows ``index`` names: a step-1 slice as itself, anything else as int64 row numbers."""
        n = self._shape[0]
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step == 1:
                return slice(start, max(start, stop))
            return torch.arange(start, stop, step, device=self.device)
        if isinstance(index, (int, np.integer)) or (torch.is_tensor(index) and index.dim() == 0):
            raise TypeError("SparseRows is indexed by rows (an index tensor, a list, a slice or a boolean mask), "
                            "never by a single integer: rows[i:i + 1] keeps the row as a matrix of one.")
        if not torch.is_tensor(index):
            index = torch.as_tensor(np.asarray(index))
        if index.dtype == torch.bool:
            if index.shape != (n,):
                raise IndexError(f"a boolean mask of shape {tuple(index.shape)} for {n} rows.")
            return torch.nonzero(index.to(self.device)).flatten()
        if index.dim() != 1 or index.is_floating_point() or index.is_complex():
            raise IndexError(f"rows are chosen by a 1-D integer tensor, got {index.dtype} {tuple(index.shape)}.")
        rows = index.to(self.device, torch.int64)
        if rows.numel():
            low, high = torch.aminmax(rows)
            if low < -n or high >= n:
                raise IndexError(f"row index {int(low) if low < -n else int(high)} is out of range for {n} rows.")
            rows = torch.where(rows < 0, rows + n, rows)
        return rows

    def __getitem__(self, index) -> "SparseRows":
        rows = self._positions(index)
        d = self._shape[1]
        if isinstance(rows, slice):  # one block of rows: views of its segments
            first, last = int(self.indptr[rows.start]), int(self.indptr[rows.stop])
            return SparseRows(self.indptr[rows.start:rows.stop + 1] - first, self.indices[first:last],
                              self.values[first:last], (rows.stop - rows.start, d))
        starts = self.indptr[rows]
        lengths = self.indptr[rows + 1] - starts
        indptr = torch.zeros(len(rows) + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(lengths, 0, out=indptr[1:])
        total = int(indptr[-1])
        # the position of each gathered value: its row's start, plus its place within the row
        where = torch.repeat_interleave(starts - indptr[:-1], lengths, output_size=total)
        where += torch.arange(total, device=self.device)
        return SparseRows(indptr, self.indices[where], self.values[where], (len(rows), d))

    def to(self, device) -> "SparseRows":
        return SparseRows(self.indptr.to(device), self.indices.to(device), self.values.to(device), self._shape)

    def float(self) -> torch.Tensor:
        """The values, dense: (n, D) float32, written by one scatter. Refused, before anything is
        allocated, where rows x columns x 4 bytes exceeds :func:`dense_limit` of the device."""
        n, d = self._shape
        limit = dense_limit(self.device)
        if self.dense_nbytes > limit:
            raise DataError(
                f"{n:,} rows x {d:,} columns x 4 bytes = {_gib(self.dense_nbytes)} dense in float32, more than the "
                f"{_gib(limit)} allowed on {self.device} (half its memory; held sparse they take "
                f"{_gib(self.nbytes)}): make dense a batch of rows at a time (rows[index].float()), or keep fewer "
                f"columns (data.top_variable or data.features).")
        out = torch.zeros(n * d, dtype=torch.float32, device=self.device)
        out.scatter_(0, self._row_ids() * d + self.indices.long(), self.values)
        return out.view(n, d)

    def row_totals(self) -> torch.Tensor:
        """Each row's total count, (n,) float32 (exact up to 2**24 a row)."""
        totals = torch.zeros(self._shape[0], dtype=torch.float32, device=self.device)
        return totals.index_add_(0, self._row_ids(), self.values)

    def __repr__(self) -> str:
        return f"SparseRows(shape={tuple(self._shape)}, nnz={self.nnz}, device={self.device})"


def _hash_sparse(h, t: SparseRows) -> None:
    """Feed ``h`` the counts of ``t``, whatever its memory layout (views, offsets, int32 or int64
    indices): its shape, then digests of the row lengths (int64), the column indices (int64) and the
    values (float32), each read in slices of 4M entries."""
    h.update(f"sparse {t.dtype} {tuple(t.shape)} {t.nnz}".encode())
    step = 1 << 22
    lengths = t.indptr.diff()
    for part, dtype in ((lengths, torch.int64), (t.indices, torch.int64), (t.values, torch.float32)):
        sub = hashlib.sha256()
        for start in range(0, part.numel(), step):
            sub.update(part[start:start + step].to(dtype).cpu().contiguous().numpy().tobytes())
        h.update(sub.digest())


class RowsOnDisk:
    """Rows a split holds on disk, read a batch at a time (``data/stream.py``'s :class:`StreamedRows`):
    ``rows[index]`` reads those rows (a tensor, :class:`Levels` or :class:`SparseRows`); the values
    are never all in memory at once. What the splits ask of them besides: ``digest()``, a SHA-256 of
    what they hold that reads nothing (the layout's own checksums); ``value_stats()``, the range and
    kind of the values (recorded when the layout was written, where every value was checked)."""

    def digest(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def value_stats(self) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def check_unchanged(self) -> None:
        """Refuse rows changed on disk since they were opened (checked every epoch); default: none can."""

    def verify(self) -> None:
        """Refuse rows whose files are not those recorded (checked on resume); default: nothing to check."""


class DenseRows(RowsOnDisk):
    """Rows on disk read as dense float32 tensors on ``device``: ``rows[index]`` reads those rows
    (what the evaluation, the pictures and ``encode`` index, a batch at a time); ``float()`` reads
    them all (refused where too large, as :meth:`SparseRows.float`)."""

    def __init__(self, rows: RowsOnDisk, device="cpu") -> None:
        self.rows = rows.rows if isinstance(rows, DenseRows) else rows
        self.device = torch.device(device)

    @property
    def shape(self) -> torch.Size:
        return self.rows.shape

    dtype = torch.float32

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> torch.Tensor:
        return self.rows[index.cpu() if torch.is_tensor(index) else index].float().to(self.device)

    def to(self, device) -> "DenseRows":
        return DenseRows(self.rows, device)

    def float(self) -> torch.Tensor:
        return self.rows.float().to(self.device)

    def __getattr__(self, name: str):  # digest, value_stats, row_totals, view, release, check_unchanged, ...
        if name == "rows":
            raise AttributeError(name)
        return getattr(self.rows, name)

    def digest(self) -> str:
        return self.rows.digest()

    def value_stats(self) -> dict:
        return self.rows.value_stats()

    def check_unchanged(self) -> None:
        self.rows.check_unchanged()

    def verify(self) -> None:
        self.rows.verify()

    def __repr__(self) -> str:
        return f"DenseRows({self.rows!r}, device={self.device})"


def row_totals(x) -> torch.Tensor:
    """Each row's total (the sum over its values), float32 (n,): of a tensor, :class:`Levels`,
    :class:`SparseRows` or rows on disk (read a chunk at a time)."""
    if isinstance(x, (SparseRows, RowsOnDisk)):
        return x.row_totals().float()
    x = x.float() if isinstance(x, Levels) else x
    return x.reshape(x.shape[0], -1).sum(1)


def nbytes(x: "torch.Tensor | Levels | SparseRows | None") -> int:
    """Bytes of data held (a tensor's, its levels' or its sparse rows')."""
    if x is None:
        return 0
    return x.nbytes if isinstance(x, (Levels, SparseRows)) else x.numel() * x.element_size()


class _Split:
    """A split of :class:`DataSplits` as a float32 tensor: what it holds, or its levels decoded (its
    sparse rows made dense) afresh."""

    def __set_name__(self, owner, name: str) -> None:
        self.split = name

    def __get__(self, splits, owner=None):
        if splits is None:
            return self
        x = splits.held(self.split)
        if isinstance(x, RowsOnDisk):  # (read a batch at a time as they are indexed, never all at once)
            return DenseRows(x)
        return x.float() if isinstance(x, (Levels, SparseRows)) else x

    def __set__(self, splits, x: "torch.Tensor | Levels | SparseRows") -> None:
        splits._held[self.split] = x


class DataSplits:
    """Train and test data of one dataset (labels: one integer per datapoint, or None).

    ``train`` and ``test`` are float32 tensors. A dataset of 8-bit levels is held as
    :class:`Levels` (``held("train")``), one of counts as :class:`SparseRows`, and ``train``/``test``
    decode it (make it dense) afresh on each access: a new tensor, which the splits do not keep
    (changing it changes nothing held).

    ``factors``: where the data was generated from known factors of variation (a disentanglement
    dataset), ``{"train": (N, F), "test": (M, F)}`` integer factor indices per datapoint, named by
    ``factor_names`` (F names); None otherwise.

    ``covariates``: a batch covariate (the sample, donor or technology each datapoint came from),
    ``{"train": (N,), "test": (M,)}`` integer codes into ``covariate_names``; None otherwise.
    ``label_names``: the class names the labels code (label k is ``label_names[k]``), where known.
    ``feature_names``: the names of the columns of vector data (genes, words), where known."""

    def __init__(self, name: str, train: "torch.Tensor | Levels | SparseRows", train_labels: torch.Tensor | None,
                 test: "torch.Tensor | Levels | SparseRows", test_labels: torch.Tensor | None, description: str = "",
                 scaling: dict | None = None, factors: dict[str, torch.Tensor] | None = None,
                 factor_names: tuple[str, ...] = (), covariates: dict[str, torch.Tensor] | None = None,
                 covariate_names: tuple[str, ...] = (), feature_names: tuple[str, ...] | None = None,
                 label_names: tuple[str, ...] | None = None) -> None:
        self.name, self.description = name, description
        self.train_labels, self.test_labels = train_labels, test_labels
        self.scaling = scaling  # how a table's columns were scaled (csv): applied again to new datapoints
        self._held = {"train": train, "test": test}
        if factors is not None:
            for split in ("train", "test"):
                f = factors[split]
                if f.dim() != 2 or len(f) != len(self._held[split]) or f.shape[1] != len(factor_names):
                    raise DataError(f"the {split} factors have shape {tuple(f.shape)}: one row of "
                                    f"{len(factor_names)} factors ({', '.join(factor_names)}) per datapoint is needed.")
        self.factors, self.factor_names = factors, tuple(factor_names)
        if covariates is not None:
            for split in ("train", "test"):
                c = covariates[split]
                if c.dim() != 1 or len(c) != len(self._held[split]) or c.dtype != torch.int64:
                    raise DataError(f"the {split} covariates are {c.dtype} of shape {tuple(c.shape)}: one int64 code "
                                    f"per datapoint ({len(self._held[split])}) is needed.")
                if len(c) and (c.min() < 0 or c.max() >= len(covariate_names)):
                    raise DataError(f"the {split} covariates hold codes outside 0..{len(covariate_names) - 1}, the "
                                    f"{len(covariate_names)} covariate names.")
        self.covariates, self.covariate_names = covariates, tuple(covariate_names)
        width = self._held["train"].shape[-1] if len(self._held["train"].shape) == 2 else None
        if feature_names is not None and len(feature_names) != width:
            raise DataError(f"{len(feature_names)} feature names for data of shape {tuple(self._held['train'].shape)}: "
                            f"one name per column is needed.")
        self.feature_names = tuple(feature_names) if feature_names is not None else None
        self.label_names = tuple(label_names) if label_names is not None else None

    def held(self, split: str) -> "torch.Tensor | Levels | SparseRows":
        """A split as it is held: a float tensor, :class:`Levels` or :class:`SparseRows`."""
        return self._held[split]

    train = _Split()
    test = _Split()

    @property
    def nbytes(self) -> int:
        """Bytes the splits hold (data and labels)."""
        return sum(nbytes(t) for t in (*self._held.values(), self.train_labels, self.test_labels))

    def __repr__(self) -> str:
        return f"DataSplits({self.name!r}, train={tuple(self.event_shape)} x {len(self._held['train'])}, " \
               f"test x {len(self._held['test'])})"

    def fingerprint(self) -> str:
        """SHA-256 of the data as trained on: the train and test values (float32 dtype, shape, values,
        decoded in slices when held as levels; the CSR counts, row lengths, columns and values, when
        held as sparse rows), labels, and the factors and covariates where there are any."""
        h = hashlib.sha256()
        extra = (self.factors["train"], self.factors["test"]) if self.factors is not None else ()  # (unchanged without)
        if self.covariates is not None:
            extra += (self.covariates["train"], self.covariates["test"])
        for t in (self._held["train"], self._held["test"], self.train_labels, self.test_labels, *extra):
            if t is None:
                h.update(b"none")
                continue
            if isinstance(t, RowsOnDisk):  # (its layout's checksums: nothing read)
                h.update(f"rows on disk {t.digest()}".encode())
                continue
            if isinstance(t, SparseRows):
                _hash_sparse(h, t)
                continue
            if isinstance(t, Levels):
                h.update(f"{t.dtype} {tuple(t.shape)}".encode())
                step = _rows_per_slice(t)
                for start in range(0, len(t), step):
                    h.update(t[start:start + step].float().cpu().numpy().tobytes())
                continue
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype} {tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self._held["train"].shape[1:])

    @classmethod
    def given(cls, splits) -> "DataSplits | None":
        """Data handed in from Python: DataSplits as they are (None: none given), or bare arrays, x
        or a pair (x, labels), by :meth:`from_arrays` (a seeded tenth held out as the test set)."""
        if splits is None or isinstance(splits, DataSplits):
            return splits
        x, labels = splits if isinstance(splits, tuple) else (splits, None)
        return cls.from_arrays(x, labels)

    @classmethod
    def from_arrays(cls, x, labels=None, *, test=None, test_labels=None, test_fraction: float = 0.1,
                    split_seed: int = 0, layout: str = "auto", name: str = "arrays") -> "DataSplits":
        """Splits from arrays in memory (NumPy arrays or tensors), read as the ``array`` dataset reads
        a file: images (N, H, W), (N, C, H, W) or (N, H, W, C) or vectors (N, D); uint8 as 8-bit
        levels scaled by 1/255, floats as they are, other integers as float32 equal to them; ``labels``
        one integer per datapoint. The test set is ``test`` (and ``test_labels``), else a
        ``test_fraction`` of x held out by ``split_seed``."""
        def array(a, what: str) -> np.ndarray:
            if torch.is_tensor(a):
                return a.detach().cpu().numpy()
            if isinstance(a, np.ndarray):
                return a
            raise DataError(f"{what} must be a NumPy array or a torch tensor, got {type(a).__name__}.")

        if not 0.0 < test_fraction < 1.0:
            raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}.")
        images = as_images(array(x, "x"), layout, "x")
        y = as_labels(array(labels, "labels"), len(images), "labels") if labels is not None else None
        given = None
        if test is not None:
            t = as_images(array(test, "test"), layout, "test")
            if t.shape[1:] != images.shape[1:]:
                raise DataError(f"test holds datapoints of shape {tuple(t.shape[1:])} and x of "
                                f"{tuple(images.shape[1:])}: the test set must be the same kind of data.")
            given = (t, as_labels(array(test_labels, "test_labels"), len(t), "test_labels")
                     if test_labels is not None else None)
        elif test_labels is not None:
            raise DataError("test_labels without test: give the test set's datapoints too.")
        train, train_labels, test_x, test_y = train_and_test(images, y, given, test_fraction, split_seed, "x")
        where = "given test set" if given is not None else f"{len(test_x)} held out by seed {split_seed}"
        return cls(name, train, train_labels, test_x, test_y,
                   f"arrays from Python ({where}): {len(train)} train / {len(test_x)} test, "
                   f"{'x'.join(map(str, train.shape[1:]))}")

    def check_nonempty(self) -> None:
        """Refuse a split without datapoints: nothing to train on or to score."""
        for split, x in self._held.items():
            if len(x) == 0:
                raise DataError(f"the {split} split of dataset '{self.name}' holds no datapoints (shape "
                                f"{tuple(x.shape)}): give data with at least one datapoint in each split.")

    def check_finite(self) -> None:
        for split, x in self._held.items():
            if isinstance(x, (Levels, RowsOnDisk)):
                continue  # 8-bit levels are finite; a layout's values were checked when it was written
            bad = (~torch.isfinite(x.values if isinstance(x, SparseRows) else x)).sum().item()
            if bad:
                raise DataError(
                    f"the {split} split of dataset '{self.name}' has {bad} NaN or infinite values; "
                    f"clean the data (or drop those images) before training."
                )


def train_and_test(x: torch.Tensor, labels: torch.Tensor | None, test: tuple | None, fraction: float, seed: int,
                   where) -> tuple:
    """(train, train_labels, test, test_labels): x and a given test set ``(test, test_labels)``, or,
    without one, a seeded fraction of x held out (:func:`seeded_split`)."""
    if test is not None:
        return x, labels, test[0], test[1]
    return seeded_split(x, labels, fraction, seed, where)


def seeded_split_indices(n: int, fraction: float, seed: int, where) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) row numbers, each sorted: a fraction of ``n`` datapoints, chosen by a seeded
    permutation, held out as the test set (the split of :func:`seeded_split`)."""
    n_test = max(1, round(n * fraction))
    if n_test >= n:
        raise DataError(f"{where} holds {n} datapoint(s): too few to hold out a test set (test_fraction = "
                        f"{fraction}); add data or give data.test_path.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_test:].sort().values, order[:n_test].sort().values


def seeded_split(x: torch.Tensor, labels: torch.Tensor | None, fraction: float, seed: int, where) -> tuple:
    """(train, train_labels, test, test_labels): a fraction of the datapoints, chosen by a seeded
    permutation, held out as the test set (each part in its original order)."""
    train, test = seeded_split_indices(len(x), fraction, seed, where)
    pick = (lambda i: labels[i]) if labels is not None else (lambda i: None)
    return x[train], pick(train), x[test], pick(test)


def as_images(array: np.ndarray, layout: str, where: str) -> "torch.Tensor | Levels":
    """Datapoints (N, C, H, W) or (N, D) from an array of images (N, H, W), (N, C, H, W),
    (N, H, W, C) or vectors (N, D): uint8 as :class:`Levels` (read as v / 255), floats as float32,
    other integers (signed or unsigned: counts) as float32 values equal to them, refused beyond 2**24
    in magnitude, where float32 stops being exact (a likelihood refuses values outside its support)."""
    if array.ndim == 4 and layout == "auto":
        first, last = array.shape[1] in (1, 3, 4), array.shape[3] in (1, 3, 4)
        if first == last:
            raise DataError(f"{where}: an array of shape {array.shape} could be (N, C, H, W) or (N, H, W, C); say "
                            f"which with data.layout = \"NCHW\" or \"NHWC\".")
        layout = "NCHW" if first else "NHWC"
    if array.ndim == 4 and layout == "NHWC":
        array = array.transpose(0, 3, 1, 2)
    elif array.ndim == 3:
        array = array[:, None]
    elif array.ndim not in (2, 4):
        raise DataError(f"{where}: an array of shape {array.shape} fits no network: pyro-vae takes images (N, H, W), "
                        f"(N, C, H, W) or (N, H, W, C), or vectors (N, D).")
    if len(array) == 0:
        raise DataError(f"{where}: the array holds no datapoints (shape {array.shape}).")
    if array.dtype == np.uint8:
        return Levels(torch.from_numpy(np.ascontiguousarray(array)))
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.floating):
        return torch.from_numpy(np.ascontiguousarray(array).astype(np.float32))
    if np.issubdtype(array.dtype, np.integer):  # counts: float32 values equal to the integers
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if max(-low, high) > FLOAT32_EXACT:
            raise DataError(f"{where}: integer values from {low:,} to {high:,}; pyro-vae holds data in float32, exact "
                            f"for integers only up to 2**24 = {FLOAT32_EXACT:,} in magnitude, and changes none: if these "
                            f"are counts, check the file (counts this large are rare); else convert the array to "
                            f"floating point yourself (x.astype(np.float32), rounded) or rescale it.")
        return torch.from_numpy(np.ascontiguousarray(array).astype(np.float32))
    raise DataError(f"{where}: values of type {array.dtype}; pyro-vae takes uint8 (8-bit levels, scaled by 1/255), "
                    f"other integers (counts, kept exactly as float32) or floating-point values (kept as they are): "
                    f"convert it, e.g. x.astype(np.float32).")


def as_labels(array: np.ndarray, n: int, where: str) -> torch.Tensor:
    """One integer label per datapoint, as int64."""
    array = np.asarray(array)
    if array.ndim != 1 or len(array) != n:
        raise DataError(f"{where}: labels of shape {array.shape} for {n} datapoints: one label per datapoint is needed.")
    if not np.issubdtype(array.dtype, np.integer):
        if not (np.issubdtype(array.dtype, np.floating) and np.isfinite(array).all() and (array == np.round(array)).all()):
            raise DataError(f"{where}: labels must be integers (class numbers), and these are {array.dtype} values "
                            f"such as {array.flatten()[0]!r}.")
    return torch.from_numpy(array.astype(np.int64))
