"""Writing checkpoints to URLs: the remote twins of the writer and the manager.

Object stores have no rename, so a checkpoint cannot appear at once the way the local
commit protocol makes it.  What they have is whole-object PUTs: an object is either its
old content or its new content.  :class:`RemoteCheckpointWriter` writes the checkpoint
with the local writer into a temporary folder (staging), then uploads it in the order
that keeps every reader safe:

1. the data objects, concurrently, under names no current index refers to (when the
   checkpoint already at the prefix has as many shards, one empty data shard more gives
   the new ones other names, as the local writer does);
2. the index object, last: until this PUT a reader sees the old checkpoint whole (or
   none); after it, the new one whole;
3. then the old checkpoint's data objects that the new index does not name are deleted.

A failure before the index PUT deletes the data objects uploaded so far and leaves
whatever was at the prefix untouched; no partial index object can exist.
:class:`RemoteCheckpointManager` uploads each checkpoint that way and the state file
after it, last of all.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time

from . import _index, state, storage
from .errors import CheckpointNotFoundError, InvalidTensorError, TFShardError
from .manager import CheckpointManager
from .paths import data_filename
from .writer import DEFAULT_ALIGNMENT, CheckpointWriter

__all__ = ["RemoteCheckpointWriter", "RemoteCheckpointManager", "upload_checkpoint",
           "remove_checkpoint"]

_INDEX = ".index"


def _shard_count(prefix: storage.Location) -> int | None:
    """Shard count of the checkpoint now at ``prefix`` (from its index), or None."""
    try:
        raw = prefix.suffixed(_INDEX).read(what="index file")
    except CheckpointNotFoundError:
        return None
    try:
        return _index.IndexTable(raw, prefix.url + _INDEX).header()["num_shards"]
    except (ValueError, TFShardError):
        return None  # not a readable index: it is replaced as it is


def _staging_dir() -> str:
    return tempfile.mkdtemp(prefix="tfshard-upload-")


def upload_checkpoint(local_prefix: str, target: storage.Location, *,
                      old_shards: int | None = None) -> None:
    """Upload the committed local checkpoint ``local_prefix`` to ``target``: data objects
    (concurrently), then the index; then remove the data objects of the checkpoint that
    was there before (``old_shards`` of them) that the new one does not reuse.  On failure
    the objects uploaded are removed and the error (naming the URL) raised."""
    with open(local_prefix + _INDEX, "rb") as f:
        num_shards = _index.IndexTable(f.read(), local_prefix + _INDEX).header()["num_shards"]
    names = [data_filename("", i, num_shards) for i in range(num_shards)]
    target.make_parent()
    uploaded = []
    try:
        futures = {name: storage._io_pool().submit(
            target.suffixed(name).put_file, local_prefix + name, what="data shard")
            for name in names}
        error = None
        for name, future in futures.items():
            exc = future.exception()
            if exc is None:
                uploaded.append(name)
            elif error is None:
                error = exc
        if error is not None:
            raise error
        target.suffixed(_INDEX).put_file(local_prefix + _INDEX, what="index file")
    except BaseException:
        for name in uploaded:
            try:
                target.suffixed(name).remove(what="data shard")
            except TFShardError:
                pass  # the failure being reported matters more
        raise
    if old_shards is not None and old_shards != num_shards:
        for i in range(old_shards):
            try:
                target.suffixed(data_filename("", i, old_shards)).remove(what="data shard")
            except TFShardError:
                pass  # an unreferenced object left behind is no checkpoint


def remove_checkpoint(prefix: storage.Location) -> None:
    """Delete the checkpoint at ``prefix``: its index first (so it stops existing at
    once), then its data objects."""
    count = _shard_count(prefix)
    prefix.suffixed(_INDEX).remove(what="index file")
    for i in range(count or 0):
        prefix.suffixed(data_filename("", i, count)).remove(what="data shard")


class RemoteCheckpointWriter(CheckpointWriter):
    """:class:`tfshard.CheckpointWriter` for a URL prefix (see the module notes): tensors
    are written to a local staging folder (the system's temporary directory; set
    ``TMPDIR`` to move it) and uploaded at :meth:`commit`, data objects first and the
    index last.  :attr:`prefix` is the URL."""

    def __init__(self, prefix, *, storage_options=None, **options):
        url = os.fspath(prefix)
        if url.endswith("/"):
            raise InvalidTensorError(f"a checkpoint prefix must not end in '/', got {url!r}",
                                     path=url)
        self._target = storage.Location.parse(url, storage_options)
        self._staging = _staging_dir()
        try:
            super().__init__(os.path.join(self._staging, "ckpt"), **options)
        except BaseException:
            shutil.rmtree(self._staging, ignore_errors=True)
            raise
        self.url = self._target.url

    def commit(self) -> str:
        """Write the checkpoint locally, then upload it (data objects, then the index).

        Returns
        -------
        str
            The prefix URL.

        Raises
        ------
        RemoteStorageError
            If an upload fails: the data objects uploaded are removed, no index object
            is written, and what was at the prefix before is unchanged.
        WriteFailedError, InvalidTensorError
            As for the local writer (the staging folder's disk).
        """
        try:
            self._check_open()
            old = _shard_count(self._target)
            if old == len(self._shards):
                self._new_shard()  # new data objects under other names than the old ones'
            local = super().commit()
            try:
                upload_checkpoint(local, self._target, old_shards=old)
            except BaseException:
                self._state = "aborted"
                raise
            self.prefix = self.url
            return self.url
        finally:
            if self._state != "open":
                shutil.rmtree(self._staging, ignore_errors=True)

    def abort(self) -> None:
        super().abort()
        staging = getattr(self, "_staging", None)
        if staging:
            shutil.rmtree(staging, ignore_errors=True)

    def __repr__(self) -> str:
        return (f"<tfshard.CheckpointWriter {self.url!r} {self._state}, "
                f"{len(self._entries)} entries, {len(self._shards)} shards>")


class RemoteCheckpointManager(CheckpointManager):
    """:class:`tfshard.CheckpointManager` for a directory URL: each checkpoint is
    uploaded as :class:`RemoteCheckpointWriter` does, then the state file (last of all),
    then the retired checkpoints are deleted (index first).  There is no housekeeping
    sweep: what a killed save leaves (data objects without an index) is no checkpoint,
    and stays until deleted."""

    def __init__(self, directory, max_to_keep: int | None = 5, *, storage_options=None,
                 checkpoint_name: str = "ckpt",
                 keep_checkpoint_every_n_hours: float | None = None,
                 num_shards: int = 1, max_shard_size: int | None = None,
                 alignment: int = DEFAULT_ALIGNMENT, fsync: bool = False,
                 delete_outside_directory: bool = False):
        self._location = storage.Location.parse(directory, storage_options)
        self._storage_options = storage_options
        self._configure(self._location.url, max_to_keep, checkpoint_name,
                        keep_checkpoint_every_n_hours, delete_outside_directory,
                        dict(num_shards=num_shards, max_shard_size=max_shard_size,
                             alignment=alignment, fsync=fsync), "/")
        self._recover(time.time())

    def _read_state(self):
        from .reader_remote import _read_state

        return _read_state(self._location)

    def _next_number(self) -> int:
        pattern = re.compile(re.escape(self.checkpoint_name) + r"-(\d+)$")
        numbers = [int(m.group(1)) for p in list(self._kept) + [self._latest or ""]
                   if (m := pattern.match(p.rsplit("/", 1)[-1]))]
        return max(numbers, default=0) + 1

    def _may_delete(self, prefix: str) -> bool:
        return self._delete_outside or prefix.rsplit("/", 1)[0] == self.directory

    def save(self, tensors, checkpoint_number: int | None = None) -> str:
        """As :meth:`tfshard.CheckpointManager.save`; returns the new prefix URL."""
        number = self._next_number() if checkpoint_number is None else int(checkpoint_number)
        name = f"{self.checkpoint_name}-{number}"
        prefix = self._location.child(name).url
        with RemoteCheckpointWriter(prefix, storage_options=self._storage_options,
                                    **self._writer_options) as w:
            w.add_all(tensors)
        now = time.time()
        self._kept.pop(prefix, None)
        self._kept[prefix] = now
        self._latest = prefix
        doomed = [p for p in self._retire() if self._may_delete(p)]
        text = state.format_state(state.CheckpointState(
            model_checkpoint_path=prefix,
            all_model_checkpoint_paths=list(self._kept),
            all_model_checkpoint_timestamps=list(self._kept.values()),
            last_preserved_timestamp=self._last_preserved), self.directory)
        self._location.child(state.STATE_FILENAME).make_parent()
        self._location.child(state.STATE_FILENAME).put_bytes(
            text.encode("utf-8"), what="checkpoint state file")
        for old in doomed:
            try:
                base = self.directory.rstrip("/") + "/"
                loc = (self._location.child(old[len(base):]) if old.startswith(base)
                       else storage.Location.parse(old, self._storage_options))
                remove_checkpoint(loc)
            except TFShardError:
                pass  # deleting an old checkpoint must not fail a completed save
        return prefix

    def __repr__(self) -> str:
        return (f"<tfshard.CheckpointManager {self.directory!r} max_to_keep={self.max_to_keep}, "
                f"{len(self._kept)} checkpoints (remote)>")
