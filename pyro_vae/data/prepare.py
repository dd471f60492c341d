"""A dataset prepared for a run: loaded, checked, prepared for the program's data contract, on
the device (:func:`prepare_data`); the labelled subset of a semi-supervised run; the validation
split; and the one-line summary a run prints of the data it reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from ..config import DATASETS, Config
from ..errors import ConfigError
from .storage import DataSplits, DenseRows, Levels, RowsOnDisk, SparseRows


def summary(splits: DataSplits, checks: "Mapping[str, Callable[[torch.Tensor, str], None]] | None" = None) -> str:
    """One line: sizes, shape, value range, labels, and which of ``checks`` (by name, a function
    that refuses data it cannot take: the likelihoods' ``check_data``, passed in by the caller)
    the training values meet."""
    held = splits.held("train")
    if isinstance(held, RowsOnDisk):  # (the range recorded when the layout was written: nothing read)
        stats = held.value_stats()
        low, high, kind = stats["min"], stats["max"], stats["kind"]
        checks = None  # (each likelihood's check would read every row)
    else:
        x = splits.train if not isinstance(held, SparseRows) else _stored_values(held)
        low, high = x.min().item(), x.max().item()
        kind = ("binary" if bool(((x == 0) | (x == 1)).all()) else
                "8-bit levels" if bool(((x * 255 - (x * 255).round()).abs() <= 1e-4).all()) and low >= 0 and high <= 1
                else "counts: whole numbers >= 0" if low >= 0 and bool((x == x.round()).all())
                else "real values")
    labels = "no labels" if splits.train_labels is None else \
        f"labels: {len(torch.unique(splits.train_labels))} classes"
    line = f"{splits.description}; values in [{low:g}, {high:g}] ({kind}); {labels}"
    if checks is None:
        return line
    fits = []
    for name, check in checks.items():
        try:
            check(x, "train")
        except Exception:
            continue
        fits.append(name)
    return f"{line}; likelihoods that fit: {', '.join(fits) or 'none'}"


def _stored_values(rows: SparseRows) -> torch.Tensor:
    """The values sparse rows hold, and a 0 where any entry is implicit, as one row (1, k): what the
    summary's range, kind and each likelihood's value check read, never the matrix made dense."""
    values = rows.values.float().reshape(1, -1)
    if rows.nnz < rows.shape[0] * rows.shape[1]:
        values = torch.cat([values, values.new_zeros(1, 1)], dim=1)
    return values


@dataclass
class PreparedData:
    """The dataset on the training device, prepared for the likelihood once."""

    splits: DataSplits
    # what batches are drawn from (e.g. statically binarized): Levels wherever the prepared values are
    # exactly 8-bit levels (each batch decoded as it is drawn: train[index].float()), else a float tensor
    train: "torch.Tensor | Levels"
    test: torch.Tensor  # fixed evaluation form (e.g. binarized with a fixed seed)
    train_eval: torch.Tensor  # a fixed subset of train, scored every epoch
    valid: torch.Tensor | None = None  # held-out training images (train.validation), evaluation form
    # labels, on the device (None: the dataset has none), aligned with train, test, train_eval and valid
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    train_eval_labels: torch.Tensor | None = None
    valid_labels: torch.Tensor | None = None


def labelled_subset(labels: torch.Tensor, count: int, seed: int, classes: int | None = None) -> torch.Tensor:
    """Indices (sorted) of ``count`` datapoints, ``count / C`` of each of the C classes, drawn by
    ``seed``: the labels a semi-supervised program sees (``data.labels``). Refused, with the numbers,
    when ``count`` is not a multiple of C or a class has fewer members than its share."""
    c = classes if classes is not None else int(labels.max().item()) + 1
    if count % c:
        raise ConfigError(f"data.labels = {count}: the labels are drawn stratified, the same number per class, so give "
                          f"a multiple of the {c} classes (e.g. {max(c, count - count % c)}).")
    if count > len(labels):
        raise ConfigError(f"data.labels = {count}, but the training split has {len(labels)} labelled datapoints.")
    per_class, generator, chosen = count // c, torch.Generator().manual_seed(seed), []
    for k in range(c):
        members = torch.nonzero(labels.cpu() == k).flatten()
        if len(members) < per_class:
            raise ConfigError(f"data.labels = {count} takes {per_class} labels of each class, and class {k} has "
                              f"{len(members)} in the training split: ask for at most {len(members) * c}.")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


def validation_split(n: int, n_valid: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, valid) of a training set of ``n``: a fixed permutation by ``seed``, the
    first ``n_valid`` held out."""
    if not 0 <= n_valid < n:
        raise ConfigError(
            f"train.validation = {n_valid} must leave training images: the training split has {n}."
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_valid:].sort().values, order[:n_valid].sort().values


def prepare_data(config: Config, program, device: torch.device, splits: DataSplits | None = None) -> PreparedData:
    """Load (unless given), validate at the boundary, prepare for the program (its likelihood's or
    its own data contract), move to device, and check the prepared data against the support of
    the program's site "x". ``program``: a :class:`~pyro_vae.programs.Program` (``as_program(module)``).

    8-bit data stays 8-bit until batching: the training set is held as :class:`Levels` where its
    prepared values are exactly levels (always when preparation leaves the set as it is; else
    checked value for value, e.g. a static binarization's 0s and 1s), so each batch is bit for bit
    what a float32 copy would give."""
    splits = splits or DATASETS.build(config.data, "data").load()
    splits.check_nonempty()
    if isinstance(splits.held("train"), RowsOnDisk):
        return _prepare_on_disk(config, program, device, splits)
    splits.check_finite()
    lik = program.contract
    held, valid = splits.held("train"), None
    sparse = isinstance(held, SparseRows) and _takes_rows_as_they_are(lik, held)
    values, test = (held if sparse else splits.train), splits.test  # (levels decoded once each; counts never whole)
    _check_data(program, values, "train")
    program.check_data(test, "test")
    labels, valid_labels = splits.train_labels, None
    if config.train.validation:
        keep, held_out = validation_split(values.shape[0], config.train.validation, config.seed)
        valid = lik.prepare_eval_set(_dense(values[held_out]).to(device))
        held, values = held[keep], values[keep]
        if labels is not None:
            labels, valid_labels = labels[keep], labels[held_out]
    held, values = held.to(device), values.to(device)
    prepared = values if sparse else lik.prepare_train_set(values)
    if isinstance(held, (Levels, SparseRows)) and prepared is values:
        train = held  # left as it is: the levels, or the counts held sparse (densified a batch at a time)
    else:
        levels = Levels.exactly(prepared)
        train = prepared if levels is None else levels
    n_sub = min(config.eval.train_subset, train.shape[0])
    # the training subset scored each epoch: the images trained on, or (when every batch draws
    # afresh, e.g. dynamic binarization) one fixed draw of them
    train_eval = lik.prepare_eval_set(_dense(values[:n_sub])) if lik.stochastic_batches else train[:n_sub].float()
    data = PreparedData(
        splits=splits,
        train=train,
        test=lik.prepare_eval_set(test.to(device)),
        train_eval=train_eval,
        valid=valid,
    )
    if labels is not None:
        on = lambda t: t.to(device) if t is not None else None  # noqa: E731
        data.train_labels, data.train_eval_labels = on(labels), on(labels[:n_sub])
        data.valid_labels, data.test_labels = on(valid_labels), on(splits.test_labels)
    program.check_support(data.test, "test")
    program.check_support(lik.prepare_batch(data.train[: min(16, data.train.shape[0])].float(), probe_generator(device)),
                          "train")
    return data


def _dense(x):
    return x.float() if isinstance(x, SparseRows) else x


def _takes_rows_as_they_are(lik, rows: SparseRows) -> bool:
    """Whether the likelihood trains on sparse rows as they are (counts: its preparation leaves them),
    so the training set need never be made dense; judged on the first rows."""
    probe = rows[: min(16, len(rows))].float()
    return lik.prepare_train_set(probe) is probe


def _check_data(program, values, split: str, block: int = 8192) -> None:
    """The program's data contract on ``values``; sparse rows a block of rows at a time (memory: one
    dense block, never the whole matrix)."""
    if not isinstance(values, SparseRows):
        return program.check_data(values, split)
    for start in range(0, len(values), block):
        program.check_data(values[start : start + block].float(), split)


def _prepare_on_disk(config: Config, program, device: torch.device, splits: DataSplits) -> PreparedData:
    """Rows on disk (a streaming layout) prepared without reading them all: the splits stay on disk
    and every batch is read as it is drawn (training, scoring, evaluation). Checked here: the first
    rows of each split against the program's data contract (every value was checked when the layout
    was written). The likelihood must take the rows as they are (its training and evaluation sets
    unchanged by preparation: counts, real values, binarize = "dynamic"/"none"), since a preparation
    of the whole set (a fixed binarization of the test set) would read it all."""
    lik = program.contract
    train, test = splits.held("train"), splits.held("test")
    probe = train[: min(16, len(train))].float()  # (read once: checked against the contract below too)
    if lik.prepare_train_set(probe) is not probe or not torch.equal(lik.prepare_eval_set(probe), probe):
        raise ConfigError(
            f"the data is a streaming layout, read a batch at a time, and {program.name} prepares whole sets before "
            f"training (e.g. a fixed binarization of the test set), which would read every row: choose a likelihood "
            f"that scores the rows as they are (counts; real values; grey levels with continuous-bernoulli; binary "
            f"data with bernoulli, binarize = \"none\"), or load the data into memory (the source file as data.path of "
            f"its own dataset).")
    program.check_data(probe, "train")
    program.check_data(test[: min(16, len(test))].float(), "test")
    labels, valid, valid_labels = splits.train_labels, None, None
    if config.train.validation:  # (rows of the layout, read as each validation batch is scored)
        keep, held_out = validation_split(len(train), config.train.validation, config.seed)
        train, valid = train.view(keep.numpy()), DenseRows(splits.held("train").view(held_out.numpy()), device)
        if labels is not None:
            labels, valid_labels = labels[keep], labels[held_out]
    n_sub = min(config.eval.train_subset, len(train))
    data = PreparedData(splits=splits, train=train, test=DenseRows(test, device), train_eval=train[:n_sub].float().to(device),
                        valid=valid)
    if labels is not None:
        on = lambda t: t.to(device) if t is not None else None  # noqa: E731
        data.train_labels, data.train_eval_labels = on(labels), on(labels[:n_sub])
        data.valid_labels, data.test_labels = on(valid_labels), on(splits.test_labels)
    program.check_support(test[: min(16, len(test))].float().to(device), "test")
    program.check_support(lik.prepare_batch(probe.to(device), probe_generator(device)), "train")
    return data


def probe_generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(0)
