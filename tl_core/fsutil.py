"""Atomic writes: a file or folder is written under a unique temporary name beside its place, then
renamed into it, so a reader never sees half of it and two writers at once never share a file.

The CLI, the job worker, a Ray node and the app's threads may write the same cache entry, run file
or sample folder at the same moment: every temporary name is unique per process and call. They
are hidden (a leading dot), so a folder being copied to the artifacts location leaves them out.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def temporary_path(path: str | os.PathLike) -> Path:
    """A unique hidden name beside ``path`` to write before an atomic rename onto it.

    ``path``'s suffixes are kept at the end (``.npy``, ``.keras``, ``.weights.h5``), as the writers
    that check a file's extension (NumPy, Keras) want them.
    """
    path = Path(path)
    stem, _, suffixes = path.name.lstrip(".").partition(".")
    tail = f".{suffixes}" if suffixes else ""
    return path.with_name(f".{stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{tail}")


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name to write ``path``'s new content to; renamed onto ``path`` when the block ends
    without an error, removed otherwise (a failed write leaves the old file, or none)."""
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | os.PathLike, value: Any) -> None:
    """Write JSON to a temporary name and rename it, so a reader never sees half a file."""
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, default=str))


@contextlib.contextmanager
def new_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """A new, empty hidden folder beside ``folder`` to fill; renamed to ``folder`` when the block ends
    without an error, removed otherwise.

    If ``folder`` exists by then (another process filled its own first), that one is kept and this
    one dropped: both callers end with a whole folder.
    """
    folder = Path(folder)
    partial = temporary_path(folder)
    partial.mkdir(parents=True)
    try:
        yield partial
        try:
            partial.rename(folder)
        except OSError:
            if not folder.is_dir():  # not another writer that won the race
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unavailable."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # an old C library
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def swap_folder(folder: str | os.PathLike, replacement: str | os.PathLike) -> None:
    """Put ``replacement`` in ``folder``'s place and remove the old content.

    On Linux the two are exchanged in one step, so a concurrent reader finds the old folder or the
    new one, never none. Elsewhere (or on a file system without the exchange) the old folder is
    renamed away first: a reader may then miss it for an instant.
    """
    folder, replacement = Path(folder), Path(replacement)
    if not folder.exists():
        replacement.rename(folder)
        return
    if _exchange(folder, replacement):
        shutil.rmtree(replacement, ignore_errors=True)  # now holds the old content
        return
    stale = temporary_path(folder)
    folder.rename(stale)
    replacement.rename(folder)
    shutil.rmtree(stale, ignore_errors=True)
