"""The ``tfshard`` command line.

Exit codes: 0 success, 1 failure (a corrupt checkpoint, models that differ, an
output that already exists...), 2 usage error.

Every command but ``ls`` is a thin layer over :mod:`tfshard.conversion` and
:mod:`tfshard.formats`, imported when the command runs so that ``tfshard ls``
starts fast.
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import json
import math
import os
import re
import sys

import tfshard
from tfshard._util import printable

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# The names tfshard.formats gives its formats (see tfshard.formats.detect_format).
FORMATS = ("tf", "safetensors", "npz", "npy", "torch")
# What --dtype may cast floating tensors to (conversion.convert refuses anything else).
CAST_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# ---- argument types ------------------------------------------------------------

_SIZE_UNITS = {"": 1, "b": 1,
               "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
               "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
SIZE_HELP = ("SIZE is bytes with an optional unit: 'KB', 'MB', 'GB', 'TB' are decimal "
             "(10**3...), 'KiB', 'MiB', 'GiB', 'TiB' and the bare letters 'K', 'M', 'G', 'T' "
             "binary (2**10...), as in GNU coreutils; case does not matter")


def parse_size(text: str) -> int:
    """Bytes from ``"500MB"`` (10**6), ``"2GiB"`` / ``"2G"`` (2**30), ``"1.5GB"``, ``"4096"``.

    Raises ``ValueError`` for anything else, zero and negative sizes.
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"invalid size {text!r}: expected a number of bytes with an optional "
                         f"unit, e.g. 500MB, 2GiB, 5G or 1048576")
    number, unit = m.group(1), _SIZE_UNITS[m.group(2).lower()]
    if "." in number:
        size = int(float(number) * unit)
    else:
        size = int(number) * unit
    if size <= 0:
        raise ValueError(f"invalid size {text!r}: must be at least one byte")
    return size


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _tolerance_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid tolerance {text!r}: expected a number") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"invalid tolerance {text!r}: must be finite and >= 0")
    return value


# ---- output helpers -------------------------------------------------------------

def _progress(args):
    """What the library's ``progress`` argument gets: None shows a bar when stderr is a
    terminal; --quiet turns it off."""
    return False if getattr(args, "quiet", False) else None


def _json_float(x):
    """A float for strict JSON: non-finite values become the strings "nan", "inf", "-inf"."""
    if x is None:
        return None
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _dump_json(doc) -> None:
    json.dump(doc, sys.stdout, indent=1, allow_nan=False)
    sys.stdout.write("\n")


def _shape(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _print_written(args, report, verb: str) -> None:
    if args.quiet:
        return
    files = ", ".join(printable(f) for f in report.outputs) or "(no file)"
    print(f"{verb} {_plural(report.tensors, 'tensor')} ({_human_bytes(report.nbytes)}): {files}")


# ---- ls ------------------------------------------------------------------------

class _Info:
    """What ``ls`` shows of a tensor of a model that is not a TF checkpoint."""

    __slots__ = ("name", "dtype", "shape", "nbytes")
    shard = offset = slices = None

    def __init__(self, name, dtype, shape, nbytes):
        self.name, self.dtype, self.shape, self.nbytes = name, dtype, shape, nbytes


def _ls_infos(path, object_graph: bool = False):
    """(infos, prefix or path, number of shards or None, format) of the model at ``path``;
    with ``object_graph``, a fifth item: the serialized TF2 object graph, or None when
    the model has none."""
    try:
        with tfshard.open(path, verify=False) as ckpt:
            found = ckpt.infos(), ckpt.prefix, ckpt.num_shards, "tf"
            if object_graph:
                found += (_object_graph_bytes(ckpt),)
            return found
    except tfshard.CheckpointNotFoundError:
        if not os.path.exists(path):
            raise
    # Something that exists but is no TF checkpoint: another format, or nothing we read.
    from tfshard.formats import open_source

    with open_source(path) as source:
        infos = [_Info(name, *source.info(name), source.nbytes(name)) for name in source.names()]
        found = infos, source.path, None, source.format
        return found + (None,) if object_graph else found


def _object_graph_bytes(ckpt):
    """The serialized object graph of a TF checkpoint, or None (TF1, tfshard-written)."""
    from tfshard.objectgraph import OBJECT_GRAPH_KEY

    if OBJECT_GRAPH_KEY not in ckpt:
        return None
    info = ckpt.info(OBJECT_GRAPH_KEY)
    if info.dtype != "string" or tuple(info.shape) != ():
        return None
    value = ckpt.read(OBJECT_GRAPH_KEY, verify=True)[()]
    return value if isinstance(value, bytes) else None


def _cmd_ls(args) -> int:
    if args.tree:
        return _ls_tree(args)
    infos, prefix, num_shards, fmt = _ls_infos(args.path)
    if args.patterns:
        infos = [i for i in infos if any(fnmatch.fnmatchcase(i.name, p) for p in args.patterns)]
    if args.sort == "size":
        infos.sort(key=lambda i: -i.nbytes)
    elif args.sort == "offset":
        infos.sort(key=lambda i: (i.shard if i.shard is not None else -1, i.offset or 0))
    total = sum(i.nbytes for i in infos)
    out = sys.stdout
    if args.json:
        json.dump({
            "prefix": prefix,
            "format": fmt,
            "num_shards": num_shards,
            "total_bytes": total,
            "tensors": [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape),
                         "nbytes": i.nbytes, "shard": i.shard, "offset": i.offset,
                         "partitioned": bool(i.slices)} for i in infos],
        }, out, indent=1)
        out.write("\n")
        return EXIT_OK
    shapes = ["[" + ", ".join(map(str, i.shape)) + "]" for i in infos]
    names = [printable(i.name) for i in infos]
    w0 = max([4] + [len(n) for n in names])
    w1 = max([5] + [len(i.dtype) for i in infos])
    w2 = max([5] + [len(s) for s in shapes])
    lines = [f"{'NAME':<{w0}}  {'DTYPE':<{w1}}  {'SHAPE':<{w2}}  SIZE"]
    lines += [f"{n:<{w0}}  {i.dtype:<{w1}}  {s:<{w2}}  {_human_bytes(i.nbytes)}"
              for n, i, s in zip(names, infos, shapes)]
    where = f"{num_shards} shard(s)" if fmt == "tf" else f"{fmt} format"
    lines.append(f"{len(infos)} tensors, {_human_bytes(total)} in {where}: {printable(prefix)}")
    out.write("\n".join(lines) + "\n")
    return EXIT_OK

# ---- ls --tree ----------------------------------------------------------------------

# Deeper trees are refused: real ones are a few dozen levels deep, and the text
# indentation of a hostile chain of objects would grow with the square of its depth.
_MAX_TREE_DEPTH = 256


def _matches(patterns, *names) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(n, p) for n in names if n for p in patterns)


def _value(info, key: str) -> dict:
    """The fields of a tree entry that shows the tensor ``key`` (``info`` None: the
    object graph names a key the checkpoint lacks)."""
    if info is None:
        return {"key": key, "dtype": None, "shape": None, "nbytes": None, "missing": True}
    return {"key": key, "dtype": info.dtype, "shape": list(info.shape), "nbytes": info.nbytes}


def _scope_tree(infos, patterns) -> tuple:
    """(root entry, tensors shown) of the name-scope tree: names split on '/'."""
    root = {"name": "", "path": "", "children": []}
    index = {"": root}
    shown = []
    for info in sorted(infos, key=lambda i: i.name):
        if not _matches(patterns, info.name):
            continue
        shown.append(info)
        parent, path = root, ""
        parts = info.name.split("/")
        for depth, part in enumerate(parts):
            path = f"{path}/{part}" if depth else part
            entry = index.get(path)
            if entry is None:
                entry = index[path] = {"name": part, "path": path, "children": []}
                parent["children"].append(entry)
            parent = entry
        parent.update(_value(info, info.name))
    return root, shown


def _object_tree(graph, by_key: dict, patterns) -> tuple:
    """(root entry, tensors shown, keys shown) of the object tree of a TF2 checkpoint.

    Each object appears once, where its object path puts it; a child edge to an
    object already shown elsewhere (Keras 3 models reach their weights through the
    optimizer's lists, a model holds its optimizer...) is a reference entry
    ``{"name", "path": the path through that edge, "ref": the path it is shown at}``,
    kept only when that object holds a tensor shown.
    Legacy slot variables appear under their variable as ``.OPTIMIZER_SLOT/<optimizer
    path>/<slot>``, as their object paths say."""
    from tfshard.objectgraph import escape_local_name

    nodes, paths, parents = graph.nodes, graph.paths(), graph.parents()
    keys = graph.keys()
    n = len(nodes)
    # The tree edges (those that name an object's path) and the references.
    tree_kids = [[] for _ in range(n)]
    refs = [[] for _ in range(n)]
    claimed = [False] * n
    claimed[0] = True
    for node in nodes:
        for name, child in node.children:
            if not claimed[child] and parents[child] == (node.id, name):
                claimed[child] = True
                tree_kids[node.id].append((name, child))
            else:
                refs[node.id].append((name, child))
    for child, parent in enumerate(parents):
        if parent is not None and not claimed[child]:  # slot variables: parent is the variable
            claimed[child] = True
            tree_kids[parent[0]].append((parent[1], child))
    # Pre-order from the root, with depth; the tree edges form a tree, so this ends.
    order, depth = [], [0] * n
    stack = [0]
    while stack:
        node_id = stack.pop()
        order.append(node_id)
        if depth[node_id] > _MAX_TREE_DEPTH:
            raise tfshard.UnsupportedError(
                f"the object tree is more than {_MAX_TREE_DEPTH} levels deep; "
                f"'tfshard ls --tree' shows at most {_MAX_TREE_DEPTH}")
        for _, child in reversed(tree_kids[node_id]):
            depth[child] = depth[node_id] + 1
            stack.append(child)
    shown_attrs = [[] for _ in range(n)]  # (attribute, key) to show of each node
    for node_id in order:
        for attribute in nodes[node_id].attributes:
            key = attribute.checkpoint_key
            if _matches(patterns, key, paths[node_id]) and keys[key].node_id == node_id:
                shown_attrs[node_id].append(attribute)
    valued = [bool(a) for a in shown_attrs]
    for node_id in reversed(order):
        if valued[node_id]:
            parent = parents[node_id]
            if parent is not None:
                valued[parent[0]] = True
    visible = list(valued)
    for node_id in reversed(order):
        if any(valued[child] for _, child in refs[node_id]):
            visible[node_id] = True
        if visible[node_id] and parents[node_id] is not None:
            visible[parents[node_id][0]] = True

    entries = {}
    infos_shown, keys_shown = [], set()
    for node_id in order:
        if not visible[node_id]:
            continue
        entry = {"name": "" if node_id == 0 else parents[node_id][1],
                 "path": paths[node_id], "node_id": node_id, "children": []}
        entries[node_id] = entry
        if node_id:
            entries[parents[node_id][0]]["children"].append(entry)
        attrs = shown_attrs[node_id]
        targets = [entry]
        if len(attrs) != 1 or attrs[0].name != "VARIABLE_VALUE":
            targets = []
            for attribute in attrs:
                prefix = f"{paths[node_id]}/" if paths[node_id] else ""
                key = attribute.checkpoint_key
                label = key[len(prefix):] if key.startswith(prefix) else attribute.name
                child = {"name": label, "path": paths[node_id], "node_id": node_id}
                entry["children"].append(child)
                targets.append(child)
        for attribute, target in zip(attrs, targets):
            key = attribute.checkpoint_key
            info = by_key.get(key)
            target.update(_value(info, key))
            target["attribute"] = attribute.name
            target["full_name"] = attribute.full_name
            keys_shown.add(key)
            if info is not None:
                infos_shown.append(info)
            found = keys[key]
            if found.slots:
                target["slots"] = [
                    {"slot": link.slot_name, "optimizer": paths[link.optimizer_node_id],
                     "path": paths[link.slot_node_id], "kind": link.kind,
                     "key": next((a.checkpoint_key for a in nodes[link.slot_node_id].attributes),
                                 None)}
                    for link in found.slots]
            if found.slot is not None:
                link = found.slot
                target["slot_of"] = {"slot": link.slot_name,
                                     "variable": paths[link.variable_node_id],
                                     "optimizer": paths[link.optimizer_node_id],
                                     "kind": link.kind}
        for name, child in refs[node_id]:
            if valued[child]:
                here = escape_local_name(name)
                entry["children"].append({
                    "name": name, "path": f"{paths[node_id]}/{here}" if node_id else here,
                    "node_id": child, "ref": paths[child]})
    for node_id, entry in entries.items():
        _saved_order(entry["children"], nodes[node_id])
    root = entries.get(0, {"name": "", "path": "", "node_id": 0, "children": []})
    return root, infos_shown, keys_shown


def _saved_order(entries: list, node) -> None:
    """Sort the entries under ``node`` as its children were saved (tree edges and
    references interleaved): its own attributes first, slot variables last."""
    position = {}
    for i, edge in enumerate(node.children):
        position.setdefault(edge, i)

    def rank(entry):
        if entry["node_id"] == node.id and "ref" not in entry:
            return -1
        return position.get((entry["name"], entry["node_id"]), len(position))

    entries.sort(key=rank)


def _tree_lines(root, show_keys: bool) -> list:
    """The text lines of a tree of entries, drawn like ``tree`` draws directories,
    with the dtype, shape and size of tensors in aligned columns."""
    try:
        "├└│".encode(sys.stdout.encoding or "ascii")
        tee, last, bar, blank = "├── ", "└── ", "│   ", "    "
    except (UnicodeEncodeError, LookupError):
        tee, last, bar, blank = "|-- ", "`-- ", "|   ", "    "
    rows = []  # (indent + name, columns or None)
    kids = root["children"]
    stack = [(child, "", i == len(kids) - 1) for i, child in enumerate(kids)][::-1]
    while stack:
        entry, indent, is_last = stack.pop()
        head = indent + (last if is_last else tee) + printable(entry["name"])
        if "ref" in entry:
            head += f" -> {printable(entry['ref'] or '(root)')}"
        rows.append((head, _columns(entry, show_keys) if "key" in entry else None))
        kids = entry.get("children") or []
        below = indent + (blank if is_last else bar)
        stack.extend(reversed([(child, below, i == len(kids) - 1)
                               for i, child in enumerate(kids)]))
    valued = [cols for _, cols in rows if cols]
    widths = [min(60, max([len(h) for h, cols in rows if cols] or [0]))]
    widths += [max([len(cols[i]) for cols in valued] or [0]) for i in range(3)]
    lines = []
    for head, cols in rows:
        if cols is None:
            lines.append(head)
        else:
            cells = [head] + cols
            lines.append("  ".join(f"{c:<{w}}" for c, w in zip(cells, widths))
                         + "  " + "  ".join(cells[4:]))
    return [line.rstrip() for line in lines]


def _columns(entry, show_keys: bool) -> list:
    """dtype, shape, size, then notes, of a tensor's line in the tree."""
    if entry.get("missing"):
        cols = ["-", "-", "-", "(missing from the checkpoint)"]
    else:
        cols = [entry["dtype"], _shape(entry["shape"]), _human_bytes(entry["nbytes"])]
    slots = entry.get("slots")
    if slots:
        by_optimizer = {}
        for slot in slots:
            by_optimizer.setdefault(slot["optimizer"], []).append(slot["slot"])
        cols.append("(slots: " + "; ".join(f"{', '.join(names)} from {opt}"
                                           for opt, names in by_optimizer.items()) + ")")
    slot_of = entry.get("slot_of")
    if slot_of and slot_of["kind"] != "reference":  # a reference slot sits under its variable
        cols.append(f"({slot_of['slot']} slot of {slot_of['variable']})")
    if show_keys:
        cols.append(f"key: {printable(entry['key'])}")
        if entry.get("full_name"):
            cols.append(f"name: {printable(entry['full_name'])}")
    return cols


def _ls_tree(args) -> int:
    from tfshard import objectgraph

    infos, prefix, num_shards, fmt, graph_bytes = _ls_infos(args.path, object_graph=True)
    patterns = args.patterns
    graph = None
    if graph_bytes is not None:
        try:
            graph = objectgraph.decode(graph_bytes)
        except tfshard.CorruptCheckpointError as exc:
            print(f"tfshard ls: warning: {exc}; showing name scopes instead", file=sys.stderr)
    outside = None
    if graph is not None:
        by_key = {i.name: i for i in infos}
        root, shown, keys_shown = _object_tree(graph, by_key, patterns)
        rest = [i for i in infos if i.name not in keys_shown
                and i.name != objectgraph.OBJECT_GRAPH_KEY]
        outside, rest_shown = _scope_tree(rest, patterns)
        shown += rest_shown
        kind = "object_graph"
    else:
        root, shown = _scope_tree(infos, patterns)
        kind = "name_scopes"
    total = sum(i.nbytes for i in shown)
    if args.json:
        doc = {"prefix": prefix, "format": fmt, "num_shards": num_shards, "tree_kind": kind,
               "objects": len(graph) if graph is not None else None,
               "tensors": len(shown), "total_bytes": total, "tree": root}
        if graph is not None:
            doc["outside_tree"] = outside["children"]
        _dump_json(doc)
        return EXIT_OK
    lines = [printable(prefix)] + _tree_lines(root, args.keys)
    if outside is not None and outside["children"]:
        lines.append("(tensors no object path names)")
        lines += _tree_lines(outside, args.keys)
    where = f"{num_shards} shard(s)" if fmt == "tf" else f"{fmt} format"
    what = (f"object graph of {_plural(len(graph), 'object')}" if graph is not None
            else "name scopes")
    lines.append(f"{_plural(len(shown), 'tensor')}, {_human_bytes(total)} in {where} "
                 f"({what}): {printable(prefix)}")
    sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK



# ---- show ----------------------------------------------------------------------

def _integral(dtype) -> bool:
    """Whether ``dtype`` holds integers (bool, numpy's, ml_dtypes' int4/int2...)."""
    if dtype.kind in "biu":
        return True
    if dtype.kind != "V":
        return False
    import ml_dtypes

    try:
        ml_dtypes.iinfo(dtype)
    except (TypeError, ValueError):
        return False
    return True


def tensor_stats(array, chunk: int = 1 << 20) -> dict | None:
    """count, nan, inf, zeros, min, max, mean, std of a real numeric array, or None when
    its dtype is not one (strings, variants, complex).

    Sums are accumulated in float64, a chunk at a time so memory stays bounded; NaNs are
    ignored by min/max/mean/std (like ``np.nanmean``); std is the population one (ddof=0).
    min and max keep the tensor's own dtype (exact for 64-bit integers).
    """
    import numpy as np

    a = np.asarray(array)
    if a.dtype.kind not in "biufV" or a.dtype.fields is not None:
        return None
    flat = a.reshape(-1)
    try:
        flat[:1].astype(np.float64)
    except (TypeError, ValueError):  # a void dtype that is not an ml_dtypes number
        return None
    exact = _integral(a.dtype)
    n_nan = n_inf = n_zero = n = 0
    mean = m2 = 0.0
    lo = hi = None
    for start in range(0, flat.size, chunk):
        part = flat[start:start + chunk]
        values = part.astype(np.float64)
        if not exact:
            nan = np.isnan(values)
            chunk_nan = int(nan.sum())
            if chunk_nan:
                n_nan += chunk_nan
                part, values = part[~nan], values[~nan]
            n_inf += int(np.isinf(values).sum())
        n_zero += int((values == 0).sum())
        if not values.size:
            continue
        native = part if exact and part.dtype.kind in "biu" else values
        c_lo, c_hi = native.min(), native.max()
        lo = c_lo if lo is None else min(lo, c_lo)
        hi = c_hi if hi is None else max(hi, c_hi)
        # Chan et al.'s pairwise update of (count, mean, sum of squared deviations).
        with np.errstate(invalid="ignore", over="ignore"):
            c_n, c_mean = values.size, float(values.mean())
            c_m2 = float(np.square(values - c_mean).sum())
            delta = c_mean - mean
            total = n + c_n
            mean += delta * c_n / total
            m2 += c_m2 + delta * delta * n * c_n / total
        n = total
    as_type = a.dtype.type
    return {
        "count": int(a.size), "nan": n_nan, "inf": n_inf, "zeros": n_zero,
        "min": None if lo is None else as_type(lo), "max": None if hi is None else as_type(hi),
        "mean": mean if n else None,
        "std": math.sqrt(m2 / n) if n and m2 >= 0 else (float("nan") if n else None),
    }


def _open_tensor(source, name: str):
    """(dtype name, shape) of ``name``, or a TensorNotFoundError naming close matches."""
    names = source.names()
    if name not in set(names):
        import difflib

        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise tfshard.TensorNotFoundError(f"no tensor named {name!r} in {source.path}{hint} "
                                          f"('tfshard ls' lists them)", key=name)
    return source.info(name)


def _cmd_show(args) -> int:
    import numpy as np

    from tfshard.formats import open_source

    with open_source(args.path, args.src_format) as source:
        dtype, shape = _open_tensor(source, args.name)
        array = source.read(args.name)
        stats = tensor_stats(array) if args.stats or args.json else None
        if args.json:
            doc = {"name": args.name, "dtype": dtype, "shape": list(shape)}
            if stats is None:
                doc["stats"] = None
                doc["note"] = f"no statistics for {dtype} tensors"
            else:
                integral = _integral(array.dtype)
                for key in ("min", "max"):
                    v = stats[key]
                    stats[key] = (None if v is None else
                                  int(v) if integral else _json_float(v))
                doc["stats"] = {k: _json_float(v) if k in ("mean", "std") else v
                                for k, v in stats.items()}
            _dump_json(doc)
            return EXIT_OK
        print(f"{printable(args.name)}: {dtype} {_shape(shape)}")
        if args.stats:
            if stats is None:
                print(f"no statistics for {dtype} tensors ({array.size} elements)")
            else:
                def fmt(key):
                    v = stats[key]
                    return "-" if v is None else (f"{v:.7g}" if key in ("mean", "std") else str(v))
                rows = [(k, str(stats[k])) for k in ("count", "nan", "inf", "zeros")]
                rows += [(k, fmt(k)) for k in ("min", "max", "mean", "std")]
                for key, value in rows:
                    print(f"  {key:<6} {value}")
            return EXIT_OK
        options = {"threshold": sys.maxsize} if args.full else {}
        with np.printoptions(**options):
            print(array)
    return EXIT_OK


# ---- verify --------------------------------------------------------------------

def _cmd_verify(args) -> int:
    from tfshard import conversion

    report = conversion.verify(args.path, progress=_progress(args))
    if args.json:
        _dump_json({"path": args.path, "ok": report.ok, "checked": report.checked,
                    "nbytes": report.nbytes,
                    "problems": [{"name": n, "message": m} for n, m in report.problems],
                    "notes": list(report.notes)})
    else:
        for name, message in report.problems:
            print(f"BAD  {printable(name)}: {printable(message)}")
        for note in report.notes:
            print(f"note: {note}")
        if report.ok:
            print(f"OK: {_plural(report.checked, 'tensor')} ({_human_bytes(report.nbytes)}) "
                  f"checked: {args.path}")
        else:
            print(f"FAILED: {len(report.problems)} of {_plural(report.checked, 'tensor')} bad: "
                  f"{args.path}")
    return EXIT_OK if report.ok else EXIT_FAILED


# ---- extract / convert / merge -------------------------------------------------------

def _cmd_extract(args) -> int:
    from tfshard import conversion
    from tfshard.formats import open_source

    if args.patterns:
        # A pattern that matches nothing is most likely a typo: say so rather than write
        # an empty file.
        with open_source(args.path) as source:
            names = source.names()
        unmatched = [p for p in args.patterns
                     if not any(fnmatch.fnmatchcase(n, p) for n in names)]
        if unmatched:
            raise tfshard.TensorNotFoundError(
                f"no tensor of {args.path} matches {', '.join(map(repr, unmatched))} "
                f"('tfshard ls' lists them)")
    report = conversion.extract(args.path, args.output, args.patterns, fmt=args.format,
                                overwrite=args.overwrite, progress=_progress(args))
    _print_written(args, report, "extracted")
    return EXIT_OK


def _cmd_convert(args) -> int:
    from tfshard import conversion

    report = conversion.convert(
        args.src, args.dst, src_format=args.src_format, dst_format=args.dst_format,
        dtype=args.dtype, include=args.include, exclude=args.exclude, rename=args.rename,
        max_shard_size=args.max_shard_size, overwrite=args.overwrite, progress=_progress(args))
    _print_written(args, report, "converted")
    if not args.quiet:
        renamed = sum(1 for old, new in report.mapping.items() if old != new)
        if renamed:
            print(f"{_plural(renamed, 'tensor')} renamed")
        if report.dropped:
            print(f"{_plural(len(report.dropped), 'tensor')} left out by --include/--exclude")
    return EXIT_OK


def _cmd_merge(args) -> int:
    from tfshard import conversion

    report = conversion.merge(args.output, args.sources, on_conflict=args.on_conflict,
                              dst_format=args.dst_format, max_shard_size=args.max_shard_size,
                              overwrite=args.overwrite, progress=_progress(args))
    _print_written(args, report, "merged")
    if not args.quiet and report.dropped:
        kept = "first" if args.on_conflict == "first" else "last"
        print(f"{_plural(len(report.dropped), 'conflicting tensor')} dropped "
              f"(--on-conflict {args.on_conflict} keeps the {kept} source's):")
        for entry in report.dropped:
            print(f"  {printable(entry)}")
    return EXIT_OK


# ---- rename / strip ----------------------------------------------------------------

def _cmd_rename(args) -> int:
    from tfshard import conversion

    mapping = conversion.rename(args.path, args.output, args.rules, dry_run=args.dry_run,
                                overwrite=args.overwrite, progress=_progress(args))
    changed = {old: new for old, new in mapping.items() if old != new}
    unchanged = [old for old, new in mapping.items() if old == new]
    if args.json:
        _dump_json({"input": args.path, "output": None if args.dry_run else args.output,
                    "dry_run": args.dry_run, "renamed": changed, "unchanged": unchanged})
        return EXIT_OK
    for old, new in changed.items():
        print(f"{printable(old)} -> {printable(new)}")
    if args.all:
        for name in unchanged:
            print(f"{printable(name)} (unchanged)")
    where = "nothing written (--dry-run)" if args.dry_run else f"written to {args.output}"
    print(f"{_plural(len(changed), 'tensor')} renamed, {len(unchanged)} unchanged; {where}")
    return EXIT_OK


def _cmd_strip(args) -> int:
    from tfshard import conversion
    from tfshard.formats import open_source

    report = conversion.strip(args.path, args.output, drop_step=args.drop_step,
                              overwrite=args.overwrite, progress=_progress(args),
                              dry_run=args.dry_run)
    dropped, kept, kept_bytes = sorted(report.dropped), report.tensors, report.nbytes
    with open_source(args.path) as source:
        sizes = {name: source.nbytes(name) for name in dropped}
    saved = report.dropped_bytes
    if args.json:
        _dump_json({"input": args.path, "output": None if args.dry_run else args.output,
                    "dry_run": args.dry_run, "dropped": dropped, "kept": kept,
                    "saved_bytes": saved, "kept_bytes": kept_bytes})
        return EXIT_OK
    for name in dropped:
        print(f"drop {printable(name)} ({_human_bytes(sizes[name])})")
    if not dropped:
        print("no optimizer state found")
    where = "nothing written (--dry-run)" if args.dry_run else f"written to {args.output}"
    print(f"{_plural(len(dropped), 'tensor')} dropped, {_human_bytes(saved)} saved "
          f"({saved} bytes); {kept} kept ({_human_bytes(kept_bytes)}); {where}")
    return EXIT_OK


# ---- diff --------------------------------------------------------------------------

def _cmd_diff(args) -> int:
    from tfshard import conversion

    report = conversion.diff(args.a, args.b, atol=args.atol, rtol=args.rtol)
    if args.json:
        _dump_json({
            "a": args.a, "b": args.b, "same": report.same, "compared": report.compared,
            "atol": args.atol, "rtol": args.rtol,
            "missing": report.missing, "unexpected": report.unexpected,
            "mismatched": {n: {"a": x, "b": y} for n, (x, y) in report.mismatched.items()},
            # Strings that differ have no numeric difference: null.
            "differing": {n: {"max_abs": None if math.isnan(d) else _json_float(d),
                              "max_rel": None if math.isnan(r) else _json_float(r)}
                          for n, (d, r) in report.differing.items()},
        })
        return EXIT_OK if report.same else EXIT_FAILED
    for name in report.missing:
        print(f"missing     {printable(name)}  (only in {printable(args.a)})")
    for name in report.unexpected:
        print(f"unexpected  {printable(name)}  (only in {printable(args.b)})")
    for name, (x, y) in report.mismatched.items():
        print(f"mismatched  {printable(name)}: {x} vs {y}")
    for name, (d, r) in report.differing.items():
        detail = ("values differ" if math.isnan(d) and math.isnan(r)
                  else f"max abs diff {d:.6g}, max rel diff {r:.6g}")
        print(f"differs     {printable(name)}: {detail}")
    if report.same:
        print(f"same: {_plural(report.compared, 'tensor')} compared")
        return EXIT_OK
    print(f"different: {len(report.missing)} missing, {len(report.unexpected)} unexpected, "
          f"{len(report.mismatched)} mismatched, {len(report.differing)} of "
          f"{report.compared} compared differ (atol={args.atol:g}, rtol={args.rtol:g})")
    return EXIT_FAILED


# ---- parser --------------------------------------------------------------------------

_PATH_HELP = ("a TF checkpoint (prefix, its .index, a data shard, or a directory with a "
              "'checkpoint' state file), a .safetensors, .npz or PyTorch file, or a "
              "directory of .npy files")


def _add_command(sub, name, func, help_, description, examples, extra_dest=None):
    p = sub.add_parser(name, help=help_, description=description,
                       epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func, extra_dest=extra_dest, subparser=p)
    return p


def _add_write_options(p, *, quiet_help="no progress bar and no summary"):
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (default: refuse)")
    p.add_argument("-q", "--quiet", action="store_true", help=quiet_help)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tfshard",
        description="Read, write and convert TensorFlow checkpoints without TensorFlow.",
        epilog="Run 'tfshard COMMAND --help' for the options of one command.\n"
               "Exit status: 0 success, 1 failure (bad data, models that differ...), "
               "2 usage error.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"tfshard {tfshard.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    ls = _add_command(
        sub, "ls", _cmd_ls, "list the tensors of a checkpoint (or another model file)",
        "List the tensors of a checkpoint: name, dtype, shape and size on disk, "
        "then totals. Partitioned tensors appear once, with their full shape. "
        "Safetensors, .npz, .npy directories and PyTorch files are listed too.\n\n"
        "With --tree, show a tree instead. For a TF2 checkpoint (tf.train.Checkpoint) it is "
        "the object tree its object graph records: one line per object (model, layer, "
        "optimizer, variable) named by its local name, variables with dtype, shape and size, "
        "a variable's optimizer slots after it ('slots: m, v from optimizer'), a slot "
        "variable with the variable it belongs to; 'NAME -> PATH' is a second edge to an "
        "object shown at PATH (Keras 3 saves a model's weights under the optimizer's "
        "'_trainable_variables'). Objects that hold no tensor are left out. For any other "
        "model (TF1 checkpoints, those tfshard writes, safetensors...), the tree of name "
        "scopes (names split on '/'). PATTERNs then match checkpoint keys or object paths.",
        ["tfshard ls train/ckpt-100",
         "tfshard ls train/ 'bert/encoder/layer_0/*' --sort size",
         "tfshard ls model.ckpt.index --json",
         "tfshard ls model.safetensors",
         "tfshard ls train/ckpt-100 --tree",
         "tfshard ls train/ckpt-100 --tree --keys 'model/*'",
         "tfshard ls train/ckpt-100 --tree --json"], extra_dest="patterns")
    ls.add_argument("path", metavar="PATH", help=_PATH_HELP)
    ls.add_argument("patterns", metavar="PATTERN", nargs="*",
                    help="only tensors whose name matches one of these globs")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.add_argument("--sort", choices=("name", "size", "offset"), default="name",
                    help="order of the listing (default: name; not used by --tree, which "
                         "keeps the saved order of objects and sorts name scopes)")
    ls.add_argument("--tree", action="store_true",
                    help="show the object tree of a TF2 checkpoint, or the name-scope tree "
                         "of any other model; with --json, as nested objects")
    ls.add_argument("--keys", action="store_true",
                    help="with --tree: print each tensor's checkpoint key too")

    show = _add_command(
        sub, "show", _cmd_show, "print one tensor's values or statistics",
        "Print a tensor's dtype and shape, then its values with numpy's print options "
        "(long tensors are summarized with '...' unless --full), or statistics with --stats: "
        "count, number of NaN, Inf and zeros, min, max, mean and std (population, accumulated "
        "in float64, NaN ignored). String and complex tensors have no statistics.",
        ["tfshard show train/ckpt-100 dense/kernel",
         "tfshard show train/ckpt-100 dense/kernel --full > kernel.txt",
         "tfshard show model.safetensors encoder.weight --stats",
         "tfshard show train/ 'bert/embeddings/word_embeddings' --stats --json"])
    show.add_argument("path", metavar="PATH", help=_PATH_HELP)
    show.add_argument("name", metavar="NAME", help="the tensor's name")
    show.add_argument("--from", dest="src_format", choices=FORMATS, metavar="FMT",
                      help=f"format of PATH ({', '.join(FORMATS)}; default: told by its name)")
    show.add_argument("--full", action="store_true",
                      help="print every value (no '...' summarization)")
    show.add_argument("--stats", action="store_true",
                      help="print statistics instead of the values")
    show.add_argument("--json", action="store_true",
                      help="print the statistics as JSON (implies --stats; non-finite "
                           "values are the strings \"nan\", \"inf\", \"-inf\")")

    verify = _add_command(
        sub, "verify", _cmd_verify, "check every checksum of a TF checkpoint",
        "Read every tensor of a TensorFlow checkpoint and check its CRC-32C and index entry, "
        "reporting every bad tensor (not just the first) and notes about the checkpoint as a "
        "whole. Exit status 1 when anything is wrong.",
        ["tfshard verify train/ckpt-100",
         "tfshard verify train/ --json"])
    verify.add_argument("path", metavar="PATH",
                        help="checkpoint prefix, its .index file, a data shard, or a directory "
                             "with a 'checkpoint' state file")
    verify.add_argument("--json", action="store_true", help="print JSON instead of text")
    verify.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    extract = _add_command(
        sub, "extract", _cmd_extract, "write some tensors to .npz, .safetensors or .npy files",
        "Write the tensors of a model whose names match any PATTERN (all when none is given) "
        "to one .npz or .safetensors file, or to a directory of .npy files (--format npy). "
        "Names are made safe for .npy file names: nothing is written outside OUT. Patterns "
        "are globs where '*' matches '/' too; a pattern that matches nothing is an error.",
        ["tfshard extract train/ckpt-100 -o weights.npz",
         "tfshard extract train/ckpt-100 'dense/*' -o dense.safetensors",
         "tfshard extract train/ckpt-100 'bert/embeddings/*' -o emb/ --format npy"],
        extra_dest="patterns")
    extract.add_argument("path", metavar="PATH", help=_PATH_HELP)
    extract.add_argument("patterns", metavar="PATTERN", nargs="*",
                         help="only tensors whose name matches one of these globs")
    extract.add_argument("-o", "--output", metavar="OUT", required=True,
                         help="the output file or (npy) directory")
    extract.add_argument("--format", choices=("npz", "safetensors", "npy"),
                         help="output format (default: told by OUT's name)")
    _add_write_options(extract)

    convert = _add_command(
        sub, "convert", _cmd_convert, "convert a model between formats",
        "Convert a model between a TF checkpoint, safetensors, .npz, a directory of .npy files "
        "and PyTorch, streaming one tensor at a time. Formats are told by the names of SRC and "
        "DST unless --from/--to say. Tensors are selected with --include/--exclude (globs, '*' "
        "matches '/' too: --include keeps only matching tensors, --exclude then drops some), "
        "renamed with --rename rules (Python regular expressions, applied in order with "
        "re.sub; rules that make two tensors one name are refused before anything is "
        "written) and, with --dtype, floating tensors (float16, bfloat16, float32, float64) "
        "are cast; other tensors are copied as they are.\n\n" + SIZE_HELP + ".",
        ["tfshard convert train/ckpt-100 model.safetensors",
         "tfshard convert model.safetensors out/model.ckpt --to tf --dtype bfloat16",
         "tfshard convert train/ckpt-100 model.safetensors --max-shard-size 2GiB",
         "tfshard convert ckpt model.npz --exclude '*/Adam*' --rename '^bert/=encoder/'"])
    convert.add_argument("src", metavar="SRC", help="the input model: " + _PATH_HELP)
    convert.add_argument("dst", metavar="DST",
                         help="the output: a TF checkpoint prefix, a .safetensors, .npz or "
                              ".pt/.bin file, or a directory for .npy files")
    convert.add_argument("--from", dest="src_format", choices=FORMATS, metavar="FMT",
                         help=f"format of SRC: {', '.join(FORMATS)} (default: told by its name)")
    convert.add_argument("--to", dest="dst_format", choices=FORMATS, metavar="FMT",
                         help=f"format of DST: {', '.join(FORMATS)} (default: told by its name)")
    convert.add_argument("--dtype", choices=CAST_DTYPES, metavar="D",
                         help=f"cast floating tensors to D: {', '.join(CAST_DTYPES)}")
    convert.add_argument("--include", action="append", default=[], metavar="GLOB",
                         help="keep only tensors matching a GLOB (repeatable)")
    convert.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                         help="drop tensors matching GLOB (repeatable)")
    convert.add_argument("--rename", action="append", default=[], metavar="REGEX=REPL",
                         help="rename tensors: re.sub(REGEX, REPL, name); repeatable, applied "
                              "in order; write '\\=' for a '=' inside REGEX")
    convert.add_argument("--max-shard-size", type=_size_arg, metavar="SIZE",
                         help="split the output into files of at most SIZE (TF data shards, "
                              "safetensors shards)")
    _add_write_options(convert)

    merge = _add_command(
        sub, "merge", _cmd_merge, "mix several models into one, under name scopes",
        "Write every tensor of every SRC to OUT, each SRC optionally under a name scope: "
        "'SRC:SCOPE/' writes tensor NAME as SCOPE/NAME (the scope must end with '/'). Two "
        "sources giving the same output name are an error listing every such name, unless "
        "--on-conflict first|last says which source wins.\n\n" + SIZE_HELP + ".",
        ["tfshard merge mixed/ckpt vgg16/model.ckpt:vgg/ head/ckpt-3:head/",
         "tfshard merge out.safetensors base.safetensors lora.safetensors --on-conflict last"],
        extra_dest="sources")
    merge.add_argument("output", metavar="OUT", help="the merged model (any output format)")
    merge.add_argument("sources", metavar="SRC[:SCOPE/]", nargs="+",
                       help="input models, each optionally followed by ':' and a name scope "
                            "ending in '/'")
    merge.add_argument("--on-conflict", choices=("error", "first", "last"), default="error",
                       help="when two sources give the same name: fail (default), keep the "
                            "first source's tensor, or the last one's")
    merge.add_argument("--to", dest="dst_format", choices=FORMATS, metavar="FMT",
                       help=f"format of OUT: {', '.join(FORMATS)} (default: told by its name)")
    merge.add_argument("--max-shard-size", type=_size_arg, metavar="SIZE",
                       help="split the output into files of at most SIZE")
    _add_write_options(merge)

    rename = _add_command(
        sub, "rename", _cmd_rename, "rename tensors with regular expressions",
        "Copy a model with its tensors renamed by --rule 'REGEX=REPL' (Python re.sub, rules "
        "applied in order; '\\=' is a '=' inside REGEX). Prints the renamed tensors and how "
        "many are unchanged. Rules that give two tensors the same name are refused before "
        "anything is written. With --dry-run, only prints the mapping. Note that renaming "
        "the tensors of a TF2 object-based checkpoint does not update its object graph.",
        ["tfshard rename ckpt out/ckpt --rule '^bert/=encoder/' --dry-run",
         "tfshard rename model.safetensors renamed.safetensors --rule '\\.weight$=.w' "
         "--rule '^model\\.='",
         "tfshard rename ckpt out/ckpt --rule 'layer_(\\d+)=block_\\1' --json"])
    rename.add_argument("path", metavar="PATH", help=_PATH_HELP)
    rename.add_argument("output", metavar="OUT", nargs="?",
                        help="the renamed copy (not needed with --dry-run)")
    rename.add_argument("--rule", dest="rules", action="append", required=True,
                        metavar="REGEX=REPL", help="a rename rule (repeatable)")
    rename.add_argument("--dry-run", action="store_true", help="print the mapping, write nothing")
    rename.add_argument("--all", action="store_true", help="list unchanged names too")
    rename.add_argument("--json", action="store_true", help="print the mapping as JSON")
    _add_write_options(rename, quiet_help="no progress bar")

    strip = _add_command(
        sub, "strip", _cmd_strip, "copy a checkpoint without its optimizer state",
        "Copy a checkpoint without its optimizer state, for inference or fine-tuning: TF1 "
        "slots (VAR/Adam, VAR/Adam_1, VAR/Momentum...) of variables that are present, "
        "beta1_power/beta2_power, and TF2 optimizer slots and variables. The model's "
        "variables, the TF2 object graph and save_counter are kept; global_step too unless "
        "--drop-step. Prints what is dropped and the bytes saved.",
        ["tfshard strip train/ckpt-100 inference/ckpt --dry-run",
         "tfshard strip train/ckpt-100 inference/ckpt --drop-step"])
    strip.add_argument("path", metavar="PATH", help=_PATH_HELP)
    strip.add_argument("output", metavar="OUT", nargs="?",
                       help="the stripped copy (not needed with --dry-run)")
    strip.add_argument("--drop-step", action="store_true",
                       help="drop global_step too")
    strip.add_argument("--dry-run", action="store_true",
                       help="print what would be dropped, write nothing")
    strip.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_write_options(strip, quiet_help="no progress bar")

    diff = _add_command(
        sub, "diff", _cmd_diff, "compare two models tensor by tensor",
        "Compare two models (any formats) tensor by tensor: names only in A (missing), only in "
        "B (unexpected), with another dtype or shape (mismatched), and values that differ: "
        "|a - b| > atol + rtol * |b| for some element (NaNs in the same places are equal; "
        "strings must be equal). Exit status 0 when they are the same, 1 when they differ.",
        ["tfshard diff train/ckpt-100 export/model.safetensors",
         "tfshard diff ckpt-1 ckpt-2 --atol 1e-6 --rtol 1e-3",
         "tfshard diff ckpt-1 ckpt-2 --json"])
    diff.add_argument("a", metavar="A", help=_PATH_HELP)
    diff.add_argument("b", metavar="B", help="the model to compare A with")
    diff.add_argument("--atol", type=_tolerance_arg, default=0.0, metavar="X",
                      help="absolute tolerance (default: 0)")
    diff.add_argument("--rtol", type=_tolerance_arg, default=0.0, metavar="X",
                      help="tolerance relative to |b| (default: 0)")
    diff.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


# The library's messages name its keyword arguments; here they are options.
_FORMAT_OPTION = {"extract": "--format", "convert": "--to", "merge": "--to"}


def _error_message(exc: BaseException, command: str) -> str:
    message = str(exc).replace("overwrite=True", "--overwrite")
    if command in _FORMAT_OPTION:
        message = re.sub(r"\bfmt='(\w+)'", _FORMAT_OPTION[command] + r" \1", message)
    return message


def main(argv=None) -> int:
    """Entry point of the ``tfshard`` console script; returns the exit status."""
    parser = _parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # argparse cannot take positional patterns after an option ("ls P --json 'a*'").
        dest = getattr(args, "extra_dest", None)
        if extra and dest and not any(e.startswith("-") for e in extra):
            getattr(args, dest).extend(extra)
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if getattr(args, "output", "") is None and not args.dry_run:
            args.subparser.error("OUT is required unless --dry-run is given")
        if getattr(args, "keys", False) and not args.tree:
            args.subparser.error("--keys needs --tree (the listing shows keys already)")
    except SystemExit as exc:  # usage errors (2), --help and --version (0): return, not exit
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    # Anything printed that the terminal cannot encode (a lone surrogate missed by
    # printable(), a name in a narrow locale) is escaped rather than a traceback.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):
                pass
    # Commands build large listings of small objects; the cyclic GC only costs time.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return args.func(args)
    except (tfshard.TFShardError, OSError) as exc:
        if isinstance(exc, BrokenPipeError):
            return EXIT_OK
        print(f"tfshard {args.command}: error: {_error_message(exc, args.command)}",
              file=sys.stderr)
        return EXIT_FAILED
    finally:
        if gc_was_enabled:
            gc.enable()
