"""Small helpers shared by the reader and the writer."""

from __future__ import annotations

import contextlib
import gc
import mmap
import os


@contextlib.contextmanager
def gc_paused():
    """Pause the cyclic GC while building many small acyclic objects: its
    repeated collections would cost more than building them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def remove_file(path):
    """Delete a file if it exists."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fsync_directory(directory: str):
    """Flush a directory's entries (renames) to stable storage where the OS allows."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # directories cannot be opened here (e.g. Windows)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: Marks files being written; they get their final names by a rename, and no
#: reader ever looks at them.
TEMP_MARK = ".tempstate"


def temp_name(path: str) -> str:
    """A fresh temporary name beside ``path``."""
    return f"{path}{TEMP_MARK}{int.from_bytes(os.urandom(8), 'little') >> 1}"


def atomic_write(path: str, data: bytes, *, fsync: bool = False) -> None:
    """Replace ``path`` with ``data`` all at once: write a temporary file beside it
    (``<path>.tempstate<random>``), optionally fsync it, then rename it over ``path``.
    Readers see the old file or the new one, never a part."""
    temp = temp_name(path)
    try:
        with open(temp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        remove_file(temp)
        raise


def close_map(buffer) -> None:
    """Close a read-only memory map unless arrays still view it (the map then goes
    with the last of them).  Anything that is not a map is left alone."""
    if isinstance(buffer, mmap.mmap):
        try:
            buffer.close()
        except BufferError:
            pass  # views still use it


def drop_pages(buffer, start: int, end: int) -> None:
    """Let the pages of a read-only map that hold bytes ``[start, end)`` leave this
    process's memory (``MADV_DONTNEED``).  The data stays in the OS file cache and a
    view reading it again faults it back in, so no value changes.  A no-op where the
    buffer is no map, the range is empty, or the OS cannot do it."""
    if not isinstance(buffer, mmap.mmap) or end <= start:
        return
    aligned = start - start % mmap.PAGESIZE  # madvise wants a page-aligned start
    try:
        buffer.madvise(mmap.MADV_DONTNEED, aligned, end - aligned)
    except (AttributeError, OSError, ValueError):
        pass  # no madvise here, or the map is closed: the kernel reclaims pages when it must
