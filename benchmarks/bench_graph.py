#!/usr/bin/env python
"""Benchmark tfshard.graph against TensorFlow's protobuf parse of the same MetaGraphDef.

The input is one ``.meta`` file of about 200 MB (about 200 KB with ``--quick``), built once
into the cache directory (``--workdir``, default ``$TMPDIR/tfshard-bench``) by encoding a
``MetaGraphDef`` field by field: 700 000 small nodes (name, op, two inputs, a device, a
``T`` attribute, ``_output_shapes``), 2 000 ``VariableV2`` nodes spread among them, 60
``Const`` nodes of 1 MiB of ``tensor_content`` each, the ``variables`` /
``trainable_variables`` / ``global_step`` collections of ``VariableDef`` s, node, int64 and
float lists, three signatures and a SaverDef.  TF's ``MetaGraphDef.ParseFromString`` must
read it (it is checked against tfshard's decoding once per run: a row says WRONG if they
disagree).  Files are in the page cache (read once before timing); times are medians of
``--repeat`` samples, the sides sampled in turn; ratios are "TF's median / tfshard's median"
(bigger: tfshard faster), memory ratios "tfshard's peak RSS growth / the file's size".

Cases
-----
decode
    What a user of a .meta asks first: its collections, signatures and variables (each
    with dtype and shape from its node).  ``tfshard.graph.open(path)`` + ``collections`` +
    ``signatures`` + ``variables()`` vs reading the file and
    ``MetaGraphDef.ParseFromString``.  Target: >= 3x.
decode_tf_lookup
    The same, with TF's side also finding the variable nodes and reading their dtype and
    shape attributes from its parse (what TF must do to give the same answer).  Info.
memory
    Peak RSS growth of a child process doing ``decode`` with tfshard, over the file's size.
    TF's growth for the same parse (in another child) is in the TF column.  Target: <= 1x.
op_counts
    ``MetaGraph.op_counts()`` (every node read) vs parse + counting ops.  Info.
node_lookup
    Open, then one ``MetaGraph.tensor(name)`` (the first few lookups walk the graph for
    their node, later ones index every name) vs parse + a scan for the node.  Info.

Examples
--------
    python benchmarks/bench_graph.py                # full run, a few minutes
    python benchmarks/bench_graph.py --quick        # tiny graph, one repeat (smoke test)
    python benchmarks/bench_graph.py --cases decode,memory --repeat 7
"""

from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The protobuf field encoders of the tests' independent bundle writer.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import _common as C  # noqa: E402
from bundle_builder import encode_shape, field, varint as _varint  # noqa: E402

CASES = ("decode", "decode_tf_lookup", "memory", "op_counts", "node_lookup")
TARGETS = {"decode": (">=", 3.0), "decode_tf_lookup": (">=", None), "memory": ("<=", 1.0),
           "op_counts": (">=", None), "node_lookup": (">=", None)}
FULL = {"nodes": 700_000, "variables": 2_000, "consts": 60, "const_bytes": 1 << 20}
QUICK = {"nodes": 2_000, "variables": 50, "consts": 4, "const_bytes": 16 << 10}
OPS = ("Identity", "MatMul", "AddV2", "Relu", "Mul", "Reshape", "BiasAdd", "Sigmoid")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- the input ------------------------------------------------------------------------

def _f(num: int, payload: bytes) -> bytes:
    return field(num, 2, payload)


def _v(num: int, value: int) -> bytes:
    return field(num, 0, value)


_shape = encode_shape


def _attr(key: str, value: bytes) -> bytes:
    return _f(5, _f(1, key.encode()) + _f(2, value))


def _node(name, op, inputs=(), device=b"", attrs=b"") -> bytes:
    body = _f(1, name.encode()) + _f(2, op.encode())
    body += b"".join(_f(3, i.encode()) for i in inputs)
    return _f(1, body + (_f(4, device) if device else b"") + attrs)


def _variable_def(name: str, trainable: bool) -> bytes:
    return (_f(1, f"{name}:0".encode()) + _f(2, f"{name}/Assign".encode())
            + _f(3, f"{name}/read:0".encode()) + _f(6, f"{name}/initial_value:0".encode())
            + (_v(7, 1) if trainable else b""))


def _tensor_info(name, dtype, dims) -> bytes:
    return _f(1, name.encode()) + _v(2, dtype) + _f(3, _shape(dims))


def build_meta(path: Path, spec: dict) -> dict:
    """Write the .meta file (deterministic), node by node, to ``path``."""
    n, n_vars, n_consts = spec["nodes"], spec["variables"], spec["consts"]
    device = b"/job:worker/replica:0/task:0/device:CPU:0"
    t_float = _attr("T", _v(6, 1))
    shapes = _attr("_output_shapes", _f(1, _f(7, _shape([-1, 128]))))
    var_attrs = (_attr("dtype", _v(6, 1)) + _attr("shape", _f(7, _shape([256, 256])))
                 + _attr("container", _f(2, b"")) + _attr("shared_name", _f(2, b"")))
    content = bytes(range(256)) * (spec["const_bytes"] // 256)
    const_value = _attr("dtype", _v(6, 1)) + _attr("value", _f(8, _v(1, 1) + _f(
        2, _shape([len(content) // 4])) + _f(4, content)))
    var_every = max(1, n // n_vars)
    const_every = max(1, n // n_consts)
    names = []
    with open(path, "wb") as out:
        info = (_f(2, b"".join(_f(1, _f(1, op.encode())) for op in OPS + ("VariableV2",
                                                                          "Const")))
                + _f(4, b"serve") + _f(5, b"2.21.0") + _f(6, b"v2.21.0-bench"))
        out.write(_f(1, info))
        graph = bytearray()
        nodes = []
        for i in range(n):
            scope = f"tower_{i // 10000}/layer_{i // 50}"
            nodes.append(_node(f"{scope}/op_{i}", OPS[i % len(OPS)],
                               (f"{scope}/op_{max(0, i - 1)}", f"{scope}/op_{max(0, i - 2)}"),
                               device, t_float + shapes))
            if i % var_every == 0 and len(names) < n_vars:
                name = f"model/var_{len(names)}"
                names.append(name)
                nodes.append(_node(name, "VariableV2", (), device, var_attrs))
            if i % const_every == 0 and (i // const_every) < n_consts:
                nodes.append(_node(f"weights/frozen_{i // const_every}", "Const", (), device,
                                   const_value))
        graph = b"".join(nodes)
        graph += _f(4, _v(1, 1994))
        out.write(_varint(2 << 3 | 2) + _varint(len(graph)))
        out.write(graph)
        del graph, nodes
        saver = (_f(1, b"save/Const:0") + _f(2, b"save/control_dependency:0")
                 + _f(3, b"save/restore_all") + _v(4, 5) + _v(7, 2))
        out.write(_f(3, saver))
        collections_ = {
            "variables": b"".join(_f(1, _variable_def(v, i % 2 == 0))
                                  for i, v in enumerate(names)),
            "trainable_variables": b"".join(_f(1, _variable_def(v, True))
                                            for v in names[::2]),
            "global_step": _f(1, _variable_def(names[0], False)),
        }
        for key, values in collections_.items():
            out.write(_f(4, _f(1, key.encode()) + _f(2, _f(2, values))))
        out.write(_f(4, _f(1, b"hyperparameters") + _f(2, _f(1, b"".join(
            _f(1, f"hp/{k}:0".encode()) for k in ("lr", "decay", "batch"))))))
        out.write(_f(4, _f(1, b"my_ints") + _f(2, _f(3, _f(1, b"".join(
            _varint(k * 1000) for k in range(100)))))))
        for key in ("serving_default", "classify", "embed"):
            sig = (_f(1, _f(1, b"x") + _f(2, _tensor_info("x:0", 1, [-1, 128])))
                   + _f(2, _f(1, b"y") + _f(2, _tensor_info(f"{key}/y:0", 1, [-1, 10])))
                   + _f(3, b"tensorflow/serving/predict"))
            out.write(_f(5, _f(1, key.encode()) + _f(2, sig)))
    return {"bytes": path.stat().st_size, "variables": len(names)}


def cached_meta(args) -> tuple[Path, dict]:
    spec = QUICK if args.quick else FULL
    directory, manifest = C.cached_input(
        args.workdir, "graph-quick" if args.quick else "graph-200mb", spec,
        lambda tmp: build_meta(tmp / "model.meta", spec), log=log)
    return directory / "model.meta", manifest


# ---- the two sides ----------------------------------------------------------------------

def tfshard_decode(graph, path):
    with graph.open(path) as f:
        g = f.meta_graph()
        return (g.collections, g.signatures,
                [(v.name, v.dtype, v.shape, v.trainable) for v in g.variables()])


def tf_parse(meta_graph_pb2, path):
    with open(path, "rb") as f:
        data = f.read()
    m = meta_graph_pb2.MetaGraphDef()
    m.ParseFromString(data)
    return m


def tf_decode_lookup(tf, meta_graph_pb2, variable_pb2, path):
    m = tf_parse(meta_graph_pb2, path)
    names, trainable = [], set()
    for key in ("variables", "trainable_variables"):
        for data in m.collection_def[key].bytes_list.value:
            v = variable_pb2.VariableDef()
            v.ParseFromString(data)
            name = v.variable_name.split(":")[0]
            if key == "variables":
                names.append(name)
            if key == "trainable_variables" or v.trainable:
                trainable.add(name)
    wanted = set(names)
    found = {n.name: n for n in m.graph_def.node if n.name in wanted}
    signatures = {k: (s.method_name, dict(s.inputs), dict(s.outputs))
                  for k, s in m.signature_def.items()}
    variables = [(n, tf.as_dtype(found[n].attr["dtype"].type).name,
                  [d.size for d in found[n].attr["shape"].shape.dim], n in trainable)
                 for n in names]
    return m.collection_def, signatures, variables


def check_same(tf, meta_graph_pb2, variable_pb2, graph, path) -> str | None:
    """None if tfshard's decode equals TF's parse, else what differs."""
    collections_, signatures, variables = tfshard_decode(graph, path)
    theirs_c, theirs_s, theirs_v = tf_decode_lookup(tf, meta_graph_pb2, variable_pb2, path)
    if variables != theirs_v:
        return "the variables differ"
    if sorted(collections_) != sorted(theirs_c):
        return "the collection names differ"
    for name, c in theirs_c.items():
        kind = c.WhichOneof("kind")
        if collections_[name].kind != kind or collections_[name].value != list(
                getattr(c, kind).value):
            return f"collection {name} differs"
    for key, (method, inputs, outputs) in theirs_s.items():
        mine = signatures[key]
        if mine.method_name != method or {k: v.name for k, v in mine.outputs.items()} != \
                {k: v.name for k, v in outputs.items()}:
            return f"signature {key} differs"
    return None


_MEMORY_CHILD = C.RSS_SNIPPET + r"""
import json, sys
which, path = sys.argv[1], sys.argv[2]
def hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
if which == "tfshard":
    from tfshard import graph
    import tfshard.graph._meta, tfshard.graph._check  # noqa: F401 - imports before the baseline
else:
    import os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    from tensorflow.core.protobuf import meta_graph_pb2
before = rss_bytes()
if which == "tfshard":
    with graph.open(path) as f:
        g = f.meta_graph()
        result = (len(g.collections), len(g.signatures), len(g.variables()))
else:
    m = meta_graph_pb2.MetaGraphDef()
    with open(path, "rb") as f:
        m.ParseFromString(f.read())
    result = (len(m.collection_def), len(m.signature_def), len(m.graph_def.node))
print(json.dumps({"growth": hwm() - before, "anon": rss_anon_bytes(), "result": result}))
"""


class Bench:
    def __init__(self, args, tf, tfshard, path: Path, manifest: dict):
        self.args, self.tf, self.tfshard, self.path = args, tf, tfshard, path
        self.size = manifest["bytes"]
        from tensorflow.core.framework import variable_pb2
        from tensorflow.core.protobuf import meta_graph_pb2

        self.pb2 = meta_graph_pb2
        self.variable_pb2 = variable_pb2
        self.graph = None
        if tfshard is not None:
            from tfshard import graph

            self.graph = graph
        C.warm([path])
        self._checked = None

    def _check(self, row) -> bool:
        if self._checked is None:
            self._checked = check_same(self.tf, self.pb2, self.variable_pb2, self.graph,
                                       self.path)
        if self._checked is not None:
            row.status = C.WRONG
            row.notes.append(f"tfshard and TF disagree: {self._checked}")
            return False
        return True

    def _timed(self, row, ours, theirs):
        fns = {"tf": theirs}
        if self.graph is not None:
            fns["tfshard"] = ours
        t = C.bench_interleaved(fns, repeat=self.args.repeat, min_time=0.2)
        row.tf = t["tf"].median
        if "tfshard" in t:
            row.tfshard = t["tfshard"].median
            row.ratio = row.tf / row.tfshard
            self._check(row)
        row.detail = {k: v.to_json() for k, v in t.items()}

    def decode(self, row):
        self._timed(row, lambda: tfshard_decode(self.graph, self.path),
                    lambda: tf_parse(self.pb2, self.path))
        row.notes.append(f"file {C.fmt_value(self.size, 'bytes')}; TF's side is the parse "
                         f"alone (reading the file + ParseFromString)")

    def decode_tf_lookup(self, row):
        self._timed(row, lambda: tfshard_decode(self.graph, self.path),
                    lambda: tf_decode_lookup(self.tf, self.pb2, self.variable_pb2, self.path))

    def memory(self, row):
        if not Path("/proc/self/status").exists():
            row.notes.append("needs /proc (Linux)")
            return
        theirs = C.run_json_child(_MEMORY_CHILD, ["tf", self.path], timeout=900)
        row.tf = theirs["growth"]
        if self.graph is None:
            return
        runs = [C.run_json_child(_MEMORY_CHILD, ["tfshard", self.path], timeout=900)
                for _ in range(3)]
        growth = sorted(r["growth"] for r in runs)[1]
        row.tfshard = growth
        row.ratio = growth / self.size
        row.notes.append(f"peak RSS growth over the file's {C.fmt_value(self.size, 'bytes')}; "
                         f"TF column: TF's growth for the parse alone "
                         f"({theirs['growth'] / self.size:.2f}x the file)")
        self._check(row)

    def op_counts(self, row):
        def ours():
            with self.graph.open(self.path) as f:
                return f.meta_graph().op_counts()

        def theirs():
            m = tf_parse(self.pb2, self.path)
            return collections.Counter(n.op for n in m.graph_def.node)

        self._timed(row, ours, theirs)
        if self.graph is not None and ours() != dict(sorted(theirs().items())):
            row.status = C.WRONG
            row.notes.append("the op counts differ")

    def node_lookup(self, row):
        name = "model/var_7" if not self.args.quick else "model/var_3"

        def ours():
            with self.graph.open(self.path) as f:
                return f.meta_graph().tensor(name + ":0").shape

        def theirs():
            m = tf_parse(self.pb2, self.path)
            node = next(n for n in m.graph_def.node if n.name == name)
            return [d.size for d in node.attr["shape"].shape.dim]

        self._timed(row, ours, theirs)
        if self.graph is not None and ours() != theirs():
            row.status = C.WRONG
            row.notes.append("the node's shape differs")


def parse_args(argv=None):
    parser = C.benchmark_parser(__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="tiny graph (~200 KB), one sample per side: a smoke test, not a "
                             "measurement")
    parser.add_argument("--repeat", type=int, default=None, metavar="N",
                        help="timed samples per side and case (default 5; 1 with --quick)")
    parser.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                        help=f"cache directory for the input graph (default "
                             f"{C.default_workdir()})")
    return C.parse_benchmark_args(parser, argv, CASES, others="TensorFlow's parse")


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    tf = C.import_tf()
    tfshard, why = (None, "--no-tfshard") if args.no_tfshard else C.import_tfshard()
    if tfshard is not None:
        try:
            import tfshard.graph  # noqa: F401
        except Exception as exc:
            tfshard, why = None, f"{type(exc).__name__}: {exc}"
    if tfshard is None:
        log(f"tfshard not measured ({why}); its columns will say n/a")
    path, manifest = cached_meta(args)
    bench = Bench(args, tf, tfshard, path, manifest)
    rows = []
    for case in args.cases:
        op, threshold = TARGETS[case]
        row = C.Row(case=case, what=CASE_TEXT[case].format(
            mb=manifest["bytes"] / 1e6, variables=manifest["variables"]),
            unit="bytes" if case == "memory" else "s", op=op, threshold=threshold)
        rows.append(C.run_case(row, getattr(bench, case), log=log))
    env = C.library_environment(tf, tfshard, why)
    return C.finish("bench_graph", args, rows, env, manifest,
                    f"repeat {args.repeat}, workdir {args.workdir}", t_start)


CASE_TEXT = {
    "decode": "open + collections + signatures + {variables} variables vs "
              "MetaGraphDef.ParseFromString, {mb:.0f} MB .meta",
    "decode_tf_lookup": "the same vs parse + the same answers from TF's parse",
    "memory": "peak RSS growth of the decode, over the file size",
    "op_counts": "op_counts() vs parse + Counter over the nodes",
    "node_lookup": "open + one tensor(name) vs parse + a scan for the node",
}


if __name__ == "__main__":
    sys.exit(main())
