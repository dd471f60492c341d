"""Count data as its users keep it: SciPy sparse .npz, 10x folders, AnnData .h5ad (written here with
h5py in the layouts anndata writes), LIBSVM / NVDM text; held sparse (SparseRows) until a batch is
drawn; the column selections the counts dataset records; bad files refused naming the file and the fix.

Every file is tiny and written under tmp_path: no test needs the real data in shared/data."""

from __future__ import annotations

import gzip
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
import torch

from pyro_vae.cli import main
from pyro_vae.config import DATASETS
from pyro_vae.data import (
    DataSplits, Levels, SparseRows, as_images, count_format, dataset_for_path, log_normalized_variance, read_10x,
    read_counts, read_h5ad, read_sparse_npz, read_text_counts, top_variable_columns)
from pyro_vae.errors import DataError


def counts(n: int = 12, d: int = 7, seed: int = 0, density: float = 0.4, empty: tuple[int, ...] = ()) -> sp.csr_matrix:
    """An (n, d) int64 CSR matrix of counts 1..9 (rows ``empty`` with none; the last column used)."""
    rng = np.random.default_rng(seed)
    dense = rng.integers(1, 10, (n, d)) * (rng.random((n, d)) < density)
    dense[:, 0] += 1  # every row has a count...
    dense[0, -1] += 1
    dense[list(empty)] = 0  # ...but these
    return sp.csr_matrix(dense.astype(np.int64))


def names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def same(a, b) -> bool:
    a, b = sp.csr_matrix(a), sp.csr_matrix(b)
    return a.shape == b.shape and (a != b).nnz == 0


def load(**options) -> DataSplits:
    return DATASETS.build({"name": "counts", **options}, "data").load()


def write_lines(path: Path, lines: list[str]) -> Path:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return path


# -- writers in the users' formats -------------------------------------------------------------


def write_10x(folder: Path, m: sp.csr_matrix, version: int = 2, types: list[str] | None = None) -> Path:
    """A Cell Ranger folder: version 2 (matrix.mtx, genes.tsv: id, symbol; barcodes.tsv) or 3
    (matrix.mtx.gz, features.tsv.gz: id, symbol, type; barcodes.tsv.gz); the matrix genes x cells."""
    folder.mkdir(parents=True, exist_ok=True)
    genes, cells = names("G", m.shape[1]), names("AAAC-", m.shape[0])
    gz = ".gz" if version == 3 else ""
    scipy.io.mmwrite(str(folder / "matrix.mtx"), sp.coo_matrix(m.T), field="integer")
    if gz:
        (folder / "matrix.mtx.gz").write_bytes(gzip.compress((folder / "matrix.mtx").read_bytes()))
        (folder / "matrix.mtx").unlink()
    if version == 3:
        types = types or ["Gene Expression"] * len(genes)
        write_lines(folder / "features.tsv.gz", [f"ENSG{i}\t{g}\t{t}" for i, (g, t) in enumerate(zip(genes, types))])
    else:
        write_lines(folder / "genes.tsv", [f"ENSG{i}\t{g}" for i, g in enumerate(genes)])
    write_lines(folder / f"barcodes.tsv{gz}", cells)
    return folder


STR = h5py.string_dtype()


def _strings(group, key: str, values, new: bool = True):
    ds = group.create_dataset(key, data=np.array(values, dtype=object), dtype=STR)
    if new:
        ds.attrs["encoding-type"], ds.attrs["encoding-version"] = "string-array", "0.2.0"
    return ds


def _sparse_group(parent, key: str, m, kind: str = "csr", old: bool = False) -> None:
    m = sp.csr_matrix(m) if kind == "csr" else sp.csc_matrix(m)
    g = parent.create_group(key)
    if old:  # anndata 0.6 (h5sparse)
        g.attrs["h5sparse_format"], g.attrs["h5sparse_shape"] = kind, np.array(m.shape)
    else:
        g.attrs["encoding-type"], g.attrs["encoding-version"] = f"{kind}_matrix", "0.1.0"
        g.attrs["shape"] = np.array(m.shape)
    g.create_dataset("data", data=m.data)
    g.create_dataset("indices", data=m.indices)
    g.create_dataset("indptr", data=m.indptr)


def write_h5ad(path: Path, x, *, x_kind: str = "csr", layers: dict | None = None, obs: dict | None = None,
               layout: str = "0.10", raw=None) -> Path:
    """An .h5ad file as anndata writes it.

    ``layout = "0.10"``: anndata >= 0.8 (0.8 to 0.12 write it so): every element carries
    ``encoding-type`` / ``encoding-version``; obs and var are groups with ``_index``; a categorical
    column is a group of ``codes`` and ``categories``. ``"0.7"``: anndata 0.7: encoding attributes
    on sparse matrices and data frames only, and a categorical column is a dataset of codes whose
    categories sit in ``obs/__categories/<name>`` (referenced by its ``categories`` attribute).
    ``"0.6"``: anndata 0.6: X sparse by the ``h5sparse_format`` / ``h5sparse_shape`` attributes; obs
    and var are tables (compound datasets) with an ``index`` field; categories in
    ``uns/<name>_categories``. (Checked by hand: anndata 0.12.19 reads all three back, categories
    included; and this reader reads what anndata 0.12.19 writes.)
    ``obs``: {name: values}, a list of strings (written as a categorical) or a NumPy array (as it is)."""
    x = sp.csr_matrix(x) if sp.issparse(x) else x
    n, d = x.shape
    obs = obs or {}
    with h5py.File(path, "w") as f:
        new, newest = layout != "0.6", layout == "0.10"
        if newest:  # (anndata 0.7 wrote encoding attributes on sparse matrices and data frames only)
            f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        if x_kind == "dense":
            ds = f.create_dataset("X", data=x.toarray() if sp.issparse(x) else x, compression="gzip")
            if newest:
                ds.attrs["encoding-type"], ds.attrs["encoding-version"] = "array", "0.2.0"
        else:
            _sparse_group(f, "X", x, x_kind, old=not new)
        if layers is not None:
            g = f.create_group("layers")
            if newest:
                g.attrs["encoding-type"], g.attrs["encoding-version"] = "dict", "0.1.0"
            for key, value in layers.items():
                _sparse_group(g, key, value, old=not new)
        if raw is not None:
            g = f.create_group("raw")
            _sparse_group(g, "X", raw)
            var = g.create_group("var")
            var.attrs["_index"] = "_index"
            _strings(var, "_index", names("G", raw.shape[1]))
        if not new:  # anndata 0.6: tables
            fields = [("index", "S16")] + [(k, "i1" if isinstance(v, list) else np.asarray(v).dtype)
                                            for k, v in obs.items()]
            table = np.zeros(n, dtype=fields)
            table["index"] = names("cell", n)
            uns = f.create_group("uns")
            for k, v in obs.items():
                if isinstance(v, list):
                    categories = sorted(set(v))
                    table[k] = [categories.index(c) for c in v]
                    _strings(uns, f"{k}_categories", categories, new=False)
                else:
                    table[k] = v
            f.create_dataset("obs", data=table)
            var_table = np.zeros(d, dtype=[("index", "S16")])
            var_table["index"] = names("G", d)
            f.create_dataset("var", data=var_table)
            return path
        for key, index in (("obs", names("cell", n)), ("var", names("G", d))):
            g = f.create_group(key)
            g.attrs["_index"] = "_index"
            g.attrs["encoding-type"], g.attrs["encoding-version"] = "dataframe", "0.2.0" if newest else "0.1.0"
            g.attrs["column-order"] = np.array(list(obs) if key == "obs" else [], dtype=object).astype("S")
            _strings(g, "_index", index, new=newest)
        g = f["obs"]
        for k, v in obs.items():
            if not isinstance(v, list):
                g.create_dataset(k, data=np.asarray(v))
                continue
            categories = sorted(set(v), reverse=True)  # (not sorted: the dataset codes in sorted order itself)
            codes = np.array([categories.index(c) for c in v], dtype=np.int8)
            if layout == "0.7":
                cats = g.require_group("__categories")
                ref = _strings(cats, k, categories, new=False)
                ds = g.create_dataset(k, data=codes)
                ds.attrs["categories"] = ref.ref
            else:
                c = g.create_group(k)
                c.attrs["encoding-type"], c.attrs["encoding-version"], c.attrs["ordered"] = "categorical", "0.2.0", False
                c.create_dataset("codes", data=codes)
                _strings(c, "categories", categories)
    return path


def write_text(path: Path, m: sp.csr_matrix, labels: list | None = None, one_based: bool = True,
               empty_last: bool = True) -> Path:
    """LIBSVM / NVDM text: ``LABEL id:count ...`` a line, ids in a shuffled order (as NVDM writes
    them), and (``empty_last``) a last line holding only a label: an empty document."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(m.shape[0]):
        row = m.getrow(i)
        order = rng.permutation(row.nnz)
        label = labels[i] if labels is not None else 1
        lines.append(" ".join([str(label)] + [f"{row.indices[k] + one_based}:{row.data[k]}" for k in order]))
    if empty_last:
        lines.append("1 ")
    return write_lines(path, lines)


# -- each format reads back the matrix it was written from -------------------------------------


@pytest.mark.parametrize("kind", ["csr", "csc", "coo"])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32])
def test_a_scipy_npz_reads_back_its_matrix(tmp_path, kind, dtype):
    m = counts().astype(dtype)
    sp.save_npz(tmp_path / "m.npz", m.asformat(kind))
    got = read_sparse_npz(tmp_path / "m.npz")
    assert same(got.counts, m) and got.format == "npz" and got.columns is None
    assert count_format(tmp_path / "m.npz") == "npz"


@pytest.mark.parametrize("version", [2, 3])
def test_a_10x_folder_reads_back_cells_by_genes(tmp_path, version):
    m = counts(9, 5)
    folder = write_10x(tmp_path / "out" / "hg19", m, version)
    for given in (folder, tmp_path / "out", next(folder.glob("matrix.mtx*"))):  # the folder, one above, the file
        got = read_10x(given)
        assert same(got.counts, m) and got.columns == names("G", 5) and got.rows == names("AAAC-", 9)
        assert ("one level down, in hg19/" in got.notes[0]) == (given == tmp_path / "out")
        assert f"Cell Ranger {version}" in got.notes[0]


def test_a_10x_folder_keeps_the_gene_expression_features_and_says_so(tmp_path):
    m = counts(6, 5)
    folder = write_10x(tmp_path / "f", m, 3, types=["Gene Expression"] * 3 + ["Antibody Capture"] * 2)
    got = read_10x(folder)
    assert same(got.counts, m[:, :3]) and got.columns == names("G", 3)
    assert "kept the 3 'Gene Expression' features of 5, left out 2 'Antibody Capture'" in " ".join(got.notes)


@pytest.mark.parametrize("layout, x_kind", [(layout, x_kind) for layout in ("0.10", "0.7", "0.6")
                                             for x_kind in ("dense", "csr", "csc") if (layout, x_kind) != ("0.6", "dense")])
def test_an_h5ad_reads_back_x_dense_or_sparse(tmp_path, layout, x_kind):
    m = counts(10, 6)
    path = write_h5ad(tmp_path / "a.h5ad", m.astype(np.float32), x_kind=x_kind, layout=layout)
    got = read_h5ad(path)
    assert same(got.counts, m) and got.columns == names("G", 6) and got.rows == names("cell", 10)
    assert count_format(path) == "h5ad"


def test_an_h5ad_reads_a_named_layer_or_raw(tmp_path):
    m = counts(10, 6)
    normalized = sp.csr_matrix(np.log1p(m.toarray() / m.sum(1).A * 1e4).astype(np.float32))
    path = write_h5ad(tmp_path / "a.h5ad", normalized, layers={"counts": m.astype(np.float32)}, raw=m)
    assert same(read_h5ad(path, layer="counts").counts, m)
    assert same(read_h5ad(path, layer="raw").counts, m)
    splits = load(path=str(path), layer="counts", test_fraction=0.2)
    assert "AnnData layers/counts" in splits.description


@pytest.mark.parametrize("layout", ["0.10", "0.7", "0.6"])
def test_h5ad_obs_columns_are_labels_and_a_batch_coded_in_sorted_order(tmp_path, layout):
    m = counts(12, 6)
    kinds = ["T cell", "B cell", "NK", "B cell"] * 3
    batches = ["s2", "s1", "s1", "s3"] * 3
    path = write_h5ad(tmp_path / "a.h5ad", m, layout=layout, obs={"kind": kinds, "batch": batches})
    got = read_h5ad(path, obs_columns=("kind", "batch"))
    assert list(got.row_columns["kind"]) == kinds
    test = write_h5ad(tmp_path / "t.h5ad", counts(4, 6, seed=1), layout=layout,
                      obs={"kind": ["NK"] * 4, "batch": ["s4", "s1", "s1", "s1"]})
    splits = load(path=str(path), test_path=str(test), label_column="kind", batch_column="batch")
    assert splits.label_names == ("B cell", "NK", "T cell")
    assert splits.train_labels.tolist() == [2, 0, 1, 0] * 3 and splits.test_labels.tolist() == [1] * 4
    assert splits.covariate_names == ("s1", "s2", "s3", "s4")
    assert splits.covariates["train"].tolist() == [1, 0, 0, 2] * 3 and splits.covariates["test"].tolist() == [3, 0, 0, 0]
    assert "labels: obs column 'kind', 3 classes" in splits.description and "4 batches" in splits.description


def test_numeric_obs_columns_are_labels(tmp_path):
    path = write_h5ad(tmp_path / "a.h5ad", counts(8, 4), obs={"cluster": np.array([3, 1, 1, 7] * 2)})
    splits = load(path=str(path), label_column="cluster", test_fraction=0.25)
    assert splits.label_names == ("1", "3", "7")
    everything = sorted(splits.train_labels.tolist() + splits.test_labels.tolist())
    assert everything == sorted([1, 0, 0, 2] * 2)


@pytest.mark.parametrize("one_based", [True, False])
def test_text_reads_back_its_documents_and_the_empty_last_one(tmp_path, one_based):
    m = counts(9, 6)
    path = write_text(tmp_path / "train.feat", m, labels=[5, 2, 9] * 3, one_based=one_based)
    got = read_text_counts(path, one_based=one_based)
    assert got.shape == (10, 6)
    assert same(got.counts[:9], m) and got.counts[9].nnz == 0  # the last line: an empty document
    assert list(got.row_columns["label"][:3]) == [5, 2, 9]
    vocabulary = write_lines(tmp_path / "vocab.new", [f"{w} 0" for w in names("w", 8)])  # (a column to ignore)
    splits = load(path=str(path), vocabulary=str(vocabulary), one_based=one_based, labels_from_text=True,
                  test_fraction=0.3)
    assert splits.feature_names == tuple(names("w", 8)) and splits.held("train").shape[1] == 8  # words never used
    assert "empty rows dropped: 1" in splits.description
    assert splits.label_names == ("2", "5", "9") and len(splits.train) + len(splits.test) == 9


def test_a_text_test_file_with_fewer_words_used_gets_the_same_columns(tmp_path):
    m = counts(9, 6)
    train = write_text(tmp_path / "train.svm", m)
    test = write_text(tmp_path / "test.svm", m[:, :4])
    splits = load(path=str(train), test_path=str(test))
    assert splits.held("test").shape == (9, 6)  # (its empty last document dropped)
    assert same(splits.held("test").to_scipy(), sp.hstack([m[:, :4], sp.csr_matrix((9, 2), dtype=np.int64)]))
    assert splits.feature_names == tuple(str(j) for j in range(1, 7))  # the 1-based ids, no vocabulary given


# -- SparseRows --------------------------------------------------------------------------------


def test_sparse_rows_index_as_dense_rows_do_bit_for_bit():
    m = counts(40, 9, empty=(3, 17))
    rows, dense = SparseRows.from_scipy(m), torch.from_numpy(m.toarray().astype(np.float32))
    assert torch.equal(rows.float(), dense) and np.array_equal(rows.to_scipy().toarray(), rows.float().numpy())
    g = torch.Generator().manual_seed(0)
    indices = [torch.randint(-40, 40, (25,), generator=g) for _ in range(5)] + [torch.tensor([], dtype=torch.int64)]
    masks = [torch.rand(40, generator=g) < p for p in (0.0, 0.3, 1.0)]
    slices = [slice(None), slice(3, 17), slice(None, None, 3), slice(-5, None), slice(30, 10, -2), slice(50, 60)]
    lists = [[0, 0, 39, 5], np.array([7, 3]), [True] * 20 + [False] * 20]
    for index in [*indices, *masks, *slices, *lists]:
        picked = rows[index]
        expected = torch.from_numpy(dense.numpy()[index if isinstance(index, slice) else np.asarray(index)].copy())
        assert isinstance(picked, SparseRows) and picked.shape == expected.shape
        assert torch.equal(picked.float().view(torch.int32), expected.view(torch.int32)), index
        assert torch.equal(picked[2:5].float(), expected[2:5])  # a subset of a subset
    assert torch.equal(rows.row_totals(), dense.sum(1))
    assert rows.nbytes == 41 * 8 + m.nnz * (4 + 4) and rows.dense_nbytes == 40 * 9 * 4
    assert rows.dtype == torch.float32 and rows.device == torch.device("cpu") and len(rows) == 40
    assert torch.equal(rows.to("cpu").float(), dense)
    with pytest.raises(TypeError, match="never by a single integer"):
        rows[3]
    with pytest.raises(IndexError, match="out of range"):
        rows[torch.tensor([40])]


def test_sparse_rows_refuse_to_make_dense_what_the_memory_cannot_hold():
    huge = SparseRows(torch.tensor([0, 1, 1], dtype=torch.int64), torch.tensor([5], dtype=torch.int32),
                      torch.tensor([3.0]), (2, 10 ** 12 // 2 * 3))  # 2 x 1.5e12 x 4 bytes = 12 TB
    with pytest.raises(DataError, match="half its memory") as e:
        huge.float()
    assert "2 rows x 1,500,000,000,000 columns x 4 bytes" in str(e.value)
    assert np.array_equal(huge[[1, 0]][1:].to_scipy().data, np.array([3.0], np.float32))  # indexing stays sparse


def test_the_fingerprint_is_the_counts_not_how_they_are_held():
    m = counts(30, 8)
    coo = sp.coo_matrix(m)  # the same counts as float64 coo, with a duplicate entry split in two and a stored zero
    row, col, data = list(coo.row), list(coo.col), list(coo.data.astype(np.float64))
    data[0] -= 1
    row, col, data = row + [coo.row[0], 2], col + [coo.col[0], 7], data + [1.0, 0.0]
    other = sp.coo_matrix((data, (row, col)), shape=m.shape)
    a, b = SparseRows.from_scipy(m), SparseRows.from_scipy(other)
    assert b.indices.dtype == torch.int32
    b64 = SparseRows(b.indptr, b.indices.long(), b.values, b.shape)  # int64 indices
    view, copy = a[5:], SparseRows.from_scipy(m[5:])  # a view with offsets, and a fresh copy

    def fp(train, test) -> str:
        return DataSplits("counts", train, None, test, None).fingerprint()

    assert fp(a, view) == fp(b, copy) == fp(b64, copy)
    changed = m.copy()
    changed.data[-1] += 1
    assert fp(SparseRows.from_scipy(changed), view) != fp(a, view)
    dense = DataSplits("x", a.float(), None, view.float(), None)
    assert dense.fingerprint() != fp(a, view)  # (held dense, it is another kind of data)
    with_batch = DataSplits("counts", a, None, view, None, covariates={"train": torch.zeros(30, dtype=torch.int64),
                                                                       "test": torch.zeros(25, dtype=torch.int64)},
                            covariate_names=("s1",))
    assert with_batch.fingerprint() != fp(a, view)
    assert with_batch.nbytes == a.nbytes + view.nbytes
    assert torch.equal(with_batch.train, a.float())  # decoded afresh, as Levels are


def test_data_splits_check_sparse_rows_for_nan():
    rows = SparseRows.from_scipy(counts())
    rows.values[0] = float("nan")
    with pytest.raises(DataError, match="NaN or infinite"):
        DataSplits("counts", rows, None, rows[:2], None).check_finite()


# -- columns -----------------------------------------------------------------------------------


def known_columns() -> tuple[sp.csr_matrix, list[str]]:
    """8 rows, each of total 100, whose columns' variances of log1p(x / 100 * 1e4) are known:
    "wide" (0 or 10) > "narrow" (0 or 1) = "narrow-too" (a copy: a tie) > "flat" (5 in every row,
    variance 0); "rare" is seen in one row only; "filler" makes the totals 100."""
    wide = [0, 10] * 4
    narrow = [1, 0] * 4
    rare = [0] * 7 + [20]
    flat = [5] * 8
    columns = {"flat": flat, "narrow": narrow, "rare": rare, "wide": wide, "narrow-too": narrow}
    dense = np.array(list(columns.values())).T
    filler = 100 - dense.sum(1)
    return sp.csr_matrix(np.column_stack([dense, filler])), [*columns, "filler"]


def test_top_variable_columns_follow_the_stated_rule(tmp_path):
    m, columns = known_columns()
    y = np.log1p(m.toarray() / m.toarray().sum(1, keepdims=True) * 1e4)
    np.testing.assert_allclose(log_normalized_variance(m), y.var(0), rtol=1e-12, atol=1e-12)
    kept, dropped = top_variable_columns(m, 2, min_rows=2)
    assert [columns[j] for j in kept] == ["narrow", "wide"] and dropped == 1  # rare left out; the tie to the first
    kept, _ = top_variable_columns(m, 3, min_rows=0)
    assert [columns[j] for j in kept] == ["narrow", "rare", "wide"]  # in column order
    np.testing.assert_array_equal(np.sort(np.argsort(-y.var(0), kind="stable")[:3]), kept)


def test_the_counts_dataset_records_the_columns_it_keeps(tmp_path):
    m, columns = known_columns()
    sp.save_npz(tmp_path / "train.npz", m)
    sp.save_npz(tmp_path / "test.npz", m[:3])
    vocabulary = write_lines(tmp_path / "vocab.txt", columns)
    common = dict(path=str(tmp_path / "train.npz"), test_path=str(tmp_path / "test.npz"), vocabulary=str(vocabulary))
    splits = load(**common, top_variable=2, min_rows=2)
    assert splits.feature_names == ("narrow", "wide")
    assert torch.equal(splits.train, torch.from_numpy(m[:, [1, 3]].toarray()).float())
    assert "seen in >= 2 training rows (1 columns left out)" in splits.description
    assert "kept (in the file's column order): narrow, wide" in splits.description
    assert "rows empty in the selected columns dropped: 0 train, 0 test" in splits.description
    again = DATASETS.build(DATASETS.build({"name": "counts", **common, "top_variable": 2, "min_rows": 2}).spec()).load()
    assert again.feature_names == splits.feature_names and again.fingerprint() == splits.fingerprint()
    wanted = write_lines(tmp_path / "genes.txt", ["wide", "flat"])
    named = load(**common, features=str(wanted))
    assert named.feature_names == ("wide", "flat") and "the 2 named in" in named.description
    assert torch.equal(named.test, torch.from_numpy(m[:3][:, [3, 0]].toarray()).float())


# -- bad input, refused naming the file and the fix -------------------------------------------


def _npz(path: Path, m) -> Path:
    sp.save_npz(path, sp.csr_matrix(m))
    return path


def _normalized_h5ad(d: Path) -> Path:
    m = counts()
    x = sp.csr_matrix(np.log1p(m.toarray() / m.sum(1).A * 1e4).astype(np.float32))
    return write_h5ad(d / "a.h5ad", x, layers={"counts": m.astype(np.float32), "spliced": m.astype(np.float32)})


def _missing_barcodes(d: Path) -> Path:
    folder = write_10x(d / "f", counts())
    (folder / "barcodes.tsv").unlink()
    return folder


def _disagreeing_10x(d: Path) -> Path:
    folder = write_10x(d / "f", counts(12, 7))
    write_lines(folder / "genes.tsv", [f"E{i}\tG{i}" for i in range(6)])
    return folder


def _unknown_features(d: Path) -> dict:
    _npz(d / "a.npz", counts())
    write_lines(d / "vocab.txt", names("G", 7))
    write_lines(d / "keep.txt", ["G1", "CD3E", "G2", "MS4A1"])
    return dict(path=str(d / "a.npz"), vocabulary=str(d / "vocab.txt"), features=str(d / "keep.txt"))


BAD = {
    "negative": (lambda d: _npz(d / "a.npz", -counts()), "negative counts"),
    "fractional": (lambda d: _npz(d / "a.npz", counts().astype(np.float32) * 0.5), "looks normalized or log-transformed"),
    "nan": (lambda d: _npz(d / "a.npz", counts().astype(np.float32).toarray() * np.nan), "NaN or infinite counts"),
    "infinite-text": (lambda d: write_lines(d / "a.feat", ["1 1:3 2:inf", "1 3:1"]), "NaN or infinite counts"),
    "normalized-h5ad": (_normalized_h5ad, 'layers["counts"] (data.layer = "counts")'),
    "too-many-words": (lambda d: {"path": str(_npz(d / "a.npz", counts(12, 7))),
                                  "vocabulary": str(write_lines(d / "v.txt", names("w", 6)))},
                       "has 6 words and"),
    "vocabulary-short-of-text-ids": (lambda d: {"path": str(write_text(d / "a.feat", counts(5, 7))),
                                                "vocabulary": str(write_lines(d / "v.txt", names("w", 5)))},
                                     "its largest word id is 7"),
    "10x-missing-file": (_missing_barcodes, "but no barcodes file"),
    "10x-disagrees": (_disagreeing_10x, "lists 6 features"),
    "10x-several": (lambda d: write_10x(d / "out" / "mm10", counts()) and write_10x(d / "out" / "hg19", counts()).parent,
                    "holds several 10x matrices (hg19/, mm10/)"),
    "no-such-layer": (lambda d: {"path": str(_normalized_h5ad(d)), "layer": "raw_counts"},
                      "has no layer 'raw_counts'; it has layers[\"counts\"]"),
    "no-such-obs-column": (lambda d: {"path": str(write_h5ad(d / "a.h5ad", counts(), obs={"kind": ["a", "b"] * 6})),
                                      "label_column": "cell_type"},
                           "has no obs column 'cell_type'; its obs columns are 'kind'"),
    "unknown-features": (_unknown_features, "2 features that"),
    "empty-rows-refused": (lambda d: {"path": str(_npz(d / "a.npz", counts(empty=(4,)))), "empty_rows": "refuse"},
                           "1 rows with no counts"),
    "text-id-zero": (lambda d: write_lines(d / "a.svm", ["1 0:3 2:1"]), "data.one_based = false"),
    "text-not-pairs": (lambda d: write_lines(d / "a.libsvm", ["1 1:3 2", "1 3:1"]), "is not id:count"),
    "counts-beyond-float32": (lambda d: _npz(d / "a.npz", counts() * 2 ** 22), "beyond 2**24"),
}


@pytest.mark.parametrize("fault", BAD)
def test_bad_count_files_are_refused_naming_the_file_and_the_fix(tmp_path, fault):
    made, phrase = BAD[fault]
    options = made(tmp_path)
    options = options if isinstance(options, dict) else {"path": str(options)}
    with pytest.raises(DataError) as e:
        load(test_fraction=0.25, **options)
    message = str(e.value)
    assert phrase in message, message
    assert str(tmp_path) in message, message


def test_a_normalized_h5ad_is_refused_naming_its_layers(tmp_path):
    with pytest.raises(DataError) as e:
        load(path=str(_normalized_h5ad(tmp_path)))
    assert 'layers["counts"] (data.layer = "counts"), layers["spliced"] (data.layer = "spliced")' in str(e.value)
    assert "looks normalized or log-transformed" in str(e.value)


def test_a_test_file_with_other_columns_is_refused(tmp_path):
    _npz(tmp_path / "a.npz", counts(12, 7))
    _npz(tmp_path / "b.npz", counts(12, 6))
    with pytest.raises(DataError, match="has 6 columns and"):
        load(path=str(tmp_path / "a.npz"), test_path=str(tmp_path / "b.npz"))


def test_options_that_do_not_fit_the_format_are_refused(tmp_path):
    path = str(_npz(tmp_path / "a.npz", counts()))
    with pytest.raises(DataError, match="obs"):
        load(path=path, label_column="kind")
    with pytest.raises(DataError, match="for an .h5ad file"):
        load(path=path, layer="counts")
    with pytest.raises(Exception, match="not both"):
        load(path=path, features="x.txt", top_variable=10)


# -- --data PATH and the dataset end to end ---------------------------------------------------


def test_data_path_names_the_counts_dataset_for_each_kind(tmp_path):
    m = counts()
    kinds = {
        "npz": _npz(tmp_path / "m.npz", m),
        "h5ad": write_h5ad(tmp_path / "a.h5ad", m),
        "10x": write_10x(tmp_path / "10x" / "hg19", m).parent,  # one above
        "10x-folder": tmp_path / "10x" / "hg19",
        "mtx": tmp_path / "10x" / "hg19" / "matrix.mtx",
        "mtx.gz": next(write_10x(tmp_path / "v3", m, 3).glob("matrix.mtx.gz")),
        "feat": write_text(tmp_path / "a.feat", m),
        "svm": write_text(tmp_path / "a.svm", m),
        "libsvm": write_text(tmp_path / "a.libsvm", m),
    }
    for kind, path in kinds.items():
        assert dataset_for_path(str(path)) == {"name": "counts", "path": str(path)}, kind
        assert len(DATASETS.build(dataset_for_path(str(path))).load().held("train")) > 0, kind
    np.savez(tmp_path / "dense.npz", x=m.toarray())  # a .npz of arrays stays the array dataset's
    assert dataset_for_path(str(tmp_path / "dense.npz"))["name"] == "array"
    (tmp_path / "images").mkdir()
    assert dataset_for_path(str(tmp_path / "images"))["name"] == "image-folder"


def test_data_with_a_config_of_the_same_kind_keeps_its_options_but_its_files(tmp_path):
    """scvi.toml --data cells.h5ad: the config's gene selection and split stay, its own files go; a
    config's [data] of another kind is replaced whole."""
    from pyro_vae.cli import _config_from

    EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "configs"

    path = write_h5ad(tmp_path / "a.h5ad", counts())
    config = _config_from(str(EXAMPLES / "scvi.toml"), [], str(path))
    assert config.data["name"] == "counts" and config.data["path"] == str(path)
    assert config.data["min_rows"] == 3 and config.data["top_variable"] == 2000 and config.data["test_fraction"] == 0.1
    other = tmp_path / "c.toml"
    other.write_text('[data]\nname = "counts"\npath = "x.npz"\nvocabulary = "v.txt"\nformat = "npz"\nmin_rows = 2\n')
    config = _config_from(str(other), ["data.min_rows=1"], str(path))
    assert config.data["min_rows"] == 1 and config.data.get("vocabulary") is None and config.data["format"] == "auto"
    config = _config_from(str(EXAMPLES / "prodlda.toml"), [], str(tmp_path))  # (a folder: image-folder)
    assert config.data == {**config.data, "name": "image-folder", "path": str(tmp_path)}
    assert "vocabulary" not in config.data


def test_the_counts_dataset_loads_end_to_end(tmp_path):
    m = counts(50, 9, empty=(7, 30))
    path = write_h5ad(tmp_path / "a.h5ad", m.astype(np.float32), obs={"kind": ["x", "y"] * 25})
    splits = DATASETS.build({"name": "counts", "path": str(path), "label_column": "kind"}).load()
    train, test = splits.held("train"), splits.held("test")
    assert isinstance(train, SparseRows) and len(train) + len(test) == 48  # two empty rows dropped
    assert "empty rows dropped: 2" in splits.description and "held sparse" in splits.description
    assert "(h5ad)" in splits.description and "5 rows held out by seed 0" in splits.description
    kept = np.delete(np.arange(50), [7, 30])
    everything = torch.cat([splits.train, splits.test])
    assert sorted(map(tuple, everything.tolist())) == sorted(map(tuple, m[kept].toarray().astype(float).tolist()))
    assert splits.feature_names == tuple(names("G", 9)) and splits.label_names == ("x", "y")
    assert splits.train_labels.dtype == torch.int64 and splits.covariates is None
    splits.check_finite()
    assert splits.fingerprint() == load(path=str(path), label_column="kind").fingerprint()
    assert read_counts(path).format == "h5ad"


# -- integer arrays hold their values ---------------------------------------------------------


def test_integer_arrays_load_as_the_same_values_in_float32():
    x = np.random.default_rng(0).integers(0, 1000, (6, 10)).astype(np.int64)
    for dtype in (np.int8, np.int16, np.int32, np.int64, np.uint16, np.uint32):
        got = as_images(x.astype(dtype) if dtype != np.int8 else (x % 100).astype(dtype), "auto", "x")
        assert got.dtype == torch.float32
        assert np.array_equal(got.numpy(), (x if dtype != np.int8 else x % 100).astype(np.float32))
    assert isinstance(as_images(x.astype(np.uint8), "auto", "x"), Levels)  # 8-bit levels as ever
    assert as_images(np.full((2, 3), 2 ** 24, np.int64), "auto", "x").max() == 2 ** 24
    with pytest.raises(DataError, match="2\\*\\*24"):
        as_images(np.full((2, 3), 2 ** 24 + 1, np.int64), "auto", "x")
    with pytest.raises(DataError, match="2\\*\\*24"):
        as_images(np.full((2, 3), -(2 ** 24) - 1, np.int64), "auto", "x")
    splits = DataSplits.from_arrays(x, test_fraction=0.5)
    assert torch.equal(torch.cat([splits.train, splits.test]).sort(0).values,
                       torch.from_numpy(x.astype(np.float32)).sort(0).values)


def test_counts_meet_the_image_likelihoods_support_checks(tmp_path, capsys):
    """Integer counts are not rescaled into [0, 1]: an image likelihood refuses them itself."""
    np.save(tmp_path / "c.npy", counts(40, 10).toarray())
    argv = ["train", "--data", str(tmp_path / "c.npy"), "--set", "model.latent_dim=2", "--set", "train.epochs=1",
            "--no-progress", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    assert "the bernoulli likelihood needs pixel intensities in [0, 1]" in capsys.readouterr().err
