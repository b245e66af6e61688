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
