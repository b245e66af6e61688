"""Small helpers shared by the reader and the writer."""

from __future__ import annotations

import contextlib
import gc
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
