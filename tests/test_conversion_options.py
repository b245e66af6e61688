"""convert's cast exceptions (--keep), transposes, --prefer-ema and --json on the command
line; merge and strip keep safetensors metadata."""

import json

import ml_dtypes
import numpy as np
import pytest

import tfshard
from tfshard import cli, conversion, formats

RNG = np.random.default_rng(2)
MODEL = {
    "encoder/dense/kernel": RNG.standard_normal((4, 3)).astype(np.float32),
    "encoder/dense/bias": RNG.standard_normal(3).astype(np.float32),
    "encoder/LayerNorm/gamma": RNG.standard_normal(3).astype(np.float32),
    "embeddings": RNG.standard_normal((6, 3)).astype(np.float64),
    "step": np.int64(7),
}


@pytest.fixture
def model(tmp_path):
    return tfshard.save(tmp_path / "model.ckpt", MODEL)


def test_cast_keeps_the_tensors_matching_keep(model, tmp_path):
    report = conversion.convert(model, tmp_path / "bf", dtype="bfloat16",
                                keep=["LayerNorm", r"/bias$", "^emb"])
    assert sorted(report.not_cast) == ["embeddings", "encoder/LayerNorm/gamma",
                                       "encoder/dense/bias"]
    with tfshard.open(tmp_path / "bf") as out:
        assert {i.name: i.dtype for i in out.infos()} == {
            "encoder/dense/kernel": "bfloat16", "encoder/dense/bias": "float32",
            "encoder/LayerNorm/gamma": "float32", "embeddings": "float64", "step": "int64"}
        np.testing.assert_array_equal(out["encoder/dense/kernel"],
                                      MODEL["encoder/dense/kernel"].astype(ml_dtypes.bfloat16))
        np.testing.assert_array_equal(out["encoder/dense/bias"], MODEL["encoder/dense/bias"])
    with pytest.raises(tfshard.InvalidTensorError, match="give a dtype"):
        conversion.convert(model, tmp_path / "x", keep=["bias"])
    with pytest.raises(tfshard.InvalidTensorError, match="keep pattern"):
        conversion.convert(model, tmp_path / "x", dtype="float16", keep=["(unclosed"])


def test_transpose_reverses_axes_and_can_cast_on_the_way(model, tmp_path):
    report = conversion.convert(model, tmp_path / "t.npz", transpose=[r"kernel$", "^emb"],
                                dtype="float16")
    assert sorted(report.transposed) == ["embeddings", "encoder/dense/kernel"]
    with np.load(tmp_path / "t.npz") as out:
        assert out["encoder/dense/kernel"].shape == (3, 4)
        np.testing.assert_array_equal(out["encoder/dense/kernel"],
                                      MODEL["encoder/dense/kernel"].T.astype(np.float16))
        np.testing.assert_array_equal(out["embeddings"], MODEL["embeddings"].T.astype(np.float16))
        assert out["encoder/dense/bias"].shape == (3,)


def test_convert_cli_options_and_json(model, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert cli.main(["convert", str(model), str(out), "--dtype", "float16", "--keep", "bias",
                     "--transpose", "kernel$", "--rename", "^encoder/=enc/", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["not_cast"] == ["encoder/dense/bias"]
    assert doc["transposed"] == ["encoder/dense/kernel"]
    assert doc["mapping"]["encoder/dense/kernel"] == "enc/dense/kernel"
    assert doc["tensors"] == 5 and doc["outputs"] == [str(out)]
    with formats.open_source(out) as src:
        assert src.info("enc/dense/kernel") == ("float16", (3, 4))
        assert src.info("enc/dense/bias") == ("float32", (3,))
    assert cli.main(["convert", str(model), str(tmp_path / "n.safetensors"), "--keep",
                     "bias"]) == 1
    assert "give a dtype" in capsys.readouterr().err
    assert cli.main(["convert", "--help"]) == 0
    help_text = capsys.readouterr().out
    for option in ("--keep", "--transpose", "--rename-preset", "--prefer-ema", "--for",
                   "--json"):
        assert option in help_text
    assert "--rename-preset bert --for torch" in help_text


def test_prefer_ema_cli_lists_replaced_and_not_found(tmp_path, capsys):
    path = tfshard.save(tmp_path / "c", {
        "w": np.zeros(3, np.float32), "w/ExponentialMovingAverage": np.ones(3, np.float32),
        "b": np.zeros(2, np.float32), "global_step": np.int64(3)})
    assert cli.main(["extract", str(path), "-o", str(tmp_path / "w.npz"),
                     "--prefer-ema"]) == 0
    out = capsys.readouterr().out
    assert "1 tensor replaced by its moving average:" in out
    assert "  w <- w/ExponentialMovingAverage" in out
    assert "1 floating tensor without a moving average" in out and "  b" in out
    with np.load(tmp_path / "w.npz") as got:
        assert sorted(got.files) == ["b", "global_step", "w"] and got["w"].tolist() == [1] * 3
    assert cli.main(["convert", str(path), str(tmp_path / "e"), "--prefer-ema", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["replaced"] == {"w": "w/ExponentialMovingAverage"}
    assert doc["ema_not_found"] == ["b"]
    assert doc["dropped"] == ["w/ExponentialMovingAverage"]
    plain = tfshard.save(tmp_path / "p", {"w": np.zeros(3, np.float32)})
    assert cli.main(["extract", str(plain), "-o", str(tmp_path / "p.npz"),
                     "--prefer-ema"]) == 0
    assert "0 tensors replaced by their moving averages (the input keeps none)" in \
        capsys.readouterr().out


def test_merge_and_strip_keep_metadata_the_sources_agree_on(tmp_path):
    save_file = pytest.importorskip("safetensors.numpy").save_file
    save_file({"a": np.ones(2, np.float32)}, str(tmp_path / "a.safetensors"),
              metadata={"format": "pt", "run": "1"})
    save_file({"b": np.ones(2, np.float32), "b/Adam": np.ones(2, np.float32)},
              str(tmp_path / "b.safetensors"), metadata={"format": "pt", "run": "2"})
    conversion.merge(tmp_path / "m.safetensors", [tmp_path / "a.safetensors",
                                                  tmp_path / "b.safetensors"])
    conversion.strip(tmp_path / "b.safetensors", tmp_path / "s.safetensors")
    with formats.open_source(tmp_path / "m.safetensors") as m, \
            formats.open_source(tmp_path / "s.safetensors") as s:
        assert {k: v for k, v in m.metadata.items() if k != formats.CHECKSUM_KEY} == \
            {"format": "pt"}
        assert {k: v for k, v in s.metadata.items() if k != formats.CHECKSUM_KEY} == \
            {"format": "pt", "run": "2"}
        assert s.names() == ["b"]
