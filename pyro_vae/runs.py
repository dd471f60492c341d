"""Run folders: their layout, checkpoints, and the guarantees around them.

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

Loading a run to use its trained model (``load_run``, ``load``, ``Run``, export) is ``trained.py``'s.

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
import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .config import CODE_KEY, Config
from .data import DataSplits
from .distributed import SINGLE, Distributed
from .errors import CheckpointError, ConfigError, DataError, RunDirError, StorageError
from .files import atomic_write, save_tensors, write_text  # noqa: F401  (the run folder's writers)
from .programs import CodeIdentity, as_program

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
                     ("data", "vocabulary"), ("data", "features"),
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


#: what a folder pyro-vae made holds, by the marker's ``kind``: --overwrite replaces one only with its like
FOLDER_KINDS = {"run": "a run folder", "comparison": "a comparison (pyro-vae compare's folder of runs)"}


def folder_kind(run_dir: Path) -> str | None:
    """The kind of folder pyro-vae made at ``run_dir`` ("run" or "comparison"), read from its marker
    (a marker written before kinds were recorded: a compare folder is one holding results.json or
    no config.toml); None where there is no marker."""
    marker = Path(run_dir) / MARKER
    if not marker.is_file():
        return None
    try:
        identity = json.loads(marker.read_text())
    except (ValueError, OSError):
        identity = {}
    kind = identity.get("kind")
    if kind in FOLDER_KINDS:
        return kind
    made_by_compare = identity.get("created_by") == "pyro-vae compare"
    looks_compared = (run_dir / "results.json").exists() or not (run_dir / CONFIG).exists()
    return "comparison" if made_by_compare and looks_compared else "run"


def prepare_run_dir(run_dir: Path, overwrite: bool, command: str = "train", kind: str = "run") -> None:
    """Make ``run_dir`` a new, empty folder of ``kind`` ("run", or "comparison") with its marker,
    under this process's lock.

    An existing folder with contents is refused unless ``overwrite``; with it, only a folder
    pyro-vae created (it holds the marker) of the same kind is emptied (a run with a run, a
    comparison with a comparison), and never a protected one (the current directory or a parent of
    it, the home folder, the root). A refused folder is left exactly as it was: nothing is created
    in it, not even the lock."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file, not a run folder. Choose another --out.")
    _replaceable(run_dir, overwrite, kind)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create the run folder {run_dir}: {e.strerror}.", e) from None
    with run_lock(run_dir, command):
        for name in _replaceable(run_dir, overwrite, kind):  # again, under the lock: it may have changed
            target = run_dir / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        write_text(run_dir / MARKER, json.dumps({**_identity(command), "kind": kind}, indent=2) + "\n")


def discard_unstarted(run_dir: Path) -> bool:
    """Remove a run folder that :func:`prepare_run_dir` made and that holds nothing a run wrote yet
    (its marker, lock, and the config.toml written as training starts: the run was refused before
    its first checkpoint, e.g. on refused data or a callback that failed to start), so the same
    command can simply be run again. A folder holding anything else is kept whole."""
    run_dir = Path(run_dir)
    try:
        names = {p.name for p in run_dir.iterdir()}
    except OSError:
        return False
    if MARKER not in names or not names <= {MARKER, LOCK, CONFIG}:
        return False
    for name in names:
        (run_dir / name).unlink(missing_ok=True)
    run_dir.rmdir()
    return True


def _replaceable(run_dir: Path, overwrite: bool, kind: str = "run") -> list[str]:
    """What would be removed to make ``run_dir`` a new folder of ``kind`` ([] for a new or empty
    one), or a RunDirError saying why it may not be."""
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
    there = folder_kind(run_dir)
    if there != kind:
        raise RunDirError(
            f"refusing to replace {run_dir} even with --overwrite: it is {FOLDER_KINDS[there]} (it holds {listed}), "
            f"and this command makes {FOLDER_KINDS[kind]}; --overwrite replaces a thing only with one of the same "
            f"kind. Choose another --out.")
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
    if getattr(splits, "feature_names", None):  # (the columns a count run trained on: later data is taken by name)
        record["feature_names"] = list(splits.feature_names)
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


#: the files of a run folder (or an export) that belong to the run: never an --out of another command
RUN_FILES = {MARKER, LOCK, CONFIG, CHECKPOINT, BEST, METRICS, EVALUATION, "model.safetensors", "export.json"}
#: what a command's --out may be, by what it writes: its suffixes, and how to recognize a file of that kind
OUTPUT_KINDS = {
    "picture": ((".png",), lambda head: head.startswith(b"\x89PNG")),
    "table": ((".npz", ".csv"), lambda head: True),
}


def check_output_file(out: Path, kind: str, overwrite: bool) -> Path:
    """Refuse an ``--out`` file that cannot be written as asked: another suffix than the kind of file
    the command writes (a picture: .png), one of a run folder's own files (its checkpoint, config,
    metrics ...), a folder, or an existing file without ``overwrite``, or with it a file of another
    kind (a picture replaces only a picture). Returns ``out``."""
    out = Path(out)
    suffixes, recognize = OUTPUT_KINDS[kind]
    if out.name in RUN_FILES or SNAPSHOTS in out.parts or (out.parent / MARKER).is_file() and out.suffix == ".pt":
        raise RunDirError(f"--out {out} is one of a run folder's own files: choose another name (the run's "
                          f"pictures go beside them, e.g. {out.parent / ('picture' + suffixes[0])}).")
    if out.is_dir():
        raise RunDirError(f"--out {out} is a folder; give a file path ending in {suffixes[0]}.")
    if out.suffix.lower() not in suffixes:
        raise ConfigError(f"--out {out}: this command writes a {kind} ({' or '.join(suffixes)}); give a path "
                          f"ending in {suffixes[0]}.")
    if out.exists():
        if not overwrite:
            raise RunDirError(f"{out} already exists; pass --overwrite to replace it or choose another --out.")
        with open(out, "rb") as f:
            head = f.read(8)
        if not recognize(head):
            raise RunDirError(f"refusing to replace {out} even with --overwrite: it is not a {kind} (it does not "
                              f"start as one), and --overwrite replaces a file only with one of the same kind.")
    return out


def read_metrics(run_dir: Path, log: Callable[[str], None] | None = None) -> list[dict]:
    """The run's metrics.jsonl lines (a partial last line dropped: ``runs.read_json_lines``)."""
    return read_json_lines(Path(run_dir) / METRICS, log)


def selected_checkpoint(run_dir: Path, which: str = "auto") -> Path:
    """The checkpoint a run reports: ``"best"`` (best validation ELBO), ``"last"``, or ``"auto"``:
    the best one when the run kept a validation split, else the last."""
    if which not in ("auto", "best", "last"):
        raise ConfigError(f"checkpoint must be one of auto, best, last; got {which!r}.")
    best = run_dir / BEST
    if which == "best" and not best.is_file():
        raise RunDirError(f"{run_dir} has no {BEST}: it is written only by runs with train.validation > 0.")
    return best if which == "best" or (which == "auto" and best.is_file()) else run_dir / CHECKPOINT


def checkpoint_path(run_dir: Path, name: str) -> Path:
    """A checkpoint named by path (``--checkpoint snapshots/epoch-00040.pt``): relative to the run
    folder where it is there (as a run's own files are named), else as given (from the current
    directory); refused, naming both places, where neither holds it."""
    given = Path(name).expanduser()
    inside = Path(run_dir) / given
    if not given.is_absolute() and inside.is_file():
        return inside
    if given.is_file():
        return given
    where = f"{given}" if given.is_absolute() else f"{inside} (in the run folder) or {given.absolute()}"
    raise CheckpointError(f"--checkpoint {name}: there is no checkpoint at {where}. A run's checkpoints are "
                          f"checkpoint.pt, best.pt (--checkpoint last / best) and snapshots/epoch-NNNNN.pt.")


def read_run_folder(run_dir: Path, checkpoint: str = "auto") -> tuple[Config, Path, dict]:
    """A run folder's config, the path of the checkpoint ``checkpoint`` selects and its state,
    checked against each other (a config edited since the checkpoint is refused)."""
    if not (run_dir / CONFIG).is_file():
        raise RunDirError(f"{run_dir} is not a pyro-vae run folder (no {CONFIG}).")
    config = Config.load(run_dir / CONFIG)
    path = checkpoint_path(run_dir, checkpoint) if checkpoint.endswith(".pt") else selected_checkpoint(run_dir, checkpoint)
    state = load_checkpoint(path)
    check_same_config(state, config, RESUMABLE_CHANGES | eval_keys(config), str(run_dir))
    return config, path, state


def check_finite_parameters(state: dict, path: Path) -> None:
    """Refuse a checkpoint's parameters that hold NaN or infinite values (a damaged file)."""
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(
            f"{path} holds NaN or infinite values in {', '.join(bad[:3])}{' and more' if len(bad) > 3 else ''}: the "
            f"file is damaged (or was written after a divergence). Use another checkpoint (--checkpoint best or a "
            f"snapshot), or train again.")


def load_parameters(module: torch.nn.Module, state: dict, path: Path) -> None:
    """``module.load_state_dict(state)``, a mismatch said in words (a checkpoint of other code), and
    a checkpoint holding NaN or infinite parameters refused (a damaged file)."""
    check_finite_parameters(state, path)
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


def check_same_device(state: dict, device: torch.device, run_dir: Path) -> None:
    """Refuse to resume on another kind of device than the checkpoint's: its random states belong to it."""
    written_on = state["rng"].get("device", "cpu")
    if written_on != device.type:
        raise CheckpointError(
            f"the checkpoint in {run_dir} was written on {written_on} and this run is on "
            f"{device.type}: its random states (data order, binarization, noise) belong to that "
            f"device. Resume it with device = \"{written_on}\" (--set device={written_on}), or start "
            f"a new run.")


def restore_random_state(state: dict, generator: torch.Generator, device: torch.device) -> None:
    """The global torch stream, the data generator and (on CUDA) the device's stream as the checkpoint
    recorded them (:func:`checkpoint_state`)."""
    torch.set_rng_state(state["rng"]["torch"])
    generator.set_state(state["rng"]["data"])
    if "cuda" in state["rng"] and device.type == "cuda":
        torch.cuda.set_rng_state(state["rng"]["cuda"], device)


def snapshot_path(run_dir: Path, epoch: int) -> Path:
    """Where the snapshot of ``epoch`` is kept (``train.snapshot_minutes``), its folder made."""
    folder = Path(run_dir) / SNAPSHOTS
    folder.mkdir(exist_ok=True)
    return folder / f"epoch-{epoch:05d}.pt"


def checkpoint_state(config: Config, program, optimizer, generator: torch.Generator, epoch: int, step: int,
                     progress: dict | None = None, average=None,
                     data: dict | None = None, objective: dict | None = None) -> dict:
    """Everything a run needs to resume: parameters, optimizer and random states (tensors and plain
    values), and what it trained on (``data``: :func:`data_record`). With ``average``, ``model``
    holds the averaged parameters and ``training_model`` the optimizer's; ``objective``, what the
    estimator keeps between steps (a running baseline), where it keeps anything."""
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
    if objective:
        state["objective"] = objective
    if average is not None:
        state["training_model"] = state["model"]  # the live tensors: the optimizer's values again after the block
        with average.applied():
            state["model"] = {k: v.clone() for k, v in module.state_dict().items()}
    return state


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


# Moved to trained.py (the trained-model API): importing them from here still works, with a DeprecationWarning.
_MOVED_TO_TRAINED = ("Run", "load_run", "load", "finish_run", "write_evaluation", "export_run", "load_export",
                     "EXPORT_WEIGHTS", "EXPORT_INFO", "EXPORT_FORMAT", "EncodedTable")


def __getattr__(name: str):
    if name in _MOVED_TO_TRAINED:
        import warnings

        warnings.warn(f"pyro_vae.runs.{name} is now pyro_vae.trained.{name}", DeprecationWarning, stacklevel=2)
        from . import trained  # (a deprecation path: resolved only when the old name is asked for)

        return getattr(trained, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
