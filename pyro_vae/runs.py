"""Run folders: what pyro-vae creates, writes and removes there, and the guarantees around it.

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
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import RunDirError, StorageError
from .files import atomic_write, save_tensors, write_text  # noqa: F401  (the run folder's writers)

MARKER = ".pyro-vae-run"
LOCK = ".lock"
METRICS = "metrics.jsonl"

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
