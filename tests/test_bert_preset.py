"""--rename-preset bert / bert-pretraining: an original Google BERT checkpoint (written here
with random weights, without TensorFlow) becomes the state dict transformers' own TF-BERT
loader (load_tf_weights_in_bert, transformers 4.x, which reads through TensorFlow) builds."""

import numpy as np
import pytest

import tfshard
from tfshard import cli, conversion
from tfshard.cli._common import PRESET_NAMES
from tfshard.surgery.presets import PRESETS

CONFIG = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=37, max_position_embeddings=64, type_vocab_size=2)


def original_bert_layout(vocab_size, hidden_size, num_hidden_layers, intermediate_size,
                         max_position_embeddings, type_vocab_size, **_):
    """Names and shapes of google-research/bert's bert_model.ckpt (pre-training heads
    included)."""
    h, i = hidden_size, intermediate_size
    shapes = {"bert/embeddings/word_embeddings": (vocab_size, h),
              "bert/embeddings/position_embeddings": (max_position_embeddings, h),
              "bert/embeddings/token_type_embeddings": (type_vocab_size, h),
              "bert/embeddings/LayerNorm/gamma": (h,), "bert/embeddings/LayerNorm/beta": (h,)}
    for n in range(num_hidden_layers):
        p = f"bert/encoder/layer_{n}/"
        for part in ("query", "key", "value"):
            shapes[p + f"attention/self/{part}/kernel"] = (h, h)
            shapes[p + f"attention/self/{part}/bias"] = (h,)
        shapes.update({p + "attention/output/dense/kernel": (h, h),
                       p + "attention/output/dense/bias": (h,),
                       p + "attention/output/LayerNorm/gamma": (h,),
                       p + "attention/output/LayerNorm/beta": (h,),
                       p + "intermediate/dense/kernel": (h, i),
                       p + "intermediate/dense/bias": (i,),
                       p + "output/dense/kernel": (i, h), p + "output/dense/bias": (h,),
                       p + "output/LayerNorm/gamma": (h,), p + "output/LayerNorm/beta": (h,)})
    shapes.update({"bert/pooler/dense/kernel": (h, h), "bert/pooler/dense/bias": (h,),
                   "cls/predictions/transform/dense/kernel": (h, h),
                   "cls/predictions/transform/dense/bias": (h,),
                   "cls/predictions/transform/LayerNorm/gamma": (h,),
                   "cls/predictions/transform/LayerNorm/beta": (h,),
                   "cls/predictions/output_bias": (vocab_size,),
                   "cls/seq_relationship/output_weights": (2, h),
                   "cls/seq_relationship/output_bias": (2,)})
    return shapes


@pytest.fixture
def bert_checkpoint(tmp_path):
    """The original layout with random float32 weights, plus the training leftovers the
    released checkpoints carry (Adam slots, global_step), written by tfshard."""
    rng = np.random.default_rng(11)
    tensors = {name: rng.standard_normal(shape).astype(np.float32)
               for name, shape in original_bert_layout(**CONFIG).items()}
    for name in ("bert/pooler/dense/kernel", "cls/predictions/output_bias"):
        tensors[f"{name}/adam_m"] = np.zeros_like(tensors[name])
        tensors[f"{name}/adam_v"] = np.ones_like(tensors[name])
    tensors["global_step"] = np.int64(1000)
    return tfshard.save(tmp_path / "bert" / "bert_model.ckpt", tensors)


def _transformers():
    pytest.importorskip("tensorflow")  # transformers' loader reads through TF
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.models.bert.modeling_bert import load_tf_weights_in_bert

    return torch, transformers, load_tf_weights_in_bert


def test_preset_equals_transformers_tf_bert_loader_for_pretraining(bert_checkpoint, tmp_path):
    torch, transformers, load_tf_weights_in_bert = _transformers()
    load_file = pytest.importorskip("safetensors.torch").load_file
    config = transformers.BertConfig(**CONFIG)
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(config)
    load_tf_weights_in_bert(model, config, str(bert_checkpoint))
    expected = model.state_dict()

    report = conversion.convert(bert_checkpoint, tmp_path / "pt.safetensors",
                                rename_preset="bert-pretraining", framework="torch")
    ours = load_file(str(tmp_path / "pt.safetensors"))
    assert sorted(report.dropped) == sorted(
        ["global_step", "bert/pooler/dense/kernel/adam_m", "bert/pooler/dense/kernel/adam_v",
         "cls/predictions/output_bias/adam_m", "cls/predictions/output_bias/adam_v"])
    assert len(report.transposed) == 1 + 6 * CONFIG["num_hidden_layers"] + 1
    # Every key of the model but the decoder, which transformers ties to the embeddings.
    assert set(expected) - set(ours) == {"cls.predictions.decoder.weight",
                                         "cls.predictions.decoder.bias"}
    assert set(ours) <= set(expected)
    for name, value in ours.items():
        assert value.dtype == expected[name].dtype and torch.equal(value, expected[name]), name
    assert torch.equal(expected["cls.predictions.decoder.weight"],
                       ours["bert.embeddings.word_embeddings.weight"])


def test_bert_preset_gives_a_bertmodel_state_dict(bert_checkpoint, tmp_path):
    torch, transformers, load_tf_weights_in_bert = _transformers()
    config = transformers.BertConfig(**CONFIG)
    reference = transformers.BertForPreTraining(config)
    load_tf_weights_in_bert(reference, config, str(bert_checkpoint))

    out = tmp_path / "hf"
    assert cli.main(["convert", str(bert_checkpoint), str(out / "model.safetensors"),
                     "--rename-preset", "bert", "--for", "torch", "--json"]) == 0
    config.save_pretrained(str(out))
    # from_pretrained checks the file's "format" metadata and loads strictly.
    model = transformers.BertModel.from_pretrained(str(out))
    want = reference.bert.state_dict()
    got = model.state_dict()
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    load_file = pytest.importorskip("safetensors.torch").load_file
    result = transformers.BertModel(config).load_state_dict(
        load_file(str(out / "model.safetensors")), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_presets_named_by_the_cli_are_the_library_presets():
    assert set(PRESET_NAMES) == set(PRESETS)
    for name in PRESETS:
        assert f"'{name}'" in cli._common.PRESET_HELP
    with pytest.raises(tfshard.InvalidTensorError, match="bert, bert-pretraining"):
        conversion.convert("unused", "unused.npz", rename_preset="gpt")


def test_preset_output_names_without_transformers(bert_checkpoint, tmp_path):
    report = conversion.convert(bert_checkpoint, tmp_path / "m.npz", rename_preset="bert")
    assert report.mapping["bert/encoder/layer_1/attention/self/query/kernel"] == \
        "encoder.layer.1.attention.self.query.weight"
    assert report.mapping["bert/embeddings/LayerNorm/beta"] == "embeddings.LayerNorm.bias"
    assert report.mapping["bert/embeddings/word_embeddings"] == \
        "embeddings.word_embeddings.weight"
    assert not any(name.startswith("cls/") for name in report.mapping)
    with np.load(tmp_path / "m.npz") as out, tfshard.open(bert_checkpoint) as src:
        kernel = src["bert/encoder/layer_0/intermediate/dense/kernel"]
        np.testing.assert_array_equal(out["encoder.layer.0.intermediate.dense.weight"],
                                      kernel.T)
