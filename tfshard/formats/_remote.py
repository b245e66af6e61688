"""Models at URLs for the format adapters (``open_source`` / ``create_sink``).

* TF checkpoints read through :class:`tfshard.reader_remote.RemoteCheckpoint` (ranged
  fetches) and are written through :class:`tfshard.writer_remote.RemoteCheckpointWriter`
  (data objects first, the index last): see :class:`tfshard.formats._tf._TFSource`/
  ``_TFSink``, which take URLs as they are.
* The other formats are single files (or a sharded safetensors model: an index JSON and
  its shards).  A source is downloaded whole into a temporary folder and opened there (the
  folder goes when the source is closed); a sink is written into a temporary folder and
  uploaded at commit, shards before the index JSON that names them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from .. import storage
from ..errors import CheckpointNotFoundError, CorruptCheckpointError, OutputExistsError
from ._base import _ST_INDEX_SUFFIX, Sink, format_by_name


def detect_format(url: str) -> str:
    """A URL's format, from its name alone (object stores have no directories to look
    into): safetensors, npz, torch suffixes; anything else is a TF checkpoint."""
    return format_by_name(url.rstrip("/")) or "tf"


def open_source(url: str, fmt: str, open_local, storage_options=None):
    """Download the model at ``url`` (format ``fmt``, not TF) and open it with
    ``open_local(local_path)``; the temporary copy goes when the source is closed."""
    if fmt == "npy":
        raise CheckpointNotFoundError(
            f"{url}: directories of .npy files cannot be read from a URL (object stores "
            f"have no directories to list); download it first", path=url)
    loc = storage.Location.parse(url, storage_options)
    tmp = tempfile.mkdtemp(prefix="tfshard-download-")
    try:
        name = loc.url.rsplit("/", 1)[-1] or "model"
        local = os.path.join(tmp, name)
        data = loc.read(what=f"{fmt} model")
        with open(local, "wb") as f:
            f.write(data)
        if name.lower().endswith(_ST_INDEX_SUFFIX):
            try:
                weight_map = json.loads(data)["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise CorruptCheckpointError(f"{url} is not a safetensors index (a JSON "
                                             f"object with a weight_map)", path=url) from None
            parent = loc.url.rsplit("/", 1)[0]
            for shard in shards:
                if not isinstance(shard, str) or "/" in shard or shard in ("", ".", ".."):
                    raise CorruptCheckpointError(
                        f"{url} names the shard {shard!r}, which is not a file beside it",
                        path=url)
                shard_loc = storage.Location.parse(f"{parent}/{shard}", storage_options)
                with open(os.path.join(tmp, shard), "wb") as f:
                    f.write(shard_loc.read(what="safetensors shard"))
        source = open_local(local)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    source.path = url  # what was opened, as the caller named it
    close = source.close

    def close_and_remove():
        try:
            close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    source.close = close_and_remove
    return source


class RemoteSink(Sink):
    """A sink for a URL (not TF): the local sink of the format writes into a temporary
    folder; :meth:`commit` uploads its files (shards first, a safetensors index JSON
    last) and removes the folder."""

    def __init__(self, url: str, fmt: str, create_local, storage_options=None, *,
                 overwrite: bool):
        super().__init__(url, {}, max_shard_size=None, overwrite=overwrite)
        self.format = fmt
        self._target = storage.Location.parse(url, storage_options)
        if fmt == "npy":
            raise OutputExistsError(
                f"{url}: a directory of .npy files cannot be written to a URL; write "
                f"npz or safetensors instead", path=url)
        if not overwrite and self._target.exists(what=f"{fmt} model"):
            raise self._exists_error(url)
        self._tmp = tempfile.mkdtemp(prefix="tfshard-upload-")
        self._name = self._target.url.rsplit("/", 1)[-1]
        try:
            self._inner = create_local(os.path.join(self._tmp, self._name))
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        self._plan = self._inner._plan
        self.writes_at_commit = self._inner.writes_at_commit

    def _write(self, name, dt, shape, array):
        self._inner.add(name, array, dt.name)

    def _commit(self) -> list:
        files = self._inner.commit(self._on_write)
        if not self.overwrite and self._target.exists(what=f"{self.format} model"):
            raise self._exists_error(self._target.url)
        parent = self._target.url.rsplit("/", 1)[0]
        # The file named by the URL last: a sharded model's index JSON names the shards.
        ordered = sorted(files, key=lambda p: os.path.basename(p) == self._name)
        self._target.make_parent()
        uploaded = []
        try:
            for path in ordered:
                base = os.path.basename(path)
                dest = self._target if base == self._name else \
                    storage.Location.parse(f"{parent}/{base}", self._target.storage_options)
                dest.put_file(path, what=f"{self.format} model")
                uploaded.append(dest)
        except BaseException:
            for dest in uploaded:
                try:
                    dest.remove()
                except Exception:
                    pass
            raise
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)
        return [d.url for d in uploaded]

    def _abort(self):
        try:
            self._inner.abort()
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)
