"""Before a run's first step: what is checked and recorded, so that the trainer is only the loop.

* settings that cannot be meant, refused with the numbers that show it: bfloat16 where the GPU
  cannot compute in it, KL warm-up with an objective that has no separate KL term, a model whose
  parameters, gradients and optimizer state do not fit in memory or whose checkpoints do not fit
  on disk (:func:`check_settings`, :func:`check_sizes`);
* the model program's protocol, on one training batch: sites and plates, reparameterized guide
  sites, parameters that are the module's own, and Pyro's and torch's validation of every
  distribution's arguments (:func:`check_program`);
* what the run records of its data: its fingerprint, and for data handed in from Python the
  config's ``[data]`` table that says so (:func:`data_config`); the one-line summary of the user's
  own files (:func:`say_data`).
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Callable

import pyro
import torch

from .config import LIKELIHOODS, Config
from .data import USER_FILE_DATASETS, DataSplits, probe_generator
from .data import summary as data_summary
from .errors import ConfigError, ProgramError
from .metrics import analytic_kl_available
from .programs import Program, check_params_are_the_modules
from .runs import BEST, CHECKPOINT, data_record


def physical_memory() -> int:
    """This machine's memory in bytes (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def existing(path: Path) -> Path:
    """``path`` or its nearest folder above that exists."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_disk(path: Path) -> int | None:
    """Bytes free on the filesystem that holds (or will hold) ``path``; None where it cannot be said."""
    try:
        return shutil.disk_usage(existing(path)).free
    except OSError:
        return None


def check_settings(config: Config, objective, device: torch.device) -> None:
    """Settings that cannot be meant together, refused before anything is built."""
    if config.train.precision == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"train.precision = \"bfloat16\" needs a GPU that computes in bfloat16, and "
            f"{torch.cuda.get_device_name(device)} does not. Use train.precision = \"float32\".")
    if config.train.kl_warmup_epochs > 0 and not objective.supports_kl_weight:
        raise ConfigError(
            f"train.kl_warmup_epochs = {config.train.kl_warmup_epochs} needs an objective with "
            f"a separate KL term, but '{objective.name}' is an importance-weighted bound whose "
            f"KL cannot be scaled on its own. Use objective \"elbo\" or \"elbo-analytic-kl\" for "
            f"warm-up, or set train.kl_warmup_epochs = 0.")


def check_program_settings(config: Config, program: Program, objective) -> None:
    """What the objective and the precision ask of this program: a guide the objective can train,
    and the networks bfloat16 may run."""
    if program.guide_family is not None:
        objective.check_guide(program.guide_family)
    if config.train.precision == "bfloat16" and program.network_bodies() is None:
        raise ConfigError(
            f"train.precision = \"bfloat16\" runs the program's networks in bfloat16, and model program "
            f"{program.name} does not say which modules those are: give it a network_bodies() method "
            f"returning them (pyro_vae.networks.Body modules), or train in float32.")


def check_objective_parameters(objective, dist) -> None:
    """An objective's own parameters (a neural baseline, once attached) train in one process only."""
    if objective.module() is not None and dist.active:
        raise ConfigError(
            f"objective '{objective.name}' trains parameters of its own (a neural baseline), which "
            f"data-parallel training does not share out yet: train it in one process, or use another "
            f"baseline (average, leave-one-out).")


def check_sizes(config: Config, module: torch.nn.Module, n_train: int, run_dir: Path,
                log: Callable[[str], None]) -> None:
    """Memory and disk a run needs, refused (or noted) with the numbers that show it, before any step."""
    batch = config.train.batch_size
    if batch > n_train:
        held = f" after holding out train.validation = {config.train.validation}" if config.train.validation else ""
        log(f"note: train.batch_size = {batch} is larger than the training set ({n_train} datapoints{held}): every "
            f"step sees the whole set, one step an epoch.")
    parameters = sum(p.numel() for p in module.parameters())
    ema = bool(config.train.ema)
    copies = 4 + ema  # parameters, gradients, Adam's two moments (+ the average)
    need, have = 4 * parameters * copies, physical_memory()
    if have and need > 0.8 * have:
        raise ConfigError(
            f"the model has {parameters:,} parameters: training holds about {need / 2**30:.1f} GiB of them "
            f"(parameters, gradients, Adam's moments{', the average' if ema else ''}), more than "
            f"this machine's {have / 2**30:.1f} GiB of memory can spare. Make the model smaller (model.latent_dim, "
            f"the network's widths).")
    checkpoint = 4 * parameters * (3 + ema)  # (+ Adam's moments, the average)
    names = [CHECKPOINT] + ([BEST] if config.train.validation else [])
    at_once = len(names) + 1  # the files kept, and a replacement while it is written
    there = sum((run_dir / n).stat().st_size for n in names if (run_dir / n).is_file())
    free = free_disk(run_dir)
    if free is not None and at_once * checkpoint - there > free:
        raise ConfigError(
            f"the model has {parameters:,} parameters: each checkpoint is about {checkpoint / 2**30:.2f} GiB and "
            f"the run folder needs {at_once} of them at once, {at_once * checkpoint / 2**30:.2f} GiB, while "
            f"{existing(run_dir)} has {free / 2**30:.2f} GiB free. Free some space, train into another "
            f"folder (--out), or make the model smaller.")
    if checkpoint > 2**30:
        log(f"note: the model has {parameters:,} parameters; each checkpoint will be about "
            f"{checkpoint / 2**30:.1f} GiB (the run folder keeps checkpoint.pt"
            f"{', best.pt' if config.train.validation else ''}"
            f"{' and snapshots' if config.train.snapshot_minutes else ''}).")


def check_program(program: Program, objective, data, device: torch.device) -> None:
    """The protocol, checked once on a training batch before training: sites and plates
    (``terms.py``), reparameterized guide sites, parameters that are the module's, and Pyro's
    and torch's validation of every distribution's arguments and shapes (the batch scored as a
    training step scores it: its label policy's ``check_training_batch``)."""
    n = min(8, data.train.shape[0])
    x = program.contract.prepare_batch(data.train[:n].float(), probe_generator(device))
    labels = data.train_labels[:n] if data.train_labels is not None else None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        check_params_are_the_modules(program, x)
        try:
            with pyro.validation_enabled(True):
                program.policy.check_training_batch(program, objective, x, labels)
        except (ValueError, RuntimeError) as e:
            raise ProgramError(f"model program {program.name} failed on a training batch of shape "
                               f"{tuple(x.shape)}: {type(e).__name__}: {e}") from None


def say_kl_estimator(objective, program: Program, log: Callable[[str], None]) -> None:
    """elbo-analytic-kl where some latent site has no closed-form KL: said (a warning and the log),
    and estimated by Monte Carlo there."""
    if getattr(objective, "analytic_kl", False) and not analytic_kl_available(program):
        vae = program.vae
        pair = (f"guide '{vae.posterior.name}' and prior '{vae.prior.name}'" if program.direct else
                f"every latent site of {program.name}")
        message = (
            f"elbo-analytic-kl: KL(q(z|x) || p(z)) has no closed form for {pair}; the KL term is "
            f"estimated by Monte Carlo instead (as objective \"elbo\" would), where no formula is registered.")
        warnings.warn(message, stacklevel=3)
        log(f"warning: {message}")


def say_data(config: Config, splits: DataSplits, log: Callable[[str], None]) -> None:
    """The one line about the data a run of the user's own files reads: sizes, values, labels, and
    which likelihoods' data contracts the values meet."""
    if config.data["name"] in USER_FILE_DATASETS or config.data["name"] == "stream":
        splits.check_nonempty()
        splits.check_finite()  # (refused before a summary of NaN values could be printed)
        checks = {name: LIKELIHOODS.build(name, "model.likelihood").check_data for name in LIKELIHOODS.names()}
        log(f"data: {data_summary(splits, checks)}")


def data_config(config: Config, splits: DataSplits, given: bool) -> tuple[Config, dict]:
    """What a run records of its data (``runs.data_record``: description, sizes, fingerprint), and
    its config with, for data handed in from Python (``given``), a ``[data]`` table saying so (a
    config never names a dataset it did not train on). Data given again on resume keeps the
    description it was first given under."""
    record = data_record(splits, given=given)
    recorded = config.data
    if recorded["name"] == "given" and recorded.get("fingerprint") == record["fingerprint"]:
        record["description"] = recorded["description"]  # the same data, given again (a resume)
    elif given:
        config = Config.from_dict({**config.to_dict(), "data": {
            "name": "given", "description": record["description"], "fingerprint": record["fingerprint"]}})
    return config, record
