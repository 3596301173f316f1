"""Arrays on disk: ``.npy`` files created, cut and read a few rows at a time.

The decoded pixels and the features of a large dataset live in memory-mapped ``.npy`` files.
:class:`Rows` stands in for a split of one, :func:`take_rows` reads rows with plain file reads,
and :class:`PageRelease` gives the pages a pass has touched back to the system, so a dataset
larger than memory is read from disk batch by batch.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# A pass over a memory-mapped file gives its pages back to the system after this many bytes.
RELEASE_BYTES = 32 * 1024**2


def create_npy(path: Path, shape: Sequence[int], dtype) -> np.memmap:
    """A new ``.npy`` file of ``shape``, mapped for writing, its disk space reserved up front.

    Reserving the space turns a full disk into an OSError here, rather than a crash (SIGBUS) when
    a page of the mapping is written later.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))
    if hasattr(os, "posix_fallocate") and array.size:
        with open(path, "r+b") as handle:
            try:
                os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
            except OSError as err:
                if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise
                # The file system cannot reserve space: write as we go.
    return array


def truncate_npy(path: Path, n_rows: int) -> None:
    """Cuts an ``.npy`` file down to its first ``n_rows`` rows, in place."""
    with open(path, "r+b") as handle:
        version = np.lib.format.read_magic(handle)
        start = handle.tell() + (2 if version == (1, 0) else 4)  # the header text follows its length
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
        end = handle.tell()
        if shape[0] == n_rows:
            return
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran_order,
                  "shape": (n_rows, *shape[1:])}
        # Fewer rows never take more digits, and NumPy pads the header: the new one fits in place.
        handle.seek(start)
        handle.write((repr(header).ljust(end - start - 1) + "\n").encode("latin1"))
        handle.truncate(end + n_rows * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)


def release_pages(array) -> None:
    """Drops the pages of a memory-mapped array (or :class:`Rows` of one) from this process's
    resident memory; a no-op for an array in memory.

    The pages stay in the system's file cache (dirty ones are still written back), so reading them
    again is cheap. Without this, every page a pass has read or written counts in the process's
    resident size, up to the whole file, although the system can take them back at any time.
    """
    mapping = getattr(array.array if isinstance(array, Rows) else array, "_mmap", None)
    if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):  # closed, or not supported: only a figure changes
            mapping.madvise(mmap.MADV_DONTNEED)


def take_rows(array, index) -> np.ndarray:
    """``array[index]`` as an array in memory, the rows read in ascending order (sequential on disk).

    ``array`` may be :class:`Rows`. The rows of a memory-mapped ``.npy`` file are read with file
    reads, not through the mapping: rows scattered over a file would map far more than their own
    bytes into the process (the kernel maps whole cached blocks, megabytes on file systems with
    large folios). Other arrays, a mapped scratch file among them, are indexed.
    """
    if isinstance(array, Rows):
        return take_rows(array.array, array.index[index])
    index = np.asarray(index, dtype=np.int64)
    if index.ndim == 0:
        return take_rows(array, index[None])[0]
    order = np.argsort(index, kind="stable")
    in_order = np.array_equal(order, np.arange(len(index)))
    rows = np.empty((len(index), *array.shape[1:]), array.dtype)
    sorted_rows = rows if in_order else np.empty_like(rows)
    source = _backing_file(array)
    if source is None or not len(index):
        sorted_rows[...] = array[index[order]]
    else:
        _read_rows(source, array.offset, index[order], sorted_rows)
    if not in_order:
        rows[order] = sorted_rows
    return rows


def _backing_file(array) -> str | None:
    """The file of a memory-mapped array that spans its whole ``.npy`` file's data (what
    ``np.load`` and :func:`create_npy` give), else ``None``."""
    filename = getattr(array, "filename", None)
    if not isinstance(array, np.memmap) or filename is None or not array.flags.c_contiguous:
        return None
    try:
        size = os.stat(filename).st_size
    except OSError:
        return None  # no name any more (a scratch file): read through the mapping
    return filename if array.offset + array.nbytes == size else None


def _read_rows(filename: str, offset: int, index: np.ndarray, out: np.ndarray) -> None:
    """Reads rows ``index`` (ascending) of the array stored at ``offset`` in ``filename`` into ``out``,
    one read per run of consecutive rows."""
    row_bytes = out[0].nbytes
    buffer = memoryview(out.reshape(-1).view(np.uint8))
    starts = np.flatnonzero(np.diff(index, prepend=index[0] - 2) != 1)
    with open(filename, "rb", buffering=0) as handle:
        for first, end in zip(starts, [*starts[1:], len(index)]):
            handle.seek(offset + int(index[first]) * row_bytes)
            wanted = (end - first) * row_bytes
            if handle.readinto(buffer[first * row_bytes : end * row_bytes]) != wanted:
                raise OSError(f"{filename} is shorter than its header says; delete it to rebuild the cache.")


class Rows:
    """Some rows of an array, typically a split of a memory-mapped cache, read only when asked for.

    ``rows[i:j]`` (any index) reads just those rows into memory; ``len``, ``shape`` and ``dtype``
    are those of ``array[index]``. It stands in for the copy ``array[index]`` where that copy
    could be larger than memory: training, evaluation and caching read it batch by batch.
    """

    def __init__(self, array, index) -> None:
        self.array = array
        self.index = np.asarray(index, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.array.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key) -> np.ndarray:
        return take_rows(self, key)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rows = take_rows(self.array, self.index)  # every row: for small data and tests only
        return rows if dtype is None else rows.astype(dtype)


def iter_chunks(x, size: int, written: Sequence = ()):
    """``(start, rows)`` for consecutive chunks of ``size`` rows of ``x``, each read into memory.

    ``x``: an array, a memory-mapped cache or :class:`Rows`. The pages of ``x`` and of the
    arrays the pass writes to (``written``) are released as it goes (:func:`release_pages`), so a
    pass over files larger than memory leaves the process's resident memory where it was.
    """
    pages = PageRelease(x, *written)
    for start in range(0, len(x), size):
        rows = take_rows(x, np.arange(start, min(start + size, len(x))))
        yield start, rows
        pages.count(rows.nbytes)
    pages.release()


class PageRelease:
    """Releases the pages of memory-mapped arrays (:func:`release_pages`) once every
    :data:`RELEASE_BYTES` read or written through them."""

    def __init__(self, *arrays) -> None:
        self.arrays = arrays
        self.n_bytes = 0

    def count(self, n_bytes: int) -> None:
        self.n_bytes += n_bytes
        if self.n_bytes >= RELEASE_BYTES:  # threads may race on the count: it only paces the releases
            self.n_bytes = 0
            self.release()

    def release(self) -> None:
        for array in self.arrays:
            release_pages(array)
