"""Type-checked by tests/test_typing.py (mypy), never run: what users of the public API
see in their editors and type checkers."""

from __future__ import annotations

import numpy as np
from typing_extensions import assert_type

import tfshard
from tfshard import conversion, formats
from tfshard.frameworks import SafeOpen
from tfshard.reader import TensorInfo


def reading(path: str) -> None:
    with tfshard.open(path) as ckpt:
        assert_type(ckpt, tfshard.Checkpoint)
        assert_type(ckpt["dense/kernel"], np.ndarray)
        assert_type(ckpt.read("emb", index=np.s_[10:20]), np.ndarray)
        assert_type(ckpt.info("dense/kernel"), TensorInfo)
        assert_type(ckpt.info("dense/kernel").shape, tuple)
        names: list[str] = list(ckpt)
        assert_type(names, list[str])
    assert_type(tfshard.load(path), dict)
    assert_type(tfshard.list_variables(path), list)
    assert_type(tfshard.latest_checkpoint("train/"), "str | None")


def framework_readers(path: str) -> None:
    with tfshard.load_checkpoint(path) as reader:
        assert_type(reader, tfshard.CheckpointReader)
        assert_type(reader.get_variable_to_shape_map(), dict)
    with tfshard.safe_open(path, framework="np") as f:
        assert_type(f, SafeOpen)


def writing(prefix: str, kernel: np.ndarray) -> None:
    assert_type(tfshard.save(prefix, {"k": kernel}), str)
    with tfshard.CheckpointWriter(prefix, num_shards=2) as w:
        assert_type(w, tfshard.CheckpointWriter)
        w.add("k", kernel)
        w.add_slice("emb", [10, 4], "0,5:-", kernel)


def converting(src: str) -> None:
    report = conversion.convert(src, "out.safetensors", dtype="bfloat16")
    assert_type(report, conversion.ConvertReport)
    assert_type(report.written_bytes, int)
    with formats.open_source(src) as source:
        assert_type(source, formats.Source)
    try:
        tfshard.load_variable(src, "missing")
    except tfshard.TensorNotFoundError as exc:
        assert_type(exc.key, "str | None")
