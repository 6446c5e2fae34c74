"""Durable, atomic file writes: every file the project writes goes through `atomic_write`."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Durably replace `path`: `write(tmp)` fills a temporary file in the same folder, which is flushed to disk
    (`fsync`) before `os.replace` renames it over `path`, and the folder is synced after. A crash or power cut
    leaves the old file or the new one, never an empty or half-written file behind a successful rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix or ".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # the rename itself is durable once the folder's entry is on disk (not possible on every OS)
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text to `path` durably and atomically (see `atomic_write`)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_csv(path: str | Path, error: type[Exception], missing: str | None = None, **kwargs):
    """`pandas.read_csv(path, **kwargs)`, with a missing file (`missing`, or "PATH: no such file") or an unreadable
    one raised as `error`, in one line."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise error(missing or f"{path}: no such file")
    try:
        return pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise error(f"{path}: not a readable CSV ({' '.join(str(e).split())[:120]})") from None
