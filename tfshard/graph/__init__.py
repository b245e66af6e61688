"""The graph beside the weights: ``.meta`` files and SavedModels, read without TensorFlow.

A TF1 ``Saver`` writes ``P.meta`` (a ``MetaGraphDef``) next to the checkpoint ``P``; a
SavedModel directory holds ``saved_model.pb`` (a ``SavedModel``: one or more
``MetaGraphDef`` s) and its checkpoint ``variables/variables``.  This module decodes
them with the C protobuf reader tfshard already uses for checkpoints -- no
``protobuf`` or TensorFlow package -- lazily: a graph of hundreds of megabytes gives
its collections, signatures and variables without building its nodes, and nodes are
decoded one by one on demand.

>>> from tfshard import graph
>>> with graph.open("train/model.ckpt-100.meta") as f:              # doctest: +SKIP
...     g = f.meta_graph()
...     g.collections["hyperparameters"].value
...     g.tensor("hp/learning_rate:0").value()
...     [(v.name, v.dtype, v.shape, v.trainable) for v in g.variables()]
['hp/learning_rate:0']
array(0.01, dtype=float32)
[('dense/kernel', 'float32', [3, 2], True), ('global_step', 'int64', [], False)]

See ``docs/graph.md`` for the whole API, the ``tfshard graph`` command and its JSON.
"""

from ._check import Mismatch, RestoreCheck, check_restore
from ._file import SAVED_MODEL_FILENAME, GraphFile, open
from ._meta import VARIABLE_COLLECTIONS, MetaGraph
from ._summary import RISKY_OPS, risky_ops, summary, summary_lines
from ._types import (
    Any,
    AssetFile,
    BundleSignature,
    Collection,
    FuncAttr,
    Function,
    Node,
    NodeHead,
    RiskyOp,
    SavedFunction,
    SavedObject,
    SavedVariable,
    SaverDef,
    Signature,
    SliceInfo,
    Tensor,
    TensorInfo,
    TensorValue,
    Variable,
    VariableDef,
    dtype_name,
)

__all__ = [
    "open", "GraphFile", "MetaGraph", "SAVED_MODEL_FILENAME", "VARIABLE_COLLECTIONS",
    "summary", "summary_lines", "risky_ops", "RISKY_OPS", "check_restore", "RestoreCheck",
    "Mismatch", "Any", "AssetFile", "BundleSignature", "Collection", "FuncAttr", "Function", "Node", "NodeHead",
    "RiskyOp", "SavedFunction", "SavedObject", "SavedVariable", "SaverDef", "Signature", "SliceInfo",
    "Tensor", "TensorInfo", "TensorValue", "Variable", "VariableDef", "dtype_name",
]
