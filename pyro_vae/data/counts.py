"""Count matrices as their users keep them, held sparse until a batch is drawn: SciPy sparse
``.npz`` files, 10x Genomics folders (Matrix Market), AnnData ``.h5ad`` files (read with h5py) and
LIBSVM / NVDM bag-of-words text; the ``counts`` dataset that reads them into :class:`SparseRows`,
and the column selections (named features, or the most variable ones) it records.

Every reader returns a :class:`CountMatrix`: the counts as a SciPy CSR matrix with one row a
datapoint (a cell, a document), the column names, the row names and any per-row columns (labels,
a batch). Counts are checked as read: whole, finite, non-negative numbers (a matrix that looks
normalized or log-transformed is refused, naming where its raw counts may be)."""

from __future__ import annotations

import gzip
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch

from ..config import DATASETS, require
from ..errors import DataError
from .datasets import Dataset
from .storage import FLOAT32_EXACT, DataSplits, SparseRows, seeded_split_indices

COUNT_FORMATS = ("npz", "10x", "h5ad", "text")
TEXT_SUFFIXES = (".feat", ".svm", ".libsvm", ".txt")
COUNT_SUFFIXES = (".h5ad", ".mtx", ".mtx.gz", ".feat", ".svm", ".libsvm")  # what --data PATH reads as counts by name
MATRIX_NAMES = ("matrix.mtx", "matrix.mtx.gz")
FEATURE_NAMES = ("features.tsv.gz", "features.tsv", "genes.tsv", "genes.tsv.gz")
BARCODE_NAMES = ("barcodes.tsv", "barcodes.tsv.gz")
SPARSE_NPZ_KEYS = ("format", "shape", "data")
SCALE_FACTOR = 1e4  # Seurat's LogNormalize: log1p(x / row total * 1e4)


@dataclass
class CountMatrix:
    """A count matrix as read from a file.

    ``counts``: SciPy ``csr_matrix``, rows = datapoints, columns = features (any integer or float
    dtype, holding whole numbers); ``columns``: the feature names (genes, words) or None;
    ``rows``: the row names (barcodes, obs names) or None; ``row_columns``: per-row values by name
    (a label or batch column: numbers, or strings as an object array; None where missing);
    ``notes``: what the reader found or did, said in the dataset's description."""

    counts: object
    columns: list[str] | None
    rows: list[str] | None
    path: Path
    format: str
    row_columns: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.counts.shape)


# ---------------------------------------------------------------------------------------------
# checks


def check_counts(counts, where, fix: str = "") -> None:
    """Refuse a matrix (a SciPy sparse matrix, or an array of its stored values) whose stored values are not counts: NaN or infinite, negative, fractional
    (looks normalized or log-transformed: ``fix`` says where raw counts may be), or beyond 2**24 (not
    exact in float32). ``where`` names the file in the message."""
    data = counts if isinstance(counts, np.ndarray) else np.asarray(counts.data)
    if data.size == 0 or data.dtype.kind == "b":
        return
    if data.dtype.kind not in "iuf":
        raise DataError(f"{where} holds values of type {data.dtype}, not counts: give a matrix of whole numbers.")
    if data.dtype.kind == "f":
        bad = ~np.isfinite(data)
        if bad.any():
            raise DataError(f"{where} holds {int(bad.sum()):,} NaN or infinite counts (e.g. {data[bad][0]}): counts "
                            f"are whole numbers >= 0; fix or remove those entries (rows) before training.")
    low = data.min()
    if low < 0:
        raise DataError(f"{where} holds {int((data < 0).sum()):,} negative counts (the least {low:g}): counts are "
                        f"whole numbers >= 0. Centred or scaled data is not counts: {fix or 'give the raw counts.'}")
    if data.dtype.kind == "f":
        fractional = data != np.floor(data)
        if fractional.any():
            example = data[fractional][0]
            raise DataError(f"{where} holds {int(fractional.sum()):,} values that are not whole numbers (e.g. "
                            f"{example:g}): it looks normalized or log-transformed, not raw counts. A count "
                            f"likelihood needs the raw counts: {fix or 'give the file of raw counts.'}")
    high = data.max()
    if high > FLOAT32_EXACT:
        raise DataError(f"{where} holds counts up to {high:,.0f}, beyond 2**24 = {FLOAT32_EXACT:,}, where float32 "
                        f"(which holds them) stops being exact: check the file; counts this large are rare.")


def _where(path: Path, inside: str = "") -> str:
    return f"{path}{' [' + inside + ']' if inside else ''}"


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else open(path, encoding="utf-8")


def _read_lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path} does not exist: it was given as {what}." if not path.exists() else
                        f"{path} is not a file: it was given as {what}.")
    try:
        with _open_text(path) as f:
            return f.read().splitlines()
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise DataError(f"{path} could not be read as UTF-8 text ({type(e).__name__}: {e}): it is given as {what}; "
                        f"give a text file, one name a line.") from None


def read_names(path, what: str = "a file of names") -> list[str]:
    """Names, one a line: the first field (whitespace-separated) of each line, later fields ignored
    (a vocabulary's counts, a gene list's symbols). Blank lines at the end are ignored; one inside
    (a missing name) is refused."""
    path = Path(path).expanduser()
    lines = _read_lines(path, what)
    while lines and not lines[-1].strip():
        lines.pop()
    names = []
    for i, line in enumerate(lines):
        fields = line.split()
        if not fields:
            raise DataError(f"{path}, line {i + 1}, is blank: {what} holds one name a line (a blank line would "
                            f"shift every later name); remove it.")
        names.append(fields[0])
    return names


def _unique_names(names: list[str]) -> tuple[list[str], int]:
    """Names made unique as scanpy's ``var_names_make_unique`` does (a repeat of "A" becomes "A-1",
    "A-2", ...); and how many were renamed."""
    seen: dict[str, int] = {}
    taken = set(names)
    out, renamed = [], 0
    for name in names:
        if name not in seen:
            seen[name] = 0
            out.append(name)
            continue
        k = seen[name]
        while True:
            k += 1
            candidate = f"{name}-{k}"
            if candidate not in taken:
                break
        seen[name] = k
        taken.add(candidate)
        out.append(candidate)
        renamed += 1
    return out, renamed


# ---------------------------------------------------------------------------------------------
# SciPy .npz


def is_sparse_npz(path) -> bool:
    """Whether ``path`` is a .npz file written by ``scipy.sparse.save_npz`` (keys format, shape, data)."""
    path = Path(path)
    if path.suffix.lower() != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as f:
            return all(k in f.files for k in SPARSE_NPZ_KEYS)
    except Exception:  # not a readable .npz: the array dataset says why
        return False


def read_sparse_npz(path) -> CountMatrix:
    """A matrix saved by ``scipy.sparse.save_npz`` (csr, csc or coo), read without unpickling
    anything (rows = datapoints, as saved). Columns unnamed: give a vocabulary."""
    import scipy.sparse as sp

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path} does not exist." if not path.exists() else f"{path} is not a file.")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:
        raise DataError(f"{path} could not be read as a .npz file ({type(e).__name__}: {e}): save the matrix with "
                        f"scipy.sparse.save_npz.") from None
    missing = [k for k in SPARSE_NPZ_KEYS if k not in arrays]
    if missing:
        raise DataError(f"{path} holds {', '.join(arrays) or 'nothing'}, not a SciPy sparse matrix (keys format, shape, "
                        f"data, and indices/indptr or row/col): save it with scipy.sparse.save_npz, or read dense "
                        f"arrays with the dataset 'array'.")
    kind = arrays["format"].item()
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    shape = tuple(int(v) for v in arrays["shape"])
    try:
        if kind in ("csr", "csc"):
            make = sp.csr_matrix if kind == "csr" else sp.csc_matrix
            matrix = make((arrays["data"], arrays["indices"], arrays["indptr"]), shape=shape)
        elif kind == "coo":
            matrix = sp.coo_matrix((arrays["data"], (arrays["row"], arrays["col"])), shape=shape)
        else:
            raise DataError(f"{path} holds a sparse matrix in the {kind!r} format; pyro-vae reads csr, csc and coo: "
                            f"save matrix.tocsr() instead.")
    except KeyError as e:
        raise DataError(f"{path} is a {kind} matrix without its {e.args[0]!r} array: save it again with "
                        f"scipy.sparse.save_npz.") from None
    except ValueError as e:
        raise DataError(f"{path} holds an inconsistent {kind} matrix ({e}): save it again with "
                        f"scipy.sparse.save_npz.") from None
    if len(shape) != 2:
        raise DataError(f"{path} holds a sparse array of shape {shape}: a matrix, rows x columns, is needed.")
    check_counts(matrix, path, "give the file of raw counts.")
    return CountMatrix(matrix.tocsr(), None, None, path, "npz", notes=[f"SciPy {kind} matrix"])


# ---------------------------------------------------------------------------------------------
# 10x Genomics folders


def _first(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def find_10x(path) -> tuple[Path, str]:
    """The folder holding a 10x matrix (``matrix.mtx[.gz]``): ``path`` itself, the folder of a
    matrix file, or the one folder inside ``path`` that holds one (e.g. ``filtered_gene_bc_matrices/``
    holding ``hg19/``); and a note saying which, for the description."""
    path = Path(path).expanduser()
    if path.is_file():
        if path.name not in MATRIX_NAMES and not path.name.endswith((".mtx", ".mtx.gz")):
            raise DataError(f"{path} is not a Matrix Market file (.mtx or .mtx.gz).")
        return path.parent, ""
    if not path.is_dir():
        raise DataError(f"{path} does not exist.")
    if _first(path, MATRIX_NAMES):
        return path, ""
    inside = _matrix_folders(path)
    if len(inside) == 1:
        return inside[0], f"matrix found one level down, in {inside[0].name}/"
    if len(inside) > 1:
        raise DataError(f"{path} holds several 10x matrices ({', '.join(p.name + '/' for p in inside)}): give the one "
                        f"to read as data.path, e.g. {inside[0]}.")
    raise DataError(f"{path} holds no matrix.mtx or matrix.mtx.gz, neither in it nor in a folder inside it: a 10x "
                    f"folder holds matrix.mtx[.gz], features.tsv.gz (or genes.tsv) and barcodes.tsv[.gz].")


def _matrix_folders(path: Path) -> list[Path]:
    """The folders directly inside ``path`` that hold a 10x matrix."""
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and _first(p, MATRIX_NAMES))
    except OSError:
        return []


def read_10x(path) -> CountMatrix:
    """A 10x Genomics (Cell Ranger) folder: ``matrix.mtx[.gz]`` (Matrix Market, features x cells,
    transposed to cells x features), ``genes.tsv`` (Cell Ranger 2: id, symbol) or ``features.tsv.gz``
    (Cell Ranger 3: id, symbol, type), ``barcodes.tsv[.gz]``. Columns are named by the symbols, made
    unique as scanpy does; where features of several types are present (antibody capture, ...) only
    the "Gene Expression" ones are kept (as scanpy's ``gex_only``), and that is said."""
    import scipy.io
    import scipy.sparse as sp

    folder, found = find_10x(path)
    matrix_path = _first(folder, MATRIX_NAMES)
    if Path(path).is_file():
        matrix_path = Path(path).expanduser()
    features_path, barcodes_path = _first(folder, FEATURE_NAMES), _first(folder, BARCODE_NAMES)
    for what, p, names in (("features", features_path, FEATURE_NAMES), ("barcodes", barcodes_path, BARCODE_NAMES)):
        if p is None:
            raise DataError(f"the 10x folder {folder} has {matrix_path.name} but no {what} file ({' or '.join(names)}): "
                            f"copy it from the same Cell Ranger output (the matrix's {what} cannot be named without it).")
    try:
        rows, cols, entries, kind, field_, symmetry = scipy.io.mminfo(str(matrix_path))
    except Exception as e:
        raise DataError(f"{matrix_path} is not a Matrix Market file ({type(e).__name__}: {e}): copy it again from the "
                        f"Cell Ranger output.") from None
    if kind != "coordinate" or field_ == "pattern" or field_ == "complex" or symmetry != "general":
        raise DataError(f"{matrix_path} is a Matrix Market '{kind} {field_} {symmetry}' matrix; a 10x count matrix is "
                        f"'coordinate integer general' (or real): it holds no counts pyro-vae can read.")
    features = [line.split("\t") for line in _read_lines(features_path, "the 10x features") if line.strip()]
    barcodes = [line.split("\t")[0].strip() for line in _read_lines(barcodes_path, "the 10x barcodes") if line.strip()]
    if len(features) != rows or len(barcodes) != cols:
        raise DataError(f"the 10x folder {folder} disagrees with itself: {matrix_path.name} is {rows:,} features x "
                        f"{cols:,} cells, but {features_path.name} lists {len(features):,} features and "
                        f"{barcodes_path.name} {len(barcodes):,} barcodes: the files come from different runs or one is "
                        f"truncated; copy the three from one Cell Ranger output.")
    try:
        matrix = scipy.io.mmread(str(matrix_path))
    except Exception as e:
        raise DataError(f"{matrix_path} could not be read ({type(e).__name__}: {e}): it is damaged or truncated; copy "
                        f"it again.") from None
    matrix = sp.csr_matrix(sp.coo_matrix(matrix).T)  # features x cells -> cells x features
    check_counts(matrix, matrix_path, "use Cell Ranger's filtered or raw matrix, which holds UMI counts.")
    notes = [f"10x folder {folder}" + (f", {found}" if found else "") + f", {features_path.name} ("
             f"{'Cell Ranger 3' if features_path.name.startswith('features') else 'Cell Ranger 2'})"]
    types = [f[2].strip() if len(f) > 2 else "" for f in features]
    kinds = sorted(set(types))
    if len(kinds) > 1 and "Gene Expression" in kinds:
        keep = np.flatnonzero(np.array(types) == "Gene Expression")
        dropped = {k: types.count(k) for k in kinds if k != "Gene Expression"}
        notes.append(f"kept the {len(keep):,} 'Gene Expression' features of {len(features):,}, left out "
                     + ", ".join(f"{n:,} '{k}'" for k, n in dropped.items()))
        matrix, features = matrix[:, keep], [features[i] for i in keep]
    names = [(f[1] if len(f) > 1 else f[0]).strip() for f in features]
    names, renamed = _unique_names(names)
    if renamed:
        notes.append(f"{renamed:,} repeated gene symbols made unique by -1, -2, ... (as scanpy)")
    return CountMatrix(matrix.tocsr(), names, barcodes, folder, "10x", notes=notes)


# ---------------------------------------------------------------------------------------------
# AnnData .h5ad (read with h5py)


def _attr(node, name: str, default=None):
    value = node.attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else value


def _h5_values(ds) -> np.ndarray:
    """A 1-D dataset's values: strings (variable or fixed length) as an object array of str, numbers as they are."""
    if ds.dtype.kind in "OS":
        return np.array(list(ds.asstr()[()]), dtype=object)
    return ds[()]


def _h5_matrix(node, path: Path, where: str, fix: str):
    """X or a layer as a SciPy CSR matrix: a dense dataset (read in blocks of rows), or a group of a
    sparse matrix (encoding-type csr_matrix / csc_matrix, anndata >= 0.7; or the h5sparse_format
    attribute of anndata 0.6)."""
    import h5py
    import scipy.sparse as sp

    if isinstance(node, h5py.Dataset):
        if node.ndim != 2:
            raise DataError(f"{_where(path, where)} is a {node.ndim}-D array: a matrix, cells x genes, is needed.")
        n, d = node.shape
        step = max(1, (1 << 24) // max(1, d))
        blocks = []
        for start in range(0, n, step):
            block = sp.csr_matrix(node[start:start + step])
            check_counts(block, _where(path, where), fix)
            blocks.append(block)
        return sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((n, d), dtype=node.dtype)
    kind = _attr(node, "encoding-type") or _attr(node, "h5sparse_format")
    kind = {"csr": "csr_matrix", "csc": "csc_matrix"}.get(kind, kind)
    if kind not in ("csr_matrix", "csc_matrix"):
        raise DataError(f"{_where(path, where)} is a group of encoding {kind!r}; pyro-vae reads a dense matrix or a "
                        f"csr_matrix / csc_matrix: write the file again with anndata (adata.write_h5ad).")
    shape = node.attrs.get("shape", node.attrs.get("h5sparse_shape"))
    try:
        parts = (node["data"][()], node["indices"][()], node["indptr"][()])
    except KeyError as e:
        raise DataError(f"{_where(path, where)} is a sparse matrix without its {e.args[0]!r}: the file is damaged; "
                        f"write it again.") from None
    check_counts(parts[0], _where(path, where), fix)
    make = sp.csr_matrix if kind == "csr_matrix" else sp.csc_matrix
    try:
        return make(parts, shape=tuple(int(v) for v in shape)).tocsr()
    except (ValueError, TypeError) as e:
        raise DataError(f"{_where(path, where)} holds an inconsistent sparse matrix ({e}): write the file again.") from None


def _h5_index(frame) -> list[str] | None:
    """The row names of obs or var: the dataset the ``_index`` attribute names (anndata >= 0.7), or
    the ``index`` field of the table (anndata 0.6); None where there is none."""
    import h5py

    if frame is None:
        return None
    if isinstance(frame, h5py.Dataset):  # anndata 0.6: a table of named fields
        names = frame.dtype.names or ()
        return [v.decode() if isinstance(v, bytes) else str(v) for v in frame["index"]] if "index" in names else None
    key = _attr(frame, "_index")
    if key is None or key not in frame:
        return None
    return list(_h5_values(frame[key]))


def _h5_columns(frame) -> list[str]:
    """The names of obs's columns."""
    import h5py

    if frame is None:
        return []
    if isinstance(frame, h5py.Dataset):
        return [n for n in (frame.dtype.names or ()) if n != "index"]
    index = _attr(frame, "_index")
    return [k for k in frame.keys() if k not in (index, "__categories")]


def _h5_column(f, frame, name: str, path: Path) -> np.ndarray:
    """One obs column's values: categorical decoded to its categories (missing as None), numbers and
    strings as they are. Layouts: a group of codes and categories (``encoding-type: categorical``,
    anndata >= 0.8); codes with their categories in ``obs/__categories/<name>`` (anndata 0.7); a
    field of the obs table with categories in ``uns/<name>_categories`` (anndata 0.6); nullable
    integers and booleans (values and a mask)."""
    import h5py

    columns = _h5_columns(frame)
    if name not in columns:
        raise DataError(f"{path} has no obs column {name!r}; its obs columns are "
                        f"{', '.join(repr(c) for c in columns) or 'none'}: name one of them.")
    if isinstance(frame, h5py.Dataset):  # anndata 0.6
        codes = frame[name]
        uns = f.get("uns")
        if uns is not None and f"{name}_categories" in uns:
            return _decode_codes(codes, _h5_values(uns[f"{name}_categories"]))
        return np.array([v.decode() if isinstance(v, bytes) else v for v in codes], dtype=object) \
            if codes.dtype.kind in "OS" else codes
    node = frame[name]
    kind = _attr(node, "encoding-type")
    if isinstance(node, h5py.Group):
        if kind == "categorical":
            return _decode_codes(node["codes"][()], _h5_values(node["categories"]))
        if kind in ("nullable-integer", "nullable-boolean", "nullable-string-array"):
            values = _h5_values(node["values"]).astype(object)
            values[node["mask"][()].astype(bool)] = None
            return values
        raise DataError(f"{path}: obs column {name!r} is of encoding {kind!r}, which pyro-vae does not read; store it as "
                        f"a categorical, string or numeric column.")
    categories = frame.get("__categories")
    if categories is not None and name in categories:  # anndata 0.7
        return _decode_codes(node[()], _h5_values(categories[name]))
    return _h5_values(node)


def _decode_codes(codes: np.ndarray, categories: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes).astype(np.int64)
    out = np.empty(len(codes), dtype=object)
    known = codes >= 0
    out[known] = np.asarray(categories, dtype=object)[codes[known]]
    out[~known] = None
    return out


def read_h5ad(path, layer: str | None = None, obs_columns: tuple[str, ...] = ()) -> CountMatrix:
    """An AnnData file read with h5py (no anndata needed): ``X``, a layer ``layers/<layer>``, or
    ``raw/X`` (``layer = "raw"``), dense or sparse; var names (columns), obs names (rows), and the
    obs columns named in ``obs_columns``."""
    import h5py

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path} does not exist." if not path.exists() else f"{path} is not a file.")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path} could not be opened as an HDF5 (.h5ad) file ({e}): it is damaged, or not an AnnData "
                        f"file; write it again with adata.write_h5ad.") from None
    with f:
        layers = list(f["layers"].keys()) if "layers" in f and isinstance(f["layers"], h5py.Group) else []
        has_raw = "raw" in f and "X" in f["raw"]
        choices = [f'layers["{name}"] (data.layer = "{name}")' for name in layers]
        if has_raw:
            choices.append('raw/X (data.layer = "raw")')
        where = "X" if layer is None else ("raw/X" if layer == "raw" else f"layers/{layer}")
        if layer is None:
            if "X" not in f:
                raise DataError(f"{path} has no X: it is not an AnnData file, or its X was written elsewhere; it has "
                                f"{', '.join(choices) or 'no layers'}.")
            node, var = f["X"], f.get("var")
        elif layer == "raw":
            if not has_raw:
                raise DataError(f"{path} has no raw/X for data.layer = \"raw\"; it has "
                                f"{', '.join(choices) or 'no layers'}.")
            node, var = f["raw/X"], f["raw"].get("var")
        else:
            if layer not in layers:
                raise DataError(f"{path} has no layer {layer!r}; it has {', '.join(choices) or 'no layers (only X)'}: "
                                f"name one of them with data.layer, or leave data.layer unset to read X.")
            node, var = f["layers"][layer], f.get("var")
        fix = ("pick the raw counts: it has " + ", ".join(choices) if choices else
               "it has no layers or raw/X: counts must come from the file before normalization (scanpy: keep "
               "adata.layers[\"counts\"] = adata.X.copy() before sc.pp.normalize_total).")
        matrix = _h5_matrix(node, path, where, fix)
        obs = f.get("obs")
        columns = _h5_index(var)
        rows = _h5_index(obs)
        for what, names, size in (("var", columns, matrix.shape[1]), ("obs", rows, matrix.shape[0])):
            if names is not None and len(names) != size:
                raise DataError(f"{path}: {where} is {matrix.shape[0]:,} x {matrix.shape[1]:,} but {what} names "
                                f"{len(names):,} entries: the file is inconsistent; write it again with anndata.")
        row_columns = {name: _h5_column(f, obs, name, path) for name in obs_columns}
    notes = [f"AnnData {where}" + (" (dense)" if isinstance(node, h5py.Dataset) else "")]
    if columns is not None:
        columns, renamed = _unique_names(columns)
        if renamed:
            notes.append(f"{renamed:,} repeated var names made unique by -1, -2, ... (as anndata)")
    return CountMatrix(matrix, columns, rows, path, "h5ad", row_columns, notes)


# ---------------------------------------------------------------------------------------------
# LIBSVM / NVDM text


def read_text_counts(path, one_based: bool = True) -> CountMatrix:
    """Bag-of-words text, one document a line: ``LABEL id:count id:count ...`` (LIBSVM; NVDM's
    .feat files). Word ids are 1-based (``one_based``) or 0-based; a line with no id:count pairs (the
    label alone, or blank) is an empty document. The first field of each line is kept as the row
    column "label" (numbers where every label is an integer, else strings)."""
    import scipy.sparse as sp

    path = Path(path).expanduser()
    lines = _read_lines(path, "bag-of-words text")
    labels, lengths, pieces = _text_fields(path, lines)
    numbers = _text_numbers(path, pieces, lengths)
    ids, values = numbers[:, 0], numbers[:, 1]
    rows = np.repeat(np.arange(len(lines)), lengths)
    first = 1 if one_based else 0
    _check_word_ids(path, ids, rows, one_based)
    check_counts(values, path, "give the raw word counts of each document.")
    columns = ids.astype(np.int64) - first
    width = int(columns.max()) + 1 if columns.size else 0
    matrix = sp.coo_matrix((values, (rows, columns)), shape=(len(lines), width)).tocsr()  # (repeats summed)
    notes = [f"{'1' if one_based else '0'}-based word ids"]
    repeated = len(columns) - matrix.nnz
    if repeated:
        notes.append(f"{repeated:,} repeated ids within a document summed")
    return CountMatrix(matrix, None, None, path, "text", {"label": _text_labels(labels)}, notes)


def _text_fields(path: Path, lines: list[str]) -> tuple[list, np.ndarray, list[str]]:
    """Each line's label (None if none), its number of id:count pairs and the pairs; a non-pair field refused."""
    labels: list = []
    lengths = np.zeros(len(lines), dtype=np.int64)
    pieces = []
    for i, line in enumerate(lines):
        fields = line.split()
        if fields and ":" not in fields[0]:
            labels.append(fields[0])
            fields = fields[1:]
        else:
            labels.append(None)
        piece = " ".join(fields)
        if piece.count(":") != len(fields):
            bad = next(t for t in fields if t.count(":") != 1)
            raise DataError(f"{path}, line {i + 1}: {bad!r} is not id:count; each line is LABEL id:count id:count ... "
                            f"(LIBSVM): fix the line.")
        lengths[i] = len(fields)
        pieces.append(piece)
    return labels, lengths, pieces


def _text_numbers(path: Path, pieces: list[str], lengths: np.ndarray) -> np.ndarray:
    """Every line's id:count pairs as a (pairs, 2) float64 array; a token that is no number refused, by line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # (a token that is no number stops the parse: an error, not a warning)
            numbers = np.fromstring(" ".join(pieces).replace(":", " "), dtype=np.float64, sep=" ")
        if numbers.size != 2 * lengths.sum():
            raise ValueError("not every token is a number")
        return numbers.reshape(-1, 2)
    except (ValueError, DeprecationWarning):
        for i, piece in enumerate(pieces):
            try:
                np.array(piece.replace(":", " ").split(), dtype=np.float64)
            except ValueError:
                raise DataError(f"{path}, line {i + 1}: an id or count is not a number ({piece[:60]!r}): each line "
                                f"is LABEL id:count id:count ... (LIBSVM): fix the line.") from None
        raise DataError(f"{path}: an id or count is not a number: each line is LABEL id:count id:count ... "
                        f"(LIBSVM): fix the file.") from None


def _check_word_ids(path: Path, ids: np.ndarray, rows: np.ndarray, one_based: bool) -> None:
    """Refuse a word id that is not a whole number >= 1 (``one_based``) or >= 0, naming its line (``rows``)."""
    first = 1 if one_based else 0
    if ids.size:
        bad = (ids != np.floor(ids)) | (ids < first)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            hint = " (ids start at 1 here: set data.one_based = false for a 0-based file)" if ids[k] == 0 else ""
            raise DataError(f"{path}, line {rows[k] + 1}: word id {ids[k]:g} is not a {'1' if one_based else '0'}-based "
                            f"whole number{hint}.")


def _text_labels(labels: list) -> np.ndarray:
    """The labels as an object array: ints where every label present is an integer, else strings (None: none)."""
    label = np.array(labels, dtype=object)
    present = [v for v in labels if v is not None]
    if present and all(_is_int(v) for v in present):
        label = np.array([int(v) if v is not None else None for v in labels], dtype=object)
    return label


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# which reader


def count_format(path) -> str | None:
    """The count format a path names, by its name (and a .npz's keys): "10x" for a folder holding
    matrix.mtx[.gz] (or one level above it) or a .mtx/.mtx.gz file, "h5ad", "npz" for a SciPy sparse
    .npz, "text" for .feat/.svm/.libsvm/.txt; None for anything else."""
    p = Path(path).expanduser()
    name = p.name.lower()
    if p.is_dir():
        return "10x" if _first(p, MATRIX_NAMES) or _matrix_folders(p) else None
    if name.endswith((".mtx", ".mtx.gz")):
        return "10x"
    if name.endswith(".h5ad"):
        return "h5ad"
    if name.endswith(".npz"):
        return "npz" if is_sparse_npz(p) else None
    if p.suffix.lower() in TEXT_SUFFIXES:
        return "text"
    return None


def read_counts(path, format: str = "auto", *, layer: str | None = None, obs_columns: tuple[str, ...] = (),
                one_based: bool = True) -> CountMatrix:
    """A count matrix from ``path`` in ``format`` ("auto": by the path, :func:`count_format`)."""
    path = Path(path).expanduser()
    if format == "auto":
        if not path.exists():
            raise DataError(f"{path} does not exist.")
        format = count_format(path)
        if format is None:
            raise DataError(f"{path}: the counts dataset reads a SciPy sparse .npz, an .h5ad file, a 10x folder "
                            f"(matrix.mtx[.gz]) or a .mtx file, or .feat/.svm/.libsvm/.txt text; this is none of them "
                            f"by its name or content: set data.format to say which it is.")
    if format == "npz":
        return read_sparse_npz(path)
    if format == "10x":
        return read_10x(path)
    if format == "h5ad":
        return read_h5ad(path, layer, obs_columns)
    if format == "text":
        return read_text_counts(path, one_based)
    raise DataError(f"unknown count format {format!r}: one of {', '.join(COUNT_FORMATS)} or auto.")


# ---------------------------------------------------------------------------------------------
# columns


def seen_in_rows(counts) -> np.ndarray:
    """How many rows hold a count > 0 in each column."""
    m = counts.tocsr()
    return np.bincount(m.indices[m.data > 0], minlength=m.shape[1])


def log_normalized_variance(counts, totals: np.ndarray | None = None) -> np.ndarray:
    """Each column's variance over the rows of log1p(x / row total * 1e4) (Seurat's LogNormalize),
    computed sparse in float64, in two passes (the mean, then the squared deviations, the zeros'
    included; population variance: the ranking is the same with n - 1). ``totals``: the rows' totals
    (default: over the columns given)."""
    m = counts.tocsr().astype(np.float64)
    totals = np.asarray(m.sum(axis=1)).reshape(-1) if totals is None else np.asarray(totals, np.float64)
    n, d = max(m.shape[0], 1), m.shape[1]
    scale = np.repeat(np.where(totals > 0, SCALE_FACTOR / np.where(totals > 0, totals, 1), 0.0), np.diff(m.indptr))
    y = np.log1p(m.data * scale)
    mean = np.bincount(m.indices, weights=y, minlength=d) / n
    stored = np.bincount(m.indices, minlength=d)  # (the zeros of a column: n - stored, each mean**2 from its mean)
    return (np.bincount(m.indices, weights=(y - mean[m.indices]) ** 2, minlength=d) + (n - stored) * mean ** 2) / n


def top_variable_columns(counts, k: int, min_rows: int = 0) -> tuple[np.ndarray, int]:
    """The columns kept by the rule of ``top_variable``, in column order: those seen (count > 0) in
    at least ``min_rows`` rows, then the ``k`` of them with the largest variance of log1p(x / row
    total * 1e4) over the rows (row totals over every column; ties broken by column order); and the
    number left out by ``min_rows``. ``k = 0``: every column that passes ``min_rows``."""
    seen = seen_in_rows(counts)
    passing = np.flatnonzero(seen >= min_rows)
    dropped = counts.shape[1] - len(passing)
    if not k or k >= len(passing):
        return passing, dropped
    totals = np.asarray(counts.sum(axis=1), dtype=np.float64).reshape(-1)
    variance = log_normalized_variance(counts[:, passing], totals)
    order = np.argsort(-variance, kind="stable")  # (stable: equal variances keep column order)
    return np.sort(passing[order[:k]]), dropped


def _said(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit:,} more" if len(names) > limit else "")


# ---------------------------------------------------------------------------------------------
# the dataset


@DATASETS.register("counts")
class CountDataset(Dataset):
    """Count matrices (cells x genes, documents x words) from a SciPy .npz, a 10x folder, an .h5ad file or LIBSVM text, held sparse until a batch is drawn.

    Counts are checked as read (whole numbers >= 0; a normalized or log-transformed matrix is
    refused, naming the file's layers of raw counts). Rows with no counts are dropped (and counted)
    or refused. Columns may be chosen by name (``features``) or by the rule of ``top_variable``:
    features seen (count > 0) in at least ``min_rows`` training rows, then the ``top_variable`` with
    the largest variance of log1p(x / row total * 1e4) over the training rows (Seurat's
    LogNormalize, then the variance; row totals over every column; ties broken by column order),
    kept in the file's column order. The kept names are written in the description and are the
    splits' ``feature_names``.

    Options:
        path: the counts: a SciPy sparse .npz (scipy.sparse.save_npz), an .h5ad file, a 10x folder holding matrix.mtx[.gz] (or the folder one above it), a .mtx/.mtx.gz file in one, or .feat/.svm/.libsvm/.txt text (LABEL id:count ...).
        format: "auto" (by the path's name, and a .npz's keys), or "npz", "10x", "h5ad", "text".
        layer: .h5ad: read layers/LAYER (e.g. "counts") instead of X; "raw": raw/X.
        vocabulary: text or .npz: a file of the column names, one a line (later fields of a line ignored), as many as the matrix's columns.
        label_column: .h5ad: the obs column of the labels (categorical, string or integer; coded in sorted order, the names kept). Text files: see labels_from_text.
        labels_from_text: text: the first field of each line is the label (coded in sorted order); false: no labels.
        batch_column: .h5ad: the obs column of a batch covariate (sample, donor, technology), coded in sorted order.
        features: a file of the feature names to keep, one a line, in its order (every name must be a column).
        top_variable: keep the top_variable columns of largest variance of log1p(x / row total * 1e4) over the training rows (Seurat's LogNormalize; ties by column order); 0: no such selection.
        min_rows: keep only columns seen (count > 0) in at least min_rows training rows (before top_variable); 0: no such filter.
        empty_rows: "drop" rows with no counts (the number dropped is said), or "refuse" a file that has any.
        test_path: a file of the test rows, of the same kind and columns (e.g. 20news/test.npz); unset: a seeded test_fraction of path's rows.
        test_fraction: without test_path, the fraction of the rows held out as the test set (chosen by split_seed).
        split_seed: seed of that split.
        one_based: text: word ids start at 1 (NVDM, LIBSVM); false: at 0.
    """

    def __init__(self, *, path: str = "", format: Literal["auto", "npz", "10x", "h5ad", "text"] = "auto",
                 layer: str | None = None, vocabulary: str | None = None, label_column: str | None = None,
                 labels_from_text: bool = False, batch_column: str | None = None, features: str | None = None,
                 top_variable: int = 0, min_rows: int = 0, empty_rows: Literal["drop", "refuse"] = "drop",
                 test_path: str | None = None, test_fraction: float = 0.1, split_seed: int = 0,
                 one_based: bool = True) -> None:
        require(bool(path), "data.path must name a count file or 10x folder (dataset 'counts').")
        require(0.0 < test_fraction < 1.0, f"test_fraction must be in (0, 1), got {test_fraction}.")
        require(top_variable >= 0, f"top_variable must be >= 0 (0: keep every column), got {top_variable}.")
        require(min_rows >= 0, f"min_rows must be >= 0, got {min_rows}.")
        require(features is None or (top_variable == 0 and min_rows == 0),
                "give either features (a file of names) or top_variable / min_rows, not both.")
        self.path, self.format, self.layer, self.vocabulary = path, format, layer, vocabulary
        self.label_column, self.labels_from_text, self.batch_column = label_column, labels_from_text, batch_column
        self.features, self.top_variable, self.min_rows, self.empty_rows = features, top_variable, min_rows, empty_rows
        self.test_path, self.test_fraction, self.split_seed, self.one_based = test_path, test_fraction, split_seed, one_based

    # -- reading ---------------------------------------------------------------------------------

    def _read(self, path: Path) -> CountMatrix:
        columns = tuple(c for c in (self.label_column, self.batch_column) if c is not None)
        m = read_counts(path, self.format, layer=self.layer, obs_columns=columns, one_based=self.one_based)
        if self.layer is not None and m.format != "h5ad":
            raise DataError(f"data.layer = {self.layer!r} is for an .h5ad file, and {path} is {m.format}: unset it.")
        if columns and m.format != "h5ad":
            which = "data.label_column" if self.label_column is not None else "data.batch_column"
            fix = ("for text, set data.labels_from_text = true to take each line's first field as its label"
                   if m.format == "text" else "its rows carry no columns; an .h5ad file's obs does")
            raise DataError(f"{which} names a column of an .h5ad file's obs, and {path} is {m.format}: {fix}.")
        if self.labels_from_text and m.format != "text":
            raise DataError(f"data.labels_from_text is for text files, and {path} is {m.format}: unset it"
                            + (" and name the obs column with data.label_column." if m.format == "h5ad" else "."))
        if self.vocabulary is not None:
            if m.format not in ("text", "npz"):
                raise DataError(f"data.vocabulary names the columns of a text or .npz file; {path} ({m.format}) names "
                                f"its own: unset data.vocabulary.")
            vocabulary = Path(self.vocabulary).expanduser()
            names = read_names(vocabulary, "a vocabulary")
            width = m.counts.shape[1]
            if m.format == "text" and width <= len(names):
                m.counts.resize((m.counts.shape[0], len(names)))  # (words never used are columns too)
            elif len(names) != width:
                largest = f" (its largest word id is {width - 1 + self.one_based})" if m.format == "text" else ""
                raise DataError(f"the vocabulary {vocabulary} has {len(names):,} words and {path} {width:,} columns"
                                f"{largest}: they must match, one name a column; give the vocabulary of this matrix"
                                f"{' (or set data.one_based)' if m.format == 'text' else ''}.")
            m.columns = names
            m.notes.append(f"vocabulary {vocabulary}")
        if m.columns is None:
            first = 1 if (m.format == "text" and self.one_based) else 0
            m.columns = [str(j + first) for j in range(m.counts.shape[1])]
            m.notes.append(f"columns unnamed: called by their {'1' if first else '0'}-based number")
        return m

    def _drop_empty(self, m: CountMatrix, rows_kept: np.ndarray, where: str, after: str = "") -> tuple[np.ndarray, int]:
        """Rows (of ``rows_kept``) with counts; refused under empty_rows = "refuse"."""
        totals = np.asarray(m.counts[rows_kept].sum(axis=1)).reshape(-1) if len(rows_kept) else np.zeros(0)
        empty = totals == 0
        n = int(empty.sum())
        if n and self.empty_rows == "refuse":
            first = int(rows_kept[np.flatnonzero(empty)[0]])
            name = f" ({m.rows[first]})" if m.rows is not None else ""
            raise DataError(f"{where} has {n:,} rows with no counts{after} (the first: row {first + 1}{name}); "
                            f"data.empty_rows = \"refuse\": set it to \"drop\" to leave them out, or remove them.")
        return rows_kept[~empty], n

    def _codes(self, values: list[np.ndarray], what: str, paths: list[Path]) -> tuple[list[torch.Tensor], tuple]:
        """Per-row values of one or two files coded 0..K-1 in sorted order of the values."""
        for v, path in zip(values, paths):
            missing = np.array([x is None or (isinstance(x, float) and math.isnan(x)) for x in v], dtype=bool)
            if missing.any():
                raise DataError(f"{path}: {int(missing.sum()):,} rows have no {what} (the first: row "
                                f"{int(np.flatnonzero(missing)[0]) + 1}): fill them in, or choose another column.")
            if v.dtype.kind == "f" and (v != np.floor(v)).any():
                raise DataError(f"{path}: the {what} are real numbers (e.g. {v[v != np.floor(v)][0]:g}), not classes: "
                                f"choose a categorical, string or integer column.")
        joined = np.concatenate([np.asarray(v) for v in values])
        if joined.dtype == object and all(isinstance(x, (int, np.integer)) for x in joined):
            joined = joined.astype(np.int64)
        elif joined.dtype == object:
            joined = joined.astype(str)
        elif joined.dtype.kind == "f":  # (whole numbers, checked above)
            joined = joined.astype(np.int64)
        names, codes = np.unique(joined, return_inverse=True)
        out, start = [], 0
        for v in values:
            out.append(torch.from_numpy(codes[start:start + len(v)].astype(np.int64)))
            start += len(v)
        return out, tuple(str(n) for n in names)

    def _read_test(self, m: CountMatrix, path: Path) -> CountMatrix | None:
        """The test file's matrix (None without test_path), refused unless its columns are the data file's."""
        if self.test_path is None:
            return None
        test_path = Path(self.test_path).expanduser()
        tm = self._read(test_path)
        if m.format == tm.format == "text" and self.vocabulary is None:  # columns named by number: the wider
            width = max(m.shape[1], tm.shape[1])
            for each in (m, tm):
                each.counts.resize((each.shape[0], width))
                each.columns = [str(j + self.one_based) for j in range(width)]
        if tm.format != m.format or tm.columns != m.columns:
            differ = (f"is {tm.format} and {path} {m.format}" if tm.format != m.format else
                      f"has {len(tm.columns):,} columns and {path} {len(m.columns):,}" if len(tm.columns) != len(m.columns)
                      else f"names its columns otherwise (e.g. column {_first_difference(tm.columns, m.columns)})")
            raise DataError(f"the test file {test_path} {differ}: the test rows must have the same columns, "
                            f"in the same order.")
        return tm

    def _split_rows(self, m: CountMatrix, tm: CountMatrix | None, path: Path) -> _RowSplit:
        """The rows with counts, split into train and test: the test file's rows, or a seeded test_fraction."""
        keep, empty = self._drop_empty(m, np.arange(m.shape[0]), str(path))
        if tm is not None:
            test_keep, test_empty = self._drop_empty(tm, np.arange(tm.shape[0]), str(self.test_path))
            return _RowSplit(keep, test_keep, tm, f"test rows from {self.test_path}", empty, test_empty)
        train_at, test_at = seeded_split_indices(len(keep), self.test_fraction, self.split_seed, path)
        said = f"{len(test_at):,} rows held out by seed {self.split_seed} (test_fraction {self.test_fraction:g})"
        return _RowSplit(keep[train_at.numpy()], keep[test_at.numpy()], m, said, empty, 0)

    def _choose_columns(self, m: CountMatrix, train_rows: np.ndarray, path: Path) -> tuple[np.ndarray | None, str]:
        """The columns to keep (None: all), by name (features) or top_variable / min_rows, and how chosen."""
        if self.features is not None:
            return _named_columns(self.features, m.columns, path)
        if not (self.top_variable or self.min_rows):
            return None, ""
        selected, dropped = top_variable_columns(m.counts[train_rows], self.top_variable, self.min_rows)
        parts = []
        if self.min_rows:
            parts.append(f"seen in >= {self.min_rows} training rows ({dropped:,} columns left out)")
        if self.top_variable:
            kept_all = len(selected) < self.top_variable
            parts.append(f"the {self.top_variable:,} of largest variance of log1p(x / row total * 1e4) over the "
                         f"training rows (Seurat's LogNormalize)"
                         + (f": only {len(selected):,} columns to choose from, all kept" if kept_all else ""))
        return selected, ", then ".join(parts)

    def _take_columns(self, m: CountMatrix, split: _RowSplit, selected: np.ndarray | None,
                      path: Path) -> tuple[SparseRows, SparseRows, list[str], _RowSplit, tuple[int, int]]:
        """Both splits held sparse in the selected columns, their names, the split less rows left empty there."""
        if selected is None:
            return (SparseRows.from_scipy(m.counts[split.train]),
                    SparseRows.from_scipy(split.test_m.counts[split.test]), list(m.columns), split, (0, 0))
        names = [m.columns[j] for j in selected]
        sub = CountMatrix(m.counts[:, selected], names, m.rows, m.path, m.format)
        if self.test_path is None:  # (the test rows are the data file's)
            test_sub, test_where = sub, str(path)
        else:
            tm = split.test_m
            test_sub = CountMatrix(tm.counts[:, selected], names, tm.rows, tm.path, tm.format)
            test_where = str(self.test_path)
        train_rows, n_train = self._drop_empty(sub, split.train, str(path), " in the selected columns")
        test_rows, n_test = self._drop_empty(test_sub, split.test, test_where, " in the selected columns")
        return (SparseRows.from_scipy(sub.counts[train_rows]), SparseRows.from_scipy(test_sub.counts[test_rows]),
                names, split._replace(train=train_rows, test=test_rows), (n_train, n_test))

    def _coded(self, m: CountMatrix, split: _RowSplit, key: str, what: str,
               path: Path) -> tuple[list[torch.Tensor], tuple]:
        """The row column ``key`` of the train and test rows, coded 0..K-1 (:meth:`_codes`), and the K names."""
        return self._codes([m.row_columns[key][split.train], split.test_m.row_columns[key][split.test]], what,
                           [path, Path(self.test_path or path)])

    def _labels(self, m: CountMatrix, split: _RowSplit, path: Path) -> tuple[list, tuple | None, str]:
        """The train and test labels (each line's first field, or label_column), their names, and what is said."""
        label_key = "label" if self.labels_from_text else self.label_column
        if label_key is None:
            return [None, None], None, ""
        what = "label" if self.labels_from_text else f"obs column {self.label_column!r}"
        labels, names = self._coded(m, split, label_key, f"{what} values", path)
        return labels, names, f"labels: {what}, {len(names):,} classes ({_said(list(names), 8)})"

    def _batches(self, m: CountMatrix, split: _RowSplit, path: Path) -> tuple[dict | None, tuple, str]:
        """The batch covariate of the train and test rows (batch_column), its names, and what is said."""
        if self.batch_column is None:
            return None, (), ""
        (train, test), names = self._coded(m, split, self.batch_column, f"obs column {self.batch_column!r} values",
                                           path)
        return ({"train": train, "test": test}, names,
                f"batch: obs column {self.batch_column!r}, {len(names):,} batches ({_said(list(names), 8)})")

    def _said_empty(self, split: _RowSplit, after_empty: tuple[int, int], selected: bool) -> str:
        """The description's count of the empty rows dropped (in the files; in the selected columns)."""
        said = f"empty rows dropped: {split.empty:,}" + (f" (test file: {split.test_empty:,})"
                                                         if self.test_path is not None else "")
        if selected:
            said += f"; rows empty in the selected columns dropped: {after_empty[0]:,} train, {after_empty[1]:,} test"
        return said

    def load(self) -> DataSplits:
        path = Path(self.path).expanduser()
        m = self._read(path)
        notes = list(m.notes)
        split = self._split_rows(m, self._read_test(m, path), path)
        selected, said_columns = self._choose_columns(m, split.train, path)
        train, test, names, split, after_empty = self._take_columns(m, split, selected, path)
        (train_labels, test_labels), label_names, said_labels = self._labels(m, split, path)
        covariates, covariate_names, said_batch = self._batches(m, split, path)
        parts = [f"counts ({m.format}) from {path}" + (f" ({'; '.join(notes)})" if notes else ""), split.said,
                 *_said_rows(train, test, m.shape[1] if selected is not None else None),
                 self._said_empty(split, after_empty, selected is not None)]
        parts += [p for p in (said_labels, said_batch) if p]
        if selected is not None:
            shown = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
            parts.append(f"columns: {said_columns}; kept (in the file's column order): {shown} (every name: "
                         f"DataSplits.feature_names, and a run's features.txt)")
        return DataSplits("counts", train, train_labels, test, test_labels, "; ".join(parts),
                          covariates=covariates, covariate_names=covariate_names, feature_names=tuple(names),
                          label_names=label_names)


class _RowSplit(NamedTuple):
    """The rows of :meth:`CountDataset.load`'s train and test splits, as indices into their files."""

    train: np.ndarray
    test: np.ndarray
    test_m: CountMatrix  # the matrix the test rows index: the test file's, or the data file's
    said: str  # how the split was made, for the description
    empty: int  # rows with no counts dropped from the data file
    test_empty: int  # ... and from the test file


def _named_columns(features: str, columns: list[str], path: Path) -> tuple[np.ndarray, str]:
    """The columns named in the file ``features`` (data.features), in its order; and what is said of them."""
    wanted = read_names(features, "a file of feature names")
    where = {name: j for j, name in enumerate(columns)}
    unknown = [n for n in wanted if n not in where]
    if unknown:
        raise DataError(f"{features} names {len(unknown):,} features that {path} does not have: "
                        f"{_said(unknown)}; its columns are e.g. {_said(columns)}: correct the names, or "
                        f"remove them from the file.")
    repeated = sorted({n for n in wanted if wanted.count(n) > 1}) if len(set(wanted)) != len(wanted) else []
    if repeated:
        raise DataError(f"{features} names {_said(repeated)} more than once: each feature once.")
    selected = np.array([where[n] for n in wanted], dtype=np.int64)
    return selected, f"the {len(selected):,} named in {features}"


def _said_rows(train: SparseRows, test: SparseRows, width: int | None) -> list[str]:
    """The description's sizes: rows x columns (of ``width`` if selected), non-zeros, memory sparse and dense."""
    held = train.nbytes + test.nbytes
    dense = train.dense_nbytes + test.dense_nbytes
    cells = len(train) * train.shape[1] + len(test) * test.shape[1]
    nonzero = (train.nnz + test.nnz) / cells if cells else 0.0
    return [f"{len(train):,} train / {len(test):,} test rows x {train.shape[1]:,} columns"
            + (f" (of {width:,})" if width is not None else ""),
            f"non-zeros {nonzero:.2%}",
            f"held sparse {_size(held)} against {_size(dense)} dense float32"]


def _first_difference(a: list[str], b: list[str]) -> str:
    j = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    return f"{j + 1}: {a[j]!r} against {b[j]!r}"


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


def read_counts_like(path: Path, table: dict, features: list[str] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every row of a count file, read as a run's ``counts`` dataset (``table``: its layer, one_based)
    and with the run's columns ``features`` taken by name, in the run's order, where the file names its
    columns (an .h5ad, a 10x folder; a gene or word it lacks refused, naming a few); a file without
    names (a SciPy .npz, LIBSVM text) is taken by position and must have the run's number of columns.
    Dense float32, and no labels: what ``encode --data`` scores with a run trained on counts."""
    options = {k: table[k] for k in ("layer", "one_based") if k in table}
    m = read_counts(path, "auto", **options)
    columns = list(m.columns) if m.columns is not None else None  # (a .npz or text file names none: by position)
    counts = m.counts
    if features is not None:
        if columns is None:
            if len(features) != counts.shape[1]:
                raise DataError(f"{path} holds {counts.shape[1]} columns without names, and the run trained on "
                                f"{len(features)}: give a file of the run's columns (or their names).")
        else:
            where = {name: i for i, name in enumerate(columns)}
            missing = [name for name in features if name not in where]
            if missing:
                raise DataError(f"{path} lacks {len(missing)} of the run's {len(features)} columns (e.g. "
                                f"{', '.join(missing[:5])}): give data with the columns the run trained on.")
            counts = counts[:, [where[name] for name in features]]
    return SparseRows.from_scipy(counts.tocsr()).float(), None
