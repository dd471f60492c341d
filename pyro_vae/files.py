"""Files written whole or not at all.

Every file pyro-vae writes goes to a new temporary file created exclusively in the target's folder
(``tempfile.mkstemp``: never through a link planted there), is flushed and fsynced, then renamed
over the target (``os.replace`` replaces a link at the target instead of following it). On
failure the temporary file is removed and the target keeps its last good contents.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import torch

from .errors import StorageError


def atomic_write(path: Path | str, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` whole or not at all: ``write(file)`` fills a new temporary file in the same
    folder, which is flushed, fsynced and renamed over ``path``. On failure the temporary file is
    removed, ``path`` is left as it was, and a :class:`StorageError` says what failed."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise StorageError(f"cannot create a file in {path.parent}: {e.strerror}.", e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        cause = _os_cause(e)
        if cause is None and isinstance(e, RuntimeError) and "writ" in str(e).lower() and "fail" in str(e).lower():
            cause = OSError(errno.EIO, str(e).strip().splitlines()[0])  # torch's own writer failed (a full disk)
        if cause is not None:
            kept = " Its previous contents are intact." if path.exists() else ""
            full = " (the disk is full)" if cause.errno == errno.ENOSPC else ""
            raise StorageError(f"could not write {path}: {cause.strerror or cause}{full}.{kept}", cause) from None
        raise
    return path


def _os_cause(e: BaseException) -> OSError | None:
    """The operating system's refusal behind ``e``: e itself, or the OSError a library's writer
    (torch.save's) met and wrapped in its own error (a RuntimeError); None for anything else."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def write_text(path: Path | str, text: str) -> Path:
    """:func:`atomic_write` of a text file (UTF-8)."""
    return atomic_write(path, lambda f: f.write(text.encode()))


def save_tensors(path: Path | str, state: Any) -> Path:
    """:func:`atomic_write` of ``torch.save(state)``."""
    return atomic_write(path, lambda f: torch.save(state, f))
