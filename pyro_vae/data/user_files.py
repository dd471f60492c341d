"""Your own files as datasets: arrays (.npy, .npz, .pt), folders of images, CSV tables; data
handed in from Python (``given``); and how ``--data PATH`` names one."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..config import DATASETS, require
from ..errors import DataError, StorageError
from .datasets import Dataset, default_data_root
from .storage import DataSplits, Levels, as_images, as_labels, dense_limit, train_and_test


# ---------------------------------------------------------------------------------------------
# Your own arrays


_DATA_KEYS = ("x", "x_train", "images", "data", "X")
_LABEL_KEYS = ("y", "y_train", "labels", "targets", "Y")
_TEST_KEYS, _TEST_LABEL_KEYS = ("x_test",), ("y_test",)
ARRAY_SUFFIXES = (".npy", ".npz", ".pt")


def _declared_arrays(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The shape and dtype each array of a .npy or .npz file declares in its header, read without
    reading the arrays ({} where the headers cannot be read: the loader then says why)."""
    import zipfile

    def header(f) -> tuple[tuple[int, ...], np.dtype]:
        version = np.lib.format.read_magic(f)
        shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0) else
                           np.lib.format.read_array_header_2_0(f))
        return tuple(shape), np.dtype(dtype)

    try:
        if path.suffix.lower() == ".npy":
            with open(path, "rb") as f:
                return {"x": header(f)}
        with zipfile.ZipFile(path) as z:
            return {name[:-4]: header(z.open(name)) for name in z.namelist() if name.endswith(".npy")}
    except Exception:  # (a damaged file: np.load's own error names it)
        return {}


def _refuse_oversized(path: Path) -> None:
    """Refuse, before allocating, an array file declaring more than this machine can hold (half its
    memory), with the numbers."""
    limit = dense_limit("cpu")
    for key, (shape, dtype) in _declared_arrays(path).items():
        size = math.prod(shape) * dtype.itemsize
        if size > limit:
            raise DataError(f"{path} [{key}] declares an array of shape {shape} ({dtype}), {size / 2**30:,.1f} GiB, "
                            f"more than this machine can hold ({limit / 2**30:,.1f} GiB, half its memory): "
                            f"refusing to read it. Is the file what you meant? For counts larger than memory, "
                            f"convert them to a sparse or streamed layout.")


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a .npy (under the key "x"), .npz or .pt file (a tensor, or a dict of tensors),
    read without running code (no pickles); a file declaring arrays larger than memory is refused
    before anything is allocated."""
    if not path.is_file():
        raise DataError(f"{path} does not exist." if not path.exists() else f"{path} is not a file.")
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        _refuse_oversized(path)
    try:
        if suffix == ".npy":
            return {"x": np.load(path, allow_pickle=False)}
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        if suffix == ".pt":
            obj = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise DataError(f"{path}: the array dataset reads {', '.join(ARRAY_SUFFIXES)} files, not {suffix or 'a file without a suffix'}.")
    except PermissionError as e:
        raise DataError(f"{path}: {e.strerror} (cannot read it).") from None
    except DataError:
        raise
    except Exception as e:  # a damaged file, a pickle inside, an object that is not a tensor
        pickled = "pickle" in str(e).lower() or "weights_only" in str(e)
        why = ("it holds Python objects, which pyro-vae never unpickles (a data file must not run code): save "
               "arrays (np.savez) or tensors (torch.save({'x': x, 'y': y}))") if pickled else f"{type(e).__name__}: {e}"
        raise DataError(f"{path} could not be read as data: {why}.") from None
    if torch.is_tensor(obj):
        return {"x": obj.numpy()}
    if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        return {str(k): v.numpy() for k, v in obj.items()}
    raise DataError(f"{path} holds a {type(obj).__name__}, not a tensor or a dict of tensors: save "
                    f"torch.save({{'x': x, 'y': y}}, path).")


def _pick(arrays: dict[str, np.ndarray], key: str | None, keys: tuple[str, ...], path: Path, what: str) -> str | None:
    if key is not None:
        if key not in arrays:
            raise DataError(f"{path} has no array {key!r} for the {what}; it holds {', '.join(arrays) or 'nothing'}.")
        return key
    return next((k for k in keys if k in arrays), None)


@DATASETS.register("array")
class ArrayDataset(Dataset):
    """Your own arrays: a .npy, .npz or .pt file of images (N, H, W), (N, C, H, W), (N, H, W, C) or vectors (N, D).

    uint8 values are 8-bit levels, scaled by 1/255; floating-point values are kept as they are.
    Files are read without running code (no pickles; .pt with ``weights_only=True``).

    Options:
        path: the file of the training data (or of all the data, split by test_fraction).
        key: in a .npz file or a .pt dict, the array of the data; unset: x, x_train, images, data or X (a .npy file holds only it).
        label_key: in the same file, the key of the labels; or a .npy/.pt file of them; unset: y, y_train, labels, targets or Y when present, else no labels.
        test_path: a file of the test data, read like path (its labels under the same key); unset: the arrays x_test (and y_test) of path when it has them, else path split by test_fraction.
        test_fraction: without test_path, the fraction of the datapoints held out as the test set (chosen by split_seed).
        split_seed: seed of that split.
        layout: "auto" tells (N, C, H, W) from (N, H, W, C) by which axis has 1, 3 or 4 entries; or "NCHW" / "NHWC".
    """

    def __init__(self, *, path: str = "", key: str | None = None, label_key: str | None = None,
                 test_path: str | None = None, test_fraction: float = 0.1, split_seed: int = 0,
                 layout: Literal["auto", "NCHW", "NHWC"] = "auto") -> None:
        require(bool(path), "data.path must name a .npy, .npz or .pt file (dataset 'array').")
        require(0.0 < test_fraction < 1.0, f"test_fraction must be in (0, 1), got {test_fraction}.")
        self.path, self.key, self.label_key, self.test_path = path, key, label_key, test_path
        self.test_fraction, self.split_seed, self.layout = test_fraction, split_seed, layout

    def _read(self, path: Path, arrays: dict[str, np.ndarray], keys=_DATA_KEYS, label_keys=_LABEL_KEYS,
              key: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = _pick(arrays, key, keys, path, "data")
        if key is None:
            if len(arrays) != 1:
                raise DataError(f"{path} holds {', '.join(arrays)}: say which is the data with data.key.")
            key = next(iter(arrays))
        x = as_images(arrays[key], self.layout, f"{path} [{key}]")
        labels = None
        if (self.label_key is not None and Path(self.label_key).suffix.lower() in (".npy", ".pt")
                and self.label_key not in arrays):
            labels = as_labels(_read_arrays(Path(self.label_key).expanduser())["x"], len(x), self.label_key)
        else:
            label_key = _pick(arrays, self.label_key if keys is _DATA_KEYS else None, label_keys, path, "labels")
            if label_key is not None and label_key != key:
                labels = as_labels(arrays[label_key], len(x), f"{path} [{label_key}]")
        return x, labels

    def load(self) -> DataSplits:
        path = Path(self.path).expanduser()
        arrays = _read_arrays(path)
        x, labels = self._read(path, arrays, key=self.key)
        has_test = self.test_path is None and any(k in arrays for k in _TEST_KEYS)
        given = None
        if self.test_path is not None or has_test:
            if has_test:  # x_train / x_test in one file (the Keras datasets' layout)
                given = self._read(path, arrays, _TEST_KEYS, _TEST_LABEL_KEYS)
            else:
                test_path = Path(self.test_path).expanduser()
                given = self._read(test_path, _read_arrays(test_path), key=self.key)
            if given[0].shape[1:] != x.shape[1:]:
                raise DataError(f"{self.test_path} holds datapoints of shape {tuple(given[0].shape[1:])}, and {path} "
                                f"of {tuple(x.shape[1:])}: the test set must be the same kind of data.")
        train, train_labels, test, test_labels = train_and_test(x, labels, given, self.test_fraction, self.split_seed,
                                                                path)
        where = (f"{path} (test: {self.test_path or 'x_test'})" if given is not None else
                 f"{path}, {len(test)} held out by seed {self.split_seed}")
        return DataSplits("array", train, train_labels, test, test_labels,
                          f"array from {where}: {len(train)} train / {len(test)} test, {'x'.join(map(str, train.shape[1:]))}")


def read_datapoints(path: str | Path, data_shape: tuple[int, ...] | None = None, scaling: dict | None = None,
                    table: dict | None = None, features: list[str] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every datapoint of a .npy, .npz or .pt file, of a folder of images (decoded to
    ``data_shape``'s channels and size when it is an image's), of a CSV table (read with the
    label column, header and delimiter of the run's ``[data]`` ``table`` when it is a csv one, its
    columns scaled as the run's were: ``scaling``) or of a count matrix (a sparse .npz, an .h5ad,
    a 10x folder, LIBSVM text: the run's columns ``features`` taken by name, as it trained on them),
    and its labels or None."""
    path = Path(path).expanduser()
    from .counts import count_format, read_counts_like

    if (table or {}).get("name") == "counts" or (path.exists() and count_format(path) is not None):
        return read_counts_like(path, table or {}, features)
    if path.suffix.lower() in (".csv", ".tsv"):
        like = {k: v for k, v in (table or {}).items() if k in ("label_column", "header", "delimiter")} \
            if (table or {}).get("name") == "csv" else {}
        like.setdefault("delimiter", "\t" if path.suffix.lower() == ".tsv" else ",")
        reader = CSVDataset(path=str(path), **like)
        x, labels, _ = reader._read(path)
        return apply_scaling(x, scaling), labels
    if path.is_dir():
        options = {}
        if data_shape is not None and len(data_shape) == 3 and data_shape[0] in (1, 3):
            options = {"channels": data_shape[0], "size": list(data_shape[1:])}
        x, labels, _, _, _ = ImageFolder(path=str(path), **options)._read(path)
        return x.float(), labels
    x, labels = ArrayDataset(path=str(path))._read(path, _read_arrays(path))
    return x.float(), labels


@DATASETS.register("given")
class GivenData(Dataset):
    """Data handed in from Python (``Trainer(splits=...)``): recorded, never rebuilt from a config; pass it again.

    Options:
        description: what the data was (its own description).
        fingerprint: SHA-256 of the data trained on (``DataSplits.fingerprint``).
    """

    def __init__(self, *, description: str = "", fingerprint: str = "") -> None:
        self.description, self.fingerprint = description, fingerprint

    def load(self) -> DataSplits:
        raise DataError(
            f"this run was trained on data handed in from Python ({self.description or 'Trainer(splits=...)'}), not on "
            f"a dataset a config can rebuild: pass that data again, load_run(RUN, splits=...) in Python or --data PATH "
            f"on the command line (checked against its fingerprint {self.fingerprint[:12]}...).")


# ---------------------------------------------------------------------------------------------
# Your own image files


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _scan(folder: Path, prefix: str = "", seen: frozenset = frozenset()) -> list[tuple[str, int, int]]:
    """(relative name, size, modification time) of every image file below ``folder``, by os.scandir
    (one stat a file: a 60,000-file folder is listed in a fraction of a second); a link back to a
    folder above (a symlink loop) refused, naming it."""
    real = os.path.realpath(folder)
    if real in seen:
        raise DataError(f"symlink loop at {folder}: it leads back to {real}, a folder above it, so the image folder "
                        f"has no end. Remove or replace that link.")
    seen = seen | {real}
    out = []
    for entry in os.scandir(folder):
        if entry.is_dir() and not entry.name.startswith("."):
            out += _scan(Path(entry.path), f"{prefix}{entry.name}/", seen)
        elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
            st = entry.stat()
            out.append((prefix + entry.name, st.st_size, st.st_mtime_ns))
    return out


def _content_key(folder: Path, stats: list[tuple[str, int, int]]) -> str:
    """The cache key of an image folder: SHA-256 of every file's name and bytes (streamed, in name
    order), so that a cached decoding is used only for the very same files, whatever their sizes
    and modification times say (files replaced keeping both are decoded again)."""
    h = hashlib.sha256()
    for name, _, _ in stats:
        h.update(f"{name}\0".encode())
        with open(folder / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _image_files(folder: Path) -> tuple[list[tuple[str, int, int]], list[str] | None]:
    """The image files of a folder, sorted, as (relative name, size, modification time), flat or one
    subfolder per class; and the class names (sorted subfolder names) or None for a flat folder."""
    if not folder.is_dir():
        raise DataError(f"{folder} does not exist." if not folder.exists() else f"{folder} is not a folder.")
    try:
        entries = list(os.scandir(folder))
        flat = sorted(e.name for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
        classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
        if flat and classes:
            raise DataError(f"{folder} holds both image files ({flat[0]}, ...) and subfolders ({classes[0]}, ...): "
                            f"either every image in the folder itself, or one subfolder per class.")
        files = sorted(_scan(folder))
    except PermissionError as e:
        raise DataError(f"{e.filename or folder}: {e.strerror} (cannot list it).") from None
    if not files:
        raise DataError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}), neither in it nor in "
                        f"subfolders of it.")
    return files, (classes or None)


def _decode(path: Path, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except UnidentifiedImageError:
        raise DataError(f"{path} is not an image pyro-vae can read (damaged, or another kind of file "
                        f"named {path.suffix}): remove or replace it.") from None
    except OSError as e:
        raise DataError(f"{path} could not be decoded ({e}): it is damaged or truncated; remove or replace it.") from None
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _has_colour(path: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.mode not in ("1", "L", "LA", "I", "I;16", "F")
    except (UnidentifiedImageError, OSError):
        return False  # decoding says what is wrong with it


@DATASETS.register("image-folder")
class ImageFolder(Dataset):
    """Your own image files (PNG, JPEG, ...) in a folder, flat or one subfolder per class (labels: the sorted subfolder names).

    Decoded once into uint8 and cached under $PYRO_VAE_DATA/cache (default ~/.cache/pyro-vae/datasets),
    keyed on the file list, sizes, modification times and these options: a changed folder is read
    again, and its description says so. Nothing is written into the folder.

    Options:
        path: the folder.
        channels: 1 (grayscale) or 3 (RGB); 0: 3 when any image is in colour, else 1.
        size: [height, width] every image is resized to (bilinear); unset: all images must have one size.
        test_path: a folder of test images (the same layout and classes); unset: a seeded test_fraction of path.
        test_fraction: without test_path, the fraction of the images held out as the test set (chosen by split_seed).
        split_seed: seed of that split.
    """

    def __init__(self, *, path: str = "", channels: int = 0, size: list[int] | None = None,
                 test_path: str | None = None, test_fraction: float = 0.1, split_seed: int = 0) -> None:
        require(bool(path), "data.path must name a folder of images (dataset 'image-folder').")
        require(channels in (0, 1, 3), f"channels must be 0 (from the images), 1 or 3, got {channels}.")
        require(size is None or (len(size) == 2 and all(int(v) >= 1 for v in size)),
                f"size must be [height, width], got {size}.")
        require(0.0 < test_fraction < 1.0, f"test_fraction must be in (0, 1), got {test_fraction}.")
        self.path, self.channels, self.test_path = path, channels, test_path
        self.size = tuple(int(v) for v in size) if size is not None else None
        self.test_fraction, self.split_seed = test_fraction, split_seed

    def _read(self, folder: Path, channels: int = 0) -> tuple[Levels, torch.Tensor | None, list, int, str]:
        stats, classes = _image_files(folder)
        channels = channels or self.channels  # 0: from the images (found once, then kept in the cache)
        key = _content_key(folder, stats)
        which = hashlib.sha256(repr((str(folder.resolve()), channels, self.size)).encode()).hexdigest()[:20]
        cache = default_data_root() / "cache" / f"image-folder-{which}.npz"
        said, images = "decoded, cached", None
        if cache.is_file():
            try:
                with np.load(cache, allow_pickle=False) as f:
                    if str(f["key"]) == key:
                        images, labels, channels = f["images"], f["labels"], int(f["channels"])
                        said = "from the cache"
                    else:
                        said = "changed since it was cached: decoded again"
            except (OSError, KeyError, ValueError):
                said = "its cache was unreadable: decoded again"
        if images is None:
            files = [folder / name for name, _, _ in stats]
            channels = channels or (3 if any(_has_colour(f) for f in files) else 1)
            arrays = [_decode(f, channels, self.size) for f in files]
            by_shape: dict[tuple, Path] = {}
            for f, a in zip(files, arrays):
                by_shape.setdefault(a.shape[1:], f)
            if len(by_shape) > 1:
                (s1, f1), (s2, f2) = list(by_shape.items())[:2]
                raise DataError(f"{folder} holds images of several sizes ({f1.relative_to(folder)}: {s1[0]}x{s1[1]}, "
                                f"{f2.relative_to(folder)}: {s2[0]}x{s2[1]}): set data.size = [height, width] to "
                                f"resize them all.")
            images = np.stack(arrays)
            index = {c: i for i, c in enumerate(classes or [])}
            labels = np.array([index[name.split("/", 1)[0]] for name, _, _ in stats] if classes else [], np.int64)
            try:
                from ..files import atomic_write

                cache.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(cache, lambda f: np.savez(f, key=np.array(key), images=images, labels=labels,
                                                       channels=np.array(channels)))
            except (OSError, StorageError):  # a cache that cannot be written only makes the next load slower
                said = "decoded; not cached (the cache folder is not writable)"
        return Levels(torch.from_numpy(images)), (torch.from_numpy(labels) if classes else None), classes, channels, said

    def load(self) -> DataSplits:
        folder = Path(self.path).expanduser()
        x, labels, classes, channels, said = self._read(folder)
        given = None
        if self.test_path is not None:
            test_folder = Path(self.test_path).expanduser()
            test, test_labels, test_classes, _, _ = self._read(test_folder, channels)
            if test.shape[1:] != x.shape[1:]:
                raise DataError(f"{test_folder} holds images of shape {tuple(test.shape[1:])}, and {folder} of "
                                f"{tuple(x.shape[1:])}: set data.size to resize both.")
            if test_classes != classes:
                raise DataError(f"{test_folder} has the classes {test_classes}, and {folder} {classes}: the test "
                                f"folder needs the same subfolders.")
            given = (test, test_labels)
        train, train_labels, test, test_labels = train_and_test(x, labels, given, self.test_fraction, self.split_seed,
                                                                folder)
        kinds = f", classes {', '.join(classes)}" if classes else ""
        return DataSplits("image-folder", train, train_labels, test, test_labels,
                          f"image-folder {folder} ({said}): {len(train)} train / {len(test)} test, "
                          f"{'x'.join(map(str, train.shape[1:]))}{kinds}")


# ---------------------------------------------------------------------------------------------
# Your own tables


def _read_table(path: Path, label_column: str | None, header: str, delimiter: str) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(values (N, D) float64, labels or None, column names) of a CSV file of numbers."""
    import csv

    if not path.is_file():
        raise DataError(f"{path} does not exist." if not path.exists() else f"{path} is not a file.")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [(i + 1, r) for i, r in enumerate(csv.reader(f, delimiter=delimiter)) if r and any(c.strip() for c in r)]
    except PermissionError as e:
        raise DataError(f"{path}: {e.strerror} (cannot read it).") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path} is not a UTF-8 CSV file ({e}).") from None
    if not rows:
        raise DataError(f"{path} holds no rows.")

    def numeric(cell: str) -> bool:
        try:
            float(cell)
            return True
        except ValueError:
            return False

    first = rows[0][1]
    has_header = header == "yes" or (header == "auto" and not all(numeric(c) for c in first))
    names = [c.strip() for c in first] if has_header else [str(i) for i in range(len(first))]
    body = rows[1:] if has_header else rows
    if not body:
        raise DataError(f"{path} holds a header and no rows of numbers.")
    label = None
    if label_column is not None:
        if label_column in names:
            label = names.index(label_column)
        elif label_column.isdigit() and int(label_column) < len(names):
            label = int(label_column)
        else:
            raise DataError(f"{path} has no column {label_column!r} for the labels; its columns are {', '.join(names)}.")
    values, labels = [], []
    for line, row in body:
        if len(row) != len(names):
            raise DataError(f"{path}, line {line}: {len(row)} columns where the {'header' if has_header else 'first row'} "
                            f"has {len(names)}: every row needs the same columns.")
        cells = []
        for j, cell in enumerate(row):
            try:
                v = float(cell)
            except ValueError:
                raise DataError(f"{path}, line {line}, column {names[j]!r}: {cell!r} is not a number (every column but "
                                f"data.label_column must be numeric).") from None
            if j != label and not math.isfinite(v):
                raise DataError(f"{path}, line {line}, column {names[j]!r}: {cell!r} is not a finite number.")
            cells.append(v)
        if label is not None:
            labels.append(cells.pop(label))
        values.append(cells)
    if not values[0]:
        raise DataError(f"{path} has no columns of values besides the labels.")
    kept = [n for j, n in enumerate(names) if j != label]
    return np.array(values), (np.array(labels) if label is not None else None), kept


@DATASETS.register("csv")
class CSVDataset(Dataset):
    """A table of numbers: one datapoint per row, its numeric columns a vector (N, D); an optional label column; the scaling computed on the training rows and recorded.

    Options:
        path: the CSV file of the training data (or of all the data, split by test_fraction).
        label_column: the name (with a header) or 0-based index of a column of integer labels; unset: no labels.
        header: "auto" (a first row that is not all numbers is the header), "yes" or "no".
        delimiter: the column separator.
        scale: "standardize" each column by the training rows' mean and standard deviation (a constant column by 1), "min-max" into [0, 1] by their range, or "none".
        test_path: a CSV file of the test data (the same columns); unset: a seeded test_fraction of path's rows.
        test_fraction: without test_path, the fraction of the rows held out as the test set (chosen by split_seed).
        split_seed: seed of that split.
    """

    def __init__(self, *, path: str = "", label_column: str | None = None, header: Literal["auto", "yes", "no"] = "auto",
                 delimiter: str = ",", scale: Literal["standardize", "min-max", "none"] = "standardize",
                 test_path: str | None = None, test_fraction: float = 0.1, split_seed: int = 0) -> None:
        require(bool(path), "data.path must name a CSV file (dataset 'csv').")
        require(len(delimiter) == 1, f"delimiter must be one character, got {delimiter!r}.")
        require(0.0 < test_fraction < 1.0, f"test_fraction must be in (0, 1), got {test_fraction}.")
        self.path, self.label_column, self.header, self.delimiter = path, label_column, header, delimiter
        self.scale, self.test_path, self.test_fraction, self.split_seed = scale, test_path, test_fraction, split_seed

    def _read(self, path: Path) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
        values, labels, names = _read_table(path, self.label_column, self.header, self.delimiter)
        x = torch.from_numpy(values).float()
        return x, (as_labels(labels, len(x), f"{path} [{self.label_column}]") if labels is not None else None), names

    def scaling_of(self, train: torch.Tensor) -> dict:
        """The scaling, computed on the training rows: x' = (x - shift) / scale per column."""
        if self.scale == "standardize":
            shift, scale = train.mean(0), train.std(0, unbiased=False)
        elif self.scale == "min-max":
            shift, scale = train.amin(0), train.amax(0) - train.amin(0)
        else:
            shift, scale = torch.zeros(train.shape[1]), torch.ones(train.shape[1])
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant column is only shifted
        return {"kind": self.scale, "shift": shift.tolist(), "scale": scale.tolist()}

    def load(self) -> DataSplits:
        path = Path(self.path).expanduser()
        x, labels, names = self._read(path)
        given = None
        if self.test_path is not None:
            test, test_labels, test_names = self._read(Path(self.test_path).expanduser())
            if test_names != names:
                raise DataError(f"{self.test_path} has the columns {', '.join(test_names)}, and {path} "
                                f"{', '.join(names)}: the test file needs the same columns.")
            given = (test, test_labels)
        train, train_labels, test, test_labels = train_and_test(x, labels, given, self.test_fraction, self.split_seed,
                                                                path)
        scaling = self.scaling_of(train)
        hint = self._label_column_hint(names, train) if self.label_column is None else ""
        train, test = apply_scaling(train, scaling), apply_scaling(test, scaling)
        return DataSplits("csv", train, train_labels, test, test_labels,
                          f"csv {path}: {len(train)} train / {len(test)} test rows, {train.shape[1]} columns "
                          f"({self.scale}){hint}", scaling=scaling)

    @staticmethod
    def _label_column_hint(names: list[str], train: torch.Tensor) -> str:
        """What the description says of a column that looks like labels (named so, whole numbers) but
        is read as a feature, since data.label_column is unset: how to read it as labels."""
        for j, name in enumerate(names):
            if name.strip().lower() in ("label", "labels", "class", "target", "y"):
                column = train[:, j]
                if bool((column == column.round()).all()):
                    return (f"; note: column {name!r} holds whole numbers and is read as a feature: set "
                            f"data.label_column = \"{name}\" to read it as labels")
        return ""


def apply_scaling(x, scaling: dict | None):
    """x' = (x - shift) / scale per column, as a CSV dataset's run recorded it: for a tensor (on its
    device, in its dtype; integers as float32) or a NumPy array (as float32), returned as the same kind."""
    if not scaling or scaling.get("kind", "none") == "none":
        return x
    if isinstance(x, np.ndarray):
        return apply_scaling(torch.from_numpy(np.asarray(x, dtype=np.float32)), scaling).numpy()
    if not torch.is_tensor(x):
        raise DataError(f"apply_scaling takes a NumPy array or a torch tensor of rows, got {type(x).__name__}.")
    x = x if x.is_floating_point() else x.float()
    shift = torch.tensor(scaling["shift"], dtype=x.dtype, device=x.device)
    scale = torch.tensor(scaling["scale"], dtype=x.dtype, device=x.device)
    if x.shape[-1] != shift.numel():
        raise DataError(f"apply_scaling: rows of {x.shape[-1]} columns, and the run's table has {shift.numel()}: "
                        f"give rows with the columns of the file it trained on (the label column left out).")
    return (x - shift) / scale


USER_FILE_DATASETS = ("array", "image-folder", "csv", "counts")  # the user's own files (summarized when trained on)
#: the options of a dataset that name files or folders: a run records them absolute (``absolute_paths``)
PATH_KEYS = ("path", "test_path", "data_dir", "vocabulary", "features")


def absolute_paths(table: dict) -> dict:
    """A ``[data]`` table with its file and folder options (``PATH_KEYS``, and a labels file named by
    ``label_key``) made absolute: what a run records, so that a later command finds the data from
    any directory (the data itself is checked by its fingerprint, not by its path)."""
    out = dict(table)
    for key in PATH_KEYS:
        if isinstance(out.get(key), str) and out[key]:
            out[key] = os.path.abspath(os.path.expanduser(out[key]))
    label_key = out.get("label_key")
    if isinstance(label_key, str) and Path(label_key).suffix.lower() in (".npy", ".pt") and \
            Path(label_key).expanduser().is_file():
        out["label_key"] = os.path.abspath(os.path.expanduser(label_key))
    return out


def dataset_for_path(path: str) -> dict:
    """The ``[data]`` table of the dataset kind a path names (``--data PATH``): a streaming layout
    (``pyro-vae convert``), counts (an .h5ad
    file, a .mtx[.gz] file or a 10x folder holding matrix.mtx[.gz], or one level above it, .feat /
    .svm / .libsvm text, a .npz holding a SciPy sparse matrix), a folder of images, an array file or
    a CSV table."""
    from .counts import COUNT_SUFFIXES, count_format
    from .stream import is_stream

    p = Path(path).expanduser()
    if is_stream(p):  # a streaming layout (pyro-vae convert)
        return {"name": "stream", "path": str(p)}
    if p.name.lower().endswith(COUNT_SUFFIXES) or p.suffix.lower() == ".npz" or p.is_dir():
        if count_format(p) is not None:
            return {"name": "counts", "path": str(p)}
    if p.suffix.lower() in ARRAY_SUFFIXES:
        return {"name": "array", "path": str(p)}
    if p.is_dir():
        return {"name": "image-folder", "path": str(p)}
    if p.suffix.lower() in (".csv", ".tsv"):
        return {"name": "csv", "path": str(p), **({"delimiter": "\t"} if p.suffix.lower() == ".tsv" else {})}
    if not p.exists():
        raise DataError(f"--data {path}: there is no such file or folder.")
    raise DataError(f"--data {path}: pyro-vae reads a folder of images (dataset 'image-folder'), a "
                    f"{', '.join(ARRAY_SUFFIXES)} file (dataset 'array'), a .csv/.tsv table (dataset 'csv') or counts "
                    f"(dataset 'counts': {', '.join(COUNT_SUFFIXES)}, a SciPy sparse .npz or a 10x folder); for "
                    f"anything else name a dataset with --set data.name=... (pyro-vae list datasets).")
