"""Putting a finished output in place of the old one: the commit protocol.

An output is a *commit file* (``P.index`` of a TF checkpoint, the
``.safetensors.index.json`` of a sharded model) plus the files it names.  The
new files are written under temporary names first; :func:`install` then, while
holding an advisory lock (``flock`` on a lock file beside the output), does:

1. if any new file would land on the name of an existing one: rename the old
   commit file aside, then the colliding old files (``<name>.aside<token>``);
2. rename the new files into place, then the new commit file (the commit
   point: a single atomic rename);
3. rename the old files the new output does not reuse aside as well;

and, after releasing the lock, deletes the files it moved aside (``fsync`` of
the directory happens there too, outside the window of step 1-2).  Their names
go at once; the file system frees a large file's blocks, the slow part, when a
background thread closes a descriptor opened just before the unlink
(:func:`discard_later`), so the caller does not wait for it.  Renames never free data blocks, so the window in
which the commit file is missing is a few renames long, and only exists when
names collide (same shard count); with no collision the old commit file is
replaced atomically and there is no window at all.

At every instant, therefore, the old output or the new one is complete: under
its own names, or (inside the window) with the old files under their aside
names.  An error at any step renames everything back.  A process killed inside
the window leaves the old output aside; :func:`recover` (run under the lock
before every commit, and by readers that find the commit file missing) puts
it back, and removes aside files that a finished or killed commit left.  The
lock is what makes both safe: recovery never touches a live commit, and two
writers racing on one output commit one after the other, each moving the
other's files aside only under the lock, so the output at rest is always one
complete save.
"""

from __future__ import annotations

import errno as _errno
import os
import re
import threading
import time

from ._util import (
    discard_file,
    fsync_directory,
    lock_file,
    remove_file,
    remove_if_unused,
    write_failed,
)

#: Marks a file of an old output moved aside during a commit (``<name>.aside<token>``).
ASIDE_MARK = ".aside"
#: Lock file of an output: ``<output stem>.lock`` beside it.
LOCK_SUFFIX = ".lock"
#: How long a commit waits for another process's commit (which holds the lock for a
#: few renames) before giving up, in seconds.
LOCK_TIMEOUT = 120.0
#: Temporary files younger than this (seconds) are left alone by a commit's cleanup
#: even when unlocked (a writer locks its file just after creating it).
TEMP_MIN_AGE = 10.0
#: Whether files may stay open (and locked) while they are renamed; Windows refuses.
LOCKS_HELD_OPEN = os.name != "nt"

_ASIDE_RE = re.compile(r"^(?P<name>.+)" + re.escape(ASIDE_MARK) + r"(?P<token>\d+)$")


class OutputLock:
    """An exclusive advisory lock on ``path`` (created if needed) for the commit
    of an output.  A context manager; ``held`` says whether it was taken (False
    only for ``blocking=False`` when another process holds it, or when the lock
    file can neither be created nor opened, e.g. in a read-only directory).

    The lock file is deleted when the lock is released (so none is left beside
    the output).  That is safe because only the holder deletes it, and a process
    that got the lock checks that the path still names the file it locked,
    starting over on a fresh file otherwise.
    """

    def __init__(self, path: str, *, blocking: bool = True, create: bool = True,
                 timeout: float = LOCK_TIMEOUT, target=None):
        self.path = path
        self.fd = -1
        self.held = False
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while True:
            fd = self._open(path, create, target)
            if fd < 0:
                return
            try:
                got = lock_file(fd, blocking=False)
                # The lock file may have been deleted (with its checkpoint) by the
                # process that held it: then the lock taken is on a dead inode.
                if got and _same_file(fd, path):
                    self.fd, self.held = fd, True
                    return
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
            if got:
                continue  # the file was replaced meanwhile: lock the new one
            if not blocking:
                return
            if time.monotonic() > deadline:
                err = OSError(_errno.EAGAIN, f"another process has held the lock {path} for "
                                             f"{timeout:.0f} s")
                raise write_failed(err, target or path, "waiting for the output's lock")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    @staticmethod
    def _open(path, create, target) -> int:
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
        try:
            return os.open(path, flags | (os.O_CREAT if create else 0), 0o666)
        except OSError as exc:
            if not create or exc.errno not in (_errno.EACCES, _errno.EROFS, _errno.EPERM):
                if create:
                    raise write_failed(exc, target or path, f"creating the lock file {path}") \
                        from None
                return -1
        try:  # a directory we may not create files in: an existing lock file still works
            return os.open(path, flags)
        except OSError:
            return -1

    def release(self):
        if self.fd >= 0:
            discard_file(self.path)  # while still holding it: see the class docstring
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = -1
            self.held = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class Layout:
    """Which files in ``directory`` belong to one output.

    ``commit`` is the commit file's path; ``members`` matches the basenames of
    the output's other files (of any save: data files of every shard count);
    ``temps`` matches the basenames of its temporary files (removed by recovery
    when no live process holds them)."""

    def __init__(self, commit: str, members: re.Pattern, temps: re.Pattern | None = None,
                 lock: str | None = None):
        self.commit = commit
        self.directory = os.path.dirname(commit) or "."
        self.members = members
        self.temps = temps
        self.lock = lock

    def scan(self):
        """``(members, asides, temps)``: paths of existing member files (the
        commit file excluded), ``{token: [(aside path, original path)]}``, and
        temporary files."""
        base = os.path.basename(self.commit)
        members, asides, temps = [], {}, []
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return members, asides, temps
        for name in names:
            m = _ASIDE_RE.match(name)
            if m and (m["name"] == base or self.members.match(m["name"])):
                asides.setdefault(m["token"], []).append(
                    (os.path.join(self.directory, name),
                     os.path.join(self.directory, m["name"])))
            elif name != base and self.members.match(name):
                members.append(os.path.join(self.directory, name))
            elif self.temps is not None and self.temps.match(name):
                temps.append(os.path.join(self.directory, name))
        return members, asides, temps


def _token() -> str:
    return str(int.from_bytes(os.urandom(8), "little") >> 1)


def _recover_locked(layout: Layout, asides: dict, temps=(),
                    min_age: float = TEMP_MIN_AGE) -> bool:
    """With the lock held: put back an old output a killed commit left aside
    (when the commit file is missing), delete every other aside file and those of
    ``temps`` no live process holds (and not modified in the last ``min_age``
    seconds).  Returns whether it restored one."""
    restored = False
    if asides and not os.path.lexists(layout.commit):
        candidates = []
        for token, files in asides.items():
            for aside, original in files:
                if original == layout.commit:
                    try:
                        candidates.append((os.lstat(aside).st_ctime_ns, token))
                    except OSError:
                        pass
        if candidates:
            _, token = max(candidates)
            files = asides.pop(token)
            # Members first, the commit file last: it makes the old output current.
            files.sort(key=lambda f: f[1] == layout.commit)
            for aside, original in files:
                os.replace(aside, original)
            restored = True
    for files in asides.values():
        for aside, _ in files:
            discard_file(aside)
    for temp in temps:
        remove_if_unused(temp, min_age)
    return restored


def recover(layout: Layout, *, blocking: bool = False, timeout: float = 2.0) -> bool:
    """Repair what a killed commit left of ``layout``'s output: restore the old
    output from its aside names if the commit file is missing, and delete stale
    aside files (temporary files are left to writers and the manager).  Only
    under the lock (so never a live commit's files); returns False without
    touching anything when the lock is busy or cannot be taken (a read-only
    directory).  True if an output was restored."""
    _, asides, _ = layout.scan()
    if not asides:
        return False
    try:
        with OutputLock(layout.lock, blocking=blocking, timeout=timeout,
                        create=True) as lock:
            if not lock.held:
                return False
            _, asides, _ = layout.scan()
            return _recover_locked(layout, asides)
    except OSError:
        return False  # repair is best effort; the caller reports what it finds


def install(layout: Layout, commit_temp: str, moves: list, *, fsync: bool = False,
            target=None, what: str = "the output") -> None:
    """Install a finished output: ``moves`` is ``[(temporary path, final path)]`` of
    its files other than the commit file, written as ``commit_temp``.  See the
    module docstring for the protocol and its guarantee.

    Raises
    ------
    WriteFailedError
        If a rename fails; everything is renamed back first, so the old output is
        in place (and the new files are back under their temporary names, for
        the caller to remove).
    """
    target = target or layout.commit
    finals = {final for _, final in moves}
    aside: list = []     # (aside path, original path), in the order moved
    installed: list = []  # (temporary path, final path)
    links: list = []     # second names of the old commit file, deleted after the commit
    token = _token()

    def move_aside(path):
        dst = path + ASIDE_MARK + token
        os.rename(path, dst)
        aside.append((dst, path))

    with OutputLock(layout.lock, target=target):
        members, asides, temps = layout.scan()
        own = {temp for temp, _ in moves} | {commit_temp}
        _recover_locked(layout, asides, [t for t in temps if t not in own])
        members, _, _ = layout.scan()
        step = "moving the old files aside"
        try:
            colliding = [p for p in members if p in finals]
            if colliding:
                if os.path.lexists(layout.commit):
                    move_aside(layout.commit)
                for path in colliding:
                    move_aside(path)
            step = "renaming the new files into place"
            for temp, final in moves:
                os.replace(temp, final)
                installed.append((temp, final))
            step = f"renaming the new {os.path.basename(layout.commit)} into place"
            if not colliding and os.path.isfile(layout.commit):
                # A second name for the old commit file: the rename then frees no
                # blocks (a large single-file output's are freed after the lock).
                link = layout.commit + ASIDE_MARK + token
                try:
                    os.link(layout.commit, link)
                    links.append(link)
                except OSError:
                    pass  # no hard links here: the rename frees them itself
            os.replace(commit_temp, layout.commit)
        except BaseException as exc:
            _undo(installed, aside)
            for link in links:
                discard_file(link)
            if isinstance(exc, OSError):
                raise write_failed(exc, target, f"{step} ({what})") from None
            raise
        # Committed.  Old files the new output does not use leave under the lock,
        # so no later commit's files are ever taken for them.
        for path in members:
            if path not in finals:
                try:
                    move_aside(path)
                except OSError:
                    pass  # left as a stale file; the next commit moves it
    if fsync:
        fsync_directory(layout.directory)
    for path in links:
        discard_file(path)
    discard_later([a for a, _ in aside])


#: Files from this size on are freed off the caller's time by :func:`discard_later`.
FREE_LATER_MIN = 1 << 20
_freer = None
_freer_lock = threading.Lock()


def discard_later(paths) -> None:
    """Delete files now, and free the blocks of the large ones later.

    Each name is unlinked at once (so the directory holds only the new output when
    the commit returns, and a kill leaves nothing behind), but a large file is first
    opened: the file system then frees its blocks, which takes milliseconds per
    hundred megabytes on ext4, only when a background thread closes that
    descriptor.  Where an open file cannot be unlinked (Windows), or the open fails,
    the file is deleted the plain way.  Errors are ignored, as by ``discard_file``.
    """
    held = []
    for path in paths:
        fd = -1
        if LOCKS_HELD_OPEN:
            try:
                if os.lstat(path).st_size >= FREE_LATER_MIN:
                    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
                                 | getattr(os, "O_NOFOLLOW", 0))
            except OSError:
                fd = -1
        discard_file(path)
        if fd >= 0:
            held.append(fd)
    if held:
        try:
            _freeing_thread().submit(_close_all, held)
        except RuntimeError:  # interpreter shutting down: no new threads
            _close_all(held)


def _freeing_thread():
    """The one worker thread that closes descriptors of deleted files (made on first
    use; the interpreter waits for it at exit, so nothing is left open)."""
    global _freer
    if _freer is None:
        from concurrent.futures import ThreadPoolExecutor

        with _freer_lock:
            if _freer is None:
                _freer = ThreadPoolExecutor(1, thread_name_prefix="tfshard-free")
    return _freer


def _close_all(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _undo(installed: list, aside: list) -> None:
    """Roll a failed commit back: new files to their temporary names, then the old
    ones back (the old commit file last)."""
    for temp, final in reversed(installed):
        try:
            os.replace(final, temp)
        except OSError:
            remove_file(final)
    for path, original in reversed(aside):
        try:
            os.replace(path, original)
        except OSError:
            pass  # left aside: recover() restores it under the lock later
