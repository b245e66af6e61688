"""Resolving user paths to a checkpoint prefix, and the ``checkpoint`` state file."""

import os
from pathlib import Path

import numpy as np
import pytest

import bundle_builder as bb
import tfshard
from tfshard import CheckpointNotFoundError, CorruptCheckpointError
from tfshard.state import parse_state


def make(directory: Path, name: str):
    b = bb.Bundle()
    b.add("v", np.array([1.0], np.float32))
    return b.write(str(directory / name))


def test_every_spelling_of_a_checkpoint_resolves(tmp_path):
    prefix = make(tmp_path, "model.ckpt-100")
    for spelling in [prefix, prefix + ".index", prefix + ".data-00000-of-00001",
                     Path(prefix), str(tmp_path)]:
        with tfshard.open(spelling) as ckpt:
            assert ckpt.prefix == prefix
            assert list(ckpt) == ["v"]


def test_wrong_prefix_suggests_what_exists(tmp_path):
    make(tmp_path, "model.ckpt-100")
    with pytest.raises(CheckpointNotFoundError) as err:
        tfshard.open(tmp_path / "model.ckpt")
    message = str(err.value)
    assert "model.ckpt.index does not exist" in message
    assert "model.ckpt-100.index" in message and "did you mean prefix" in message
    assert isinstance(err.value, FileNotFoundError)


def test_directory_without_state_file(tmp_path):
    make(tmp_path, "a")
    make(tmp_path, "b")
    with pytest.raises(CheckpointNotFoundError, match="several checkpoints"):
        tfshard.open(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointNotFoundError, match="holds no checkpoint"):
        tfshard.open(empty)


def test_saved_model_directory(tmp_path):
    (tmp_path / "variables").mkdir()
    prefix = make(tmp_path / "variables", "variables")
    with tfshard.open(tmp_path) as ckpt:
        assert ckpt.prefix == prefix


def test_state_file_relative_and_absolute(tmp_path):
    make(tmp_path, "ckpt-1")
    make(tmp_path, "ckpt-2")
    (tmp_path / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-2"\nall_model_checkpoint_paths: "ckpt-1"\n'
        'all_model_checkpoint_paths: "ckpt-2"\n')
    assert tfshard.latest_checkpoint(tmp_path) == str(tmp_path / "ckpt-2")
    (tmp_path / "checkpoint").write_text(f'model_checkpoint_path: "{tmp_path / "ckpt-1"}"\n')
    assert tfshard.latest_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-1")
    with tfshard.open(tmp_path) as ckpt:
        assert ckpt.prefix == str(tmp_path / "ckpt-1")


def test_state_file_naming_a_missing_checkpoint(tmp_path):
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "gone"\n')
    assert tfshard.latest_checkpoint(tmp_path) is None
    with pytest.raises(CheckpointNotFoundError, match="gone.index does not exist"):
        tfshard.open(tmp_path)
    assert tfshard.latest_checkpoint(tmp_path / "no_such_dir") is None


def test_state_text_format_variants(tmp_path):
    text = (b"# written by hand\n"
            b"all_model_checkpoint_paths: 'a'\n"
            b"all_model_checkpoint_paths: [\"b\", \"c\\\\d\"]\n"
            b"unknown_field { nested: 1 }\n"
            b"model_checkpoint_path: \"ca\" 'b\\x74' ;\n"
            b"all_model_checkpoint_timestamps: 1.5e9\n"
            b"last_preserved_timestamp: 12\n")
    st = parse_state(text, "/d")
    assert st.model_checkpoint_path == "/d/cabt"
    assert st.all_model_checkpoint_paths == ["/d/a", "/d/b", "/d/c\\d", "/d/cabt"]
    assert st.all_model_checkpoint_timestamps == [1.5e9]
    assert st.last_preserved_timestamp == 12.0


@pytest.mark.parametrize("text", [b"", b"model_checkpoint_path: \"\"\n", b"model_checkpoint_path: 3\n",
                                  b"model_checkpoint_path \"unterminated\n", b"\x00\x01garbage",
                                  b"model_checkpoint_path: \"a\\q\"\n"])
def test_bad_state_files(tmp_path, text):
    (tmp_path / "checkpoint").write_bytes(text)
    with pytest.raises(CorruptCheckpointError):
        tfshard.latest_checkpoint(tmp_path)


def test_golden_tensorflow_state_file():
    golden = Path(__file__).parent / "data" / "golden" / "keras_adam"
    latest = tfshard.latest_checkpoint(golden)
    assert latest is not None and os.path.basename(latest) == "ckpt-2"
