"""Callbacks: what the trainer calls as a run goes, so it can be watched in the tools people use.

A callback observes and never changes the run: the trainer calls, on the main process only,

    on_train_start(trainer)           before the first step (of this process: also on resume)
    on_step(trainer, loss)            after each step, loss = -objective summed over the batch (nats)
    on_epoch_end(trainer, record)     after each epoch, with the line metrics.jsonl just got
    on_train_end(trainer)             after the last epoch (also when a run stops early)

Register one like any component (``@CALLBACKS.register("name")``, typed keyword options) and name
it in ``train.callbacks``; or hand instances to ``Trainer(..., callbacks=[...])``. An MLflow or
Weights & Biases logger is a few lines (``docs/guide/run-folder.md`` shows one); pyro-vae ships a
TensorBoard logger, an optional extra: ``pip install -e ".[tensorboard]"``, then
``tensorboard --logdir runs/``.
"""

from __future__ import annotations

from pathlib import Path

from .config import CALLBACKS, Component, require
from .errors import ConfigError


class Callback(Component):
    """Base class: every hook does nothing."""

    def on_train_start(self, trainer) -> None:
        """Before the first step."""

    def on_step(self, trainer, loss: float) -> None:
        """After each step: ``loss`` is minus the objective summed over the batch, in nats."""

    def on_epoch_end(self, trainer, record: dict) -> None:
        """After each epoch, with the epoch's line of metrics.jsonl."""

    def on_train_end(self, trainer) -> None:
        """After the last epoch."""


def scalars(record: dict) -> dict[str, float]:
    """The numbers of a metrics.jsonl line, flattened to "group/name" (nats per datapoint)."""
    out = {"train/objective": record["objective"], "train/kl_weight": record["kl_weight"]}
    if "lr" in record:
        out["train/lr"] = record["lr"]
    for split in ("train", "test", "valid"):
        for name, value in (record.get(split) or {}).items():
            out[f"{split}/{name}"] = value
    for name, value in record["seconds"].items():
        out[f"seconds/{name}"] = value
    return out


@CALLBACKS.register("tensorboard")
class TensorBoardLogger(Callback):
    """TensorBoard: every epoch's ELBO and its terms (train, test, validation), objective, learning rate and KL weight, and sample and reconstruction grids.

    Event files go into ``log_dir`` inside the run folder, so ``tensorboard --logdir runs/``
    shows every run. Needs the ``tensorboard`` package (``pip install -e ".[tensorboard]"``).

    Options:
        log_dir: the event files' folder, relative to the run folder.
        images_every: epochs between the sample and reconstruction grids (0: none); the first and last epochs always have them.
        images: how many samples (and test reconstructions) a grid shows.
        steps: also log every step's loss (per datapoint) against the step number.
    """

    def __init__(self, *, log_dir: str = "tensorboard", images_every: int = 10, images: int = 16,
                 steps: bool = False) -> None:
        require(images_every >= 0, f"images_every must be >= 0, got {images_every}.")
        require(images >= 1, f"images must be >= 1, got {images}.")
        require(bool(log_dir) and not Path(log_dir).is_absolute() and ".." not in Path(log_dir).parts,
                f"log_dir must be a folder inside the run folder (a relative path without ..), got {log_dir!r}.")
        self.log_dir, self.images_every, self.images, self.steps = log_dir, images_every, images, steps
        self.writer = None

    def on_train_start(self, trainer) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "the tensorboard callback (train.callbacks) needs the tensorboard package: "
                "pip install -e \".[tensorboard]\" (or pip install tensorboard), or drop it from train.callbacks."
            ) from None
        self.writer = SummaryWriter(str(Path(trainer.run_dir) / self.log_dir))

    def on_step(self, trainer, loss: float) -> None:
        if self.steps and self.writer is not None:
            self.writer.add_scalar("train/step_loss", loss / trainer.config.train.batch_size, trainer.step)

    def on_epoch_end(self, trainer, record: dict) -> None:
        if self.writer is None:
            return
        epoch = record["epoch"]
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, epoch)
        last = epoch >= trainer.config.train.epochs
        images = len(trainer.program.data_shape) == 3  # (not for vectors: a table's rows)
        if images and self.images_every and (epoch == 1 or last or epoch % self.images_every == 0):
            self._images(trainer, epoch)
        self.writer.flush()

    def _images(self, trainer, epoch: int) -> None:
        from .plots import prior_samples, reconstructions

        with trainer.scored():
            samples = prior_samples(trainer.program, self.images, trainer.config.seed)
            x = trainer.data.test[: self.images]
            pairs = reconstructions(trainer.program, x, trainer.config.seed)
        self.writer.add_images("samples", _displayable(samples), epoch)
        self.writer.add_images("reconstructions/input", _displayable(x), epoch)
        self.writer.add_images("reconstructions/output", _displayable(pairs), epoch)

    def on_train_end(self, trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _displayable(images):
    """Images (N, C, H, W) in [0, 1] as TensorBoard shows them (float, clamped for display only)."""
    images = images.detach().float().cpu()
    if images.dim() == 3:
        images = images.unsqueeze(1)
    return images.clamp(0, 1)


def build_callbacks(config, given: list) -> list:
    """A run's callbacks: the loggers ``train.callbacks`` names, built from the registry, then the
    caller's own objects (``Trainer(callbacks=[...])``) in their order."""
    return [CALLBACKS.build(spec, f"train.callbacks[{i}]") for i, spec in enumerate(config.train.callbacks)] + \
        list(given)
