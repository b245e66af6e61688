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

from ..conversion import _FLOATING, _graph_without, _Replaced, optimizer_state
from ..errors import CorruptCheckpointError
from ..formats import Source, open_source
from ..objectgraph import OBJECT_GRAPH_KEY, decode, serialized_graph

__all__ = ["EMA_SUFFIX", "find_ema", "ema_pairs", "source_averages", "with_averages"]

#: The name ``tf.train.ExponentialMovingAverage`` gives its averages by default.
EMA_SUFFIX = "ExponentialMovingAverage"

_KERAS_EMA_LIST = "_model_variables_moving_average"
_KERAS_VARIABLES = "_trainable_variables"
_SLOT_NAME = "average"
_VALUE = "VARIABLE_VALUE"


def find_ema(src) -> dict:
    """``{variable: its moving average}`` of a model: a path (any format tfshard
    reads) or an open :class:`tfshard.formats.Source`.  See :func:`ema_pairs` for
    the layouts recognised; pairs whose dtypes or shapes differ are left out.

    Raises
    ------
    CorruptCheckpointError
        If the model's object graph cannot be decoded.
    """
    if isinstance(src, Source):
        return source_averages(src)
    with open_source(src) as source:
        return source_averages(source)


def source_averages(source) -> dict:
    """:func:`find_ema` of an open source."""
    found = ema_pairs(source.names(), serialized_graph(source))
    return {var: ema for var, ema in found.items() if source.info(var) == source.info(ema)}


def with_averages(source, names, ema_of: dict, to_tf: bool, report):
    """``source`` reading each of ``names`` that has an average in ``ema_of`` as that
    average (for ``convert(prefer_ema=True)``).  Fills the report's ``replaced``
    and ``ema_not_found`` (floating tensors of ``names`` without an average, other
    than optimizer state).  For a TF output the averages' keys also leave the
    object graph, as they leave the output."""
    report.replaced = {n: ema_of[n] for n in names if n in ema_of}
    graph = serialized_graph(source)
    state = set(optimizer_state(source.names(), object_graph=graph))
    report.ema_not_found = [n for n in names
                            if n not in report.replaced and n not in state
                            and n != OBJECT_GRAPH_KEY and source.info(n)[0] in _FLOATING]
    values = {}
    if to_tf and graph is not None and OBJECT_GRAPH_KEY in names:
        values = _graph_without(graph, set(ema_of.values()))
    return _Replaced(source, values, aliases=report.replaced)


def ema_pairs(names, object_graph: bytes | None = None) -> dict:
    """``{variable key: key of its moving average}`` for every variable of a
    checkpoint that has one, from its names and object graph.

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
