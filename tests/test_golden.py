"""tfshard against checkpoints written by real TensorFlow (no TensorFlow needed here).

Two sources, each a folder with a ``manifest.json`` made by TF 2.21's own reader:

* ``tests/data/golden/`` — written by ``tests/data/make_goldens.py`` (every dtype, strings,
  TF1 partitioned and multi-device sharded saves, a 20 001-tensor index, Keras/Adam TF2
  checkpoints, variants);
* ``../shared/corpus/tf-serving/`` — real SavedModel variables from tensorflow/serving
  (Snappy-compressed index blocks among them); its tests are skipped if the folder is absent.

Manifest convention (see ``tests/helpers.py``): ``{prefix: {name: {"dtype", "shape",
"sha256", ["numpy_dtype"]}}}``, names exactly as ``tf.train.list_variables`` gives them.
Variant records have no sha256: TF cannot produce their value, and tfshard exposes them as
raw bytes, so only their metadata is compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    SHARED_CORPUS,
    corpus_missing_reason,
    expected_numpy_dtype,
    load_manifest,
    tensor_sha256,
)

import tfshard

GOLDEN_DIR = Path(__file__).parent / "data" / "golden"
CORPUS_DIR = SHARED_CORPUS / "tf-serving"

# Prefixes with more tensors than this are checked in chunks (one test per chunk, every
# failing name listed) instead of one test per tensor: many/ckpt alone has 20 001.
PER_TENSOR_LIMIT = 300
CHUNK = 1000


@dataclass(frozen=True)
class Case:
    """One checkpoint prefix listed in a manifest."""

    source: str  # "golden" or "tf-serving"
    root: Path  # folder holding manifest.json
    rel: str  # prefix relative to root, as in the manifest
    records: dict  # name -> {"dtype", "shape", "sha256"?, "numpy_dtype"?}

    @property
    def prefix(self) -> str:
        return str(self.root / self.rel)

    @property
    def id(self) -> str:
        return f"{self.source}:{self.rel}"

    def expected_variables(self) -> list[tuple[str, list[int]]]:
        return sorted((name, list(rec["shape"])) for name, rec in self.records.items())

    def data_files(self) -> list[Path]:
        p = Path(self.prefix)
        return sorted(p.parent.glob(p.name + ".data-?????-of-?????"))


def _load_cases() -> tuple[list, list[str]]:
    """(pytest params of Case, skip reasons). The golden manifest must exist; the corpus
    is optional."""
    cases, skipped = [], []
    for source, root in (("golden", GOLDEN_DIR), ("tf-serving", CORPUS_DIR)):
        if source == "tf-serving" and corpus_missing_reason("tf-serving"):
            skipped.append(corpus_missing_reason("tf-serving"))
            continue
        manifest = load_manifest(root / "manifest.json")
        for rel in sorted(manifest):
            case = Case(source, root, rel, manifest[rel])
            cases.append(pytest.param(case, id=case.id))
    return cases, skipped


_CASES, _SKIPPED = _load_cases()
_SKIP_PARAMS = [
    pytest.param(None, id="tf-serving", marks=pytest.mark.skip(reason=r)) for r in _SKIPPED
]
CASE_PARAMS = _CASES + _SKIP_PARAMS


def _tensor_params() -> list:
    """(case, names) params: one per tensor, or one per chunk for very large prefixes."""
    params = []
    for p in _CASES:
        case = p.values[0]
        names = sorted(case.records)
        if len(names) <= PER_TENSOR_LIMIT:
            params += [pytest.param(case, [n], id=f"{case.id}:{n}") for n in names]
        else:
            for i in range(0, len(names), CHUNK):
                chunk = names[i : i + CHUNK]
                params.append(pytest.param(case, chunk, id=f"{case.id}:[{chunk[0]}..{chunk[-1]}]"))
    return params + [pytest.param(None, None, id=p.id, marks=p.marks) for p in _SKIP_PARAMS]


def _alternate_path_params() -> list:
    """(case, path) params: the same checkpoint named by its .index file and by each data
    shard (DESIGN.md: open() accepts a prefix, prefix.index, or a data shard)."""
    params = []
    for p in _CASES:
        case = p.values[0]
        params.append(pytest.param(case, case.prefix + ".index", id=f"{case.id}:.index"))
        shards = case.data_files()
        assert shards, f"no data file found for {case.prefix}"
        for shard in shards:
            params.append(pytest.param(case, str(shard), id=f"{case.id}:{shard.name}"))
    return params + [pytest.param(None, None, id=p.id, marks=p.marks) for p in _SKIP_PARAMS]


def _case(source: str, rel: str) -> Case:
    for p in _CASES:
        case = p.values[0]
        if (case.source, case.rel) == (source, rel):
            return case
    raise LookupError(f"{source}:{rel} not in any manifest")


def _problems(ckpt, name: str, record: dict, *, with_info: bool = True) -> list[str]:
    """Everything wrong with one tensor of an open checkpoint, as readable lines."""
    out = []
    shape = tuple(record["shape"])
    if with_info:
        info = ckpt.info(name)
        if info.name != name:
            out.append(f"{name}: info.name is {info.name!r}")
        if info.dtype != record["dtype"]:
            out.append(f"{name}: info.dtype is {info.dtype!r}, expected {record['dtype']!r}")
        if tuple(info.shape) != shape or not isinstance(info.shape, tuple):
            out.append(f"{name}: info.shape is {info.shape!r}, expected {shape!r}")
    value = ckpt[name]
    return out + _value_problems(name, value, record)


def _value_problems(name: str, value, record: dict) -> list[str]:
    if record["dtype"] == "variant":
        # Raw serialized VariantTensorDataProtos; TF gave no value to compare with.
        return []
    shape = tuple(record["shape"])
    if not isinstance(value, np.ndarray):
        return [f"{name}: got {type(value).__name__}, expected numpy.ndarray"]
    out = []
    if value.shape != shape:
        out.append(f"{name}: shape {value.shape}, expected {shape}")
    want_dtype = expected_numpy_dtype(record)
    if want_dtype is not None and str(value.dtype) != want_dtype:
        out.append(f"{name}: numpy dtype {value.dtype}, expected {want_dtype}")
    if "sha256" in record:
        try:
            digest = tensor_sha256(value)
        except TypeError as exc:
            out.append(f"{name}: {exc}")
        else:
            if digest != record["sha256"]:
                out.append(
                    f"{name}: value sha256 {digest[:16]}..., manifest {record['sha256'][:16]}..."
                )
    return out


def _report(problems: list[str], limit: int = 20) -> str:
    more = f"\n... and {len(problems) - limit} more" if len(problems) > limit else ""
    return "\n".join(problems[:limit]) + more


@pytest.fixture(scope="module")
def opened():
    """Open each prefix once per module; ``opened(path)`` returns the open checkpoint."""
    cache = {}

    def get(path: str):
        if path not in cache:
            cache[path] = tfshard.open(path)
        return cache[path]

    yield get
    for ckpt in cache.values():
        ckpt.close()


# ---------------------------------------------------------------------------------------
# names, listing, per-tensor metadata and values


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_keys_match_manifest(case):
    with tfshard.open(case.prefix) as ckpt:
        keys = sorted(ckpt.keys())
        assert keys == sorted(case.records)
        assert len(ckpt) == len(case.records)
        assert all(name in ckpt for name in case.records)


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_list_variables_matches_manifest(case):
    assert tfshard.list_variables(case.prefix) == case.expected_variables()


@pytest.mark.parametrize(("case", "names"), _tensor_params())
def test_tensor_matches_manifest(case, names, opened):
    ckpt = opened(case.prefix)
    problems = []
    for name in names:
        problems += _problems(ckpt, name, case.records[name])
    assert not problems, _report(problems)


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_load_matches_manifest(case):
    loaded = tfshard.load(case.prefix)
    assert sorted(loaded) == sorted(case.records)
    problems = []
    for name, record in case.records.items():
        problems += _value_problems(name, loaded[name], record)
    assert not problems, _report(problems)


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_load_variable_matches_manifest(case):
    # One tensor per prefix: the largest non-variant one (partitioned ones are largest).
    candidates = [n for n, r in case.records.items() if r["dtype"] != "variant"]
    name = max(sorted(candidates), key=lambda n: int(np.prod(case.records[n]["shape"])))
    value = tfshard.load_variable(case.prefix, name)
    assert not _value_problems(name, value, case.records[name])


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_unverified_read_matches_manifest(case):
    with tfshard.open(case.prefix, verify=False) as ckpt:
        problems = []
        for name, record in case.records.items():
            problems += _problems(ckpt, name, record, with_info=False)
    assert not problems, _report(problems)


@pytest.mark.parametrize("rel", ["dtypes/ckpt", "strings/ckpt", "partitioned/model.ckpt"])
def test_arrays_outlive_close(rel):
    # DESIGN.md: close() never invalidates a view a caller still holds.
    case = _case("golden", rel)
    with tfshard.open(case.prefix) as ckpt:
        values = {name: ckpt[name] for name in case.records}
    ckpt.close()  # idempotent
    problems = []
    for name, value in values.items():
        problems += _value_problems(name, value, case.records[name])
    assert not problems, _report(problems)


# ---------------------------------------------------------------------------------------
# ways of naming a checkpoint


@pytest.mark.parametrize(("case", "path"), _alternate_path_params())
def test_open_by_index_or_data_file(case, path):
    with tfshard.open(path) as ckpt:
        assert sorted(ckpt.keys()) == sorted(case.records)
    assert tfshard.list_variables(path) == case.expected_variables()


def test_sharded_checkpoint_has_two_data_files():
    case = _case("golden", "sharded/model.ckpt")
    assert [p.name for p in case.data_files()] == [
        "model.ckpt.data-00000-of-00002",
        "model.ckpt.data-00001-of-00002",
    ]
    # `a` was saved from /device:CPU:0 and `b` from /device:CPU:1 (make_goldens.py).
    with tfshard.open(case.prefix) as ckpt:
        assert (ckpt.info("a").shard, ckpt.info("b").shard) == (0, 1)


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("partitioned/model.ckpt", {"dense/kernel": 3, "cols": 2, "dense/bias": 0}),
        ("sharded/model.ckpt", {"emb": 2, "a": 0}),
    ],
)
def test_partitioned_tensors_report_their_slices(rel, expected):
    # TF1 partitioned variables: one full entry listing the slices, plus one hidden entry
    # per slice (make_goldens.py); plain variables have no slices.
    with tfshard.open(str(GOLDEN_DIR / rel)) as ckpt:
        got = {name: len(ckpt.info(name).slices or ()) for name in expected}
    assert got == expected


@pytest.mark.parametrize(
    ("directory", "latest"),
    [
        ("keras_adam", "keras_adam/ckpt-2"),
        ("partitioned", "partitioned/model.ckpt"),
        ("sharded", "sharded/model.ckpt"),
    ],
)
def test_open_directory_uses_latest_checkpoint(directory, latest):
    folder = GOLDEN_DIR / directory
    case = _case("golden", latest)
    found = tfshard.latest_checkpoint(str(folder))
    assert isinstance(found, str)
    assert found.endswith(Path(latest).name)
    assert Path(found).resolve() == (GOLDEN_DIR / latest).resolve()
    with tfshard.open(str(folder)) as ckpt:
        assert sorted(ckpt.keys()) == sorted(case.records)
        # Values, not just names: ckpt-1 and ckpt-2 have the same keys but different values.
        problems = []
        for name, record in case.records.items():
            problems += _problems(ckpt, name, record)
    assert not problems, _report(problems)


def test_keras_checkpoints_differ():
    # Guards the previous test: it can only tell ckpt-2 from ckpt-1 if their values differ.
    one, two = _case("golden", "keras_adam/ckpt-1"), _case("golden", "keras_adam/ckpt-2")
    assert sorted(one.records) == sorted(two.records)
    assert any(one.records[n].get("sha256") != two.records[n].get("sha256") for n in one.records)


@pytest.mark.parametrize("directory", ["dtypes", "strings", "many", "variant"])
def test_latest_checkpoint_without_state_file_is_none(directory):
    assert not (GOLDEN_DIR / directory / "checkpoint").exists()
    assert tfshard.latest_checkpoint(str(GOLDEN_DIR / directory)) is None
