"""Numbered checkpoints in one directory: :class:`CheckpointManager`.

Modelled on ``tf.train.CheckpointManager``: the same file names
(``<directory>/<name>-<number>``), the same ``checkpoint`` state file (so
``tf.train.latest_checkpoint`` and TF's own manager agree with it), and the
same retention rules (``max_to_keep``, ``keep_checkpoint_every_n_hours``).

One ordering differs on purpose: the state file is updated *before* old
checkpoints are deleted, so a crash at any moment never leaves a state file
that names a checkpoint which is gone (at worst an old checkpoint stays on
disk, unlisted).
"""

from __future__ import annotations

import glob
import os
import re
import time

from ._util import remove_file
from .errors import InvalidTensorError
from .paths import index_filename
from .state import CheckpointState, read_state, write_state
from .writer import DEFAULT_ALIGNMENT, CheckpointWriter

__all__ = ["CheckpointManager"]


class CheckpointManager:
    """Save numbered checkpoints into ``directory`` and keep the newest few.

    Parameters
    ----------
    directory : str or os.PathLike
        Where checkpoints and the ``checkpoint`` state file live (created if needed).
    max_to_keep : int or None
        How many recent checkpoints to keep (default 5); None keeps all.
    checkpoint_name : str
        File name stem: checkpoints are ``<directory>/<checkpoint_name>-<number>``.
    keep_checkpoint_every_n_hours : float, optional
        Additionally keep, forever, one checkpoint per this many hours (it is
        dropped from the state file's list but not deleted), as TF does.
    num_shards, max_shard_size, alignment, fsync
        Passed to :class:`~tfshard.CheckpointWriter` for every save; ``fsync``
        also covers the state file.

    Examples
    --------
    >>> mgr = tfshard.CheckpointManager("train/", max_to_keep=3)  # doctest: +SKIP
    >>> mgr.save({"w": w, "global_step": np.int64(100)})          # doctest: +SKIP
    'train/ckpt-1'
    """

    def __init__(self, directory, max_to_keep: int | None = 5, *,
                 checkpoint_name: str = "ckpt",
                 keep_checkpoint_every_n_hours: float | None = None,
                 num_shards: int = 1, max_shard_size: int | None = None,
                 alignment: int = DEFAULT_ALIGNMENT, fsync: bool = False):
        if max_to_keep is not None and (not isinstance(max_to_keep, int) or max_to_keep < 1):
            raise InvalidTensorError(f"max_to_keep must be a positive integer or None, got "
                                     f"{max_to_keep!r}")
        if not checkpoint_name or os.sep in checkpoint_name:
            raise InvalidTensorError(f"checkpoint_name must be a plain file name, got "
                                     f"{checkpoint_name!r}")
        self.directory = os.fspath(directory)
        self.max_to_keep = max_to_keep
        self.checkpoint_name = checkpoint_name
        self.keep_checkpoint_every_n_hours = keep_checkpoint_every_n_hours
        self._writer_options = dict(num_shards=num_shards, max_shard_size=max_shard_size,
                                    alignment=alignment, fsync=fsync)
        self._fsync = fsync
        os.makedirs(self.directory, exist_ok=True)
        self._recover(time.time())

    def _recover(self, now: float):
        """Pick up the checkpoints an earlier run recorded in the state file."""
        st = read_state(self.directory)
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
        with CheckpointWriter(prefix, **self._writer_options) as w:
            w.add_all(tensors)
        now = time.time()
        self._kept.pop(prefix, None)  # saving a number again makes it the newest
        self._kept[prefix] = now
        self._latest = prefix
        doomed = self._sweep()
        write_state(self.directory, CheckpointState(
            model_checkpoint_path=prefix,
            all_model_checkpoint_paths=list(self._kept),
            all_model_checkpoint_timestamps=list(self._kept.values()),
            last_preserved_timestamp=self._last_preserved), fsync=self._fsync)
        for old in doomed:
            _delete_checkpoint(old)
        return prefix

    def _sweep(self) -> list:
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

    def __repr__(self) -> str:
        return (f"<tfshard.CheckpointManager {self.directory!r} max_to_keep={self.max_to_keep}, "
                f"{len(self._kept)} checkpoints>")


def _delete_checkpoint(prefix: str):
    """Remove a checkpoint's index first (so it stops existing), then its data."""
    for path in [index_filename(prefix)] + glob.glob(glob.escape(prefix) + ".data-*-of-*"):
        remove_file(path)
