"""CRC-32C of every tensor in a safetensors file's __metadata__ (written, checked on
read), source metadata kept across conversions, {"format": "pt"} for torch outputs."""

import json

import crc32c
import numpy as np
import pytest

import tfshard
from tfshard import cli, conversion, formats
from tfshard.formats import CHECKSUM_KEY

TENSORS = {"w": np.arange(12, dtype=np.float32).reshape(3, 4),
           'odd "name"/é': np.arange(5, dtype=np.int64),
           "empty": np.zeros((0, 2), np.float16)}


def _write(path, tensors=TENSORS, metadata=None, **kw):
    plan = [(n, str(v.dtype), v.shape) for n, v in tensors.items()]
    with formats.create_sink(path, plan=plan, metadata=metadata, **kw) as sink:
        for name, value in tensors.items():
            sink.add(name, value)
    return path


def _data_offset(path, name):
    """File offset of tensor ``name``'s first byte, from the header."""
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    return 8 + n + json.loads(raw[8:8 + n])[name]["data_offsets"][0]


def test_every_tensor_crc_is_recorded_under_one_key(tmp_path):
    safe_open = pytest.importorskip("safetensors").safe_open
    path = _write(tmp_path / "m.safetensors")
    with safe_open(str(path), framework="np") as f:  # the safetensors library reads it
        metadata = f.metadata()
        table = json.loads(metadata[CHECKSUM_KEY])
        assert set(table) == set(TENSORS) == set(f.keys())
        for name in TENSORS:
            value = f.get_tensor(name)
            np.testing.assert_array_equal(value, TENSORS[name])
            assert table[name] == f"{crc32c.crc32c(value.tobytes()):08x}"
    assert table["empty"] == "00000000"
    assert set(metadata) == {CHECKSUM_KEY}  # neutral: no "format" unless asked


def test_a_changed_byte_fails_its_checksum_on_read(tmp_path):
    path = _write(tmp_path / "m.safetensors")
    raw = bytearray(path.read_bytes())
    raw[_data_offset(path, "w") + 5] ^= 0x10
    path.write_bytes(bytes(raw))
    with formats.open_source(path) as src:
        np.testing.assert_array_equal(src.read('odd "name"/é'), TENSORS['odd "name"/é'])
        with pytest.raises(tfshard.ChecksumMismatchError, match="tensor 'w' has CRC-32C") as e:
            src.read("w")
        assert e.value.path == str(path) and e.value.key == "w"
    with pytest.raises(tfshard.ChecksumMismatchError):
        conversion.convert(path, tmp_path / "out.npz")
    assert not (tmp_path / "out.npz").exists()
    with formats.open_source(path, verify=False) as src:
        assert src.read("w").ravel()[1] != TENSORS["w"].ravel()[1]
    assert cli.main(["convert", str(path), str(tmp_path / "o.npz")]) == 1


def test_malformed_checksum_metadata_is_corrupt(tmp_path):
    save_file = pytest.importorskip("safetensors.numpy").save_file
    for bad in ("not json", '["a"]', '{"w": "xyz"}', '{"w": 5}', '{"w": "0000000G"}'):
        path = tmp_path / "bad.safetensors"
        save_file({"w": np.zeros(2, np.float32)}, str(path), metadata={CHECKSUM_KEY: bad})
        with pytest.raises(tfshard.CorruptCheckpointError, match=CHECKSUM_KEY):
            formats.open_source(path)
    # A checksum of a tensor the file does not hold checks nothing and is ignored.
    save_file({"w": np.zeros(2, np.float32)}, str(path),
              metadata={CHECKSUM_KEY: '{"gone": "00000000"}'})
    with formats.open_source(path) as src:
        assert src.read("w").tolist() == [0.0, 0.0]


def test_sharded_output_records_each_files_tensors(tmp_path):
    tensors = {f"t{i}": np.full(64, i, np.float32) for i in range(4)}
    _write(tmp_path / "model.safetensors", tensors, max_shard_size=300)
    files = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(files) == 4
    for path in files:
        with formats.open_source(path) as src:
            assert set(json.loads(src.metadata[CHECKSUM_KEY])) == set(src.names())
    with formats.open_source(tmp_path / "model.safetensors.index.json") as src:
        for name, value in tensors.items():
            np.testing.assert_array_equal(src.read(name), value)


def test_source_metadata_survives_safetensors_to_safetensors(tmp_path):
    save_file = pytest.importorskip("safetensors.numpy").save_file
    save_file({"a": np.ones(3, np.float32), "b": np.zeros(2, np.int32)},
              str(tmp_path / "in.safetensors"), metadata={"format": "pt", "author": "x"})
    conversion.convert(tmp_path / "in.safetensors", tmp_path / "out.safetensors",
                       dtype="bfloat16")
    conversion.convert(tmp_path / "out.safetensors", tmp_path / "again.safetensors")
    conversion.rename(tmp_path / "again.safetensors", tmp_path / "renamed.safetensors",
                      ["^a$=c"])
    for name in ("out", "again", "renamed"):
        with formats.open_source(tmp_path / f"{name}.safetensors") as src:
            meta = dict(src.metadata)
            table = json.loads(meta.pop(CHECKSUM_KEY))
            assert meta == {"format": "pt", "author": "x"}, name
            assert set(table) == set(src.names())  # recomputed for what this file holds
            for n in src.names():
                src.read(n)  # every checksum matches
    # A TF checkpoint has no metadata: the output is neutral unless --for says otherwise.
    ckpt = tfshard.save(tmp_path / "ckpt", {"a": np.ones(2, np.float32)})
    conversion.convert(ckpt, tmp_path / "neutral.safetensors")
    conversion.convert(ckpt, tmp_path / "torch.safetensors", framework="torch")
    with formats.open_source(tmp_path / "neutral.safetensors") as src:
        assert "format" not in src.metadata
    with formats.open_source(tmp_path / "torch.safetensors") as src:
        assert src.metadata["format"] == "pt"
    with pytest.raises(tfshard.UnsupportedError, match="safetensors"):
        conversion.convert(ckpt, tmp_path / "x.npz", framework="torch")
    with pytest.raises(tfshard.InvalidTensorError, match="unknown framework"):
        conversion.convert(ckpt, tmp_path / "x.safetensors", framework="caffe")
    assert cli.main(["convert", str(ckpt), str(tmp_path / "cli.safetensors"), "--for",
                     "torch", "-q"]) == 0
    with formats.open_source(tmp_path / "cli.safetensors") as src:
        assert src.metadata["format"] == "pt"


def test_torch_reads_an_output_marked_for_it(tmp_path):
    torch = pytest.importorskip("torch")
    load_file = pytest.importorskip("safetensors.torch").load_file
    ckpt = tfshard.save(tmp_path / "ckpt", {"dense/kernel": TENSORS["w"]})
    conversion.convert(ckpt, tmp_path / "m.safetensors", framework="torch",
                       rename=[r"/=."], transpose=[r"kernel$"])
    state = load_file(str(tmp_path / "m.safetensors"))
    assert torch.equal(state["dense.kernel"], torch.from_numpy(TENSORS["w"].T.copy()))


def test_verify_checks_a_safetensors_files_checksums(tmp_path, capsys):
    path = _write(tmp_path / "m.safetensors")
    report = conversion.verify(path)
    assert report.ok and report.checked == 3 and not report.notes
    raw = bytearray(path.read_bytes())
    raw[_data_offset(path, "w")] ^= 1
    raw[_data_offset(path, 'odd "name"/é')] ^= 1
    path.write_bytes(bytes(raw))
    report = conversion.verify(path)
    assert sorted(name for name, _ in report.problems) == ['odd "name"/é', "w"]
    assert cli.main(["verify", str(path)]) == 1
    assert "BAD  w:" in capsys.readouterr().out
    save_file = pytest.importorskip("safetensors.numpy").save_file
    save_file({"a": np.ones(2, np.float32)}, str(tmp_path / "plain.safetensors"))
    report = conversion.verify(tmp_path / "plain.safetensors")
    assert report.ok and report.notes == [
        "1 of 1 tensors have no recorded checksum (files not written by tfshard have none): "
        "only their layout was checked"]
