"""What ``tfshard graph`` shows: the JSON summary, its text form, and risky ops."""

from __future__ import annotations

import math

from ._types import FuncAttr, RiskyOp

__all__ = ["summary", "summary_lines", "risky_ops", "RISKY_OPS"]

_RUNS_CODE = "calls back into Python code of the process that built the graph"
_READS = "reads files"
_WRITES = "writes files"
#: Ops that run code or touch files, and why each is flagged.  ``Save*``/``Restore*``
#: ops are flagged only outside the graph's own saver (see :func:`risky_ops`).
RISKY_OPS = {
    "PyFunc": _RUNS_CODE, "PyFuncStateless": _RUNS_CODE, "EagerPyFunc": _RUNS_CODE,
    "RemoteCall": "calls a function on another task",
    "ReadFile": _READS, "MatchingFiles": "lists files matching a pattern",
    "ImmutableConst": "maps a file into memory",
    "WholeFileReader": _READS, "WholeFileReaderV2": _READS,
    "TextLineReader": _READS, "TextLineReaderV2": _READS,
    "TFRecordReader": _READS, "TFRecordReaderV2": _READS,
    "FixedLengthRecordReader": _READS, "FixedLengthRecordReaderV2": _READS,
    "LMDBReader": _READS, "LMDBDataset": _READS, "ExperimentalLMDBDataset": _READS,
    "TFRecordDataset": _READS, "TFRecordDatasetV2": _READS, "TextLineDataset": _READS,
    "FixedLengthRecordDataset": _READS, "FixedLengthRecordDatasetV2": _READS,
    "LoadDataset": _READS, "SqlDataset": "reads a database file",
    "ExperimentalSqlDataset": "reads a database file",
    "InitializeTableFromTextFile": _READS, "InitializeTableFromTextFileV2": _READS,
    "WriteFile": _WRITES, "DatasetToTFRecord": _WRITES,
    "ExperimentalDatasetToTFRecord": _WRITES, "SaveDataset": _WRITES, "SaveDatasetV2": _WRITES,
    "SnapshotDataset": _WRITES, "SnapshotDatasetV2": _WRITES,
    "CreateSummaryFileWriter": "writes summary files",
    "CreateSummaryDbWriter": "writes a summary database",
    "DebugIdentity": "writes debug dumps to files or URLs",
    "DebugIdentityV2": "writes debug dumps to files",
    "DebugIdentityV3": "writes debug dumps to files or URLs",
    "DebugNanCount": "writes debug dumps to files or URLs",
    "DebugNumericSummary": "writes debug dumps to files or URLs",
    "DebugNumericSummaryV2": "writes debug dumps to files",
    "Save": "writes a checkpoint", "SaveV2": "writes a checkpoint",
    "SaveSlices": "writes a checkpoint", "MergeV2Checkpoints": "writes a checkpoint",
    "Restore": "reads a checkpoint", "RestoreV2": "reads a checkpoint",
    "RestoreSlice": "reads a checkpoint",
}
_SAVER_OPS = {"Save", "SaveV2", "SaveSlices", "MergeV2Checkpoints", "Restore", "RestoreV2",
              "RestoreSlice"}


def _op_of(tensor_name: str) -> str:
    return tensor_name.lstrip("^").split(":")[0]


def _called_functions(node) -> set:
    """Names of the functions a node's attributes name (``f``, branches, bodies...)."""
    out = set()
    for value in node.attrs.values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, FuncAttr):
                out.add(item.name)
    return out


def _saver_functions(graph) -> set:
    """The library functions the saver's nodes call, and those they call in turn (TF2
    SavedModels save and restore in ``__inference__traced_save_*`` functions)."""
    saver = graph.saver
    if saver is None:
        return set()
    library = {f.name for f in graph.functions()}
    names = [_op_of(n) for n in (saver.filename_tensor_name, saver.save_tensor_name,
                                 saver.restore_op_name) if n]
    todo = set()
    for node in graph.find_nodes(names).values():
        todo |= _called_functions(node)
    done: set = set()
    while todo:
        name = todo.pop()
        if name in done or name not in library:
            continue
        done.add(name)
        for node in graph.function_nodes(name):
            todo |= _called_functions(node) - done
    return done


def risky_ops(graph) -> list:
    """Nodes of a meta graph (and of its function library) whose op runs code or
    touches files (:data:`RISKY_OPS`), as :class:`RiskyOp` entries.

    ``Save*``/``Restore*`` nodes of the graph's own saver (in the scope of its
    ``restore_op_name``, such as ``save/``, or in the functions its nodes call) are
    not flagged; such nodes elsewhere are.  ``PrintV2`` is flagged when it prints to a
    file.
    """
    saver = graph.saver
    scope = None
    if saver is not None and "/" in saver.restore_op_name:
        scope = saver.restore_op_name.rsplit("/", 1)[0] + "/"
    saver_functions = None
    out = []
    for node in graph.nodes_by_op(set(RISKY_OPS) | {"PrintV2"}):
        if node.op == "PrintV2":
            stream = node.attrs.get("output_stream")
            if isinstance(stream, bytes) and stream.startswith(b"file://"):
                out.append(RiskyOp(node.name, node.op, node.function,
                                   f"prints to {stream.decode('utf-8', 'backslashreplace')}"))
            continue
        if node.op in _SAVER_OPS:
            if node.function is None and scope is not None and node.name.startswith(scope):
                continue
            if node.function is not None:
                if saver_functions is None:
                    saver_functions = _saver_functions(graph)
                if node.function in saver_functions:
                    continue
            reason = RISKY_OPS[node.op] + " outside the graph's saver"
        else:
            reason = RISKY_OPS.get(node.op, "")
        out.append(RiskyOp(node.name, node.op, node.function, reason))
    return out


# ---- JSON -----------------------------------------------------------------------------

def _json_float(x):
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def _collection_value(kind, values) -> list:
    if kind == "bytes_list":
        return [_text(v) for v in values]
    if kind == "float_list":
        return [_json_float(v) for v in values]
    if kind == "any_list":
        return [v.type_url for v in values]
    return list(values)


def _tensor_info(info) -> dict:
    out = {"name": info.name, "dtype": info.dtype, "shape": info.shape}
    if info.coo_sparse is not None:
        values, indices, dense_shape = info.coo_sparse
        out["coo_sparse"] = {"values": values, "indices": indices, "dense_shape": dense_shape}
    if info.components is not None:
        out["components"] = [_tensor_info(c) for c in info.components]
    return out


def meta_graph_summary(graph) -> dict:
    """The JSON object of one meta graph (see :func:`summary`)."""
    saver = graph.saver
    return {
        "tags": graph.tags,
        "tensorflow_version": graph.tensorflow_version,
        "collections": {c.name: {"kind": c.kind, "value": _collection_value(c.kind, c.value)}
                        for c in graph.collections.values()},
        "variables": [{"name": v.name, "dtype": v.dtype, "shape": v.shape,
                       "trainable": v.trainable} for v in graph.variables()],
        "saver": None if saver is None else {
            "filename_tensor_name": saver.filename_tensor_name,
            "save_tensor_name": saver.save_tensor_name,
            "restore_op_name": saver.restore_op_name,
            "max_to_keep": saver.max_to_keep,
            "sharded": saver.sharded,
            "keep_checkpoint_every_n_hours": _json_float(saver.keep_checkpoint_every_n_hours),
            "version": saver.version},
        "signatures": {key: {"method_name": s.method_name,
                             "inputs": {k: _tensor_info(v) for k, v in s.inputs.items()},
                             "outputs": {k: _tensor_info(v) for k, v in s.outputs.items()}}
                       for key, s in graph.signatures.items()},
        "op_counts": graph.op_counts(),
    }


def _chosen(graph_file, tags) -> list:
    return graph_file.meta_graphs if tags is None else [graph_file.meta_graph(tags)]


def summary(graph_file, *, tags=None) -> dict:
    """What ``tfshard graph PATH --json`` prints: ``{"meta_graphs": [...]}``, one object
    per meta graph (or only the one with ``tags``) with ``tags``, ``tensorflow_version``,
    ``collections``, ``variables``, ``saver``, ``signatures`` and ``op_counts``
    (docs/graph.md describes each field).  Strict JSON: non-finite floats are the
    strings ``"nan"``, ``"inf"``, ``"-inf"``."""
    return {"meta_graphs": [meta_graph_summary(g) for g in _chosen(graph_file, tags)]}


# ---- text -----------------------------------------------------------------------------

def _shape(shape) -> str:
    return "(unknown rank)" if shape is None else "[" + ", ".join(map(str, shape)) + "]"


def _info_line(key, info) -> str:
    if info.coo_sparse is not None:
        return f"{key}: sparse {info.dtype} {_shape(info.shape)}: values {info.coo_sparse[0]}, " \
               f"indices {info.coo_sparse[1]}, dense_shape {info.coo_sparse[2]}"
    if info.components is not None:
        names = ", ".join(c.name or "?" for c in info.components)
        return f"{key}: composite {info.type_spec or ''} of {len(info.components)}: {names}"
    return f"{key}: {info.dtype} {_shape(info.shape)} {info.name}"


def _bytes_text(value: bytes) -> str:
    text = _text(value)
    return repr(text) if text.isprintable() else f"<{len(value)} bytes>"


def _value_text(kind, values, limit=8) -> str:
    shown = [repr(v.type_url) if kind == "any_list" else
             _bytes_text(v) if kind == "bytes_list" else repr(v) for v in values[:limit]]
    more = f", ... ({len(values)} in all)" if len(values) > limit else ""
    return "[" + ", ".join(shown) + more + "]"


def summary_lines(graph_file, *, tags=None, max_ops: int = 20) -> list:
    """The text ``tfshard graph PATH`` prints, in the spirit of ``saved_model_cli show
    --all``: per meta graph (or only the one with ``tags``) its tags and versions,
    collections, variables, saver, signatures, assets, object graph and most used ops."""
    f = graph_file
    lines = [f"{f.path}: " + (f"SavedModel (schema version {f.schema_version}), "
                              f"{len(f.meta_graphs)} meta graph(s)" if f.kind == "saved_model"
                              else "MetaGraphDef")]
    for g in _chosen(f, tags):
        version = g.tensorflow_version or "unknown"
        lines.append(f"meta graph {g.index}: tags [{', '.join(g.tags)}], TensorFlow {version}, "
                     f"{g.num_nodes} nodes, {len(g.functions())} functions")
        if g.collections:
            lines.append(f"  collections ({len(g.collections)}):")
            for c in g.collections.values():
                text = (", ".join(v.variable_name for v in c.variables) if c.variables
                        is not None else _value_text(c.kind, c.value))
                lines.append(f"    {c.name} ({c.kind}): {text}")
        variables = g.variables()
        if variables:
            lines.append(f"  variables ({len(variables)}):")
            for v in variables:
                extra = "" if v.checkpoint_key == v.name else f"  key {v.checkpoint_key}"
                if v.slice_info:
                    extra += f"  slice {v.slice_info.spec}"
                lines.append(f"    {v.name}  {v.dtype}  {_shape(v.shape)}"
                             f"{'  trainable' if v.trainable else ''}{extra}")
        if g.saver is not None:
            s = g.saver
            lines.append(f"  saver: version {s.version}, filename {s.filename_tensor_name}, save "
                         f"{s.save_tensor_name}, restore {s.restore_op_name}, max_to_keep "
                         f"{s.max_to_keep}{', sharded' if s.sharded else ''}")
        for key, sig in g.signatures.items():
            lines.append(f"  signature {key!r} ({sig.method_name}):")
            lines += [f"    input  {_info_line(k, v)}" for k, v in sig.inputs.items()]
            lines += [f"    output {_info_line(k, v)}" for k, v in sig.outputs.items()]
        for asset in g.asset_files:
            lines.append(f"  asset {asset.filename}"
                         + (f" ({asset.tensor.name})" if asset.tensor else ""))
        if g.has_object_graph:
            lines.append(f"  object graph: {len(g.saved_objects())} objects, "
                         f"{len(g.saved_variables())} variables, "
                         f"{len(g.saved_functions())} functions")
            for fn in g.saved_functions():
                lines.append(f"    function {fn.path or '(root)'}: "
                             f"{', '.join(fn.concrete_functions)}")
        counts = sorted(g.op_counts().items(), key=lambda kv: (-kv[1], kv[0]))
        if counts:
            shown = ", ".join(f"{op} {n}" for op, n in counts[:max_ops])
            more = f", ... ({len(counts)} ops in all)" if len(counts) > max_ops else ""
            lines.append(f"  ops: {shown}{more}")
    return lines
