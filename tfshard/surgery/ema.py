"""Finding the exponential moving averages a checkpoint keeps of its variables.

Three layouts are recognised, each as TensorFlow or Keras writes it:

* TF1 (``tf.compat.v1.train.ExponentialMovingAverage`` with a ``Saver``): the
  average of variable ``X`` is the tensor ``X/ExponentialMovingAverage``.
* TF2 averaged variables (``tf.train.ExponentialMovingAverage`` whose
  ``average(var)`` variables are saved in a ``tf.train.Checkpoint``): the
  object graph gives each average the full name ``<variable's name>/
  ExponentialMovingAverage``, which ties its key to the variable's key.
* Optimizer EMA (Keras 3 ``use_ema=True``, and tf.keras optimizers of the same
  design): the optimizer tracks a list ``_model_variables_moving_average``
  whose i-th element averages the i-th element of its ``_trainable_variables``.
  Slot variables named ``average`` that an optimizer records with slot
  references (the design of TF Addons' ``MovingAverage``) are averages too.
"""

from __future__ import annotations

from ..errors import CorruptCheckpointError
from ..objectgraph import decode

__all__ = ["EMA_SUFFIX", "find_ema"]

#: The name ``tf.train.ExponentialMovingAverage`` gives its averages by default.
EMA_SUFFIX = "ExponentialMovingAverage"

_KERAS_EMA_LIST = "_model_variables_moving_average"
_KERAS_VARIABLES = "_trainable_variables"
_SLOT_NAME = "average"
_VALUE = "VARIABLE_VALUE"


def find_ema(names, object_graph: bytes | None = None) -> dict:
    """``{variable key: key of its moving average}`` for every variable of a
    checkpoint that has one.

    Parameters
    ----------
    names : iterable of str
        The checkpoint's tensor names.
    object_graph : bytes, optional
        Its serialized TF2 object graph (see
        :func:`tfshard.objectgraph.serialized_graph`); without it only the TF1
        naming is recognised.

    Returns
    -------
    dict
        Both keys are in ``names``; a key is never both a variable and an
        average.  Shapes and dtypes are not compared here.

    Raises
    ------
    CorruptCheckpointError
        If ``object_graph`` cannot be decoded.
    """
    present = set(names)
    found = {}
    suffix = "/" + EMA_SUFFIX
    for name in present:
        if name.endswith(suffix) and name[:-len(suffix)] in present:
            found[name[:-len(suffix)]] = name
    if object_graph is not None:
        found.update(_from_graph(decode(object_graph), present))
    averages = set(found.values())
    return {var: ema for var, ema in sorted(found.items()) if var not in averages}


def _value_key(node):
    for attribute in node.attributes:
        if attribute.name == _VALUE:
            return attribute.checkpoint_key
    return None


def _list_items(node):
    children = node.children
    if any(name != str(i) for i, (name, _) in enumerate(children)):
        return None
    return [child for _, child in children]


def _from_graph(graph, present: set) -> dict:
    nodes = graph.nodes
    pairs = []  # (variable node, average node)
    by_full_name = {}
    for node in nodes:
        for attribute in node.attributes:
            if attribute.name == _VALUE:
                by_full_name.setdefault(attribute.full_name, node.id)
    suffix = "/" + EMA_SUFFIX
    for full_name, node_id in by_full_name.items():
        if full_name.endswith(suffix) and full_name[:-len(suffix)] in by_full_name:
            pairs.append((by_full_name[full_name[:-len(suffix)]], node_id))
    for node in nodes:
        children = dict(node.children)
        if _KERAS_EMA_LIST in children and _KERAS_VARIABLES in children:
            variables = _list_items(nodes[children[_KERAS_VARIABLES]])
            averages = _list_items(nodes[children[_KERAS_EMA_LIST]])
            if variables is None or averages is None or len(variables) != len(averages):
                raise CorruptCheckpointError(
                    f"the optimizer object {node.id} has {_KERAS_VARIABLES} and "
                    f"{_KERAS_EMA_LIST} lists that do not pair up")
            pairs.extend(zip(variables, averages))
        for variable, slot_name, slot in node.slot_variables:
            if slot_name == _SLOT_NAME:
                pairs.append((variable, slot))
    out = {}
    for variable, average in pairs:
        var_key, ema_key = _value_key(nodes[variable]), _value_key(nodes[average])
        if var_key in present and ema_key in present and var_key != ema_key:
            out[var_key] = ema_key
    return out
