"""File naming of a checkpoint, and resolving what a user passes as a path.

A checkpoint is a prefix ``P``: ``P.index`` plus ``P.data-SSSSS-of-NNNNN``.
Users pass the prefix, the ``.index`` file, a data shard, or a directory;
:func:`resolve_prefix` turns any of these into the prefix.
"""

from __future__ import annotations

import glob
import os
import re

from . import state
from .errors import CheckpointNotFoundError

__all__ = ["index_filename", "data_filename", "resolve_prefix", "latest_checkpoint"]

_DATA_RE = re.compile(r"^(?P<prefix>.*)\.data-(?P<shard>\d{5,})-of-(?P<count>\d{5,})$")
_INDEX_SUFFIX = ".index"


def index_filename(prefix: str) -> str:
    """``P.index``."""
    return prefix + _INDEX_SUFFIX


def data_filename(prefix: str, shard: int, num_shards: int) -> str:
    """``P.data-SSSSS-of-NNNNN`` (ids padded to at least five digits)."""
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


def latest_checkpoint(directory) -> str | None:
    """Prefix of the latest checkpoint named by ``directory/checkpoint``.

    Mirrors ``tf.train.latest_checkpoint``: the prefix is returned only if its
    ``.index`` file exists (relative paths in the state file are taken
    relative to ``directory``).

    Parameters
    ----------
    directory : str or os.PathLike
        Directory holding the ``checkpoint`` state file.

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
    directory = os.fspath(directory)
    st = state.read_state(directory)
    if st is None:
        return None
    prefix = st.model_checkpoint_path
    if os.path.isfile(index_filename(prefix)):
        return prefix
    return None


def _index_files_near(path: str) -> list[str]:
    """``.index`` files a user may have meant, for error messages."""
    found = glob.glob(glob.escape(path) + "*" + _INDEX_SUFFIX)
    parent = os.path.dirname(path) or "."
    if not found and os.path.isdir(parent):
        found = glob.glob(os.path.join(glob.escape(parent), "*" + _INDEX_SUFFIX))
    return sorted(found)[:5]


def _prefix_in_directory(directory: str) -> str:
    st = state.read_state(directory)
    if st is not None:
        prefix = st.model_checkpoint_path
        if os.path.isfile(index_filename(prefix)):
            return prefix
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
    raise CheckpointNotFoundError(
        f"{directory} holds no checkpoint: no '{state.STATE_FILENAME}' state file and no "
        f"*.index file", path=directory)


def resolve_prefix(path) -> str:
    """Turn a prefix, ``.index`` file, data shard or directory into a prefix.

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
    if os.path.isfile(index_filename(path)):
        return path
    message = f"no checkpoint at {path!r}: {index_filename(path)} does not exist"
    near = _index_files_near(path)
    if near:
        guesses = ", ".join(repr(n[: -len(_INDEX_SUFFIX)]) for n in near)
        message += f"; found {', '.join(os.path.basename(n) for n in near)}: did you mean prefix {guesses}?"
    elif os.path.isfile(path):
        message += " (the file exists but is not part of a V2 checkpoint)"
    raise CheckpointNotFoundError(message, path=path)
