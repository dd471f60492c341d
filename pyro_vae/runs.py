"""Run folders: their layout, checkpoints, loading a trained run, and the guarantees around them.

A run folder holds everything needed to re-run, resume or evaluate it:

    config.toml          the resolved config (every default written out)
    metrics.jsonl        one JSON line per epoch: training objective, train/test ELBO terms (train.curve_every), seconds
    checkpoint.pt        parameters, optimizer and random states (tensors and plain values only,
                         read with torch.load(weights_only=True): it cannot run code)
    best.pt              (with a validation split) the same, at the best validation ELBO so far
    snapshots/           (with train.snapshot_minutes) checkpoints every so many training minutes
    evaluation.json      the final test evaluation; samples.png, reconstructions.png,
                         curves.png, latent.png (and, where the model takes labels,
                         analogies.png; semi-supervised, confusion.png)

:func:`load_run` rebuilds a run from its folder (its program, trained parameters and data, each
checked against what the run recorded); :class:`Run` is that run, with the trained model to use
(``encode``, ``decode``, ``reconstruct``, ``sample``, ``elbo``, ``log_prob``; ``classify`` for a
semi-supervised one); :func:`finish_run` evaluates it on the test set and draws its pictures.

What pyro-vae creates, writes and removes there:

* **Created with a marker.** A run folder (or a ``compare`` folder) is made by pyro-vae with a
  marker file, ``.pyro-vae-run`` (JSON: which command made it, when, by which process).
  ``--overwrite`` removes a folder's contents only when it holds that marker, and never the
  current directory, one of its parents, the home folder or the filesystem root.
* **One writer at a time.** Every command that writes into a run folder holds an exclusive lock
  on ``RUN/.lock`` (``fcntl.flock``: the operating system releases it when the process ends, so a
  killed process never leaves a lock behind). A second writer is refused, naming the process that
  holds the lock.
* **Written whole or not at all.** Every file is written to a new temporary file, created
  exclusively in the same folder (so never through a link planted there), flushed and fsynced,
  then renamed over the target (which replaces a link at the target rather than following it). On
  failure (a full disk, say) the temporary file is removed and the target keeps its last good
  contents.
* **metrics.jsonl** is appended a line per epoch; a partial last line (a process killed while
  writing it) is dropped when the run resumes, and said so.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import socket
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from . import plots
from .config import CODE_KEY, Config
from .data import DATASETS, DataSplits, PreparedData, check_batch, prepare_data, require_finite
from .distributed import SINGLE, Distributed
from .errors import CheckpointError, ConfigError, DataError, ProgramError, RunDirError, StorageError
from .evaluation import Evaluation, EvaluationSettings, evaluate
from .files import atomic_write, save_tensors, write_text  # noqa: F401  (the run folder's writers)
from .metrics import (elbo_terms, enumerated_elbo_terms, enumerated_log_evidence_diagnostics, label_predictions,
                      log_evidence_diagnostics)
from .numerics import resolve_device, seeded
from .programs import STOCK, CodeIdentity, Program, as_program, build_model, class_path

MARKER = ".pyro-vae-run"
LOCK = ".lock"
METRICS = "metrics.jsonl"
CONFIG = "config.toml"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
SNAPSHOTS = "snapshots"
EVALUATION = "evaluation.json"
CHECKPOINT_FORMAT = 1
# Keys that may differ between a checkpoint and the config that resumes it.
# A resume may change these. The data's file locations may change because the data itself may not:
# every run of a file dataset records its fingerprint, and other data is refused (check_same_data).
RESUMABLE_CHANGES = {("train", "epochs"), ("train", "max_minutes"), ("train", "callbacks"), ("data", "path"),
                     ("data", "test_path")}

_HELD: dict[str, int] = {}  # run folders this process holds the lock of, and how many times


# ---------------------------------------------------------------------------------------------
# metrics.jsonl


def append_line(path: Path, line: str) -> None:
    """Append one line (a crash mid-write leaves a partial last line, which :func:`read_lines` drops)."""
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
            f.flush()
    except OSError as e:
        raise StorageError(f"could not append to {path}: {e.strerror}.", e) from None


def read_json_lines(path: Path, log: Callable[[str], None] | None = None) -> list[dict]:
    """The complete JSON lines of ``path`` ([] if there is none). A last line that is not
    complete JSON (a process killed while writing it) is dropped, and ``log`` says so; a broken
    line before the last is refused, since that is not what an interrupted append leaves."""
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                if log is not None:
                    log(f"note: {path}'s last line was cut off (a process stopped while writing it); dropped it, "
                        f"kept the {len(out)} complete lines.")
                break
            raise RunDirError(f"{path} line {i + 1} is not JSON ({line[:60]!r}): the file was edited or damaged; "
                              f"restore it, or start a new run.") from None
    return out


# ---------------------------------------------------------------------------------------------
# Creating and removing run folders


def _protected(folder: Path) -> str:
    """Why ``folder`` may never be emptied ("" where it may)."""
    resolved = folder.resolve()
    cwd = Path.cwd().resolve()
    if resolved == Path(resolved.anchor):
        return "it is the filesystem root"
    if resolved == Path.home().resolve():
        return "it is the home folder"
    if resolved == cwd or resolved in cwd.parents:
        return "it is the current directory or one of its parents"
    return ""


def prepare_run_dir(run_dir: Path, overwrite: bool, command: str = "train") -> None:
    """Make ``run_dir`` a new, empty run folder with its marker, under this process's lock.

    An existing folder with contents is refused unless ``overwrite``; with it, only a folder
    pyro-vae created (it holds the marker) is emptied, and never a protected one (the current
    directory or a parent of it, the home folder, the root). A refused folder is left exactly as
    it was: nothing is created in it, not even the lock."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file, not a run folder. Choose another --out.")
    _replaceable(run_dir, overwrite)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create the run folder {run_dir}: {e.strerror}.", e) from None
    with run_lock(run_dir, command):
        for name in _replaceable(run_dir, overwrite):  # again, under the lock: it may have changed
            target = run_dir / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        write_text(run_dir / MARKER, json.dumps(_identity(command), indent=2) + "\n")


def discard_unstarted(run_dir: Path) -> bool:
    """Remove a run folder that :func:`prepare_run_dir` made and that holds nothing else yet (its
    marker and lock only: the run failed before writing anything, e.g. on refused data), so the
    same command can simply be run again. Anything else in it is kept."""
    run_dir = Path(run_dir)
    try:
        names = {p.name for p in run_dir.iterdir()}
    except OSError:
        return False
    if MARKER not in names or not names <= {MARKER, LOCK}:
        return False
    for name in names:
        (run_dir / name).unlink(missing_ok=True)
    run_dir.rmdir()
    return True


def _replaceable(run_dir: Path, overwrite: bool) -> list[str]:
    """What would be removed to make ``run_dir`` a new run folder ([] for a new or empty one), or a
    RunDirError saying why it may not be."""
    if not run_dir.is_dir():
        return []
    contents = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK)
    if not contents:
        return []
    shown = [n for n in contents if n != MARKER] or contents
    listed = ", ".join(shown[:6]) + (f" and {len(shown) - 6} more" if len(shown) > 6 else "")
    if not overwrite:
        raise RunDirError(
            f"run folder {run_dir} already exists (it holds {listed}). Pass --overwrite to replace it, "
            f"--resume {run_dir} to continue it, or --out to choose another folder.")
    why = _protected(run_dir)
    if why:
        raise RunDirError(f"refusing to empty {run_dir} even with --overwrite: {why}. Choose another --out.")
    if MARKER not in contents:
        raise RunDirError(
            f"refusing to empty {run_dir} even with --overwrite: pyro-vae did not create it (it has no "
            f"{MARKER} marker) and it holds {listed}. Choose another --out, or remove it yourself.")
    return contents


def _identity(command: str) -> dict[str, Any]:
    return {"created_by": f"pyro-vae {command}", "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "pid": os.getpid(), "host": socket.gethostname()}


# ---------------------------------------------------------------------------------------------
# One writer at a time


@contextlib.contextmanager
def run_lock(run_dir: Path | str, command: str) -> Iterator[None]:
    """Hold the exclusive lock of ``run_dir`` inside the block (re-entrant within this process).

    A folder another process holds is refused (:class:`RunDirError`), naming that process. The
    lock is ``fcntl.flock`` on ``RUN/.lock``, which the operating system releases with the
    process: a killed process never leaves it behind."""
    key = str(Path(run_dir).resolve())
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RunDirError(f"{path} is a link: refusing to lock through it. Remove it.") from None
        raise StorageError(f"cannot write in the run folder {run_dir}: {e.strerror}.", e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        os.close(fd)
        try:
            who = json.loads(holder)
            named = f"process {who.get('pid')} on {who.get('host')} ({who.get('command')}, since {who.get('since')})"
        except (ValueError, AttributeError):
            named = "another process"
        raise RunDirError(
            f"{run_dir} is in use by {named}: one process writes a run folder at a time. Wait for it to finish "
            f"or stop it (a lock left by a stopped process does not count).") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                                  "since": datetime.datetime.now().isoformat(timespec="seconds")}).encode(), 0)
        _HELD[key] = 1
        yield
    finally:
        _HELD.pop(key, None)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# checkpoints, config differences, loading a run


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
              "train": len(splits.held("train")), "test": len(splits.held("test")), "fingerprint": splits.fingerprint()}
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
    ``encode``, ``decode``, ``reconstruct``, ``sample``, ``elbo``, ``log_prob`` (and ``classify``)."""

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

    def given(self, labels=None) -> Program:
        """The program these calls run: given ``labels`` (integer classes, one per datapoint) where
        it takes them; a conditional program refuses to run without them."""
        if labels is None:
            return self.program.labelled(None) if self.program.labels_use == "required" else self.program
        return self.program.labelled(torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels))

    def _site(self, site: str | None = None) -> str:
        shapes = self.program.latent_shapes
        if site is not None:
            if site not in shapes:
                raise ProgramError(f"{self.program.name} has no latent site {site!r}; its sites: {', '.join(shapes)}.")
            return site
        if len(shapes) != 1:
            raise ProgramError(f"{self.program.name} has {len(shapes)} latent sites ({', '.join(shapes)}): name one, "
                               f"encode(x, site=...), or take them all with encode_sites(x); decode takes a dict by "
                               f"site.")
        return next(iter(shapes))

    @torch.no_grad()
    def encode(self, x, draws: int = 256, seed: int | None = None, site: str | None = None, labels=None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x)'s mean and standard deviation per latent coordinate, each (batch, *event): exact
        where q's family has them (the diagonal Gaussian, a categorical's class probabilities), else
        from ``draws`` draws. A program of several latent sites: ``site`` names one (see
        :meth:`encode_sites`). ``labels``: see :meth:`given`."""
        return self.encode_sites(x, draws, seed, labels)[self._site(site)]

    @torch.no_grad()
    def encode_sites(self, x, draws: int = 256, seed: int | None = None, labels=None
                     ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(mean, standard deviation) of q per latent site, in the guide's order; a site after the
        first is q given one draw of the sites before it (its q(z_1|x, z_2) at that z_2). x is
        encoded as evaluation sees it (binarized with the fixed seed under a Bernoulli likelihood:
        the inputs q was trained on)."""
        x = self.inputs(x, scored=True)
        out = {}
        with seeded(self.config.seed if seed is None else seed, self.device), self.given(labels).source.given(x) as at_x:
            latents = at_x.draw(1).latents
            for name, latent in latents.items():
                try:
                    out[name] = (latent.q.mean, latent.q.stddev)
                except NotImplementedError:
                    z = at_x.draw(draws).latents[name].value
                    out[name] = (z.mean(0), z.std(0))
        return out

    @torch.no_grad()
    def decode(self, z, pixels: str = "mean", labels=None) -> torch.Tensor:
        """Images for latents z (batch, *event), or a dict of them by site: E[x|z], or draws
        x ~ p(x|z) with ``pixels = "sample"`` (or where the mean has no closed form). ``labels``:
        see :meth:`given` (a conditional program's p(x|z, y))."""
        program = self.given(labels)
        if isinstance(z, dict):  # every latent site by name
            return program.decode({k: torch.as_tensor(v, device=self.device).float() for k, v in z.items()}, pixels)
        return program.decode({self._site(): torch.as_tensor(z, device=self.device).float()}, pixels)

    def reconstruct(self, x, pixels: str = "mean", labels=None) -> torch.Tensor:
        """decode(E_q[z|x]): the images x reconstructed through the posterior mean."""
        return self.decode(self.encode(x, labels=labels)[0], pixels, labels)

    @torch.no_grad()
    def sample(self, n: int | None = None, seed: int | None = None, pixels: str = "mean", labels=None) -> torch.Tensor:
        """n images decoded from z ~ p(z); a program that takes labels draws x ~ p(x|z, y) for the
        classes ``labels`` (one image each; required by a conditional program)."""
        program = self.given(labels)
        if labels is not None:
            n = len(labels) if n is None else n
            if n != len(labels):
                raise ConfigError(f"sample(n={n}, labels=...) with {len(labels)} labels: one image per label.")
        with seeded(self.config.seed if seed is None else seed, self.device):
            return program.decode(program.prior_draws(n), pixels)

    def _summed_over_y(self, labels) -> bool:
        """Whether a score sums the label out exactly: a semi-supervised program given no labels
        (its y a latent, scored as evaluation scores it)."""
        return labels is None and self.program.labels_use == "optional"

    @torch.no_grad()
    def elbo(self, x, samples: int = 1, seed: int | None = None, labels=None) -> torch.Tensor:
        """The ELBO per datapoint, in nats (``samples`` draws of z; the KL in closed form where it has
        one); given ``labels`` for a program that takes them (:meth:`given`). A semi-supervised
        program without labels: the ELBO with y summed over its classes exactly (one z per class)."""
        x = self.inputs(x, scored=True)
        with seeded(self.config.seed if seed is None else seed, self.device):
            if self._summed_over_y(labels):
                return enumerated_elbo_terms(self.program, x)["elbo"]
            return elbo_terms(self.given(labels), x, samples, posterior_means=False)["elbo"]

    @torch.no_grad()
    def classify(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """A semi-supervised program's classifier q(y|x): (argmax_y q(y|x), q(y|x) per class (batch, C))."""
        if self.program.labels_use != "optional":
            raise ProgramError(f"classify: {self.program.name} has no classifier q(y|x); a semi-supervised program "
                               f"(model(x, y=None), y a latent) has one.")
        return label_predictions(self.program, self.inputs(x, scored=True))

    @torch.no_grad()
    def log_prob(self, x, samples: int = 1000, seed: int | None = None, labels=None) -> dict[str, torch.Tensor]:
        """Importance-sampled log p(x) per datapoint, in nats, with K = ``samples`` draws from q(z|x):
        ``log_px``, its standard error ``stderr`` and the weights' effective sample size ``ess``
        (given ``labels``: log p(x|y) of a conditional program, log p(x, y) of a semi-supervised one).
        A semi-supervised program without labels: log p(x) = log sum_y p(x, y), y summed exactly and
        K draws of z per class (``log_px`` and ``stderr``, as evaluation reports it)."""
        x = self.inputs(x, scored=True)
        with seeded(self.config.seed if seed is None else seed, self.device):
            if self._summed_over_y(labels):
                return enumerated_log_evidence_diagnostics(self.program, x, samples, self.config.eval.chunk_pairs)
            return log_evidence_diagnostics(self.given(labels), x, samples, self.config.eval.chunk_pairs)


def selected_checkpoint(run_dir: Path, which: str = "auto") -> Path:
    """The checkpoint a run reports: ``"best"`` (best validation ELBO), ``"last"``, or ``"auto"``:
    the best one when the run kept a validation split, else the last."""
    if which not in ("auto", "best", "last"):
        raise ConfigError(f"checkpoint must be one of auto, best, last; got {which!r}.")
    best = run_dir / BEST
    if which == "best" and not best.is_file():
        raise RunDirError(f"{run_dir} has no {BEST}: it is written only by runs with train.validation > 0.")
    return best if which == "best" or (which == "auto" and best.is_file()) else run_dir / CHECKPOINT


def read_run_folder(run_dir: Path, checkpoint: str = "auto") -> tuple[Config, Path, dict]:
    """A run folder's config, the path of the checkpoint ``checkpoint`` selects and its state,
    checked against each other (a config edited since the checkpoint is refused)."""
    if not (run_dir / CONFIG).is_file():
        raise RunDirError(f"{run_dir} is not a pyro-vae run folder (no {CONFIG}).")
    config = Config.load(run_dir / CONFIG)
    path = Path(checkpoint) if checkpoint.endswith(".pt") else selected_checkpoint(run_dir, checkpoint)
    state = load_checkpoint(path)
    check_same_config(state, config, RESUMABLE_CHANGES | eval_keys(config), str(run_dir))
    return config, path, state


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
    config, path, state = read_run_folder(run_dir, checkpoint)
    dev = resolve_device(device or config.device)
    torch.manual_seed(config.seed)
    if with_data:
        splits = splits or DATASETS.build(config.data, "data").load()
        check_same_data(state, data_record(splits, given=False), run_dir)
    else:
        splits = None
    shape = splits.event_shape if splits is not None else tuple(state["data_shape"])
    program = _run_program(config, shape, run_dir, dev, model, trust_code)
    load_parameters(program.module, state["model"], path)
    data = prepare_data(config, program, dev, splits) if with_data else None
    return Run(run_dir, config, program, state, dev, data, path.name)


def load(run_dir: Path | str, device: str | None = None, checkpoint: str = "auto", *, trust_code: bool = False,
         model: torch.nn.Module | None = None) -> Run:
    """A trained model to use (``pyro_vae.load(RUN_DIR).encode(x)``): :func:`load_run` without its
    data; or an exported model (:func:`export_run`'s folder, loaded by :func:`load_export`)."""
    if (Path(run_dir) / EXPORT_WEIGHTS).is_file() and not (Path(run_dir) / CHECKPOINT).is_file():
        return load_export(run_dir, device, model=model)
    return load_run(run_dir, device, with_data=False, checkpoint=checkpoint, trust_code=trust_code, model=model)


# ---------------------------------------------------------------------------------------------
# Exported models: weights as safetensors, the config as TOML, no code and no pickle

EXPORT_WEIGHTS = "model.safetensors"
EXPORT_INFO = "export.json"
EXPORT_FORMAT = 1


def export_run(run_dir: Path | str, out: Path | str, checkpoint: str = "auto", overwrite: bool = False) -> Path:
    """Write a trained model to share: ``model.safetensors`` (the parameters, a format that holds
    tensors only: loading it runs no code, unlike a pickled checkpoint), ``config.toml`` (the run's
    resolved config: the model it rebuilds) and ``export.json`` (data shape, epoch, what it trained
    on, the weights' SHA-256). :func:`load` reads the folder back. Reads the checkpoint only; no
    program is built, so a user program's code is not imported."""
    from safetensors.torch import save

    run_dir, out = Path(run_dir), Path(out)
    config, path, state = read_run_folder(run_dir, checkpoint)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise RunDirError(f"{out} exists and is not empty: choose a new --out, or pass --overwrite to replace "
                              f"the export there.")
        if not (out / EXPORT_INFO).is_file():
            raise RunDirError(f"{out} is not an export folder (no {EXPORT_INFO}): pyro-vae replaces only an export.")
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state["model"].items()}
    weights = out / EXPORT_WEIGHTS
    data = save(tensors, metadata={"format": str(EXPORT_FORMAT)})
    atomic_write(weights, lambda f: f.write(data))
    info = {"format": EXPORT_FORMAT, "data_shape": list(state["data_shape"]), "epoch": state["epoch"],
            "checkpoint": path.name, "run_dir": str(run_dir), "data": state.get("data"),
            "sha256": hashlib.sha256(data).hexdigest()}
    write_text(out / CONFIG, config.to_toml())
    write_text(out / EXPORT_INFO, json.dumps(info, indent=2) + "\n")
    return out


def load_export(folder: Path | str, device: str | None = None, *, model: torch.nn.Module | None = None) -> Run:
    """A model :func:`export_run` wrote: the program its config names rebuilt (the stock VAE or a
    library program; a user program only as the object ``model``, since an export never imports
    code), its parameters read from safetensors (checked against the recorded SHA-256)."""
    from safetensors.torch import load

    folder = Path(folder)
    for name in (CONFIG, EXPORT_INFO, EXPORT_WEIGHTS):
        if not (folder / name).is_file():
            raise RunDirError(f"{folder} is not a pyro-vae export (no {name}); `pyro-vae export RUN --out DIR` writes one.")
    info = json.loads((folder / EXPORT_INFO).read_text())
    if info.get("format", 0) > EXPORT_FORMAT:
        raise CheckpointError(f"{folder} is an export of format {info['format']}, newer than this pyro-vae reads "
                              f"({EXPORT_FORMAT}): upgrade pyro-vae.")
    weights = folder / EXPORT_WEIGHTS
    data = weights.read_bytes()  # (read once: checked, then parsed)
    if hashlib.sha256(data).hexdigest() != info["sha256"]:
        raise CheckpointError(f"{weights} does not match the SHA-256 recorded in {EXPORT_INFO}: the file changed "
                              f"or is damaged. Export the run again.")
    config = Config.load(folder / CONFIG)
    shape = tuple(info["data_shape"])
    dev = resolve_device(device or config.device)
    torch.manual_seed(config.seed)
    try:
        program = _run_program(config, shape, folder, dev, model, trust_code=False)
    except ProgramError as e:
        if model is not None:
            raise
        raise ProgramError(f"{e} An export never imports code: load it with pyro_vae.load({str(folder)!r}, "
                           f"model=YourProgram(...)) given the program's object.") from None
    load_parameters(program.module, {k: v.to(dev) for k, v in load(data).items()}, weights)
    state = {"epoch": info["epoch"], "data_shape": info["data_shape"], "data": info.get("data") or {}}
    return Run(folder, config, program, state, dev, None, EXPORT_WEIGHTS)


def _run_program(config: Config, shape: tuple[int, ...], run_dir: Path, device: torch.device,
                 model: torch.nn.Module | None, trust_code: bool) -> Program:
    """The program a run folder's config names, on ``device``: the object ``model`` (checked to be
    of the run's class) or the one the config builds (user code only with ``trust_code``)."""
    if model is not None:
        _require_run_program(config, model, run_dir)
        program = Program(model, data_shape=shape)
    else:
        program = build_model(config, shape, trust_code=trust_code, where=str(run_dir))
    program.module.to(device)
    return program


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


def eval_keys(config: Config) -> set[tuple]:
    return {("eval", k) for k in config.to_dict()["eval"]} | {("device",)}


def checkpoint_state(config: Config, program, optimizer, generator: torch.Generator, epoch: int, step: int,
                     progress: dict | None = None, average=None,
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


def finish_run(run: Run, log: Callable[[str], None] = print, samples: int | None = None,
               dist: Distributed = SINGLE, progress: bool = False) -> Evaluation:
    """Final test evaluation (with importance-sampled log p(x)) and the run's pictures (rank 0 writes)."""
    cfg = run.config
    k = cfg.eval.samples if samples is None else samples
    if dist.main:
        log(f"evaluating log p(x) on {run.data.test.shape[0]} test datapoints with K = {k} importance samples ...")
    with run_lock(run.run_dir, "evaluate") if dist.main else nullcontext(), \
            resumable_evaluation(run.run_dir, EVALUATION, dist) as store:
        result = evaluate(run.program, run.data.test, EvaluationSettings.of(cfg, k), dist=dist, store=store,
                          progress=progress, labels=run.data.test_labels if run.program.labels_use else None)
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


def write_evaluation(run: Run, result: Evaluation, name: str = EVALUATION) -> Path:
    summary = {"epoch": run.epoch, "checkpoint": run.source, "dataset": run.config.data["name"], "split": "test",
               "model_program": run.config.model.program, **result.summary()}
    return write_text(run.run_dir / name, json.dumps(summary, indent=2) + "\n")
