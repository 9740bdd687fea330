"""Page a replay ring's image memory in ahead of its write head, on a background thread.

A ring's image arrays (:func:`untouched_zeros`) only reserve address space: the kernel maps and
zeroes each page the first time the ring writes to it. For an image ring that first touch costs
more than the copy of the image itself (measured here: a 128x128x3 image into fresh ring memory
13-54 us, into memory used before 7 us), and in the learner it sits on the path of every
transition until the ring has wrapped once, which for most runs (``train.buffer_capacity`` 200k)
is never.
:class:`PageAhead` moves that work to a thread that asks the kernel to populate the rows just
past the head (``madvise(MADV_POPULATE_WRITE)``, Linux 5.14 and later). The call releases the
GIL and changes no byte of the ring, so it never races the writer; only ``window_bytes`` are
populated before the ring needs them, so a run commits memory no sooner than it would anyway,
less that window. Where the call is refused (another OS, an older kernel) the thread stops and
the ring pages itself in as before.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
import threading
from collections.abc import Iterable

import numpy as np

MADV_POPULATE_WRITE = 23  # linux/mman.h (asm-generic); Python's mmap module does not name it before 3.13
WINDOW_BYTES = 256 * 1024 * 1024
CHUNK_BYTES = 8 * 1024 * 1024  # one madvise call: short enough that close() never waits long
MAPPED_BYTES = 4 * 1024 * 1024  # from this size arrays get a mapping of their own (numpy's own huge-page size)


def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    return libc.madvise


class PageAhead:
    """Keeps rows ``[0, head + window)`` of ``arrays`` populated; :meth:`advance` moves the head.

    Args:
        arrays: the ring's arrays, all with the ring's capacity as their first axis. Only those with
            rows of at least a page (images) are paged; state rows are too small to matter.
        window_bytes: how far past the head, in bytes of all paged arrays together, to populate.
    """

    def __init__(self, arrays: Iterable[np.ndarray], window_bytes: int = WINDOW_BYTES) -> None:
        self.arrays = [a for a in arrays if a.ndim > 1 and a[0].nbytes >= mmap.PAGESIZE and a.flags.c_contiguous]
        self.capacity = len(self.arrays[0]) if self.arrays else 0
        row_bytes = sum(a[0].nbytes for a in self.arrays)
        self.window_rows = max(1, window_bytes // row_bytes) if row_bytes else 0
        self.chunk_rows = max(1, CHUNK_BYTES // row_bytes) if row_bytes else 0
        self.populated = 0  # rows [0, populated) are in memory
        self.refused: str | None = None  # why the kernel said no, if it did
        self._target = 0
        self._wake = threading.Condition()
        self._stop = False
        self._madvise = _madvise()
        self._thread: threading.Thread | None = None
        if self.arrays and self._madvise is not None:
            self._thread = threading.Thread(target=self._run, name="hilrl-page-ahead", daemon=True)
            self._thread.start()

    @property
    def active(self) -> bool:
        """Whether the thread is still paging (false once everything is in, when refused, or after close)."""
        return self._thread is not None and self._thread.is_alive()

    def advance(self, head: int) -> None:
        """The ring has written rows up to ``head`` (its size): populate up to ``head + window``."""
        target = min(self.capacity, head + self.window_rows)
        if target > self._target:
            with self._wake:
                self._target = target
                self._wake.notify()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current target is populated (or paging stopped); for tests and benchmarks."""
        with self._wake:
            return self._wake.wait_for(lambda: self.populated >= self._target or not self.active, timeout)

    def close(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._stop or self.populated < self._target)
                if self._stop:
                    return
                start, stop = self.populated, min(self._target, self.populated + self.chunk_rows)
            for array in self.arrays:
                if not self._populate(array, start, stop):
                    with self._wake:
                        self._wake.notify_all()
                    return
            with self._wake:
                self.populated = stop
                self._wake.notify_all()
                if stop >= self.capacity:
                    return

    def _populate(self, array: np.ndarray, start: int, stop: int) -> bool:
        row = array[0].nbytes
        begin = array.ctypes.data + start * row
        end = array.ctypes.data + stop * row
        aligned = begin - begin % mmap.PAGESIZE  # the page holding the first row is part of the same mapping
        if self._madvise(aligned, end - aligned, MADV_POPULATE_WRITE) != 0:
            self.refused = f"madvise(MADV_POPULATE_WRITE) failed: errno {ctypes.get_errno()}"
            return False
        return True


def untouched_zeros(shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """A zero array of at least ``MAPPED_BYTES`` in an anonymous mapping of its own: no page is in RAM yet.

    ``np.zeros`` gets such memory only when the allocator maps it afresh; memory it recycles is already
    resident, and then neither :class:`PageAhead` nor the shared ``next_obs`` form (never-written rows
    cost nothing) does what it says. Smaller arrays come from ``np.zeros``.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < MAPPED_BYTES:
        return np.zeros(shape, dtype)
    memory = mmap.mmap(-1, nbytes)
    if hasattr(mmap, "MADV_HUGEPAGE"):  # as numpy asks for its large arrays: fewer faults, smaller page tables
        memory.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(memory, dtype).reshape(shape)


def resident_fraction(array: np.ndarray, rows: slice) -> float:
    """Fraction of the memory pages under ``array[rows]`` that are in RAM now (Linux ``mincore``).

    How far a ring (or :class:`PageAhead`) has faulted its memory in; ``rows`` needs a start and a stop.
    """
    if not sys.platform.startswith("linux"):
        raise OSError("resident_fraction reads mincore, a Linux call")
    libc = ctypes.CDLL(None, use_errno=True)
    row = array[0].nbytes
    begin = array.ctypes.data + rows.start * row
    aligned = begin - begin % mmap.PAGESIZE
    length = array.ctypes.data + rows.stop * row - aligned
    pages = -(-length // mmap.PAGESIZE)
    flags = (ctypes.c_ubyte * pages)()
    if libc.mincore(ctypes.c_void_p(aligned), ctypes.c_size_t(length), flags) != 0:
        raise OSError(ctypes.get_errno(), "mincore failed")
    return sum(flag & 1 for flag in flags) / pages
