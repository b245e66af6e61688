"""Numbered checkpoints in one directory: :class:`CheckpointManager`.

Modelled on ``tf.train.CheckpointManager``: the same file names
(``<directory>/<name>-<number>``), the same ``checkpoint`` state file (so
``tf.train.latest_checkpoint`` and TF's own manager agree with it), and the
same retention rules (``max_to_keep``, ``keep_checkpoint_every_n_hours``).

One ordering differs on purpose: the state file is updated *before* old
checkpoints are deleted, so a crash at any moment never leaves a state file
that names a checkpoint which is gone.  What a crash can leave (temporary
files, an unlisted checkpoint, data files without an index) is reclaimed by the
housekeeping sweep after the next successful save (:meth:`CheckpointManager.save`).
Two differences from TensorFlow's manager protect files that are not the
manager's: it never deletes anything outside its directory (even when the
state file lists such paths) unless ``delete_outside_directory=True``, and the
sweep only touches names of its own pattern.
"""

from __future__ import annotations

import glob
import json
import os
import re
import stat
import time

from . import _commit
from ._util import (
    TEMP_MARK,
    atomic_write,
    discard_file,
    read_regular,
    remove_file,
    remove_if_unused,
)
from .errors import InvalidTensorError, OutputExistsError, TFShardError
from .paths import checkpoint_layout, index_filename, lock_filename
from .state import STATE_FILENAME, CheckpointState, read_state, write_state
from .storage import is_url
from .writer import DEFAULT_ALIGNMENT, CheckpointWriter

__all__ = ["CheckpointManager"]


class CheckpointManager:
    """Save numbered checkpoints into ``directory`` and keep the newest few.

    Parameters
    ----------
    directory : str or os.PathLike
        Where checkpoints and the ``checkpoint`` state file live (created if needed);
        or a directory URL (``s3://bucket/run``): each checkpoint is uploaded, data
        objects first, its index next, the state file last
        (:class:`tfshard.writer_remote.RemoteCheckpointManager`).
    max_to_keep : int or None
        How many recent checkpoints to keep (default 5); None keeps all.
    checkpoint_name : str
        File name stem: checkpoints are ``<directory>/<checkpoint_name>-<number>``.
    keep_checkpoint_every_n_hours : float, optional
        Additionally keep, forever, one checkpoint per this many hours (it is
        dropped from the state file's list but not deleted), as TF does.
    storage_options : dict, optional
        For a URL: options for fsspec's filesystem.
    num_shards, max_shard_size, alignment, fsync
        Passed to :class:`~tfshard.CheckpointWriter` for every save; ``fsync``
        also covers the state file.
    delete_outside_directory : bool
        Delete old checkpoints the state file lists outside ``directory`` too,
        as TensorFlow's manager does.  By default they are dropped from the
        list but their files are left alone.

    Notes
    -----
    After each successful save the manager sweeps ``directory`` for what
    killed saves leave, touching only names of its own pattern
    (``<checkpoint_name>-<number>.*``, and temporary files of the state file and of
    ``<checkpoint_name>.deleting``):

    * temporary files (``*.tempstate*``) that no live process holds and that
      are older than the save just made.  Every writer holds an ``flock`` on
      its temporary files while it writes them (a killed process's lock goes
      with it): the lock, not the age, is what protects a live writer's files,
      so even a save that has been running for hours is safe;
    * old files a commit left moved aside: restored if their checkpoint's index
      is missing (a commit killed in its window), deleted otherwise;
    * data files without an index, older than the save just made;
    * complete checkpoints no state entry lists, older than the save just
      made, that are either numbered above every listed checkpoint (a save
      killed after its commit, before the state file named it) or were being
      deleted when a save was killed (recorded in ``<checkpoint_name>.deleting``
      beforehand).  Other unlisted checkpoints (those
      ``keep_checkpoint_every_n_hours`` preserves, or another tool's) are kept.

    Files of a checkpoint are deleted only while holding that checkpoint's
    commit lock, so a commit in progress is never touched.  Two managers saving
    into one directory at the same time are not supported (the state file is
    last-writer-wins, as with TensorFlow's manager).

    Examples
    --------
    >>> mgr = tfshard.CheckpointManager("train/", max_to_keep=3)  # doctest: +SKIP
    >>> mgr.save({"w": w, "global_step": np.int64(100)})          # doctest: +SKIP
    'train/ckpt-1'
    """

    def __new__(cls, directory=None, *args, **kwargs):
        # A directory URL: uploads, state file last (tfshard.writer_remote).
        if cls is CheckpointManager and directory is not None and is_url(directory):
            from .writer_remote import RemoteCheckpointManager

            return super().__new__(RemoteCheckpointManager)
        return super().__new__(cls)

    def __init__(self, directory, max_to_keep: int | None = 5, *,
                 storage_options=None,
                 checkpoint_name: str = "ckpt",
                 keep_checkpoint_every_n_hours: float | None = None,
                 num_shards: int = 1, max_shard_size: int | None = None,
                 alignment: int = DEFAULT_ALIGNMENT, fsync: bool = False,
                 delete_outside_directory: bool = False):
        self._configure(os.fspath(directory), max_to_keep, checkpoint_name,
                        keep_checkpoint_every_n_hours, delete_outside_directory,
                        dict(num_shards=num_shards, max_shard_size=max_shard_size,
                             alignment=alignment, fsync=fsync), os.sep)
        os.makedirs(self.directory, exist_ok=True)
        self._recover(time.time())

    def _configure(self, directory: str, max_to_keep, checkpoint_name: str,
                   keep_checkpoint_every_n_hours, delete_outside_directory, writer_options: dict,
                   separator: str) -> None:
        """Check and keep the settings (the remote manager's too; ``separator`` is what a
        plain file name may not contain there)."""
        if max_to_keep is not None and (not isinstance(max_to_keep, int) or max_to_keep < 1):
            raise InvalidTensorError(f"max_to_keep must be a positive integer or None, got "
                                     f"{max_to_keep!r}")
        if not checkpoint_name or separator in checkpoint_name:
            raise InvalidTensorError(f"checkpoint_name must be a plain file name, got "
                                     f"{checkpoint_name!r}")
        self.directory = directory
        self.max_to_keep = max_to_keep
        self.checkpoint_name = checkpoint_name
        self.keep_checkpoint_every_n_hours = keep_checkpoint_every_n_hours
        self._writer_options = writer_options
        self._fsync = writer_options["fsync"]
        self._delete_outside = bool(delete_outside_directory)

    def _read_state(self):
        """The directory's state file, or None."""
        return read_state(self.directory)

    def _recover(self, now: float):
        """Pick up the checkpoints an earlier run recorded in the state file."""
        st = self._read_state()
        # Prefix -> save time, oldest first: the checkpoints that may be deleted.
        self._kept: dict[str, float] = {}
        if st is None:
            self._latest = None
            # A second early, so a manager re-created at once cannot treat a
            # checkpoint saved in the same second as preserved.
            self._last_preserved = now - 1.0
            return
        self._latest = st.model_checkpoint_path
        # Never later than now: a clock that went back must not make old
        # checkpoints look preserved or young.
        self._last_preserved = min(st.last_preserved_timestamp or 0.0, now)
        times = st.all_model_checkpoint_timestamps
        if not times:
            times = [self._last_preserved] * len(st.all_model_checkpoint_paths)
        for prefix, stamp in zip(st.all_model_checkpoint_paths, times):
            stamp = min(stamp, now)
            # Checkpoints no newer than the last preserved one are not managed
            # (TF's rule, so both managers list the same checkpoints).
            if stamp > self._last_preserved:
                self._kept[prefix] = stamp

    @property
    def latest_checkpoint(self) -> str | None:
        """Prefix of the newest checkpoint, or None before the first save."""
        return self._latest

    @property
    def checkpoints(self) -> list:
        """Prefixes of the checkpoints being kept, oldest first."""
        return list(self._kept)

    def _next_number(self) -> int:
        pattern = re.compile(re.escape(self.checkpoint_name) + r"-(\d+)$")
        numbers = [int(m.group(1)) for p in list(self._kept) + [self._latest or ""]
                   if (m := pattern.match(os.path.basename(p)))]
        return max(numbers, default=0) + 1

    def save(self, tensors, checkpoint_number: int | None = None) -> str:
        """Write ``tensors`` as the next checkpoint, record it, drop the oldest.

        Parameters
        ----------
        tensors : mapping or iterable of (name, array)
            As for :func:`tfshard.save`.
        checkpoint_number : int, optional
            The number in the file name; by default one more than the highest so far.

        Returns
        -------
        str
            The new checkpoint's prefix.
        """
        number = self._next_number() if checkpoint_number is None else int(checkpoint_number)
        prefix = os.path.join(self.directory, f"{self.checkpoint_name}-{number}")
        self._check_state_path()
        with CheckpointWriter(prefix, **self._writer_options) as w:
            w.add_all(tensors)
        now = time.time()
        self._kept.pop(prefix, None)  # saving a number again makes it the newest
        self._kept[prefix] = now
        self._latest = prefix
        doomed = [p for p in self._retire() if self._may_delete(p)]
        journal = os.path.join(self.directory, self.checkpoint_name + _JOURNAL_SUFFIX)
        if doomed:
            # Written before the state file drops them: a save killed before they
            # are gone leaves them unlisted, and this tells the sweep to finish
            # (with what an earlier killed save had recorded).
            pending = _read_journal(journal) | {os.path.basename(p) for p in doomed}
            atomic_write(journal, json.dumps(sorted(pending)).encode(),
                         what="the list of checkpoints being deleted")
        write_state(self.directory, CheckpointState(
            model_checkpoint_path=prefix,
            all_model_checkpoint_paths=list(self._kept),
            all_model_checkpoint_timestamps=list(self._kept.values()),
            last_preserved_timestamp=self._last_preserved), fsync=self._fsync)
        for old in doomed:
            _delete_checkpoint(old)
        try:
            self._housekeeping(prefix)
        except (OSError, TFShardError):
            pass  # tidying up must never turn a completed save into an error
        return prefix

    def _check_state_path(self):
        """Refuse, before anything is written, a state file path that cannot be
        replaced by a file (a directory, FIFO, device...)."""
        path = os.path.join(self.directory, STATE_FILENAME)
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return  # missing (or a dangling link): the state file is created
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise OutputExistsError(
                f"{path} is {kind}; the manager's state file cannot be written there "
                f"(nothing was saved)", path=path)

    def _may_delete(self, prefix: str) -> bool:
        """Whether a retired checkpoint's files may be deleted: only inside the
        manager's directory, unless ``delete_outside_directory``."""
        if self._delete_outside:
            return True
        return _same_directory(os.path.dirname(os.path.abspath(prefix)), self.directory)

    def _retire(self) -> list:
        """Drop the oldest entries beyond max_to_keep; returns those to delete."""
        doomed = []
        if not self.max_to_keep:
            return doomed
        hours = self.keep_checkpoint_every_n_hours
        while len(self._kept) > self.max_to_keep:
            prefix = next(iter(self._kept))
            stamp = self._kept.pop(prefix)
            if hours and stamp - hours * 3600.0 >= self._last_preserved:
                self._last_preserved = stamp  # preserved: unlisted but left on disk
                continue
            doomed.append(prefix)
        return doomed

    # ---- housekeeping ---------------------------------------------------------

    def _housekeeping(self, saved: str):
        """The sweep after a successful save of ``saved`` (see the class notes)."""
        try:
            reference = os.stat(index_filename(saved)).st_mtime_ns  # the file system's clock
            entries = os.listdir(self.directory)
        except OSError:
            return
        pattern = re.compile(re.escape(self.checkpoint_name) + r"-(\d+)(\..*)?$")
        listed = {os.path.basename(p) for p in list(self._kept) + [self._latest or ""]
                  if _same_directory(os.path.dirname(os.path.abspath(p)), self.directory)}
        newest_listed = max((int(m.group(1)) for n in listed if (m := pattern.match(n))),
                            default=-1)
        journal_name = self.checkpoint_name + _JOURNAL_SUFFIX
        deleting = _read_journal(os.path.join(self.directory, journal_name))
        groups: dict = {}
        for name in entries:
            m = pattern.match(name)
            if m:
                groups.setdefault(f"{self.checkpoint_name}-{m.group(1)}", []).append(name)
            elif name.startswith((STATE_FILENAME + TEMP_MARK, journal_name + TEMP_MARK)):
                path = os.path.join(self.directory, name)
                if _older(path, reference):
                    remove_if_unused(path)
        for base, names in groups.items():
            number = int(base.rsplit("-", 1)[1])
            orphan = base not in listed and (base in deleting or number > newest_listed)
            tidy = base + ".index" in names and not any(
                TEMP_MARK in n or _commit.ASIDE_MARK in n or n.endswith(_commit.LOCK_SUFFIX)
                for n in names)
            if orphan or not tidy:
                self._sweep_prefix(os.path.join(self.directory, base), reference, orphan)
        if journal_name in entries or deleting:
            left = {n for n in deleting - listed
                    if os.path.lexists(os.path.join(self.directory, n + ".index"))}
            if not left:
                discard_file(os.path.join(self.directory, journal_name))  # all handled

    @staticmethod
    def _sweep_prefix(prefix: str, reference: int, orphan: bool):
        with _commit.OutputLock(lock_filename(prefix), blocking=False) as lock:
            if not lock.held:
                return  # a commit of this prefix is in progress (or cannot be locked)
            layout = checkpoint_layout(prefix)
            _, asides, temps = layout.scan()
            _commit._recover_locked(layout, asides, [t for t in temps if _older(t, reference)],
                                    min_age=0.0)
            members, _, _ = layout.scan()
            index = index_filename(prefix)
            if os.path.exists(index):
                if orphan and all(_older(p, reference) for p in [index] + members):
                    _delete_files(prefix)
            elif members and all(_older(p, reference) for p in members):
                _delete_files(prefix)  # data files without an index are no checkpoint

    def __repr__(self) -> str:
        return (f"<tfshard.CheckpointManager {self.directory!r} max_to_keep={self.max_to_keep}, "
                f"{len(self._kept)} checkpoints>")


# The manager's record of checkpoints it is deleting: <checkpoint_name>.deleting.
_JOURNAL_SUFFIX = ".deleting"


def _read_journal(path: str) -> set:
    try:
        names = json.loads(read_regular(path, "the manager's deletion list", 1 << 20))
    except (OSError, ValueError, TFShardError):
        return set()
    return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()


def _same_directory(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _older(path: str, reference: int) -> bool:
    """Whether ``path`` was last modified before ``reference`` (ns, the file
    system's clock)."""
    try:
        return os.lstat(path).st_mtime_ns < reference
    except OSError:
        return False


def _delete_files(prefix: str):
    """With the prefix's lock held: the index first (so the checkpoint stops
    existing at once), then its data and whatever else of it is left."""
    remove_file(index_filename(prefix))
    layout = checkpoint_layout(prefix)
    members, asides, temps = layout.scan()
    for path in members + [a for files in asides.values() for a, _ in files]:
        discard_file(path)
    for path in temps:
        remove_if_unused(path, _commit.TEMP_MIN_AGE)


def _delete_checkpoint(prefix: str):
    """Remove a checkpoint's index first (so it stops existing), then its data;
    under its commit lock, so a save of the same prefix in progress is not cut."""
    try:
        with _commit.OutputLock(lock_filename(prefix), timeout=10.0):
            _delete_files(prefix)
    except OSError:
        # No lock (a read-only or vanished directory): delete as TensorFlow does.
        for path in [index_filename(prefix)] + glob.glob(glob.escape(prefix) +
                                                          ".data-*-of-*"):
            discard_file(path)
