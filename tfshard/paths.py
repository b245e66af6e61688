"""File naming of a checkpoint, and resolving what a user passes as a path.

A checkpoint is a prefix ``P``: ``P.index`` plus ``P.data-SSSSS-of-NNNNN``.
Users pass the prefix, the ``.index`` file, a data shard, or a directory;
:func:`resolve_prefix` turns any of these into the prefix.

Legacy V1 checkpoints are single SSTable files: the prefix ``P`` is the file
itself, or, for a sharded save, ``P-SSSSS-of-NNNNN`` (TF names those by the
pattern ``P-?????-of-NNNNN``).  As in TF, ``P`` is V2 whenever ``P.index``
exists.
"""

from __future__ import annotations

import glob
import os
import re

from . import _commit, state
from ._util import TEMP_MARK, open_regular
from .errors import CheckpointNotFoundError

__all__ = ["index_filename", "data_filename", "resolve_prefix", "latest_checkpoint",
           "checkpoint_version", "v1_files", "lock_filename", "checkpoint_layout",
           "graph_file_hint"]

_DATA_RE = re.compile(r"^(?P<prefix>.*)\.data-(?P<shard>\d{5,})-of-(?P<count>\d{5,})$")
_INDEX_SUFFIX = ".index"
# V1 shard files and the pattern TF's V1 saver records for them.
_V1_SHARD_RE = re.compile(r"^(?P<prefix>.*)-(?P<shard>\d{5})-of-(?P<count>\d{5})$")
_V1_PATTERN_RE = re.compile(r"^(?P<prefix>.*)-\?{5}-of-(?P<count>\d{5})$")
# Graph files that lie beside checkpoints (read by tfshard.graph, not as checkpoints).
_META_SUFFIX = ".meta"
_SAVED_MODEL_FILE = "saved_model.pb"
# Last 8 bytes of every SSTable (the footer magic, little-endian).
_SSTABLE_MAGIC = bytes.fromhex("57fb808b247547db")


def _is_sstable(path: str) -> bool:
    """Whether ``path`` is a file that ends like an SSTable (V1 checkpoint files do)."""
    try:
        # Non-blocking and checked first: a FIFO or device named like a
        # checkpoint must not hang the lookup.
        with open_regular(path, "file") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 48:
                return False
            f.seek(size - 8)
            return f.read(8) == _SSTABLE_MAGIC
    except OSError:
        return False


def v1_files(prefix: str) -> list[str] | None:
    """Files of the V1 checkpoint ``prefix``, or None if there is none.

    ``[prefix]`` when ``prefix`` is itself an SSTable file (and ``prefix.index``
    does not exist); otherwise every ``prefix-SSSSS-of-NNNNN`` shard.  A
    pattern ``P-?????-of-NNNNN`` (as TF records sharded V1 saves) gives the
    shards of ``P`` with that count.

    Raises
    ------
    CheckpointNotFoundError
        If some shards exist but the set is incomplete or mixes shard counts.
    """
    if os.path.isfile(index_filename(prefix)):
        return None
    if _is_sstable(prefix):
        return [prefix]
    base, only = prefix, None
    pattern = _V1_PATTERN_RE.match(prefix)
    if pattern:
        base, only = pattern["prefix"], int(pattern["count"])
    found = {}
    for path in glob.glob(glob.escape(base) + "-[0-9][0-9][0-9][0-9][0-9]-of-[0-9]*"):
        match = _V1_SHARD_RE.match(path)
        if match and match["prefix"] == base and os.path.isfile(path) and \
                only in (None, int(match["count"])):
            found.setdefault(int(match["count"]), []).append(path)
    if not found:
        return None
    if len(found) > 1:
        raise CheckpointNotFoundError(
            f"V1 checkpoint {prefix!r} has shard files of several saves (shard counts "
            f"{sorted(found)}); pass one pattern such as {prefix}-?????-of-"
            f"{max(found):05d}", path=prefix)
    (count, _), = found.items()
    expected = [f"{base}-{i:05d}-of-{count:05d}" for i in range(count)]
    missing = [p for p in expected if not os.path.isfile(p)]
    if missing:
        raise CheckpointNotFoundError(
            f"V1 checkpoint {prefix!r} has {count - len(missing)} of its {count} shard files; "
            f"missing {', '.join(os.path.basename(p) for p in missing[:5])}",
            path=missing[0])
    return expected


def _v1_prefix(path: str) -> str | None:
    """The V1 prefix ``path`` names, or None: the file itself; for one shard
    file, the prefix of the shards (or their pattern, when shards of other saves
    lie beside them); a pattern as given; a prefix whose shards exist."""
    if _V1_PATTERN_RE.match(path):
        return path if v1_files(path) else None
    match = _V1_SHARD_RE.match(path)
    if match and _is_sstable(path) and not os.path.isfile(index_filename(path)):
        try:
            if v1_files(match["prefix"]):
                return match["prefix"]
        except CheckpointNotFoundError:
            pass  # shards of several saves: name this one's set by its pattern
        pattern = f"{match['prefix']}-?????-of-{match['count']}"
        if v1_files(pattern):
            return pattern
    if v1_files(path):
        return path
    return None


def checkpoint_version(prefix: str) -> int | None:
    """2 if ``prefix.index`` exists, 1 if ``prefix`` is a V1 checkpoint, else None."""
    if _index_exists(prefix):
        return 2
    return 1 if v1_files(prefix) else None


def index_filename(prefix: str) -> str:
    """``P.index``."""
    return prefix + _INDEX_SUFFIX


def data_filename(prefix: str, shard: int, num_shards: int) -> str:
    """``P.data-SSSSS-of-NNNNN`` (ids padded to at least five digits)."""
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


def lock_filename(prefix: str) -> str:
    """``P.lock``: the advisory lock file commits to ``P`` take."""
    return prefix + _commit.LOCK_SUFFIX


def checkpoint_layout(prefix: str) -> _commit.Layout:
    """The files of the V2 checkpoint ``prefix`` for the commit protocol: the index
    commits; data files of any shard count belong to it; the writer's temporary
    files are ``P.index.tempstate<n>`` and ``P.data-SSSSS.tempstate<n>``."""
    base = re.escape(os.path.basename(prefix))
    return _commit.Layout(
        index_filename(prefix),
        re.compile(base + r"\.data-\d{5,}-of-\d{5,}$"),
        re.compile(base + r"\.(?:index|data-\d{5,})" + re.escape(TEMP_MARK) + r"\d+$"),
        lock=lock_filename(prefix))


def _index_exists(prefix: str) -> bool:
    """Whether ``P.index`` is a file, after repairing what a commit killed in its
    window left (the old checkpoint renamed aside; see :mod:`tfshard._commit`).
    Waits briefly for a live commit of the prefix, so a reader that arrives during
    one sees the new checkpoint rather than none."""
    index = index_filename(prefix)
    if os.path.isfile(index):
        return True
    if glob.glob(glob.escape(index) + _commit.ASIDE_MARK + "*"):
        _commit.recover(checkpoint_layout(prefix), blocking=True)
    return os.path.isfile(index)


def latest_checkpoint(directory, *, storage_options=None) -> str | None:
    """Prefix of the latest checkpoint named by ``directory/checkpoint``.

    Mirrors ``tf.train.latest_checkpoint``: the prefix is returned only if its
    ``.index`` file exists, or it names a V1 checkpoint (a file, or the
    ``P-?????-of-NNNNN`` pattern of its shards, returned as written); relative
    paths in the state file are taken relative to ``directory``.

    Parameters
    ----------
    directory : str or os.PathLike
        Directory holding the ``checkpoint`` state file; or a URL
        (``s3://bucket/train``), read through fsspec, whose result is a URL.
    storage_options : dict, optional
        For a URL: options for fsspec's filesystem.

    Returns
    -------
    str or None
        The prefix, or None when there is no state file or the checkpoint it
        names is gone.

    Raises
    ------
    CorruptCheckpointError
        If the state file exists but cannot be parsed.
    """
    from .storage import is_url

    if is_url(directory):
        from .reader_remote import latest_checkpoint as remote_latest

        return remote_latest(directory, storage_options)
    directory = os.fspath(directory)
    st = state.read_state(directory)
    if st is None:
        return None
    prefix = st.model_checkpoint_path
    if _index_exists(prefix) or _v1_prefix(prefix) is not None:
        return prefix
    return None


def _index_files_near(path: str) -> list[str]:
    """``.index`` files a user may have meant, for error messages."""
    found = glob.glob(glob.escape(path) + "*" + _INDEX_SUFFIX)
    parent = os.path.dirname(path) or "."
    if not found and os.path.isdir(parent):
        found = glob.glob(os.path.join(glob.escape(parent), "*" + _INDEX_SUFFIX))
    return sorted(found)[:5]


def graph_file_hint(path: str) -> str | None:
    """For a ``.meta`` or ``saved_model.pb`` file, a message saying that it is a graph,
    not a checkpoint, and where its checkpoint is; None for any other path."""
    if path.endswith(_META_SUFFIX):
        prefix = path[: -len(_META_SUFFIX)]
        where = f"; its checkpoint is {prefix}" if checkpoint_version(prefix) else ""
        return (f"{path} is a TensorFlow graph (MetaGraphDef), not a checkpoint: show it with "
                f"'tfshard graph {path}' (tfshard.graph.open){where}")
    if os.path.basename(path) == _SAVED_MODEL_FILE:
        directory = os.path.dirname(path) or "."
        return (f"{path} is a SavedModel's graph, not a checkpoint: show it with 'tfshard graph "
                f"{path}' (tfshard.graph.open); pass the SavedModel directory {directory} for "
                f"its variables")
    return None


def _prefix_in_directory(directory: str) -> str:
    st = state.read_state(directory)
    if st is not None:
        prefix = st.model_checkpoint_path
        if _index_exists(prefix):
            return prefix
        v1 = _v1_prefix(prefix)
        if v1 is not None:
            return v1
        raise CheckpointNotFoundError(
            f"the state file {os.path.join(directory, state.STATE_FILENAME)} names the "
            f"checkpoint {prefix!r}, but {index_filename(prefix)} does not exist",
            path=index_filename(prefix),
        )
    # No state file: a SavedModel (variables/variables.index) or a folder that
    # holds exactly one checkpoint is unambiguous.
    candidates = sorted(glob.glob(os.path.join(glob.escape(directory), "*" + _INDEX_SUFFIX)))
    saved_model = os.path.join(directory, "variables", "variables" + _INDEX_SUFFIX)
    if not candidates and os.path.isfile(saved_model):
        candidates = [saved_model]
    if len(candidates) == 1:
        return candidates[0][: -len(_INDEX_SUFFIX)]
    if candidates:
        names = ", ".join(os.path.basename(c)[: -len(_INDEX_SUFFIX)] for c in candidates[:5])
        raise CheckpointNotFoundError(
            f"{directory} has no '{state.STATE_FILENAME}' state file and holds several "
            f"checkpoints ({names}{', ...' if len(candidates) > 5 else ''}); pass a prefix",
            path=directory,
        )
    if os.path.isfile(os.path.join(directory, _SAVED_MODEL_FILE)):
        raise CheckpointNotFoundError(
            f"{directory} is a SavedModel without variables: {saved_model} does not exist",
            path=saved_model)
    raise CheckpointNotFoundError(
        f"{directory} holds no checkpoint: no '{state.STATE_FILENAME}' state file and no "
        f"*.index file", path=directory)


def resolve_prefix(path) -> str:
    """Turn a prefix, ``.index`` file, data shard or directory into a prefix.

    V1 checkpoints resolve too: a V1 file is its own prefix; one of its shard
    files ``P-SSSSS-of-NNNNN`` or the pattern ``P-?????-of-NNNNN`` gives ``P``.

    Raises
    ------
    CheckpointNotFoundError
        If no checkpoint is found; the message names what was looked for
        and the nearby ``.index`` files a user may have meant.
    """
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if os.path.isdir(path):
        return _prefix_in_directory(path)
    if path.endswith(_INDEX_SUFFIX) and os.path.isfile(path):
        return path[: -len(_INDEX_SUFFIX)]
    match = _DATA_RE.match(path)
    if match and os.path.isfile(path) and os.path.isfile(index_filename(match["prefix"])):
        return match["prefix"]
    if _index_exists(path):
        return path
    v1 = _v1_prefix(path)
    if v1 is not None:
        return v1
    if os.path.lexists(index_filename(path)):
        # Something is there but is not a regular file (a FIFO, a directory, a
        # symlink loop...): say exactly what, without blocking on it.
        open_regular(index_filename(path), "index file").close()
    hint = graph_file_hint(path) if os.path.isfile(path) else None
    if hint is not None:
        raise CheckpointNotFoundError(hint, path=path)
    message = f"no checkpoint at {path!r}: {index_filename(path)} does not exist"
    near = _index_files_near(path)
    if near:
        guesses = ", ".join(repr(n[: -len(_INDEX_SUFFIX)]) for n in near)
        message += f"; found {', '.join(os.path.basename(n) for n in near)}: did you mean prefix {guesses}?"
    elif os.path.isfile(path):
        message += " (the file exists but is not part of a V2 checkpoint)"
    raise CheckpointNotFoundError(message, path=path)


def shard_count_now(prefix: str) -> int | None:
    """The number of data shards of the checkpoint now at ``prefix``, or None when
    there is none (or its index cannot be read).  A commit of the same number would
    reuse the old data files' names, so writers then add an empty shard: see
    :meth:`tfshard.CheckpointWriter.commit`."""
    from . import _index
    from ._util import read_regular

    path = index_filename(prefix)
    if not os.path.isfile(path):
        return None
    try:
        return _index.IndexTable(read_regular(path, "index file"), path).header()["num_shards"]
    except (OSError, ValueError):  # TFShardErrors among them
        return None
