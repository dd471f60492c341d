"""The SVI loop: seeds, data preparation, KL warm-up, checkpoints, resume and run folders.

A run folder holds everything needed to re-run, resume or evaluate it:

    config.toml          the resolved config (every default written out)
    metrics.jsonl        one JSON line per epoch: training objective, train/test ELBO terms (train.curve_every), seconds
    checkpoint.pt        parameters, optimizer and random states (tensors and plain values only,
                         read with torch.load(weights_only=True): it cannot run code)
    best.pt              (with a validation split) the same, at the best validation ELBO so far
    snapshots/           (with train.snapshot_minutes) checkpoints every so many training minutes
    evaluation.json      the final test evaluation; samples.png, reconstructions.png,
                         curves.png, latent.png

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

import json
import math
import os
import shutil
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyro
import torch

from . import metrics
from .config import CODE_KEY, OBJECTIVES, Config, ProgramConfig
from .data import DATASETS, USER_FILE_DATASETS, DataSplits, check_batch, require_finite
from .data import summary as data_summary
from .distributed import SINGLE, Distributed
from .errors import CheckpointError, ConfigError, DataError, ProgramError, RunDirError, TrainingDiverged
from .networks import mixed_precision
from .numerics import seeded, sharded_noise
from .files import save_tensors, write_text
from .runs import append_line, discard_unstarted, prepare_run_dir, read_json_lines, run_lock
from .programs import STOCK, CodeIdentity, Program, as_program, build_program, check_params_are_the_modules, \
    class_path, signature_defaults

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
SNAPSHOTS = "snapshots"
CONFIG = "config.toml"
METRICS = "metrics.jsonl"
EVALUATION = "evaluation.json"
CHECKPOINT_FORMAT = 1
# Keys that may differ between a checkpoint and the config that resumes it.
# A resume may change these. The data's file locations may change because the data itself may not:
# every run of a file dataset records its fingerprint, and other data is refused (check_same_data).
RESUMABLE_CHANGES = {("train", "epochs"), ("train", "max_minutes"), ("data", "path"), ("data", "test_path")}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device = {name!r} but CUDA is not available here; use device = \"auto\" or \"cpu\".")
    return torch.device(name)


def build_model(config: Config, data_shape: tuple[int, ...], *, trust_code: bool = True,
                where: str = "the config") -> Program:
    """The model program ``config.model`` names (the stock VAE, or a user program), for data of
    ``data_shape``: ``programs.build_program``."""
    return build_program(config.model, data_shape, trust_code=trust_code, where=where)


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


@dataclass
class PreparedData:
    """The dataset on the training device, prepared for the likelihood once."""

    splits: DataSplits
    train: torch.Tensor  # what batches are drawn from (e.g. statically binarized)
    test: torch.Tensor  # fixed evaluation form (e.g. binarized with a fixed seed)
    train_eval: torch.Tensor  # a fixed subset of train, scored every epoch
    valid: torch.Tensor | None = None  # held-out training images (train.validation), evaluation form


def validation_split(n: int, n_valid: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, valid) of a training set of ``n``: a fixed permutation by ``seed``, the
    first ``n_valid`` held out."""
    if not 0 <= n_valid < n:
        raise ConfigError(
            f"train.validation = {n_valid} must leave training images: the training split has {n}."
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_valid:].sort().values, order[:n_valid].sort().values


def record_program(config: Config, program: Program) -> tuple[Config, str]:
    """``config`` with its ``[model]`` table resolved for the user program built from it: the
    options it was given, the defaults of the class's signature for the others (what built it),
    and the identity of its code; and why the run folder cannot rebuild it ("" where it can: a
    class another process can import)."""
    if not isinstance(config.model, ProgramConfig):
        return config, ""
    table, why = program.model_table()
    code = {k: v for k, v in table[CODE_KEY].items() if k != "unrecorded"}  # built from these options: all known
    table = {"program": table["program"], **signature_defaults(type(program.module)), **config.model.options,
             CODE_KEY: code}
    return Config.from_dict({**config.to_dict(), "model": table}), why if "__main__" in why else ""


def prepare_data(config: Config, program, device: torch.device, splits: DataSplits | None = None) -> PreparedData:
    """Load (unless given), validate at the boundary, prepare for the program (its likelihood's or
    its own data contract), move to device, and check the prepared data against the support of
    the program's site "x"."""
    program = as_program(program)
    splits = splits or DATASETS.build(config.data, "data").load()
    splits.check_finite()
    lik = program.contract
    for split, x in (("train", splits.train), ("test", splits.test)):
        program.check_data(x, split)
    raw_train, valid = splits.train, None
    if config.train.validation:
        keep, held_out = validation_split(raw_train.shape[0], config.train.validation, config.seed)
        raw_train, valid = raw_train[keep], lik.prepare_eval_set(raw_train[held_out].to(device))
    raw_train = raw_train.to(device)
    train = lik.prepare_train_set(raw_train)
    n_sub = min(config.eval.train_subset, train.shape[0])
    # the training subset scored each epoch: the images trained on, or (when every batch draws
    # afresh, e.g. dynamic binarization) one fixed draw of them
    train_eval = lik.prepare_eval_set(raw_train[:n_sub]) if lik.stochastic_batches else train[:n_sub]
    data = PreparedData(
        splits=splits,
        train=train,
        test=lik.prepare_eval_set(splits.test.to(device)),
        train_eval=train_eval,
        valid=valid,
    )
    program.check_support(data.test, "test")
    program.check_support(lik.prepare_batch(data.train[: min(16, data.train.shape[0])], _probe_generator(device)),
                          "train")
    return data


def _physical_memory() -> int:
    """This machine's memory in bytes (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _existing(path: Path) -> Path:
    """``path`` or its nearest folder above that exists."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _free_disk(path: Path) -> int | None:
    """Bytes free on the filesystem that holds (or will hold) ``path``; None where it cannot be said."""
    try:
        return shutil.disk_usage(_existing(path)).free
    except OSError:
        return None


def _probe_generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(0)


# ---------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` whole or not at all (``files.atomic_write``): a crash or a full disk mid-write
    leaves the previous checkpoint intact."""
    save_tensors(path, state)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``: tensors and plain values only, no code."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: the run has not finished an epoch yet.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"cannot read checkpoint {path} safely ({type(e).__name__}: {e}). Only checkpoints "
            f"written by pyro-vae (tensors and plain values) are accepted."
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a pyro-vae checkpoint (format {CHECKPOINT_FORMAT}).")
    return state


def config_differences(a: dict, b: dict, prefix: tuple = ()) -> list[tuple[tuple, Any, Any]]:
    """Paths where two nested config dicts differ, with both values."""
    out = []
    for key in sorted(set(a) | set(b)):
        path = (*prefix, key)
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_differences(va, vb, path)
        elif va != vb:
            out.append((path, va, vb))
    return out


def _same_data_folder(difference: tuple[tuple, Any, Any]) -> bool:
    """A data folder spelled two ways (relative and absolute, through a link) that is one folder on disk."""
    path, old, new = difference
    if path != ("data", "data_dir") or not (isinstance(old, str) and isinstance(new, str)):
        return False
    a, b = Path(old).expanduser(), Path(new).expanduser()
    return a.is_dir() and b.is_dir() and os.path.samefile(a, b)


def differences_outside(saved: dict, new: dict, allowed: set[tuple]) -> list[tuple[tuple, Any, Any]]:
    """What resuming ``saved`` as ``new`` would change: config_differences outside the ``allowed``
    keys, a data folder respelled as the same folder on disk not counted, and a user program's
    recorded code identity left to :func:`check_same_code` (which says which file changed)."""
    return [d for d in config_differences(saved, new)
            if d[0] not in allowed and not _same_data_folder(d) and d[0][:2] != ("model", CODE_KEY)]


def data_record(splits: DataSplits, given: bool) -> dict[str, Any]:
    """What a run trained on, as its checkpoints record it: where the data came from (the config's
    dataset, or handed in from Python), its description, sizes and SHA-256 fingerprint."""
    record = {"source": "python" if given else "config", "description": splits.description or splits.name,
              "train": len(splits.train), "test": len(splits.test), "fingerprint": splits.fingerprint()}
    if splits.scaling is not None:
        record["scaling"] = splits.scaling
    return record


def check_same_data(state: dict, record: dict, run_dir: Path) -> None:
    """Refuse data other than the data the checkpoint's run trained on (checkpoints that record it)."""
    saved = state.get("data")
    if saved is None or saved["fingerprint"] == record["fingerprint"]:
        return
    raise DataError(
        f"{run_dir} was trained on {saved['description']} ({saved['train']} train / {saved['test']} test, "
        f"fingerprint {saved['fingerprint'][:12]}...), and the data given now is {record['description']} "
        f"({record['train']} / {record['test']}, {record['fingerprint'][:12]}...): not the same data (a file that "
        f"changed, moved or was replaced?). Point at the data the run trained on; pyro-vae never scores or "
        f"trains a run on other data.")


def check_same_code(saved: dict, new: dict, source: str) -> None:
    """Refuse a user program whose source file differs from the one ``saved`` recorded, naming it."""
    old, now = (CodeIdentity.from_dict(c.get("model", {}).get(CODE_KEY)) for c in (saved, new))
    if old is not None and now is not None:
        old.require_same(now, source)


def check_same_config(checkpoint: dict, config: Config, allowed: set[tuple], source: str) -> None:
    """Refuse a checkpoint whose config differs from ``config`` outside ``allowed`` keys. The saved
    config is resolved first, so options added since it was written take their defaults on both sides."""
    saved = Config.from_dict(checkpoint["config"]).to_dict()
    check_same_code(saved, config.to_dict(), f"the checkpoint in {source}")
    diffs = differences_outside(saved, config.to_dict(), allowed)
    if diffs:
        listed = "; ".join(f"{'.'.join(p)}: {old!r} in the checkpoint, {new!r} now" for p, old, new in diffs[:5])
        raise CheckpointError(
            f"the checkpoint in {source} was written for a different config ({listed}). "
            f"Restore those values, or train a new run with the new config."
        )


# ---------------------------------------------------------------------------------------------
# run folders


def default_run_dir(config: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{config.data['name']}-{config.model.label}"


def read_metrics(run_dir: Path, log: Callable[[str], None] | None = None) -> list[dict]:
    """The run's metrics.jsonl lines (a partial last line dropped: ``runs.read_json_lines``)."""
    return read_json_lines(Path(run_dir) / METRICS, log)


@dataclass
class Run:
    """A loaded run folder: its config, its model program with trained parameters (``program``;
    ``model`` is the module itself), its checkpoint state; and the trained model to use:
    ``encode``, ``decode``, ``reconstruct``, ``sample``, ``elbo``, ``log_prob``."""

    run_dir: Path
    config: Config
    program: Program
    checkpoint: dict
    device: torch.device
    data: PreparedData | None = None
    source: str = CHECKPOINT  # which checkpoint file the parameters came from

    @property
    def model(self) -> torch.nn.Module:
        return self.program.module

    @property
    def epoch(self) -> int:
        return self.checkpoint["epoch"]

    @property
    def described(self) -> str:
        """'epoch N', saying when that is the best-validation checkpoint or a snapshot."""
        kind = {BEST: ", best validation ELBO", CHECKPOINT: ""}.get(self.source, f", {self.source}")
        return f"epoch {self.epoch}{kind}"

    # -- using a trained model ---------------------------------------------------------------
    # Inputs are checked here: a tensor or array of shape (batch, *data_shape), or flat (batch, D)
    # when D is the data's size (reshaped); uint8 as 8-bit levels (/255); values the program's data
    # contract accepts. Scores see the data as evaluation does (e.g. binarized with the fixed seed).

    def inputs(self, x, scored: bool = False) -> torch.Tensor:
        """``x`` as the program takes it (see above): on the run's device, float32, shaped
        (batch, *data_shape), finite; with ``scored``, checked against the data contract and
        prepared as evaluation prepares data (e.g. binarized with the fixed evaluation seed)."""
        shape = tuple(self.program.data_shape)
        if not torch.is_tensor(x):
            try:
                x = torch.as_tensor(np.asarray(x))
            except (TypeError, ValueError) as e:
                raise DataError(f"the input is a {type(x).__name__}, not an array of numbers: {e}.") from None
        if x.dim() == 2 and len(shape) > 1 and x.shape[1] == math.prod(shape):
            x = x.reshape(-1, *shape)  # a flat batch of the right size
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        elif x.is_floating_point() or x.dtype == torch.bool:
            x = x.float()
        x = x.to(self.device)
        check_batch(x, shape, "input")
        require_finite(x, "input")
        if scored:
            self.program.check_data(x, "input")
            x = self.program.contract.prepare_eval_set(x)
        return x

    def _site(self) -> str:
        shapes = self.program.latent_shapes
        if len(shapes) != 1:
            raise ProgramError(f"{self.program.name} has {len(shapes)} latent sites ({', '.join(shapes)}): encode and "
                               f"decode take one; use run.program.posterior_means(x) and run.program.decode(z) with "
                               f"a dict by site.")
        return next(iter(shapes))

    @torch.no_grad()
    def encode(self, x, draws: int = 256, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x)'s mean and standard deviation per latent coordinate, each (batch, *event): exact
        where q's family has them (the diagonal Gaussian), else from ``draws`` draws."""
        site, x = self._site(), self.inputs(x)
        with seeded(self.config.seed if seed is None else seed, self.device), self.program.source.given(x) as at_x:
            q = at_x.draw(1).latents[site].q
            try:
                return q.mean, q.stddev
            except NotImplementedError:
                z = at_x.draw(draws).latents[site].value
                return z.mean(0), z.std(0)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, pixels: str = "mean") -> torch.Tensor:
        """Images for latents z (batch, *event): E[x|z], or draws x ~ p(x|z) with ``pixels = "sample"``
        (or where the mean has no closed form)."""
        return self.program.decode({self._site(): torch.as_tensor(z, device=self.device).float()}, pixels)

    def reconstruct(self, x, pixels: str = "mean") -> torch.Tensor:
        """decode(E_q[z|x]): the images x reconstructed through the posterior mean."""
        return self.decode(self.encode(x)[0], pixels)

    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None, pixels: str = "mean") -> torch.Tensor:
        """n images decoded from z ~ p(z)."""
        with seeded(self.config.seed if seed is None else seed, self.device):
            return self.program.decode(self.program.prior_draws(n), pixels)

    @torch.no_grad()
    def elbo(self, x, samples: int = 1, seed: int | None = None) -> torch.Tensor:
        """The ELBO per datapoint, in nats (``samples`` draws of z; the KL in closed form where it has one)."""
        x = self.inputs(x, scored=True)
        with seeded(self.config.seed if seed is None else seed, self.device):
            return metrics.elbo_terms(self.program, x, samples, posterior_means=False)["elbo"]

    @torch.no_grad()
    def log_prob(self, x, samples: int = 1000, seed: int | None = None) -> dict[str, torch.Tensor]:
        """Importance-sampled log p(x) per datapoint, in nats, with K = ``samples`` draws from q(z|x):
        ``log_px``, its standard error ``stderr`` and the weights' effective sample size ``ess``."""
        x = self.inputs(x, scored=True)
        with seeded(self.config.seed if seed is None else seed, self.device):
            return metrics.log_evidence_diagnostics(self.program, x, samples, self.config.eval.chunk_pairs)


def selected_checkpoint(run_dir: Path, which: str = "auto") -> Path:
    """The checkpoint a run reports: ``"best"`` (best validation ELBO), ``"last"``, or ``"auto"``:
    the best one when the run kept a validation split, else the last."""
    if which not in ("auto", "best", "last"):
        raise ConfigError(f"checkpoint must be one of auto, best, last; got {which!r}.")
    best = run_dir / BEST
    if which == "best" and not best.is_file():
        raise RunDirError(f"{run_dir} has no {BEST}: it is written only by runs with train.validation > 0.")
    return best if which == "best" or (which == "auto" and best.is_file()) else run_dir / CHECKPOINT


def load_run(run_dir: Path | str, device: str | None = None, with_data: bool = True,
             checkpoint: str = "auto", *, trust_code: bool = False, model: torch.nn.Module | None = None,
             splits: DataSplits | None = None) -> Run:
    """Rebuild a run from its folder: config.toml + a checkpoint (checked against each other);
    ``checkpoint`` as in :func:`selected_checkpoint`, or a path to a snapshot.

    A run of a user program imports its module only with ``trust_code=True`` (and refuses a source
    file changed since, naming it); or pass ``model``, an instance of the run's program class,
    to receive the trained parameters (how a program defined in a script, or one whose options
    the config could not record, is loaded).

    The data is the config's dataset, rebuilt, or ``splits`` (data trained on from Python must be
    given so); either is refused unless it is the data the run trained on (its fingerprint)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise RunDirError(f"{run_dir} is not a pyro-vae run folder (no {CONFIG}).")
    config = Config.load(run_dir / CONFIG)
    path = Path(checkpoint) if checkpoint.endswith(".pt") else selected_checkpoint(run_dir, checkpoint)
    state = load_checkpoint(path)
    check_same_config(state, config, RESUMABLE_CHANGES | _eval_keys(config), str(run_dir))
    dev = resolve_device(device or config.device)
    torch.manual_seed(config.seed)
    if with_data:
        splits = splits or DATASETS.build(config.data, "data").load()
        check_same_data(state, data_record(splits, given=False), run_dir)
    else:
        splits = None
    shape = splits.event_shape if splits is not None else tuple(state["data_shape"])
    if model is not None:
        _require_run_program(config, model, run_dir)
        program = Program(model, data_shape=shape)
    else:
        program = build_model(config, shape, trust_code=trust_code, where=str(run_dir))
    program.module.to(dev)
    load_parameters(program.module, state["model"], path)
    data = prepare_data(config, program, dev, splits) if with_data else None
    return Run(run_dir, config, program, state, dev, data, path.name)


def load(run_dir: Path | str, device: str | None = None, checkpoint: str = "auto", *, trust_code: bool = False,
         model: torch.nn.Module | None = None) -> Run:
    """A trained model to use (``pyro_vae.load(RUN_DIR).encode(x)``): :func:`load_run` without its data."""
    return load_run(run_dir, device, with_data=False, checkpoint=checkpoint, trust_code=trust_code, model=model)


def _require_run_program(config: Config, model: torch.nn.Module, run_dir: Path) -> None:
    """Refuse a model object of another class than the run's (a script's class, recorded as
    ``__main__:Name``, matches a class of that name imported from its module)."""
    named = config.model.program
    given = class_path(type(model)) if Program(model).user_code else STOCK
    same_script_class = named.startswith("__main__:") and named.partition(":")[2] == type(model).__qualname__
    if named != given and not same_script_class:
        raise ProgramError(f"{run_dir} was trained with model program {named!r}; the model given is a {given!r}.")


def load_parameters(module: torch.nn.Module, state: dict, path: Path) -> None:
    """``module.load_state_dict(state)``, a mismatch said in words (a checkpoint of other code), and
    a checkpoint holding NaN or infinite parameters refused (a damaged file)."""
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(
            f"{path} holds NaN or infinite values in {', '.join(bad[:3])}{' and more' if len(bad) > 3 else ''}: the "
            f"file is damaged (or was written after a divergence). Use another checkpoint (--checkpoint best or a "
            f"snapshot), or train again.")
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[1:4]) or first[0]
        raise CheckpointError(
            f"the parameters in {path} do not fit the model program built for them ({detail}). The "
            f"checkpoint belongs to other code or another config: rebuild the program it was trained with.") from None


def _eval_keys(config: Config) -> set[tuple]:
    return {("eval", k) for k in config.to_dict()["eval"]} | {("device",)}


# ---------------------------------------------------------------------------------------------
# training


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch of minibatch indices: a fresh permutation of range(n) from ``generator``, split."""
    return list(torch.randperm(n, generator=generator, device=generator.device).split(batch_size))


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


def adam(module: torch.nn.Module, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam over every parameter of the program's module; the fused implementation on CPU and CUDA
    (one kernel for all parameters, the same update: 4.1 -> 0.8 ms a step for the Fashion-MNIST
    VampPrior MLP on 2 CPU cores)."""
    return torch.optim.Adam(module.parameters(), lr=lr, fused=device.type in ("cpu", "cuda") or None)


def checkpoint_state(config: Config, program, optimizer, generator: torch.Generator, epoch: int, step: int,
                     progress: dict | None = None, average: ParameterAverage | None = None,
                     data: dict | None = None) -> dict:
    """Everything a run needs to resume: parameters, optimizer and random states (tensors and plain
    values), and what it trained on (``data``: :func:`data_record`). With ``average``, ``model``
    holds the averaged parameters and ``training_model`` the optimizer's."""
    program = as_program(program)
    module = program.module
    device = next(module.parameters()).device
    rng = {"torch": torch.get_rng_state(), "data": generator.get_state(), "device": device.type}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": config.to_dict(),
        "data_shape": list(program.data_shape),
        "epoch": epoch,
        "step": step,
        "model": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng,
        # training wall time so far and the best validation ELBO (with its epoch): budgets and
        # early stopping carry over a resume
        "progress": dict(progress or {}),
    }
    if data is not None:
        state["data"] = dict(data)
    if average is not None:
        state["training_model"] = state["model"]  # the live tensors: the optimizer's values again after the block
        with average.applied():
            state["model"] = {k: v.clone() for k, v in module.state_dict().items()}
    return state


def svi_step(
    program, objective, optimizer: torch.optim.Optimizer, x: torch.Tensor, kl_weight: float = 1.0,
    dist: Distributed = SINGLE,
) -> float:
    """One SVI step on batch x; returns the loss (minus the objective) summed over the batch, in nats.

    The gradient is the objective's surrogate on the program's terms (``objective.step(program.source,
    x, kl_weight)``: what ``pyro.infer.SVI.step`` computes through ``loss_and_grads``, from the same
    terms), backpropagated; ``kl_weight`` is beta of KL warm-up. ``program`` is a
    :class:`~pyro_vae.programs.Program` (or a module, wrapped anew each call: pass the Program when
    stepping a traced program repeatedly, so its plate nesting is guessed once). In data-parallel
    training x is this rank's shard; gradients and loss are then summed over ranks. One torch
    optimizer updates every parameter of the module. A non-finite loss is returned without
    stepping, so the parameters stay as they were.
    """
    program = as_program(program)
    optimizer.zero_grad(set_to_none=True)
    surrogate, loss = objective.step(program.source, x, kl_weight)
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


def _terms(ev: metrics.Evaluation) -> dict:
    return {k: v.mean().item() for k, v in (("elbo", ev.elbo), ("reconstruction", ev.reconstruction), ("kl", ev.kl))}


@dataclass
class Trainer:
    """Trains ``config`` into ``run_dir``; ``fit()`` runs or resumes it to ``train.epochs``.

    ``model``: a model program object to train instead of the one ``config.model`` names (any
    nn.Module with ``model``/``guide``, ``programs.py``); it is trained in place, and the run's
    ``config.toml`` records its class, options and code so that the folder rebuilds it (where
    its options can be read back: otherwise the log says so, and ``load_run(RUN, model=...)``
    loads it). ``splits``: data to train on instead of the config's dataset."""

    config: Config
    run_dir: Path
    progress: bool = True
    log: Callable[[str], None] = print
    splits: DataSplits | None = None
    history: list[dict] = field(default_factory=list)
    dist: Distributed = SINGLE
    model: torch.nn.Module | None = None

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.rebuild_note = ""
        if self.model is not None:
            table, self.rebuild_note = Program(self.model).model_table()
            named = self.config.model
            if isinstance(named, ProgramConfig) and named.program != table["program"]:
                raise ConfigError(
                    f"the config names model program {named.program!r} and model= is a {table['program']!r}: "
                    f"give one of them (model= replaces the config's [model] table).")
            self.config = Config.from_dict({**self.config.to_dict(), "model": table})
        self.device = resolve_device(self.dist.device(self.config.device))
        if not self.dist.main:  # only rank 0 speaks and writes
            self.progress, self.log = False, lambda message: None
        self.objective = OBJECTIVES.build(self.config.train.objective, "train.objective")
        self.compute_dtype = {"float32": None, "bfloat16": torch.bfloat16}[self.config.train.precision]
        if self.compute_dtype is not None and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(
                f"train.precision = \"bfloat16\" needs a GPU that computes in bfloat16, and "
                f"{torch.cuda.get_device_name(self.device)} does not. Use train.precision = \"float32\"."
            )
        if self.config.train.kl_warmup_epochs > 0 and not self.objective.supports_kl_weight:
            raise ConfigError(
                f"train.kl_warmup_epochs = {self.config.train.kl_warmup_epochs} needs an objective with "
                f"a separate KL term, but '{self.objective.name}' is an importance-weighted bound whose "
                f"KL cannot be scaled on its own. Use objective \"elbo\" or \"elbo-analytic-kl\" for "
                f"warm-up, or set train.kl_warmup_epochs = 0."
            )

    # -- setup ---------------------------------------------------------------------------------

    def _build(self) -> None:
        pyro.clear_param_store()
        torch.manual_seed(self.config.seed)
        splits = self.splits or DATASETS.build(self.config.data, "data").load()
        self.data_record = data_record(splits, given=self.splits is not None)
        if self.config.data["name"] in USER_FILE_DATASETS:  # the user's own files: say what was read
            self.log(f"data: {data_summary(splits)}")
        recorded = self.config.data
        if recorded["name"] == "given" and recorded.get("fingerprint") == self.data_record["fingerprint"]:
            self.data_record["description"] = recorded["description"]  # the same data, given again (a resume)
        elif self.splits is not None:  # the config says so, and never names a dataset it did not train on
            self.config = Config.from_dict({**self.config.to_dict(), "data": {
                "name": "given", "description": self.data_record["description"],
                "fingerprint": self.data_record["fingerprint"]}})
        self.program = self._program(splits.event_shape)
        self.program.module.to(self.device)
        if self.program.guide_family is not None:
            self.objective.check_guide(self.program.guide_family)
        if self.compute_dtype is not None and self.program.network_bodies() is None:
            raise ConfigError(
                f"train.precision = \"bfloat16\" runs the program's networks in bfloat16, and model program "
                f"{self.program.name} does not say which modules those are: give it a network_bodies() method "
                f"returning them (pyro_vae.networks.Body modules), or train in float32.")
        self.data = prepare_data(self.config, self.program, self.device, splits)
        self._check_sizes()
        self.generator = torch.Generator(device=self.device).manual_seed(self.config.seed)
        self.program.fit_to_data(self.data.train, self.generator)  # e.g. VampPrior pseudo-inputs
        if not self.program.direct:
            self._check_program()
        self.optimizer = adam(self.model_module, self.config.train.lr, self.device)
        self.average = ParameterAverage(self.model_module, self.config.train.ema) if self.config.train.ema else None
        self.epoch = 0
        self.step = 0
        self.elapsed = 0.0  # training wall seconds: steps plus per-epoch scoring
        self.last_epoch_seconds = 0.0  # the same, of the last epoch (predicts the next one)
        self.best_valid, self.best_epoch = -math.inf, 0
        self.stopped = ""  # why training stopped before train.epochs, if it did
        if getattr(self.objective, "analytic_kl", False) and not metrics.analytic_kl_available(self.program):
            vae = self.program.vae
            pair = (f"guide '{vae.posterior.name}' and prior '{vae.prior.name}'" if self.program.direct else
                    f"every latent site of {self.program.name}")
            message = (
                f"elbo-analytic-kl: KL(q(z|x) || p(z)) has no closed form for {pair}; the KL term is "
                f"estimated by Monte Carlo instead (as objective \"elbo\" would), where no formula is registered."
            )
            warnings.warn(message, stacklevel=2)
            self.log(f"warning: {message}")

    @property
    def model_module(self) -> torch.nn.Module:
        """The module being trained (the program's parameters)."""
        return self.program.module

    def _program(self, data_shape: tuple[int, ...]) -> Program:
        """The program this run trains: ``model`` if given, else the one the config names; the
        config's ``[model]`` table then records it (resolved options, code identity)."""
        if self.model is not None:
            program = Program(self.model, data_shape=data_shape)
            own = getattr(self.model, "data_shape", None)
            if own is not None and tuple(own) != tuple(data_shape):
                raise ConfigError(f"the model was built for data of shape {tuple(own)}, and the data has shape "
                                  f"{tuple(data_shape)}: build it for this data (data_shape={tuple(data_shape)}).")
        else:
            program = build_model(self.config, data_shape)
        if self.model is None:
            self.config, self.rebuild_note = record_program(self.config, program)
        if self.rebuild_note:
            self.log(f"note: this run folder cannot rebuild its program by itself ({self.rebuild_note}); load it in "
                     f"Python with load_run(RUN, model={type(program.module).__qualname__}(...)).")
        return program

    def _check_sizes(self) -> None:
        """Settings that cannot be meant, refused (or noted) with the numbers that show it, before any step."""
        n, batch = self.data.train.shape[0], self.config.train.batch_size
        if batch > n:
            held = f" after holding out train.validation = {self.config.train.validation}" if \
                self.config.train.validation else ""
            self.log(f"note: train.batch_size = {batch} is larger than the training set ({n} datapoints{held}): every "
                     f"step sees the whole set, one step an epoch.")
        parameters = sum(p.numel() for p in self.model_module.parameters())
        copies = 4 + (1 if self.config.train.ema else 0)  # parameters, gradients, Adam's two moments (+ the average)
        need, have = 4 * parameters * copies, _physical_memory()
        if have and need > 0.8 * have:
            raise ConfigError(
                f"the model has {parameters:,} parameters: training holds about {need / 2**30:.1f} GiB of them "
                f"(parameters, gradients, Adam's moments{', the average' if self.config.train.ema else ''}), more than "
                f"this machine's {have / 2**30:.1f} GiB of memory can spare. Make the model smaller (model.latent_dim, "
                f"the network's widths).")
        checkpoint = 4 * parameters * (3 + (1 if self.config.train.ema else 0))  # (+ Adam's moments, the average)
        names = [CHECKPOINT] + ([BEST] if self.config.train.validation else [])
        at_once = len(names) + 1  # the files kept, and a replacement while it is written
        there = sum((self.run_dir / n).stat().st_size for n in names if (self.run_dir / n).is_file())
        free = _free_disk(self.run_dir)
        if free is not None and at_once * checkpoint - there > free:
            raise ConfigError(
                f"the model has {parameters:,} parameters: each checkpoint is about {checkpoint / 2**30:.2f} GiB and "
                f"the run folder needs {at_once} of them at once, {at_once * checkpoint / 2**30:.2f} GiB, while "
                f"{_existing(self.run_dir)} has {free / 2**30:.2f} GiB free. Free some space, train into another "
                f"folder (--out), or make the model smaller.")
        if checkpoint > 2**30:
            self.log(f"note: the model has {parameters:,} parameters; each checkpoint will be about "
                     f"{checkpoint / 2**30:.1f} GiB (the run folder keeps checkpoint.pt"
                     f"{', best.pt' if self.config.train.validation else ''}"
                     f"{' and snapshots' if self.config.train.snapshot_minutes else ''}).")

    def _check_program(self) -> None:
        """The protocol, checked once on a training batch before training: sites and plates
        (``terms.py``), reparameterized guide sites, parameters that are the module's, and Pyro's
        and torch's validation of every distribution's arguments and shapes."""
        n = min(8, self.data.train.shape[0])
        x = self.program.contract.prepare_batch(self.data.train[:n], _probe_generator(self.device))
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            check_params_are_the_modules(self.program, x)
            try:
                with pyro.validation_enabled(True):
                    self.objective.terms(self.program.source, x)
            except (ValueError, RuntimeError) as e:
                raise ProgramError(f"model program {self.program.name} failed on a training batch of shape "
                                   f"{tuple(x.shape)}: {type(e).__name__}: {e}") from None

    def _state(self) -> dict[str, Any]:
        progress = {"elapsed": self.elapsed, "last_epoch_seconds": self.last_epoch_seconds,
                    "best_valid": self.best_valid, "best_epoch": self.best_epoch}
        return checkpoint_state(self.config, self.program, self.optimizer, self.generator, self.epoch, self.step,
                                progress, self.average, self.data_record)

    def _scored(self):
        """What the per-epoch scores and best.pt see: the averaged parameters with train.ema."""
        return self.average.applied() if self.average is not None else nullcontext()

    def _restore(self, state: dict[str, Any]) -> None:
        written_on = state["rng"].get("device", "cpu")
        if written_on != self.device.type:
            raise CheckpointError(
                f"the checkpoint in {self.run_dir} was written on {written_on} and this run is on "
                f"{self.device.type}: its random states (data order, binarization, noise) belong to that "
                f"device. Resume it with device = \"{written_on}\" (--set device={written_on}), or start "
                f"a new run."
            )
        load_parameters(self.model_module, state.get("training_model", state["model"]), self.run_dir / CHECKPOINT)
        if self.average is not None:
            self.average.load(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["data"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.epoch, self.step = state["epoch"], state["step"]
        progress = state.get("progress", {})
        self.elapsed, self.last_epoch_seconds = progress.get("elapsed", 0.0), progress.get("last_epoch_seconds", 0.0)
        self.best_valid, self.best_epoch = progress.get("best_valid", -math.inf), progress.get("best_epoch", 0)

    # -- the loop ------------------------------------------------------------------------------

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
            check_same_config(state, self.config, RESUMABLE_CHANGES | _eval_keys(self.config), str(self.run_dir))
            self._build()
            check_same_data(state, self.data_record, self.run_dir)
            check_same_config(state, self.config, RESUMABLE_CHANGES | _eval_keys(self.config), str(self.run_dir))
            self._restore(state)
            if self.dist.main:  # (only rank 0 reads, rewrites and extends the metrics)
                self.history = [m for m in read_metrics(self.run_dir, self.log) if m["epoch"] <= self.epoch]
                self._write_metrics()
                write_text(self.run_dir / CONFIG, self.config.to_toml())
            if self.epoch >= self.config.train.epochs:
                self.log(
                    f"{self.run_dir} already finished its {self.epoch} epochs; to train further, "
                    f"resume with --set train.epochs=N for some N > {self.epoch}."
                )
            else:
                self.log(f"resuming {self.run_dir} from epoch {self.epoch} (step {self.step})")
        else:
            self._build()
            if self.dist.main:
                write_text(self.run_dir / CONFIG, self.config.to_toml())
            self.history = []

        last = self.config.train.epochs if stop_after is None else min(self.config.train.epochs, self.epoch + stop_after)
        with pyro.validation_enabled(self.config.train.validate):
            self._train_epochs(last)
        self.dist.barrier()  # the last checkpoint is on disk before any rank reads it
        return self

    def _batches(self) -> list[torch.Tensor]:
        return epoch_batches(self.data.train.shape[0], self.config.train.batch_size, self.generator)

    def _train_epochs(self, last_epoch: int) -> None:
        from tqdm.auto import tqdm

        steps_per_epoch = math.ceil(self.data.train.shape[0] / self.config.train.batch_size)
        bar = tqdm(
            total=(last_epoch - self.epoch) * steps_per_epoch, disable=not self.progress,
            unit="step", dynamic_ncols=True, leave=False,
        )
        program, elbo = self.program, self.objective
        lik, bodies = program.contract, program.network_bodies() or []
        beta = 1.0
        try:
            while self.epoch < last_epoch and not self._should_stop():
                started = time.perf_counter()
                total, count = 0.0, 0
                program.module.train()
                for i, index in enumerate(self._batches()):
                    beta = kl_weight(self.config, self.epoch + i / steps_per_epoch)
                    # time from the epoch-level clock every rank shares, so all ranks step alike
                    lr = learning_rate(self.config, self.epoch + i / steps_per_epoch,
                                       self.elapsed + self.last_epoch_seconds * i / steps_per_epoch)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    x = lik.prepare_batch(self.data.train[index], self.generator)  # the whole global batch
                    shard = nullcontext()
                    if self.dist.active:  # ... of which this rank keeps its shard, noise included
                        start, stop = self.dist.shard(x.shape[0])
                        shard = sharded_noise(start, stop, x.shape[0])
                        x = x[start:stop]
                    with shard, mixed_precision(bodies, self.compute_dtype):  # steps only
                        loss = svi_step(program, elbo, self.optimizer, x, beta, self.dist)
                    if not math.isfinite(loss):
                        raise TrainingDiverged(
                            f"the loss became {loss} at epoch {self.epoch + 1}, step {self.step + 1}. "
                            f"{self._last_good()} Try a smaller train.lr, or KL warm-up."
                        )
                    self.step += 1
                    if self.average is not None:
                        self.average.update(self.step)
                    total += loss
                    count += index.shape[0]
                    bar.update(1)
                    if self.progress:
                        bar.set_postfix_str(
                            f"epoch {self.epoch + 1}/{last_epoch} loss {loss / index.shape[0]:.2f} nats/datapoint",
                            refresh=False,
                        )
                train_seconds = time.perf_counter() - started
                self._check_parameters()
                self.epoch += 1
                self._end_epoch(total / count, beta, train_seconds, bar)
        finally:
            bar.close()

    def _should_stop(self) -> bool:
        """Early stopping on the validation ELBO, and the wall-time cap (an epoch predicted to
        overrun it, from the last epoch's time, is not started)."""
        train = self.config.train
        if train.early_stopping and self.epoch - self.best_epoch >= train.early_stopping:
            self.stopped = (
                f"early stopping: no better validation ELBO in {train.early_stopping} epochs "
                f"(best {self.best_valid:.2f} at epoch {self.best_epoch})"
            )
        elif train.max_minutes and self.elapsed + self.last_epoch_seconds > 60 * train.max_minutes:
            self.stopped = f"time cap: {self.elapsed / 60:.1f} of train.max_minutes = {train.max_minutes:g} used"
        if self.stopped:
            self.log(f"stopped after epoch {self.epoch}: {self.stopped}")
        return bool(self.stopped)

    def _last_good(self) -> str:
        if (self.run_dir / CHECKPOINT).is_file():
            return f"The last good checkpoint (epoch {self.epoch}) in {self.run_dir} is intact."
        return "No epoch had finished, so there is no checkpoint."

    def _check_parameters(self) -> None:
        bad = [n for n, p in self.model_module.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise TrainingDiverged(
                f"parameters {', '.join(bad[:3])} stopped being finite during epoch {self.epoch + 1}. "
                f"{self._last_good()} Try a smaller train.lr."
            )

    def _end_epoch(self, mean_loss: float, beta: float, train_seconds: float, bar) -> None:
        started = time.perf_counter()
        ev = self.config.eval
        def score(x: torch.Tensor) -> dict:
            return _terms(metrics.evaluate(self.program, x, seed=self.config.seed, batch_size=ev.batch_size,
                                           dist=self.dist, posterior_means=False))

        curves = self.epoch == 1 or self.epoch % self.config.train.curve_every == 0
        with self._scored():
            test, train = (score(self.data.test), score(self.data.train_eval)) if curves else (None, None)
            valid = score(self.data.valid) if self.data.valid is not None else None
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
            append_line(self.run_dir / METRICS, json.dumps(self.history[-1]))  # first: resume drops lines past the checkpoint
            state = self._state()
            if improved:
                save_checkpoint(self.run_dir / BEST, state)
            self._snapshot(state)
            save_checkpoint(self.run_dir / CHECKPOINT, state)
        message = (
            f"epoch {self.epoch:>3}  objective {-mean_loss:9.2f}  "
            + (f"train ELBO {train['elbo']:9.2f}  " if train is not None else "")
            + (f"valid ELBO {valid['elbo']:9.2f}{'*' if improved else ' '} " if valid is not None else "")
            + (f"test ELBO {test['elbo']:9.2f} (recon {test['reconstruction']:8.2f}, KL {test['kl']:6.2f})  "
               if test is not None else "")
            + f"[nats/datapoint]  {train_seconds:.1f}s"
        )
        if self.progress:
            bar.write(message)
        else:
            self.log(message)

    def _snapshot(self, state: dict) -> None:
        """Keep a copy of ``state`` each time the training time crosses a multiple of snapshot_minutes."""
        every = 60 * self.config.train.snapshot_minutes
        before = self.elapsed - self.last_epoch_seconds
        if every and math.floor(self.elapsed / every) > math.floor(before / every):
            folder = self.run_dir / SNAPSHOTS
            folder.mkdir(exist_ok=True)
            save_checkpoint(folder / f"epoch-{self.epoch:05d}.pt", state)

    def _write_metrics(self) -> None:
        write_text(self.run_dir / METRICS, "".join(json.dumps(m) + "\n" for m in self.history))


def finish_run(run: Run, log: Callable[[str], None] = print, samples: int | None = None,
               dist: Distributed = SINGLE, progress: bool = False) -> metrics.Evaluation:
    """Final test evaluation (with importance-sampled log p(x)) and the run's pictures (rank 0 writes)."""
    from . import plots

    cfg = run.config
    k = cfg.eval.samples if samples is None else samples
    if dist.main:
        log(f"evaluating log p(x) on {run.data.test.shape[0]} test datapoints with K = {k} importance samples ...")
    with run_lock(run.run_dir, "evaluate") if dist.main else nullcontext(), \
            resumable_evaluation(run.run_dir, EVALUATION, dist) as store:
        result = metrics.evaluate(
            run.program, run.data.test, samples=k, seed=cfg.seed, batch_size=cfg.eval.batch_size,
            chunk_pairs=cfg.eval.chunk_pairs, exact_points=cfg.eval.exact_points, dist=dist, store=store,
            progress=progress,
        )
        if dist.main:
            write_evaluation(run, result)
            plots.run_pictures(run, result, read_metrics(run.run_dir))
    return result


@contextmanager
def resumable_evaluation(run_dir: Path, name: str, dist: Distributed = SINGLE):
    """The folder ``RUN_DIR/<name>.batches`` for ``metrics.evaluate(store=...)``: it keeps the
    evaluation's finished batches until the block (which writes the results) completes, and is
    then removed. An evaluation interrupted part-way resumes there when rerun."""
    folder = Path(run_dir) / f"{name}.batches"
    yield folder
    dist.barrier()  # every rank has read its batches
    if dist.main:
        shutil.rmtree(folder, ignore_errors=True)


def write_evaluation(run: Run, result: metrics.Evaluation, name: str = EVALUATION) -> Path:
    summary = {"epoch": run.epoch, "checkpoint": run.source, "dataset": run.config.data["name"], "split": "test",
               "model_program": run.config.model.program, **result.summary()}
    return write_text(run.run_dir / name, json.dumps(summary, indent=2) + "\n")
