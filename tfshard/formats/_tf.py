"""TF checkpoints as a format adapter: the source reads through
:class:`tfshard.Checkpoint` and the sink writes through
:class:`tfshard.CheckpointWriter` (both imported on first use), keeping every
stored dtype (quantized, string and variant tensors)."""

from __future__ import annotations

import os

from ..errors import InvalidTensorError
from ..paths import data_filename, index_filename
from ..storage import is_url
from ._base import Sink, Source, _make_dirs


class _TFSource(Source):
    """A TF checkpoint through :class:`tfshard.Checkpoint`; stored dtypes are kept
    (``info`` says ``qint8`` where ``read`` returns int8)."""

    format = "tf"

    def __init__(self, path, *, verify: bool = True, storage_options=None):
        from ..reader import Checkpoint

        self._ckpt = Checkpoint(path, verify=verify, storage_options=storage_options)
        super().__init__(self._ckpt.prefix)
        self._list = list(self._ckpt)

    def _names(self):
        return self._list

    def _info(self, name):
        info = self._ckpt.info(name)
        return info.dtype, tuple(info.shape)

    def _nbytes(self, name):
        return self._ckpt.info(name).nbytes

    def _read(self, name):
        return self._ckpt.read(name)

    def _release(self, name):
        self._ckpt.release(name)

    def _close(self):
        self._ckpt.close()


# ---- writing ------------------------------------------------------------------------

class _TFSink(Sink):
    """A TF checkpoint through :class:`tfshard.CheckpointWriter` (itself atomic);
    planned dtypes are stored as they are (``qint8``, ``variant``...)."""

    format = "tf"
    _writer = None

    def __init__(self, path, plan, *, max_shard_size, overwrite, storage_options=None):
        from ..writer import CheckpointWriter

        super().__init__(path, plan, max_shard_size=max_shard_size, overwrite=overwrite)
        self.prefix = path[:-len(".index")] if path.endswith(".index") else path
        self._storage_options = storage_options
        self._remote = is_url(self.prefix)  # uploaded by RemoteCheckpointWriter
        if not overwrite and self._index_exists():
            raise self._exists_error(index_filename(self.prefix))
        if not self._remote:
            self._created_dirs = _make_dirs(os.path.dirname(self.prefix))
        try:
            self._writer = CheckpointWriter(self.prefix, max_shard_size=max_shard_size,
                                            storage_options=storage_options)
        except BaseException:
            self.abort()
            raise

    def _write(self, name, dt, shape, array):
        import numpy as np

        if np.shape(array) != shape:
            raise InvalidTensorError(f"tensor {name!r} is planned with shape {list(shape)} but "
                                     f"added with {list(np.shape(array))}", path=self.path,
                                     key=name)
        self._writer.add(name, array, dtype=dt.name)

    def _commit(self):
        from ..reader import Checkpoint

        index = index_filename(self.prefix)
        if not self.overwrite and self._index_exists():
            raise self._exists_error(index)
        self._writer.commit()
        with Checkpoint(self.prefix, storage_options=self._storage_options) as ckpt:
            n = ckpt.num_shards
        return [data_filename(self.prefix, i, n) for i in range(n)] + [index]

    def _index_exists(self) -> bool:
        if self._remote:
            from ..storage import Location

            return Location.parse(index_filename(self.prefix),
                                  self._storage_options).exists(what="index file")
        return os.path.exists(index_filename(self.prefix))

    def _abort(self):
        if self._writer is not None:
            self._writer.abort()
