"""tfshard.conversion: convert, extract, merge, rename, strip, diff, verify (library API)."""

import os

import ml_dtypes
import numpy as np
import pytest

import tfshard
from tfshard import conversion

RNG = np.random.default_rng(7)
MODEL = {
    "dense/kernel": RNG.standard_normal((8, 4)).astype(np.float32),
    "dense/bias": RNG.standard_normal(4).astype(np.float64),
    "emb": RNG.standard_normal((16, 8)).astype(np.float16),
    "global_step": np.int64(42),
    "ids": np.arange(5, dtype=np.int32),
}


@pytest.fixture
def model(tmp_path):
    return tfshard.save(tmp_path / "src" / "model.ckpt", MODEL)


def files(directory):
    return sorted(os.listdir(directory))


def test_convert_tf_to_tf_keeps_everything(model, tmp_path):
    report = conversion.convert(model, tmp_path / "out" / "copy")
    assert report.tensors == len(MODEL) and not report.dropped
    assert report.mapping == {n: n for n in MODEL}
    got = tfshard.load(tmp_path / "out" / "copy")
    for name, value in MODEL.items():
        assert got[name].dtype == np.asarray(value).dtype
        np.testing.assert_array_equal(got[name], value)


def test_dtype_cast_applies_to_floating_tensors_only(model, tmp_path):
    conversion.convert(model, tmp_path / "bf", dtype="bfloat16")
    with tfshard.open(tmp_path / "bf") as ckpt:
        kinds = {i.name: i.dtype for i in ckpt.infos()}
        assert kinds == {"dense/kernel": "bfloat16", "dense/bias": "bfloat16",
                         "emb": "bfloat16", "global_step": "int64", "ids": "int32"}
        np.testing.assert_array_equal(ckpt["dense/kernel"],
                                      MODEL["dense/kernel"].astype(ml_dtypes.bfloat16))
    with pytest.raises(tfshard.InvalidTensorError):
        conversion.convert(model, tmp_path / "bad", dtype="int8")
    with pytest.raises(tfshard.InvalidTensorError):
        conversion.convert(model, tmp_path / "bad", dtype="nonsense")
    assert not os.path.exists(tmp_path / "bad.index")


def test_include_exclude_rename(model, tmp_path):
    report = conversion.convert(model, tmp_path / "sel", include=["dense/*", "emb"],
                                exclude=["*/bias"], rename=[r"^dense/=encoder/dense/"])
    assert sorted(report.dropped) == ["dense/bias", "global_step", "ids"]
    assert sorted(tfshard.load(tmp_path / "sel")) == ["emb", "encoder/dense/kernel"]


def test_rename_collision_refused_before_writing(model, tmp_path):
    with pytest.raises(tfshard.InvalidTensorError, match="several"):
        conversion.rename(model, tmp_path / "r", [r"^dense/.*=same"])
    assert not os.path.exists(tmp_path / "r.index")
    mapping = conversion.rename(model, tmp_path / "r", [r"^dense/=layer/"], dry_run=True)
    assert mapping["dense/kernel"] == "layer/kernel" and mapping["emb"] == "emb"
    assert not os.path.exists(tmp_path / "r.index")
    conversion.rename(model, tmp_path / "r", [r"^dense/=layer/"])
    assert "layer/kernel" in tfshard.load(tmp_path / "r")


def test_parse_rules():
    (regex, repl), = conversion.parse_rules([r"a\=b=c"])
    assert regex.pattern == "a=b" and repl == "c"
    with pytest.raises(tfshard.InvalidTensorError):
        conversion.parse_rules(["no separator"])
    with pytest.raises(tfshard.InvalidTensorError):
        conversion.parse_rules(["(unclosed=x"])


def test_output_is_never_overwritten_silently(model, tmp_path):
    conversion.convert(model, tmp_path / "o")
    before = (tmp_path / "o.index").read_bytes()
    with pytest.raises(tfshard.OutputExistsError):
        conversion.convert(model, tmp_path / "o", dtype="bfloat16")
    assert (tmp_path / "o.index").read_bytes() == before
    conversion.convert(model, tmp_path / "o", dtype="bfloat16", overwrite=True)
    assert tfshard.open(tmp_path / "o").info("emb").dtype == "bfloat16"


def test_merge_under_scopes_and_conflicts(model, tmp_path):
    other = tfshard.save(tmp_path / "head", {"dense/kernel": np.ones((4, 2), np.float32),
                                              "global_step": np.int64(7)})
    conversion.merge(tmp_path / "mix", [f"{model}:vgg/", (other, "head/")])
    got = tfshard.load(tmp_path / "mix")
    assert sorted(got) == sorted([f"vgg/{n}" for n in MODEL] + ["head/dense/kernel",
                                                               "head/global_step"])
    with pytest.raises(tfshard.InvalidTensorError) as err:
        conversion.merge(tmp_path / "bad", [model, other])
    assert "'dense/kernel'" in str(err.value) and "'global_step'" in str(err.value)
    assert not os.path.exists(tmp_path / "bad.index")
    conversion.merge(tmp_path / "first", [model, other], on_conflict="first")
    conversion.merge(tmp_path / "last", [model, other], on_conflict="last")
    assert tfshard.load(tmp_path / "first")["global_step"] == 42
    assert tfshard.load(tmp_path / "last")["global_step"] == 7


def test_optimizer_state_names():
    names = ["w", "w/Adam", "w/Adam_1", "b", "b/Momentum", "beta1_power", "beta2_power",
             "global_step", "x/Adam",  # no variable x: not a slot
             "model/w/.ATTRIBUTES/VARIABLE_VALUE",
             "model/w/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE",
             "optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE", "save_counter/.ATTRIBUTES/VARIABLE_VALUE"]
    assert conversion.optimizer_state(names) == sorted([
        "w/Adam", "w/Adam_1", "b/Momentum", "beta1_power", "beta2_power",
        "model/w/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE",
        "optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE"])
    assert "global_step" in conversion.optimizer_state(names, drop_step=True)


def test_strip_tf1_slots(tmp_path):
    src = tfshard.save(tmp_path / "t1", {
        "w": np.ones((64, 64), np.float32), "w/Adam": np.zeros((64, 64), np.float32),
        "w/Adam_1": np.zeros((64, 64), np.float32), "beta1_power": np.float32(0.9),
        "global_step": np.int64(3)})
    report = conversion.strip(src, tmp_path / "s")
    assert sorted(tfshard.load(tmp_path / "s")) == ["global_step", "w"]
    assert report.dropped_bytes == 2 * 64 * 64 * 4 + 4
    conversion.strip(src, tmp_path / "s2", drop_step=True)
    assert sorted(tfshard.load(tmp_path / "s2")) == ["w"]


def test_diff(model, tmp_path):
    assert conversion.diff(model, model).same
    changed = dict(MODEL)
    changed["dense/kernel"] = MODEL["dense/kernel"] + np.float32(1e-3)
    changed["ids"] = np.arange(6, dtype=np.int32)
    del changed["global_step"]
    changed["extra"] = np.zeros(2)
    other = tfshard.save(tmp_path / "other", changed)
    report = conversion.diff(model, other)
    assert not report.same
    assert report.missing == ["global_step"] and report.unexpected == ["extra"]
    assert list(report.mismatched) == ["ids"]
    assert list(report.differing) == ["dense/kernel"]
    max_abs, _ = report.differing["dense/kernel"]
    assert 0.5e-3 < max_abs < 2e-3
    assert "dense/kernel" not in conversion.diff(model, other, atol=1e-2).differing


def test_diff_treats_matching_nans_as_equal(tmp_path):
    a = tfshard.save(tmp_path / "a", {"x": np.array([1.0, np.nan])})
    b = tfshard.save(tmp_path / "b", {"x": np.array([1.0, np.nan])})
    c = tfshard.save(tmp_path / "c", {"x": np.array([np.nan, 1.0])})
    assert conversion.diff(a, b).same
    assert not conversion.diff(a, c).same


def test_verify_reports_every_bad_tensor(tmp_path):
    tensors = {f"t{i}": np.full(1000, i, np.float32) for i in range(6)}
    prefix = tfshard.save(tmp_path / "v", tensors, alignment=1)
    assert conversion.verify(prefix).ok
    with tfshard.open(prefix) as ckpt:
        offsets = {n: ckpt.info(n).offset for n in ("t1", "t4")}
    data = tmp_path / "v.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    for off in offsets.values():
        raw[off + 10] ^= 0xFF
    data.write_bytes(bytes(raw))
    report = conversion.verify(prefix)
    assert [name for name, _ in report.problems] == ["t1", "t4"] and report.checked == 6


def test_verify_flags_data_from_another_save(tmp_path):
    tensors = {f"t{i}": np.full(100, i, np.float32) for i in range(4)}
    tfshard.save(tmp_path / "a", tensors, alignment=1)
    tfshard.save(tmp_path / "b", {k: v + 1 for k, v in tensors.items()}, alignment=1)
    os.replace(tmp_path / "b.data-00000-of-00001", tmp_path / "a.data-00000-of-00001")
    report = conversion.verify(tmp_path / "a")
    assert len(report.problems) == 4
    assert report.notes and "different saves" in report.notes[0]


def test_convert_streams_tensors_into_safetensors(model, tmp_path):
    safetensors = pytest.importorskip("safetensors.numpy")
    out = tmp_path / "model.safetensors"
    conversion.convert(model, out)
    loaded = safetensors.load_file(str(out))
    for name, value in MODEL.items():
        np.testing.assert_array_equal(loaded[name], value)
    conversion.convert(out, tmp_path / "back")
    back = tfshard.load(tmp_path / "back")
    assert sorted(back) == sorted(MODEL)
    assert conversion.diff(model, tmp_path / "back").same


def test_extract_patterns_to_npz(model, tmp_path):
    conversion.extract(model, tmp_path / "w.npz", ["dense/*"])
    with np.load(tmp_path / "w.npz") as npz:
        assert sorted(npz.files) == ["dense/bias", "dense/kernel"]
        np.testing.assert_array_equal(npz["dense/kernel"], MODEL["dense/kernel"])


def test_tf2_checkpoint_to_safetensors_drops_only_the_object_graph(tmp_path):
    pytest.importorskip("safetensors")
    golden = os.path.join(os.path.dirname(__file__), "data", "golden", "keras_adam", "ckpt-2")
    report = conversion.convert(golden, tmp_path / "m.safetensors")
    assert report.dropped == ["_CHECKPOINTABLE_OBJECT_GRAPH"]
    with tfshard.open(golden) as ckpt:
        assert report.tensors == len(ckpt) - 1
    # Back into a TF checkpoint, everything but the graph is the same.
    conversion.convert(tmp_path / "m.safetensors", tmp_path / "back")
    diff = conversion.diff(golden, tmp_path / "back")
    assert diff.missing == ["_CHECKPOINTABLE_OBJECT_GRAPH"] and not diff.differing


def test_release_keeps_values(tmp_path):
    prefix = tfshard.save(tmp_path / "r", {"x": np.arange(300_000, dtype=np.float32)})
    with tfshard.open(prefix) as ckpt:
        view = ckpt["x"]
        total = float(view.sum())
        ckpt.release("x")
        assert float(view.sum()) == total  # the pages come back from the file


def test_tensorflow_reads_converted_and_merged_checkpoints(model, tmp_path):
    tf = pytest.importorskip("tensorflow")
    pytest.importorskip("safetensors")
    conversion.convert(model, tmp_path / "m.safetensors")
    conversion.convert(tmp_path / "m.safetensors", tmp_path / "from_st", dtype="bfloat16",
                       rename=[r"^dense/=enc/dense/"], max_shard_size=256)
    other = tfshard.save(tmp_path / "o", {"w": np.ones(3, np.float32)})
    conversion.merge(tmp_path / "merged", [f"{tmp_path / 'from_st'}:a/", f"{other}:b/"])
    conversion.strip(tmp_path / "merged", tmp_path / "stripped")
    for out in ("from_st", "merged", "stripped"):
        reader = tf.train.load_checkpoint(str(tmp_path / out))
        with tfshard.open(tmp_path / out) as ckpt:
            assert sorted(reader.get_variable_to_shape_map()) == sorted(ckpt)
            for name in ckpt:
                assert ckpt.info(name).dtype == reader.get_variable_to_dtype_map()[name].name
                assert np.asarray(reader.get_tensor(name)).tobytes() == ckpt[name].tobytes()
