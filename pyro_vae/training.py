"""The SVI loop: its steps, schedules (KL warm-up, learning rate), parameter average, epochs,
checkpoints along the way, resume and stopping. What a run folder holds and how a run is loaded
again is ``runs.py``'s; the data's preparation ``data.py``'s.

The trainer takes any model program (``programs.py``): the stock VAE a config describes, a
subclass, or your own ``nn.Module`` with ``model``/``guide`` (``Trainer(config, run_dir,
model=...)`` or ``model.program = "package.module:ClassName"`` in the config). Each step is one SVI
step: the objective's surrogate on the program's terms (``terms.py``: traced, or read directly off
the stock VAE's distributions where the program is that one), its backward pass, then one
``torch.optim.Adam`` step over every parameter of the program's module. Losses are summed over a
batch, then divided by its size for the numbers we print: nats per datapoint.

With ``train.ema`` the checkpoints' ``model`` holds the exponential moving average of the
parameters (what is scored, selected and evaluated) and ``training_model`` the parameters the
optimizer moves (what a resume continues from).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pyro
import torch

from . import preflight
from .callbacks import build_callbacks
from .config import OBJECTIVES, Config
from .data.stream import DEFAULT_CHUNK_ROWS
from .data import (DATASETS, DataSplits, RowsOnDisk, SparseRows, absolute_paths, chunk_batches, epoch_batches,
                   prepare_data)
from .disentanglement import decomposition_or_reason
from .distributed import SINGLE, Distributed
from .errors import ConfigError, RunDirError, StorageError, TrainingDiverged
from .evaluation import Evaluation, evaluate
from .files import write_text
from .networks import mixed_precision
from .numerics import keyed_noise, noise_key, resolve_device, sharded_noise
from .programs import as_program, config_with_model, program_for_run
from .runs import (BEST, CHECKPOINT, CONFIG, METRICS, RESUMABLE_CHANGES, append_line, check_same_config,
                   check_same_data, check_same_device, checkpoint_state, discard_unstarted, eval_keys, load_checkpoint,
                   load_parameters, prepare_run_dir, read_metrics, restore_random_state, run_lock, save_checkpoint,
                   snapshot_path)

#: test datapoints whose aggregate posterior the per-epoch KL decomposition sums over (O(M^2 D))
DECOMPOSITION_POINTS = 2000


def fit_rows(train):
    """What ``fit_to_data`` is given: rows on disk or held sparse as their container (read a chunk at
    a time, never made dense whole), a float tensor otherwise (8-bit levels decoded)."""
    return train if isinstance(train, (RowsOnDisk, SparseRows)) else train.float()


def kl_weight(config: Config, epoch_progress: float) -> float:
    """beta at a point in training measured in epochs: start -> 1 linearly over kl_warmup_epochs."""
    t = config.train
    if t.kl_warmup_epochs <= 0:
        return 1.0
    return t.kl_warmup_start + (1.0 - t.kl_warmup_start) * min(1.0, epoch_progress / t.kl_warmup_epochs)


def learning_rate(config: Config, epoch_progress: float, elapsed_seconds: float) -> float:
    """lr * lr_final ** p, p the larger of the fraction of epochs done and of max_minutes used."""
    t = config.train
    if t.lr_final == 1.0:
        return t.lr
    done = epoch_progress / t.epochs
    if t.max_minutes:
        done = max(done, elapsed_seconds / (60 * t.max_minutes))
    return t.lr * t.lr_final ** min(1.0, done)


# ---------------------------------------------------------------------------------------------
# training


class ParameterAverage:
    """Exponential moving average of a module's parameters (Polyak averaging), for evaluation.

    After step t the average moves toward the current parameters theta_t:
    avg <- d_t avg + (1 - d_t) theta_t, with d_t = min(decay, (1 + t) / (10 + t)), so that the
    first steps, far from where training goes, are forgotten quickly (the average starts at the
    initial parameters). Buffers (e.g. pseudo-input ranges, batch-norm statistics) are not averaged:
    the averaged model uses the trained model's.
    """

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.names, self.parameters = zip(*module.named_parameters())
        self.average = [p.detach().clone() for p in self.parameters]

    def weight(self, step: int) -> float:
        """d_t at step t (counted from 1)."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        keep = self.weight(step)
        for average, p in zip(self.average, self.parameters):
            average.lerp_(p, 1.0 - keep)

    @contextmanager
    def applied(self):
        """The module holds the averaged parameters inside the block, its own ones again after it."""
        with torch.no_grad():
            own = [p.detach().clone() for p in self.parameters]
            for p, average in zip(self.parameters, self.average):
                p.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, value in zip(self.parameters, own):
                    p.copy_(value)

    @torch.no_grad()
    def load(self, module_state: dict) -> None:
        """Set the average from a state dict of the module (the checkpoint's averaged ``model``)."""
        for average, name in zip(self.average, self.names):
            average.copy_(module_state[name])


def run_optimizer(module: torch.nn.Module, train, epoch_size: int, device: torch.device) -> torch.optim.Adam:
    """A run's Adam over every parameter of ``module`` (``train``: its TrainConfig). adam_eps and
    weight_decay are stated per datapoint and the loss differentiated is a batch's sum, so Adam is given
    them times B, the batch size (the training set's where that is smaller). The fused implementation on
    CPU and CUDA (one kernel for all parameters, the same update: 4.1 -> 0.8 ms a step for the
    Fashion-MNIST VampPrior MLP on 2 CPU cores)."""
    batch = min(train.batch_size, epoch_size)
    return torch.optim.Adam(module.parameters(), lr=train.lr, betas=tuple(train.adam_betas), eps=train.adam_eps * batch,
                            weight_decay=train.weight_decay * batch, fused=device.type in ("cpu", "cuda") or None)


@dataclass(frozen=True)
class StepContext:
    """What one training step runs under besides its batch: ``kl_weight``, beta of KL warm-up;
    ``shard``, this process's datapoints [start, stop) of a global batch of ``total`` in
    data-parallel training (None: the whole batch), whose reparameterization noise is drawn for the
    whole batch (``numerics.sharded_noise``); ``compute_dtype``, the precision the program's network
    bodies compute in (None: float32; ``networks.mixed_precision``). Context, not module state: it
    holds inside :meth:`applied` only."""

    kl_weight: float = 1.0
    shard: tuple[int, int, int] | None = None
    compute_dtype: torch.dtype | None = None

    @classmethod
    def for_rank(cls, x: torch.Tensor, kl_weight: float, compute_dtype, dist: Distributed
                 ) -> tuple[torch.Tensor, "StepContext"]:
        """This rank's part of a global batch x (all of it in one process) and the context its step
        runs under: the shard's noise drawn for the whole batch."""
        if not dist.active:
            return x, cls(kl_weight, None, compute_dtype)
        start, stop = dist.shard(x.shape[0])
        return x[start:stop], cls(kl_weight, (start, stop, x.shape[0]), compute_dtype)

    @contextmanager
    def applied(self, bodies: list[torch.nn.Module]) -> Iterator[None]:
        with sharded_noise(*self.shard) if self.shard is not None else nullcontext(), \
                mixed_precision(bodies, self.compute_dtype):
            yield


@dataclass(frozen=True)
class Feed:
    """How training rows reach the steps: the epoch order ("permutation" or "chunks" of
    ``chunk_rows`` rows shuffled ``window`` chunks at a time, ``data/order.py``), and whether the
    noise is keyed per datapoint (each process then reads, and draws noise for, only its share of
    each global batch) or drawn from the run's streams. ``train.order``/``train.noise`` = "auto":
    chunks and keyed noise for rows on disk (a streaming layout), a permutation and the run's
    streams otherwise."""

    order: str = "permutation"
    chunk_rows: int = 0
    window: int = 1
    keyed: bool = False
    on_disk: bool = False

    @classmethod
    def for_run(cls, config: Config, train, policy, log: Callable[[str], None]) -> "Feed":
        """The feed of a run on ``train`` (its prepared training rows), said where it is not the default."""
        t, on_disk = config.train, isinstance(train, RowsOnDisk)
        order = t.order if t.order != "auto" else ("chunks" if on_disk else "permutation")
        chunk_rows = t.chunk_rows or getattr(train, "chunk_rows", 0) or DEFAULT_CHUNK_ROWS
        keyed = (t.noise if t.noise != "auto" else ("keyed" if on_disk else "global")) == "keyed"
        feed = cls(order, chunk_rows, t.window, keyed, on_disk)
        if keyed and policy.labelled_index is not None:
            raise ConfigError("train.noise = \"keyed\" (the default for a streaming layout) draws each datapoint's noise "
                              "by its index, and a semi-supervised run's labelled batches are drawn from the run's "
                              "stream: set train.noise = \"global\", or train on the data in memory.")
        if on_disk or feed != cls():
            log(f"feed: {feed.describe()}")
        return feed

    def batches(self, policy, epoch_size: int, batch_size: int, seed: int, epoch: int,
                generator: torch.Generator) -> list[torch.Tensor]:
        """Epoch ``epoch``'s minibatches as training-set indices (through the label policy's pool)."""
        if self.order == "chunks":
            return policy.epoch_batches(list(chunk_batches(epoch_size, batch_size, self.chunk_rows, self.window, seed,
                                                           epoch)))
        return policy.epoch_batches(epoch_batches(epoch_size, batch_size, generator))

    def read(self, train, index: torch.Tensor, dist: Distributed, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(this process's datapoints of the global batch ``index``, their rows as float32 on
        ``device``): with keyed noise only this process's share is read, else the whole batch."""
        if self.keyed:
            start, stop = dist.shard(len(index))
            index = index[start:stop]
        return index, train[index.cpu() if self.on_disk else index].float().to(device)

    @staticmethod
    def check_files(data, verify: bool = False) -> None:
        """Rows on disk: refused where a file changed under the job (``StreamedRows.check_unchanged``),
        or with ``verify`` where any file's SHA-256 is not its manifest's (``StreamedRows.verify``)."""
        for rows in (data.train, data.test, data.valid):
            if isinstance(rows, RowsOnDisk):
                rows.verify() if verify else rows.check_unchanged()

    def describe(self) -> str:
        order = ("a fresh permutation each epoch" if self.order == "permutation" else
                 f"chunks of {self.chunk_rows} rows in a seeded order, shuffled {self.window} chunks at a time")
        noise = ("keyed on (seed, epoch, step, datapoint index): each process reads and draws for its own share"
                 if self.keyed else "from the run's random streams")
        return f"rows{' read from disk a batch ahead' if self.on_disk else ''} in {order}; noise {noise}"


def attach_objective(objective, program, dataset_size: int) -> None:
    """The objective told of the program (an estimator's own parameters: a neural baseline, a
    discriminator) and of N, the datapoints an epoch draws its batches from (beta-tc's log q(z))."""
    objective.attach(program)
    objective.set_dataset_size(dataset_size)


def read_ahead(batches: Iterable[torch.Tensor], read: Callable[[torch.Tensor], Any]) -> Iterator[tuple[torch.Tensor, Any]]:
    """(index, read(index)) for each batch of ``batches``, the next batch read on a thread of its own
    while the caller computes on this one: a read-ahead of one batch (one batch's rows held besides
    the one being trained on)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="pyro-vae-read") as pool:
        it = iter(batches)
        index = next(it, None)
        pending = pool.submit(read, index) if index is not None else None
        while pending is not None:
            rows, current = pending.result(), index
            index = next(it, None)
            pending = pool.submit(read, index) if index is not None else None
            yield current, rows


def keyed_step(trainer: "Trainer", index: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor],
               kl_weight: float) -> float:
    """One step with keyed noise: this process's rows (``rows``: its datapoints of the global batch
    ``index`` and their values), their preparation and noise keyed on their indices."""
    t = trainer
    mine, x = rows
    t.step_datapoints = len(index)
    with keyed_noise(noise_key(t.config.seed, t.epoch, t.step), mine.to(t.device)):
        x = t.program.contract.prepare_batch(x, t.generator)
        program, _ = t.program.policy.step(t.program, t.data, mine, t.generator)
        with StepContext(kl_weight, None, t.compute_dtype).applied(t.bodies):
            return svi_step(program, t.objective, t.optimizer, x, kl_weight, t.dist)


def global_step(trainer: "Trainer", index: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor],
                kl_weight: float) -> float:
    """One step with the run's streams: the whole global batch prepared from the data generator,
    then this process's shard of it (its noise drawn for the whole batch, ``StepContext.for_rank``)."""
    t = trainer
    x = t.program.contract.prepare_batch(rows[1], t.generator)
    program, also = t.program.policy.step(t.program, t.data, index, t.generator)
    t.step_datapoints = x.shape[0] if also is None else x.shape[0] + also.datapoints
    x, context = StepContext.for_rank(x, kl_weight, t.compute_dtype, t.dist)  # this rank's shard, noise included
    with context.applied(t.bodies):  # (steps only: scores and evaluations run in float32)
        return svi_step(program, t.objective, t.optimizer, x, context.kl_weight, t.dist,
                        also=None if also is None else lambda: also(context.kl_weight))


def svi_step(
    program, objective, optimizer: torch.optim.Optimizer, x: torch.Tensor, kl_weight: float = 1.0,
    dist: Distributed = SINGLE, *, also: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> float:
    """One SVI step on batch x; returns the loss (minus the objective) summed over the batch, in nats.

    The gradient is the objective's surrogate on the program's terms (``objective.step(program.source,
    x, kl_weight)``: what ``pyro.infer.SVI.step`` computes through ``loss_and_grads``, from the same
    terms), backpropagated; ``kl_weight`` is beta of KL warm-up. ``program`` is a
    :class:`~pyro_vae.programs.Program` (or a module, wrapped anew each call: pass the Program when
    stepping a traced program repeatedly, so its plate nesting is guessed once). In data-parallel
    training x is this rank's shard; gradients and loss are then summed over ranks. One torch
    optimizer updates every parameter of the module. A non-finite loss is returned without
    stepping, so the parameters stay as they were. ``also`` gives the (surrogate, loss) of another
    part of the same step (a semi-supervised step's labelled batch), added to this one's.
    """
    program = as_program(program)
    optimizer.zero_grad(set_to_none=True)
    surrogate, loss = objective.step(program.source, x, kl_weight)
    if also is not None:
        more, more_loss = also()
        surrogate, loss = surrogate + more, loss + more_loss
    surrogate.backward()
    if dist.active:
        loss = dist.sum_gradients_and([p for p in program.module.parameters() if p.requires_grad], loss)
    loss = loss.item()  # the one host sync per step: the logged loss
    if math.isfinite(loss):
        optimizer.step()
    return loss


@dataclass
class EpochLog:
    epoch: int
    step: int
    objective: float
    kl_weight: float
    train_seconds: float
    train: dict | None  # None on epochs that skip the curves (train.curve_every)
    test: dict | None
    eval_seconds: float
    valid: dict | None = None
    lr: float | None = None  # the learning rate of the epoch's last step

    def line(self) -> dict:
        line = {
            "epoch": self.epoch,
            "step": self.step,
            "units": "nats per datapoint",
            "objective": self.objective,
            "kl_weight": self.kl_weight,
            **({"lr": self.lr} if self.lr is not None else {}),
            **({"train": self.train, "test": self.test} if self.test is not None else {}),
            "seconds": {"train": self.train_seconds, "eval": self.eval_seconds},
        }
        if self.valid is not None:
            line["valid"] = self.valid
        return line

    def message(self, improved: bool) -> str:
        """The epoch's line of the training log (``*``: a new best validation ELBO)."""
        train, valid, test = self.train, self.valid, self.test
        return (
            f"epoch {self.epoch:>3}  objective {self.objective:9.2f}  "
            + (f"train ELBO {train['elbo']:9.2f}  " if train is not None else "")
            + (f"valid ELBO {valid['elbo']:9.2f}{'*' if improved else ' '} " if valid is not None else "")
            + (f"test ELBO {test['elbo']:9.2f} (recon {test['reconstruction']:8.2f}, KL {test['kl']:6.2f})  "
               if test is not None else "")
            + (f"test accuracy {test['accuracy']:.4f}  " if test is not None and "accuracy" in test else "")
            + f"[nats/datapoint]  {self.train_seconds:.1f}s"
        )


def epoch_scores(program, data, config: Config, dist: Distributed, curves: bool,
                 objective=None) -> tuple[dict | None, ...]:
    """(test, train, valid): the mean ELBO and its terms (and a classifier's accuracy) on the test
    set and the scored training subset (epochs that draw the curves, ``train.curve_every``) and on
    the validation split (every epoch, where there is one); None where not scored. A disentangling
    objective's (``reports_decomposition``) test scores add the KL's decomposition over the test set."""
    def score(x: torch.Tensor, labels: torch.Tensor | None) -> dict:
        return _terms(evaluate(program, x, seed=config.seed, batch_size=config.eval.batch_size, dist=dist,
                               posterior_means=False, labels=program.policy.scored_labels(labels)))

    test, train = ((score(data.test, data.test_labels), score(data.train_eval, data.train_eval_labels))
                   if curves else (None, None))
    if test is not None and getattr(objective, "reports_decomposition", False):
        test["decomposition"] = decomposition_or_reason(program, data.test[:DECOMPOSITION_POINTS], seed=config.seed,
                                                        batch_size=config.eval.batch_size)
    valid = score(data.valid, data.valid_labels) if data.valid is not None else None
    return test, train, valid


@contextmanager
def storage_failure_said(run_dir: Path, epoch: int) -> Iterator[None]:
    """A write of epoch ``epoch``'s files that fails (a full disk, lost permission) ends the run with
    what was kept and how to continue: the last good checkpoint is the one before (every file is
    written whole or not at all), and the same command with --resume goes on from it."""
    try:
        yield
    except StorageError as e:
        kept = f"the last good checkpoint is epoch {epoch - 1}" if epoch > 1 else "no checkpoint was written yet"
        raise StorageError(f"epoch {epoch} could not be saved: {e} In {run_dir}, {kept} (files are written whole or "
                           f"not at all). Free space (or restore write access) and run `pyro-vae train --resume "
                           f"{run_dir}` to go on from there.", e.cause) from None


def resuming(run_dir: Path, epoch: int, step: int, epochs: int) -> str:
    """What a resume says: where it continues from, or that the run already finished its epochs."""
    if epoch >= epochs:
        return (f"{run_dir} already finished its {epoch} epochs; to train further, "
                f"resume with --set train.epochs=N for some N > {epoch}.")
    return f"resuming {run_dir} from epoch {epoch} (step {step})"


def last_good(run_dir: Path, epoch: int) -> str:
    """What is left of a run that stops on a failure: its last good checkpoint, or none."""
    if (run_dir / CHECKPOINT).is_file():
        return f"The last good checkpoint (epoch {epoch}) in {run_dir} is intact."
    return "No epoch had finished, so there is no checkpoint."


def non_finite_parameters(module: torch.nn.Module) -> list[str]:
    """The names of ``module``'s parameters holding a NaN or an infinity. A step whose loss is finite can
    still have a non-finite gradient (an underflowed scale's log, say), which Adam writes into the
    parameters; the next step's loss shows it, but after a run's last step only this check can."""
    return [n for n, p in module.named_parameters() if not torch.isfinite(p).all()]


def check_last_step(module: torch.nn.Module, what: str) -> None:
    """Refuse parameters that a run's last step made non-finite (``what`` names the run), whose scores
    would be NaN: no later step's loss will show it (``non_finite_parameters``)."""
    bad = non_finite_parameters(module)
    if bad:
        raise TrainingDiverged(f"{what}: parameters {', '.join(bad[:3])} stopped being finite in its last step (its "
                               f"loss was finite, its gradient not): its scores would be NaN. Try a smaller train.lr.")


def check_finite_parameters(module: torch.nn.Module, epoch: int, run_dir: Path) -> None:
    """Refuse parameters that stopped being finite during epoch ``epoch + 1`` (``TrainingDiverged``)."""
    bad = non_finite_parameters(module)
    if bad:
        raise TrainingDiverged(f"parameters {', '.join(bad[:3])} stopped being finite during epoch {epoch + 1}. "
                               f"{last_good(run_dir, epoch)} Try a smaller train.lr.")


def crossed(before: float, after: float, every: float) -> bool:
    """Whether a clock going from ``before`` to ``after`` crossed a multiple of ``every`` (0: never)."""
    return bool(every) and math.floor(after / every) > math.floor(before / every)


def stop_reason(config: Config, epoch: int, best_epoch: int, best_valid: float, elapsed: float,
                last_epoch_seconds: float) -> str:
    """Why training stops before its next epoch ("" where it goes on): no better validation ELBO in
    ``train.early_stopping`` epochs, or ``train.max_minutes`` of training time that the next epoch,
    predicted to take as long as the last one, would overrun."""
    train = config.train
    if train.early_stopping and epoch - best_epoch >= train.early_stopping:
        return (f"early stopping: no better validation ELBO in {train.early_stopping} epochs "
                f"(best {best_valid:.2f} at epoch {best_epoch})")
    if train.max_minutes and elapsed + last_epoch_seconds > 60 * train.max_minutes:
        return f"time cap: {elapsed / 60:.1f} of train.max_minutes = {train.max_minutes:g} used"
    return ""


def _terms(ev: Evaluation) -> dict:
    terms = {k: v.mean().item() for k, v in (("elbo", ev.elbo), ("reconstruction", ev.reconstruction), ("kl", ev.kl))}
    if ev.predicted is not None and ev.labels is not None:  # a semi-supervised program's classifier
        terms["accuracy"] = (ev.predicted == ev.labels).double().mean().item()
    return terms


@dataclass
class Trainer:
    """Trains ``config`` into ``run_dir``; ``fit()`` runs or resumes it to ``train.epochs``.

    ``model``: a model program object to train instead of the one ``config.model`` names (any
    nn.Module with ``model``/``guide``, ``programs.py``); it is trained in place, and the run's
    ``config.toml`` records its class, options and code so that the folder rebuilds it (where
    its options can be read back: otherwise the log says so, and ``load_run(RUN, model=...)``
    loads it). ``splits``: data to train on instead of the config's dataset. ``preloaded``: the
    config's own dataset, already loaded by the caller (``compare`` loads it once for all its runs).
    ``splits`` may also be bare data, a NumPy array or tensor ``x`` or a pair ``(x, labels)``:
    ``DataSplits.from_arrays`` holds out a seeded tenth as the test set."""

    config: Config
    run_dir: Path
    progress: bool = True
    log: Callable[[str], None] = print
    splits: Any = None  # DataSplits, or bare arrays (see above)
    history: list[dict] = field(default_factory=list)
    dist: Distributed = SINGLE
    model: torch.nn.Module | None = None
    preloaded: DataSplits | None = field(default=None, repr=False)
    callbacks: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.splits = DataSplits.given(self.splits)  # (bare arrays: x, or (x, labels))
        self.callbacks = build_callbacks(self.config, self.callbacks)  # (called on rank 0 only)
        self.config, self.rebuild_note = config_with_model(self.config, self.model)
        self.device = resolve_device(self.dist.device(self.config.device))
        if not self.dist.main:  # only rank 0 speaks and writes
            self.progress, self.log = False, lambda message: None
        self.objective = OBJECTIVES.build(self.config.train.objective, "train.objective")
        self.compute_dtype = {"float32": None, "bfloat16": torch.bfloat16}[self.config.train.precision]
        preflight.check_settings(self.config, self.objective, self.device)

    # -- setup ---------------------------------------------------------------------------------

    def _build(self) -> None:
        """The program, the data prepared for it, the optimizer and the random streams, in the order
        that makes a run's numbers depend on its seed alone (each consumes the global stream in turn)."""
        pyro.clear_param_store()
        torch.manual_seed(self.config.seed)
        self.config = Config.from_dict({**self.config.to_dict(), "data": absolute_paths(self.config.data)})
        splits = self.splits or self.preloaded or DATASETS.build(self.config.data, "data").load()
        preflight.say_data(self.config, splits, self.log)
        self.config, self.data_record = preflight.data_config(self.config, splits, given=self.splits is not None)
        self.program, self.config = program_for_run(self.config, self.model, splits.event_shape, self.rebuild_note,
                                                    self.log)
        self.program.module.to(self.device)
        preflight.check_program_settings(self.config, self.program, self.objective)
        self.data = prepare_data(self.config, self.program, self.device, splits)
        labelled = self.program.policy.prepare_training(self.program, self.data, self.config, self.objective,
                                                        self.log, self.dist)
        if labelled is not None:
            self.data_record["labelled"] = labelled
        preflight.check_sizes(self.config, self.program.module, self.data.train.shape[0], self.run_dir, self.log)
        self.feed = Feed.for_run(self.config, self.data.train, self.program.policy, self.log)
        self.generator = torch.Generator(device=self.device).manual_seed(self.config.seed)
        # (rows on disk or held sparse: the container, never made dense whole: a library size, VampPrior's inputs)
        self.program.fit_to_data(fit_rows(self.data.train), self.generator)
        if not self.program.direct:
            preflight.check_program(self.program, self.objective, self.data, self.device)
        self.bodies = self.program.network_bodies() or []  # what train.precision runs in bfloat16
        attach_objective(self.objective, self.program, self.epoch_size)
        preflight.check_objective_parameters(self.objective, self.dist)
        own = self.objective.module()
        if own is not None:
            own.to(self.device)
        self.optimizer = run_optimizer(self.program.module if own is None else torch.nn.ModuleList([self.program.module, own]),
                                       self.config.train, self.epoch_size, self.device)
        self.average = ParameterAverage(self.program.module, self.config.train.ema) if self.config.train.ema else None
        self.epoch = self.step = 0
        self.elapsed = 0.0  # training wall seconds: steps plus per-epoch scoring
        self.last_epoch_seconds = 0.0  # the same, of the last epoch (predicts the next one)
        self.best_valid, self.best_epoch = -math.inf, 0
        self.stopped = ""  # why training stopped before train.epochs, if it did
        preflight.say_kl_estimator(self.objective, self.program, self.log)

    @property
    def labelled_index(self) -> torch.Tensor | None:
        """A semi-supervised run's labelled training datapoints (``data.labels``; None: another regime)."""
        return self.program.policy.labelled_index

    @property
    def pool(self) -> torch.Tensor | None:
        """The training datapoints an epoch runs over where not all (a semi-supervised run's unlabelled ones)."""
        return self.program.policy.pool

    def _state(self) -> dict[str, Any]:
        progress = {"elapsed": self.elapsed, "last_epoch_seconds": self.last_epoch_seconds,
                    "best_valid": self.best_valid, "best_epoch": self.best_epoch}
        return checkpoint_state(self.config, self.program, self.optimizer, self.generator, self.epoch, self.step,
                                progress, self.average, self.data_record, self.objective.state_dict())

    def scored(self):
        """What the per-epoch scores and best.pt see: the averaged parameters with train.ema."""
        return self.average.applied() if self.average is not None else nullcontext()

    def _restore(self, state: dict[str, Any]) -> None:
        check_same_device(state, self.device, self.run_dir)
        load_parameters(self.program.module, state.get("training_model", state["model"]), self.run_dir / CHECKPOINT)
        if self.average is not None:
            self.average.load(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.objective.load_state_dict(state.get("objective", {}))
        restore_random_state(state, self.generator, self.device)
        self.epoch, self.step = state["epoch"], state["step"]
        progress = state.get("progress", {})
        self.elapsed, self.last_epoch_seconds = progress.get("elapsed", 0.0), progress.get("last_epoch_seconds", 0.0)
        self.best_valid, self.best_epoch = progress.get("best_valid", -math.inf), progress.get("best_epoch", 0)

    # -- the loop ------------------------------------------------------------------------------

    def start(self) -> "Trainer":
        """Set up a new run without training it: the program, the data, the optimizer and the random
        streams, as :meth:`fit` does first. For a caller that drives :meth:`train_step` itself
        (``compare``); nothing is written until :meth:`write_checkpoint`."""
        self._build()
        self.history = []
        return self

    def write_checkpoint(self) -> None:
        """The run as it stands into ``run_dir`` (a folder already made, ``runs.prepare_run_dir``):
        its config.toml and checkpoint.pt."""
        write_text(self.run_dir / CONFIG, self.config.to_toml())
        save_checkpoint(self.run_dir / CHECKPOINT, self._state())

    def fit(self, *, resume: bool = False, overwrite: bool = False, stop_after: int | None = None) -> "Trainer":
        """Train to ``train.epochs`` (or stop after ``stop_after`` epochs in this call), holding the
        run folder's lock (``runs.run_lock``; rank 0 of a data-parallel run: the one that writes)."""
        if not self.dist.main:
            return self._fit(resume, overwrite, stop_after)
        if not resume:
            prepare_run_dir(self.run_dir, overwrite)  # a new folder, its marker, under the lock
        elif not self.run_dir.is_dir():
            raise RunDirError(f"cannot resume {self.run_dir}: there is no such folder.")
        try:
            with run_lock(self.run_dir, "train --resume" if resume else "train"):
                return self._fit(resume, overwrite, stop_after)
        except BaseException:
            if not resume:  # refused before anything was written (e.g. the data): no folder left behind
                discard_unstarted(self.run_dir)
            raise

    def _fit(self, resume: bool, overwrite: bool, stop_after: int | None) -> "Trainer":
        if resume:
            state = load_checkpoint(self.run_dir / CHECKPOINT)
            check_same_config(state, self.config, RESUMABLE_CHANGES | eval_keys(self.config), str(self.run_dir))
            self._build()
            check_same_data(state, self.data_record, self.run_dir)
            self.feed.check_files(self.data, verify=True)  # (rows on disk: hashed again, since they may have changed meanwhile)
            check_same_config(state, self.config, RESUMABLE_CHANGES | eval_keys(self.config), str(self.run_dir))
            self._restore(state)
            if self.dist.main:  # (only rank 0 reads, rewrites and extends the metrics)
                self.history = [m for m in read_metrics(self.run_dir, self.log) if m["epoch"] <= self.epoch]
                write_text(self.run_dir / METRICS, "".join(json.dumps(m) + "\n" for m in self.history))
                write_text(self.run_dir / CONFIG, self.config.to_toml())
            self.log(resuming(self.run_dir, self.epoch, self.step, self.config.train.epochs))
        else:
            self._build()
            if self.dist.main:
                write_text(self.run_dir / CONFIG, self.config.to_toml())
            self.history = []

        last = self.config.train.epochs if stop_after is None else min(self.config.train.epochs, self.epoch + stop_after)
        self._call("on_train_start")
        try:
            with pyro.validation_enabled(self.config.train.validate):
                self._train_epochs(last)
        finally:
            self._call("on_train_end")
        self.dist.barrier()  # the last checkpoint is on disk before any rank reads it
        return self

    @property
    def epoch_size(self) -> int:
        """The datapoints an epoch runs over: the training set, or a semi-supervised run's unlabelled pool."""
        return self.program.policy.epoch_size(self.data.train.shape[0])

    def _batches(self, epoch: int | None = None) -> list[torch.Tensor]:  # (None: the current epoch's)
        return self.feed.batches(self.program.policy, self.epoch_size, self.config.train.batch_size, self.config.seed,
                                 self.epoch if epoch is None else epoch, self.generator)

    def read_batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.feed.read(self.data.train, index, self.dist, self.device)  # (this process's part: Feed.read)

    def _train_epochs(self, last_epoch: int) -> None:
        from tqdm.auto import tqdm

        steps_per_epoch = math.ceil(self.epoch_size / self.config.train.batch_size)
        bar = tqdm(
            total=(last_epoch - self.epoch) * steps_per_epoch, disable=not self.progress,
            unit="step", dynamic_ncols=True, leave=False,
        )
        beta = 1.0
        try:
            while self.epoch < last_epoch and not self._should_stop():
                started = time.perf_counter()
                total, count = 0.0, 0
                self.feed.check_files(self.data)
                batches = read_ahead(self._batches(), self.read_batch) if self.feed.on_disk else \
                    ((index, None) for index in self._batches())
                for i, (index, rows) in enumerate(batches):
                    progress = self.epoch + i / steps_per_epoch  # epochs done, fractional
                    beta = kl_weight(self.config, progress)
                    # time from the epoch-level clock every rank shares, so all ranks step alike
                    lr = learning_rate(self.config, progress, self.elapsed + self.last_epoch_seconds * i / steps_per_epoch)
                    loss = self.train_step(index, kl_weight=beta, lr=lr, epoch=progress, rows=rows)
                    total += loss
                    count += self.step_datapoints
                    bar.update(1)
                    if self.progress:
                        bar.set_postfix_str(
                            f"epoch {self.epoch + 1}/{last_epoch} loss {loss / self.step_datapoints:.2f} nats/datapoint",
                            refresh=False,
                        )
                train_seconds = time.perf_counter() - started
                check_finite_parameters(self.program.module, self.epoch, self.run_dir)
                self.epoch += 1
                self._end_epoch(total / count, beta, train_seconds, bar)
        finally:
            bar.close()

    def train_step(self, index: torch.Tensor, *, kl_weight: float = 1.0, lr: float | None = None,
                   epoch: float | None = None, rows: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
        """One training step on the training datapoints ``index`` (their whole global batch; ``rows``,
        this process's part as :meth:`read_batch` gives it, where read ahead): :func:`keyed_step` or
        :func:`global_step` (the feed's noise), one :func:`svi_step` at KL weight ``kl_weight`` and
        learning rate ``lr`` (None: as it is), the networks in ``train.precision``; a non-finite loss
        refused (``TrainingDiverged``, parameters unchanged); the parameter average moved. ``epoch``
        (fractional progress) drives the objective's own schedule (``Objective.at_epoch``). Returns
        the loss summed over the batch, in nats. ``compare`` drives the same steps on its own budget."""
        if epoch is not None:
            self.objective.at_epoch(epoch)
        if lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        if not self.program.module.training:  # (evaluation between steps restores the mode it found)
            self.program.module.train()
        rows = rows if rows is not None else self.read_batch(index)
        loss = (keyed_step if self.feed.keyed else global_step)(self, index, rows, kl_weight)
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"the loss became {loss} at epoch {self.epoch + 1}, step {self.step + 1}. "
                f"{last_good(self.run_dir, self.epoch)} Try a smaller "
                f"train.lr{', or KL warm-up' if self.objective.supports_kl_weight else ''}."
            )
        self.step += 1
        if self.average is not None:
            self.average.update(self.step)
        if self.callbacks:
            self._call("on_step", loss)
        return loss

    def _call(self, hook: str, *args) -> None:
        """Each callback's ``hook(self, *args)``, on the main process only."""
        if self.dist.main:
            for callback in self.callbacks:
                getattr(callback, hook)(self, *args)

    def batch_stream(self) -> Iterator[torch.Tensor]:
        """Minibatch indices without end, epoch after epoch as the trainer's epochs draw them (``Feed``),
        for a caller that counts steps, not epochs."""
        for epoch in itertools.count(self.epoch):
            yield from self._batches(epoch)

    def _should_stop(self) -> bool:
        """Early stopping on the validation ELBO, and the wall-time cap (``stop_reason``), said when it stops."""
        self.stopped = self.stopped or stop_reason(self.config, self.epoch, self.best_epoch, self.best_valid,
                                                   self.elapsed, self.last_epoch_seconds)
        if self.stopped:
            self.log(f"stopped after epoch {self.epoch}: {self.stopped}")
        return bool(self.stopped)

    def _end_epoch(self, mean_loss: float, beta: float, train_seconds: float, bar) -> None:
        started = time.perf_counter()
        curves = self.epoch == 1 or self.epoch % self.config.train.curve_every == 0
        with self.scored():
            test, train, valid = epoch_scores(self.program, self.data, self.config, self.dist, curves, self.objective)
        # the slowest rank's times, so that every rank takes the same time-cap decision
        train_seconds, eval_seconds = self.dist.slowest(train_seconds, time.perf_counter() - started)
        log = EpochLog(self.epoch, self.step, -mean_loss, beta, train_seconds, train, test, eval_seconds, valid,
                       self.optimizer.param_groups[0]["lr"])
        self.last_epoch_seconds = train_seconds + eval_seconds
        self.elapsed += self.last_epoch_seconds
        improved = valid is not None and valid["elbo"] > self.best_valid
        if improved:
            self.best_valid, self.best_epoch = valid["elbo"], self.epoch
        self.history.append(log.line())
        if self.dist.main:
            with storage_failure_said(self.run_dir, self.epoch):
                append_line(self.run_dir / METRICS, json.dumps(self.history[-1]))  # first: resume drops later lines
                state = self._state()
                if improved:
                    save_checkpoint(self.run_dir / BEST, state)
                if crossed(self.elapsed - self.last_epoch_seconds, self.elapsed, 60 * self.config.train.snapshot_minutes):
                    save_checkpoint(snapshot_path(self.run_dir, self.epoch), state)
                save_checkpoint(self.run_dir / CHECKPOINT, state)
        self._call("on_epoch_end", self.history[-1])
        (bar.write if self.progress else self.log)(log.message(improved))


# Moved to trained.py, runs.py and data:  importing them from here still works, with a
# DeprecationWarning.
_MOVED = {
    **dict.fromkeys(("Run", "load_run", "load", "finish_run", "write_evaluation"), "trained"),
    **dict.fromkeys(("resumable_evaluation", "selected_checkpoint", "default_run_dir", "config_differences",
                     "differences_outside", "check_same_code", "EVALUATION", "CHECKPOINT_FORMAT"), "runs"),
    **dict.fromkeys(("PreparedData", "validation_split"), "data"),
}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib
        import warnings as _warnings

        module = _MOVED[name]
        _warnings.warn(f"pyro_vae.training.{name} is now pyro_vae.{module}.{name}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(f"pyro_vae.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
