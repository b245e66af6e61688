"""Real checkpoints from public repositories (``../shared/corpus/realworld``, 2016-2020)
read exactly as TensorFlow's own reader reads them.

Each folder of the corpus's manifest is a checkpoint someone committed: TF1 Saver and
Estimator checkpoints with one and two shards, SavedModel ``variables/``, TF2 object
checkpoints (Snappy index blocks, a prefix named ``checkpoint``), legacy V1 files (one
beside a V2 bundle of the same prefix), an index without its data file, and state files
naming paths on other machines.  For each: the listing, every tensor (dtype, shape and
bytes) and what the directory's state file resolves to, against TF.  Outside CI the
tests skip, saying so, when the corpus is absent.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers import SHARED_CORPUS, corpus_missing_reason

import tfshard

ROOT = SHARED_CORPUS / "realworld"
_MISSING = corpus_missing_reason("realworld")
MANIFEST = {} if _MISSING else json.loads((ROOT / "manifest.json").read_text())
CASES = sorted(MANIFEST) or [pytest.param(None, marks=pytest.mark.skip(reason=_MISSING))]

tf = pytest.importorskip("tensorflow")


def _tf_values(prefix: str) -> dict:
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def _same(ours, theirs) -> bool:
    if isinstance(theirs, bytes):  # TF returns a scalar string as bytes
        return ours.shape == () and ours[()] == theirs
    theirs = np.asarray(theirs)
    if ours.shape != theirs.shape:
        return False
    if theirs.dtype == object:
        return ours.dtype == object and ours.tolist() == theirs.tolist()
    return ours.dtype == theirs.dtype and ours.tobytes() == theirs.tobytes()


@pytest.mark.parametrize("folder", CASES)
def test_reads_as_tensorflow_reads(folder):
    entry = MANIFEST[folder]
    prefix = str(ROOT / entry["prefix"])
    assert tfshard.list_variables(prefix) == [(n, list(s)) for n, s in
                                              sorted(tf.train.list_variables(prefix))]
    if entry["kind"] == "index-only":
        # No data file was committed: listing works, reading a tensor says what is missing.
        with tfshard.open(prefix) as ckpt:
            name = next(iter(ckpt))
            with pytest.raises(tfshard.CheckpointNotFoundError, match="data"):
                ckpt[name]
        return
    theirs = _tf_values(prefix)
    with tfshard.open(prefix) as ckpt:
        assert sorted(ckpt) == sorted(theirs)
        differing = [name for name in ckpt if not _same(ckpt[name], theirs[name])]
        assert ckpt.verify_all() == []
    assert differing == []


@pytest.mark.parametrize("folder", CASES)
def test_state_file_resolves_as_tensorflow_does(folder):
    directory = os.path.dirname(str(ROOT / MANIFEST[folder]["prefix"]))
    assert tfshard.latest_checkpoint(directory) == tf.train.latest_checkpoint(directory)
