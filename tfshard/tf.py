"""Restore checkpoint values into live TensorFlow variables.

The one tfshard module that imports TensorFlow.  Values are read with
tfshard's reader (memory-mapped, zero-copy where the bytes allow) and assigned
to the variables on their own devices::

    import tfshard.tf

    # TF2: a Keras model, a tf.Module or a tf.train.Checkpoint, matched through
    # the checkpoint's object graph as tf.train.Checkpoint.restore matches it.
    tfshard.tf.restore("train/ckpt-100", model)

    # TF1: every global variable of the session's graph, by name, as Saver.restore.
    tfshard.tf.restore("train/model.ckpt-1000", session=sess)

    # Load a pretrained network under another name scope (the semantics of
    # tf.compat.v1.train.init_from_checkpoint's assignment_map).
    tfshard.tf.restore("vgg/model.ckpt", session=sess,
                       assignment_map={"vgg/conv/": "student/conv/"})

Nothing is assigned unless every variable can be restored (``strict=True``), so
a failed restore never leaves a model half loaded.
"""

from __future__ import annotations

import re
import sys
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

try:
    import tensorflow as tf
except ImportError as exc:  # pragma: no cover - exercised in a child without TF
    raise ImportError("tfshard.tf needs TensorFlow: pip install tfshard[tensorflow]") from exc

from . import dtypes, reader
from .errors import RestoreError, UnsupportedError
from .frameworks import Framework
from .objectgraph import OBJECT_GRAPH_KEY, decode, escape_local_name

__all__ = ["restore", "RestoreReport"]

# Graph-mode restores feed values to the session in batches of about this many
# bytes, so a huge model never needs all its values converted at once.
_FEED_BATCH_BYTES = 256 << 20


@dataclass
class RestoreReport:
    """What :func:`restore` found, and did.

    Attributes
    ----------
    restored : list of (str, str)
        ``(variable, checkpoint key)`` of every variable assigned (with
        ``strict=True``, filled only when the whole restore succeeded).
    missing : list of (str, str)
        ``(variable, checkpoint key looked for)`` of variables the checkpoint has
        no tensor for.
    mismatched : list of (str, str, str)
        ``(variable, checkpoint key, what differs)`` where shape or dtype differ.
    unexpected : list of str
        Checkpoint tensors no variable took (optimizer slots, ``global_step``...
        are typical and harmless; they never make a restore fail).
    nbytes : int
        Bytes of values assigned.
    """

    restored: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    mismatched: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    nbytes: int = 0

    @property
    def ok(self) -> bool:
        """True when no variable was missing or mismatched."""
        return not self.missing and not self.mismatched

    def __str__(self) -> str:
        lines = [f"restored {len(self.restored)} variable(s) ({self.nbytes} bytes), "
                 f"{len(self.missing)} missing, {len(self.mismatched)} mismatched, "
                 f"{len(self.unexpected)} checkpoint tensors unused"]
        lines += [f"  missing: {var} (no tensor {key!r})" for var, key in self.missing]
        lines += [f"  mismatched: {var} <- {key!r}: {why}" for var, key, why in self.mismatched]
        shown = self.unexpected[:20]
        lines += [f"  unused: {key}" for key in shown]
        if len(self.unexpected) > len(shown):
            lines.append(f"  ... and {len(self.unexpected) - len(shown)} more unused")
        return "\n".join(lines)


@dataclass
class _Target:
    """One variable and where its value comes from."""

    label: str          # how reports name the variable
    variable: object
    key: str            # checkpoint tensor
    index: tuple | None = None   # the region of the tensor a partition holds
    full_shape: tuple | None = None  # the shape the checkpoint tensor must have


def restore(path, var_list=None, *, session=None, assignment_map=None, strict=True,
            verify=True) -> RestoreReport:
    """Assign the values of checkpoint ``path`` to TensorFlow variables.

    Parameters
    ----------
    path : str or os.PathLike
        A checkpoint prefix, its ``.index`` file, a data shard, or a directory
        (its ``checkpoint`` file names the latest checkpoint).
    var_list : optional
        What to restore:

        * a Keras model, ``tf.Module`` or ``tf.train.Checkpoint``: its
          variables, matched through the checkpoint's object graph like
          ``tf.train.Checkpoint.restore`` (the object may stand for the
          checkpoint's root or for one of the root's children, e.g. the
          ``model`` of ``tf.train.Checkpoint(model=model)``).  Checkpoints
          without an object graph are matched by variable name;
        * a list of variables (``tf.Variable``, Keras variables, TF1
          ``PartitionedVariable``): matched by name, as ``Saver.restore``
          (for TF2 checkpoints also through the names the object graph
          records);
        * a dict ``{checkpoint key: variable}`` (or a ``PartitionedVariable``
          or list of partitions), as ``Saver(var_list={...})``;
        * None: every global variable of the graph (TF1 graph mode only).
    session : tf.compat.v1.Session, optional
        Graph mode: the session whose variables receive the values (default:
        the default session).  Without one, and when executing eagerly, values
        are assigned eagerly.
    assignment_map : dict, optional
        As ``tf.compat.v1.train.init_from_checkpoint``: ``{"ckpt_scope/":
        "scope/"}`` restores every variable under ``scope/`` (of ``var_list``,
        or of the graph) from the checkpoint's ``ckpt_scope/``;
        ``{"ckpt/name": "graph/name"}`` or ``{"ckpt/name": variable}`` one
        variable; ``"/"`` stands for the root on either side.  Only the
        variables the map names are restored.
    strict : bool
        When True (default), any variable without a checkpoint tensor, or with
        a tensor of another shape or dtype, raises :class:`RestoreError`
        listing all of them, and nothing is assigned.  When False, whatever
        matches is restored and the report lists the rest.
    verify : bool
        Check each tensor's CRC-32C before assigning it.

    Returns
    -------
    RestoreReport

    Raises
    ------
    RestoreError
        With ``strict=True``, when a variable cannot be restored; also for an
        ``assignment_map`` naming a variable that does not exist.
    tfshard.TFShardError
        When the checkpoint is missing or corrupt.
    """
    with reader.open(path, verify=verify) as ckpt:
        targets, expected_missing = _resolve(ckpt, var_list, assignment_map, session)
        _refuse_duplicates(targets)
        report = RestoreReport(missing=expected_missing)
        good = []
        for t in targets:
            problem = _check(ckpt, t)
            if problem is None:
                good.append(t)
            elif problem == "missing":
                report.missing.append((t.label, t.key))
            else:
                report.mismatched.append((t.label, t.key, problem))
        used = {t.key for t in targets}
        report.unexpected = [k for k in ckpt if k not in used and k != OBJECT_GRAPH_KEY]
        if strict and not report.ok:
            raise RestoreError(
                f"cannot restore from {ckpt.prefix}; nothing was assigned:\n{report}",
                report=report, path=ckpt.prefix)
        if session is not None or not tf.executing_eagerly():
            _assign_in_session(ckpt, good, _session(session), report)
        else:
            _assign_eagerly(ckpt, good, report)
    return report


# ---- which variable gets which tensor -------------------------------------

def _resolve(ckpt, var_list, assignment_map, session):
    """``(targets, missing)``: what to assign, and variables found missing
    before any key was looked up (objects the checkpoint's graph lacks)."""
    if assignment_map is not None:
        return _mapped_targets(assignment_map, var_list, session), []
    if isinstance(var_list, Mapping):
        return [t for key, value in var_list.items() for t in _explicit(key, value)], []
    if var_list is not None and _is_trackable_root(var_list):
        graph = _object_graph(ckpt)
        if graph is not None:
            return _graph_targets(graph, var_list)
    by_name = _NameLookup(ckpt)
    return [_named_target(v, by_name) for v in _variables(var_list, session)], []


def _refuse_duplicates(targets) -> None:
    """One variable restored from two tensors is a mistake in the caller's map (only
    the last value would stick); TF's Saver refuses it too."""
    first = {}
    for t in targets:
        other = first.setdefault(id(t.variable), t)
        if other.key != t.key:
            raise RestoreError(
                f"variable {t.label} would be restored from both {other.key!r} and "
                f"{t.key!r}; give each variable one checkpoint name", report=RestoreReport())


def _variable_name(v) -> str:
    """The name a checkpoint knows ``v`` by: a partition's full name, a Keras
    variable's path, a TF variable's name without the output suffix."""
    info = getattr(v, "_save_slice_info", None)
    if info is not None:
        return info.full_name
    if not isinstance(v, tf.Variable) and isinstance(getattr(v, "path", None), str):
        return v.path                      # Keras 3 variable
    name = v.name
    return name[:-2] if name.endswith(":0") else name.rpartition(":")[0] or name


def _target(v, key: str, label: str | None = None) -> _Target:
    info = getattr(v, "_save_slice_info", None)
    if info is None:
        return _Target(label or _variable_name(v), v, key)
    index = tuple(slice(o, o + n) for o, n in zip(info.var_offset, info.var_shape))
    label = label or f"{info.full_name}[{','.join(f'{s.start}:{s.stop}' for s in index)}]"
    return _Target(label, v, key, index, tuple(info.full_shape))


def _is_variable(obj) -> bool:
    if isinstance(obj, tf.Variable):
        return True
    keras = sys.modules.get("keras")   # only loaded programs can hold Keras variables
    return keras is not None and isinstance(obj, keras.Variable)


def _is_partitioned(obj) -> bool:
    return type(obj).__name__ == "PartitionedVariable" and hasattr(obj, "_get_variable_list")


def _is_trackable_root(obj) -> bool:
    return (isinstance(obj, tf.__internal__.tracking.Trackable) and not _is_variable(obj)
            and not _is_partitioned(obj))


def _flatten(var_list) -> list:
    out = []
    items = [var_list] if _is_variable(var_list) or _is_partitioned(var_list) else var_list
    for v in items:
        if _is_partitioned(v):
            out.extend(v._get_variable_list())
        elif _is_variable(v):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out.extend(_flatten(v))
        else:
            raise TypeError(f"expected TensorFlow variables, got {type(v).__name__} {v!r}")
    return out


def _variables(var_list, session) -> list:
    """The variables ``var_list`` stands for (None: the graph's globals)."""
    if var_list is None:
        if session is None and tf.executing_eagerly():
            raise TypeError("restore() needs var_list (a model, a list or a dict of variables) "
                            "when executing eagerly; var_list=None means the global variables "
                            "of a TF1 graph")
        graph = session.graph if session is not None else tf.compat.v1.get_default_graph()
        with graph.as_default():
            return tf.compat.v1.global_variables()
    if _is_trackable_root(var_list):
        return _live_variables(var_list)[0]
    return _flatten(var_list)


def _explicit(key, value) -> list:
    if not isinstance(key, str):
        raise TypeError(f"var_list keys are checkpoint tensor names (str), got {key!r}")
    return [_target(v, key) for v in _flatten(value)]


class _NameLookup:
    """Checkpoint key of a variable name: the name itself (TF1 and tfshard
    checkpoints), else the key the object graph records for that name (TF2
    checkpoints restored by name), when exactly one does."""

    def __init__(self, ckpt):
        self.ckpt = ckpt
        self._by_full_name = None

    def __call__(self, name: str) -> str:
        if name in self.ckpt:
            return name
        if self._by_full_name is None:
            graph = _object_graph(self.ckpt)
            self._by_full_name = graph.full_names() if graph is not None else {}
        return self._by_full_name.get(name, name)


def _named_target(v, by_name) -> _Target:
    return _target(v, by_name(_variable_name(v)))


def _mapped_targets(assignment_map, var_list, session) -> list:
    """Targets of an ``init_from_checkpoint``-style assignment map."""
    candidates = None  # variables by name, loaded when a string rule needs them
    targets, scopes = [], []
    for ckpt_name, current in assignment_map.items():
        if not isinstance(ckpt_name, str):
            raise TypeError(f"assignment_map keys are checkpoint names (str), got {ckpt_name!r}")
        if not isinstance(current, str):
            targets.extend(_explicit(ckpt_name, current))
            continue
        if candidates is None:
            candidates = {}
            for v in _variables(var_list, session):
                candidates.setdefault(_variable_name(v), []).append(v)
        if ckpt_name == "/" or ckpt_name.endswith("/"):
            if not (current == "/" or current.endswith("/")):
                raise RestoreError(
                    f"assignment_map maps checkpoint scope {ckpt_name!r} to {current!r}, "
                    f"which is no scope; scopes end with '/'", report=RestoreReport())
            scopes.append(("" if ckpt_name == "/" else ckpt_name,
                           "" if current == "/" else current))
        elif current in candidates:
            targets.extend(_target(v, ckpt_name) for v in candidates[current])
        else:
            raise RestoreError(
                f"assignment_map maps {ckpt_name!r} to variable {current!r}, but there is no "
                f"variable of that name", report=RestoreReport())
    if scopes:
        named = {id(t.variable) for t in targets}
        for name, vs in candidates.items():
            rules = [(ck, cur) for ck, cur in scopes if name.startswith(cur)]
            if not rules:
                continue
            ck, cur = max(rules, key=lambda r: len(r[1]))   # the innermost scope wins
            targets.extend(_target(v, ck + name[len(cur):]) for v in vs
                           if id(v) not in named)
    return targets


# ---- TF2 object graphs -----------------------------------------------------

def _object_graph(ckpt):
    if OBJECT_GRAPH_KEY not in ckpt:
        return None
    return decode(ckpt[OBJECT_GRAPH_KEY][()])


def _children(obj) -> dict:
    return tf.train.TrackableView.children(obj)


def _live_variables(root):
    """``(variables, {id: object path})`` of every variable reachable from
    ``root``, with the breadth-first object paths TF would save them under."""
    paths, order, seen = {}, [], {id(root)}
    queue = [(root, "")]
    for obj, path in queue:
        if _is_variable(obj):
            order.append(obj)
            paths[id(obj)] = path
            continue
        for name, child in _children(obj).items():
            if id(child) not in seen:
                seen.add(id(child))
                queue.append((child, f"{path}/{escape_local_name(name)}" if path
                              else escape_local_name(name)))
    return order, paths


def _match(graph, start: int, root) -> dict:
    """``{id(variable): (variable, checkpoint key)}`` pairing the live objects
    under ``root`` with the graph's objects under node ``start``."""
    pairs, seen = {}, {start}
    queue = [(start, root)]
    for node_id, obj in queue:
        node = graph.nodes[node_id]
        if _is_variable(obj):
            for attr in node.attributes:
                if attr.name == "VARIABLE_VALUE":
                    pairs.setdefault(id(obj), (obj, attr.checkpoint_key))
            continue
        live = _children(obj)
        for ref in node.children:
            child = live.get(ref.local_name)
            if child is not None and ref.node_id not in seen:
                seen.add(ref.node_id)
                queue.append((ref.node_id, child))
    return pairs


def _graph_targets(graph, root):
    """Targets of a trackable ``root`` matched against the object graph, and
    its variables the graph has no value for."""
    starts = [0] + [ref.node_id for ref in graph.nodes[0].children]
    pairs = max((_match(graph, s, root) for s in starts), key=len)
    variables, paths = _live_variables(root)
    targets, missing = [], []
    for v in variables:
        label = paths[id(v)]
        if id(v) in pairs:
            targets.append(_target(v, pairs[id(v)][1], label))
        else:
            missing.append((label, f"{label}/.ATTRIBUTES/VARIABLE_VALUE"))
    return targets, missing


# ---- checks and assignment -------------------------------------------------

def _dtype_name(v) -> str:
    return tf.as_dtype(v.dtype).base_dtype.name


def _check(ckpt, t: _Target):
    """None when ``t`` can be restored, "missing", or what differs."""
    if t.key not in ckpt:
        return "missing"
    info = ckpt.info(t.key)
    want = _dtype_name(t.variable)
    if info.dtype != want:
        return f"checkpoint dtype {info.dtype}, variable dtype {want}"
    stored = tuple(info.shape)
    if t.full_shape is not None:
        if stored != t.full_shape:
            return (f"checkpoint shape {list(stored)}, partitioned variable's full shape "
                    f"{list(t.full_shape)}")
    elif not tf.TensorShape(t.variable.shape).is_compatible_with(stored):
        return f"checkpoint shape {list(stored)}, variable shape {t.variable.shape.as_list()}"
    return None


def _value(ckpt, t: _Target):
    return ckpt.read(t.key) if t.index is None else ckpt.read(t.key, t.index,
                                                              verify=ckpt.verify)


def _aligned_copy(value):
    """A C-contiguous copy of ``value`` in a fresh 64-byte-aligned buffer."""
    raw = np.empty(value.nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    out = raw[start:start + value.nbytes].view(value.dtype).reshape(value.shape)
    np.copyto(out, value)
    return out


def _host_tensor(value):
    """``value`` as a TensorFlow host tensor.

    TF's own conversion of a numpy array (what ``variable.assign(array)`` does)
    copies a read-only array twice, at a fraction of memory speed.  Here the
    value is copied once, into a buffer of its own that TF adopts through DLPack
    without copying.  Types DLPack has no code for go as unsigned integers of
    their size and are bitcast back (bfloat16, float8...); strings take TF's
    conversion.
    """
    if value.dtype.kind not in "biufcV" or not value.dtype.isnative:
        return value
    try:
        if value.dtype.kind == "V":      # ml_dtypes: bfloat16, float8...
            carrier = _aligned_copy(value).view(f"u{value.dtype.itemsize}")
            return tf.bitcast(tf.experimental.dlpack.from_dlpack(carrier.__dlpack__()),
                              tf.as_dtype(value.dtype))
        return tf.experimental.dlpack.from_dlpack(_aligned_copy(value).__dlpack__())
    except (BufferError, TypeError, ValueError, tf.errors.OpError):
        return value


def _assign_eagerly(ckpt, targets, report) -> None:
    for t in targets:
        value = _value(ckpt, t)
        # The value becomes a host tensor; the assignment runs on the variable's
        # device (a GPU variable gets one host-to-device copy).
        t.variable.assign(_host_tensor(value))
        report.restored.append((t.label, t.key))
        report.nbytes += value.nbytes
        del value
        ckpt.release(t.key)


def _session(session):
    session = session or tf.compat.v1.get_default_session()
    if session is None:
        raise TypeError("restore() in graph mode needs session= (or a default session)")
    return session


# Per graph: {variable op name: (placeholder, assign op)} for variables whose
# initial value cannot be fed.
_ASSIGN_OPS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _feed_point(v):
    """``(tensor to feed, op to run)`` that sets ``v`` in its graph.

    The variable's own initializer, fed the value instead of its initial
    value, as ``Variable.load`` does: nothing is added to the graph, so this
    works on finalized graphs too.  Otherwise one placeholder and assign op per
    variable, created once per graph.
    """
    init = v.initializer
    value_in = init.inputs[1] if len(init.inputs) > 1 else None
    if value_in is not None and v.graph.is_feedable(value_in):
        return value_in, init
    ops = _ASSIGN_OPS.setdefault(v.graph, {})
    if v.op.name not in ops:
        with v.graph.as_default():
            ph = tf.compat.v1.placeholder(v.dtype.base_dtype, shape=v.shape)
            ops[v.op.name] = (ph, v.assign(ph, read_value=False))
    return ops[v.op.name]


def _assign_in_session(ckpt, targets, session, report) -> None:
    batch, feeds, size = [], {}, 0

    def run():
        session.run([op for op, _ in batch], feed_dict=feeds)
        for _, t in batch:
            report.restored.append((t.label, t.key))
            ckpt.release(t.key)
        batch.clear()
        feeds.clear()

    for t in targets:
        tensor, op = _feed_point(t.variable)
        value = _value(ckpt, t)
        feeds[tensor] = value
        batch.append((op, t))
        size += value.nbytes
        report.nbytes += value.nbytes
        if size >= _FEED_BATCH_BYTES:
            run()
            size = 0
    if batch:
        run()


# ---- tfshard.safe_open(..., framework="tf") ----------------------------------------------

class _TensorFlow(Framework):
    """Checkpoint tensors as ``tf.Tensor`` (TF copies every value it is given)."""

    name = "TensorFlow"

    def unsupported(self, dt):
        if dt.kind == dtypes.VARIANT:
            return "a variant's value can only be rebuilt by TF's own restore"
        return None

    def device(self, device):
        if device is None:
            device = "cpu"
        platform, _, index = device.partition(":") if isinstance(device, str) else ("", "", "")
        if platform.lower() in ("cpu", "gpu", "cuda"):
            kind, index = ("CPU" if platform.lower() == "cpu" else "GPU"), index or "0"
        else:  # "/GPU:1", "/job:localhost/replica:0/task:0/device:GPU:1"
            m = re.search(r"(CPU|GPU|TPU):(\d+)$", device, re.I) if isinstance(device, str) \
                else None
            if m is None:
                raise UnsupportedError(f"expected a device such as 'cpu', 'gpu:0' or '/GPU:0', "
                                       f"got {device!r}")
            kind, index = m.group(1).upper(), m.group(2)
        # TF would quietly place tensors elsewhere (soft placement) on a device it lacks.
        if not any(d.name.endswith(f"{kind}:{index}")
                   for d in tf.config.list_logical_devices(kind)):
            raise UnsupportedError(f"TensorFlow has no device {device!r} (it has "
                                   f"{[d.name for d in tf.config.list_logical_devices()]})")
        return f"/{kind}:{index}"

    def from_numpy(self, arr, dt, device):
        with tf.device(device):
            return tf.constant(arr, dtype=tf.as_dtype(dt.name))


FRAMEWORK = _TensorFlow()
