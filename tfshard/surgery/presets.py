"""Name maps for well-known model layouts (``tfshard convert --rename-preset``).

A preset is data: rename rules (applied in order with ``re.sub``, like
``--rename``), the tensors to transpose and the tensors to leave out, both as
regular expressions searched in the *input* names.
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import InvalidTensorError

__all__ = ["RenamePreset", "PRESETS", "get_preset"]


class RenamePreset(NamedTuple):
    """One entry of :data:`PRESETS`.

    Attributes
    ----------
    name : str
    description : str
    rename : tuple of (str, str)
        ``(regex, replacement)`` rules, applied in order.
    transpose : tuple of str
        Regexes: input tensors whose name matches one get their axes reversed
        (a TF ``kernel`` of shape ``[in, out]`` becomes torch's ``[out, in]``).
    drop : tuple of str
        Regexes: input tensors whose name matches one are left out.
    """

    name: str
    description: str
    rename: tuple
    transpose: tuple
    drop: tuple


# What Google's BERT checkpoints (bert_model.ckpt from google-research/bert) hold
# beside the model: the AdamWeightDecayOptimizer's slots and the step counter,
# each a whole component of the name.
_BERT_DROP = (r"(^|/)(adam_m|adam_v|AdamWeightDecayOptimizer|AdamWeightDecayOptimizer_1|"
              r"global_step)(/|$)",)

# The original layout's names -> Hugging Face's module paths.  Order matters:
# the head's special names first, then the generic rewrites, '/' -> '.' last.
_BERT_RULES = (
    (r"^cls/predictions/output_bias$", "cls/predictions/bias"),
    (r"^cls/seq_relationship/output_weights$", "cls/seq_relationship/weight"),
    (r"^cls/seq_relationship/output_bias$", "cls/seq_relationship/bias"),
    (r"/layer_(\d+)/", r"/layer/\1/"),
    (r"_embeddings$", "_embeddings/weight"),
    (r"/(kernel|gamma)$", "/weight"),
    (r"/beta$", "/bias"),
    (r"/", "."),
)

PRESETS = {
    "bert": RenamePreset(
        "bert",
        "Google's original BERT checkpoint -> a transformers BertModel state dict "
        "(encoder and pooler; the pre-training heads cls/* are left out)",
        ((r"^bert/", ""),) + _BERT_RULES,
        (r"/kernel$",),
        _BERT_DROP + (r"^cls/",),
    ),
    "bert-pretraining": RenamePreset(
        "bert-pretraining",
        "Google's original BERT checkpoint -> a transformers BertForPreTraining state dict "
        "(bert.* and the cls.* heads)",
        _BERT_RULES,
        (r"/kernel$",),
        _BERT_DROP,
    ),
}


def get_preset(name: str) -> RenamePreset:
    """The preset called ``name``.

    Raises
    ------
    InvalidTensorError
        For an unknown name (the message lists the presets).
    """
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise InvalidTensorError(f"unknown rename preset {name!r}; the presets are "
                                 f"{', '.join(sorted(PRESETS))}") from None
