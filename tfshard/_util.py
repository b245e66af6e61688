"""Small helpers shared by the reader and the writer: checked file opening,
reading and writing (every failure a TFShardError that keeps the errno),
temporary files, memory maps, and escaping names for display."""

from __future__ import annotations

import contextlib
import errno as _errno
import gc
import mmap
import os
import stat
import time

from .errors import CheckpointNotFoundError, ReadFailedError, WriteFailedError

try:  # advisory locks: POSIX only (elsewhere temp files are never locked)
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - Windows
    _fcntl = None


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


def discard_file(path) -> None:
    """Delete a file if possible; tidy-up whose failure must not mask the real outcome."""
    try:
        os.unlink(path)
    except OSError:
        pass


# ---- display ---------------------------------------------------------------

def printable(text) -> str:
    """``text`` safe to print on any terminal: characters that are not printable
    (lone surrogates from undecodable bytes, control and format characters such
    as newlines or bidi overrides) become Python escapes (``\\udcff``,
    ``\\n``, ``\\u202e``); everything else is unchanged."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


# ---- reading ---------------------------------------------------------------

def _error_name(code) -> str:
    return _errno.errorcode.get(code, str(code)) if code is not None else "?"


def read_error(exc: OSError, path, what: str, missing: str | None = None):
    """The TFShardError for an OSError raised while opening or reading ``what`` at
    ``path``: CheckpointNotFoundError when it does not exist (``missing``, if
    given, is the message), ReadFailedError otherwise (a symlink loop,
    permissions, an I/O error...); both keep the errno."""
    code = exc.errno
    if code in (_errno.ENOENT, _errno.ENOTDIR, _errno.EISDIR):
        err = CheckpointNotFoundError(
            missing or f"{what} {path} does not exist or is not a file ({exc.strerror})",
            path=path)
        err.errno, err.strerror, err.filename = code, exc.strerror, str(path)
        return err
    return ReadFailedError(f"cannot read {what} {path}: {exc.strerror} ({_error_name(code)})",
                           errno=code, strerror=exc.strerror, path=path)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path, what: str, missing: str | None = None):
    """Open ``path`` for binary reading if it is a regular file (after following
    symlinks); returns the file object.

    The file is opened non-blocking and checked with ``fstat`` before anything
    is read, so a FIFO, device or socket is refused at once instead of blocking
    forever (and without a window between checking and opening).

    Raises
    ------
    CheckpointNotFoundError
        If it does not exist, or is a directory, FIFO or other non-regular file.
    ReadFailedError
        For any other failure of the system (ELOOP, EACCES, EIO...), errno kept.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | \
        getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise read_error(exc, path, what, missing) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            if stat.S_ISDIR(mode) and missing:
                raise CheckpointNotFoundError(missing, path=path)
            raise CheckpointNotFoundError(
                f"{what} {path} is {_kind(mode)}, not a regular file; it is not read",
                path=path)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except OSError as exc:
        os.close(fd)
        if isinstance(exc, CheckpointNotFoundError):
            raise
        raise read_error(exc, path, what, missing) from None
    except BaseException:
        os.close(fd)
        raise


def read_regular(path, what: str, limit: int | None = None,
                 missing: str | None = None) -> bytes:
    """The bytes of the regular file ``path`` (at most ``limit + 1`` of them when a
    limit is given, so the caller can tell an oversized file); errors as
    :func:`open_regular`."""
    with open_regular(path, what, missing) as f:
        try:
            return f.read() if limit is None else f.read(limit + 1)
        except OSError as exc:
            raise read_error(exc, path, what) from None


# ---- writing ---------------------------------------------------------------

def write_failed(exc: OSError, target, doing: str) -> WriteFailedError:
    """The WriteFailedError for an OSError raised while ``doing`` (e.g. "writing
    tensor 'w' to data shard 0") for the output ``target`` the caller asked for."""
    strerror = exc.strerror or str(exc)
    return WriteFailedError(
        f"cannot write {target}: {strerror} ({_error_name(exc.errno)}) while {doing}; "
        f"nothing was committed and what was at {target} before is unchanged",
        errno=exc.errno, strerror=strerror, path=target)


def write_all(fd: int, data, offset: int | None = None) -> None:
    """Write every byte of ``data`` (any buffer) to ``fd``, at ``offset`` if given
    (``pwrite``): short writes are continued, a write that makes no progress is
    an error (EIO), and every failure raises OSError."""
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    done, n = 0, view.nbytes
    while done < n:
        chunk = view[done:done + (1 << 30)]
        written = os.write(fd, chunk) if offset is None else os.pwrite(fd, chunk, offset + done)
        if written <= 0:
            raise OSError(_errno.EIO, "write() made no progress")
        done += written


def exchange_paths(a, b) -> bool:
    """Swap two names atomically (Linux ``renameat2(RENAME_EXCHANGE)``): both keep
    existing throughout.  False where the OS or file system cannot, leaving both
    unchanged; OSError for any other failure."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (ImportError, OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (_errno.EINVAL, _errno.ENOSYS, _errno.EOPNOTSUPP, _errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), a)


def lock_file(fd: int, *, blocking: bool) -> bool:
    """Take an exclusive advisory lock (flock) on an open file; False if another
    open file holds one (only when not ``blocking``).  Always True where the OS has
    no flock."""
    if _fcntl is None:
        return True
    try:
        _fcntl.flock(fd, _fcntl.LOCK_EX | (0 if blocking else _fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (_errno.ENOLCK, _errno.EOPNOTSUPP, _errno.EINVAL):
            return True  # a file system without locks: behave as if there were none
        raise
    return True


def create_exclusive(path) -> int:
    """Create ``path`` (which must not exist) for writing; returns the descriptor,
    holding an exclusive advisory lock that tells housekeeping the file is being
    written by a live process (a killed process's lock goes with it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
                 | getattr(os, "O_BINARY", 0), 0o666)
    try:
        lock_file(fd, blocking=True)
        # Between the create and the lock, a cleanup could have taken the file for
        # a dead process's: then it is gone, and writing into it would be lost.
        st, now = os.fstat(fd), os.lstat(path)
        if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
            raise FileNotFoundError(_errno.ENOENT, "the new temporary file was removed by a "
                                                   "concurrent cleanup", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_if_unused(path, min_age: float = 0.0) -> bool:
    """Delete a temporary file unless a live process holds the lock
    :func:`create_exclusive` took on it, or it was modified less than ``min_age``
    seconds ago; True if it was deleted.  Never follows into (or blocks on)
    anything but a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (min_age and st.st_mtime > time.time() - min_age) \
                or not lock_file(fd, blocking=False):
            return False
        # Still the same file under that name (no one replaced it meanwhile)?
        try:
            now = os.lstat(path)
        except OSError:
            return False
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return False
        discard_file(path)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


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


def write_temp(path: str, data, *, fsync: bool = False, target=None,
               what: str = "") -> tuple:
    """Write ``data`` to a new temporary file beside ``path``; returns ``(temp
    name, descriptor)``.  The descriptor stays open, holding the file's in-use
    lock, until the caller has renamed the file into place and closes it.

    Raises
    ------
    WriteFailedError
        Naming ``target`` (default ``path``) and ``what`` was being written; the
        temporary file is removed.
    """
    temp = temp_name(path)
    fd = -1
    try:
        fd = create_exclusive(temp)
        write_all(fd, data)
        if fsync:
            os.fsync(fd)
        return temp, fd
    except BaseException as exc:
        if fd >= 0:
            os.close(fd)
            remove_file(temp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteFailedError):
            raise write_failed(exc, target or path, f"writing {what or path}") from None
        raise


def atomic_write(path: str, data: bytes, *, fsync: bool = False, target=None,
                 what: str = "") -> None:
    """Replace ``path`` with ``data`` all at once: write a temporary file beside it
    (``<path>.tempstate<random>``), optionally fsync it, then rename it over ``path``.
    Readers see the old file or the new one, never a part.

    Raises
    ------
    WriteFailedError
        If any step fails (``path`` is then unchanged and no temporary file is
        left); it names ``target`` (default ``path``) and ``what`` was written.
    """
    temp, fd = write_temp(path, data, fsync=fsync, target=target, what=what)
    try:
        os.replace(temp, path)
    except OSError as exc:
        remove_file(temp)
        raise write_failed(exc, target or path, f"renaming {what or path} into place") \
            from None
    except BaseException:
        remove_file(temp)
        raise
    finally:
        os.close(fd)


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
