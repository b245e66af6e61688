"""``tfshard ls``: the tensors of a model as a table, JSON or a tree."""

from __future__ import annotations

import fnmatch
import json
import sys

from tfshard._util import printable

from ._common import (
    EXIT_OK,
    PATH_HELP,
    add_command,
    dump_json,
    human_bytes,
    plural,
    shape_text,
)


def run(args) -> int:
    if args.tree:
        return _run_tree(args)
    from tfshard.formats import list_tensors

    listing = list_tensors(args.path)
    infos = listing.tensors
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
            "prefix": listing.path,
            "format": listing.format,
            "num_shards": listing.num_shards,
            "total_bytes": total,
            "tensors": [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape),
                         "nbytes": i.nbytes, "shard": i.shard, "offset": i.offset,
                         "partitioned": bool(i.slices)} for i in infos],
        }, out, indent=1)
        out.write("\n")
        return EXIT_OK
    shapes = [shape_text(i.shape) for i in infos]
    names = [printable(i.name) for i in infos]
    w0 = max([4] + [len(n) for n in names])
    w1 = max([5] + [len(i.dtype) for i in infos])
    w2 = max([5] + [len(s) for s in shapes])
    lines = [f"{'NAME':<{w0}}  {'DTYPE':<{w1}}  {'SHAPE':<{w2}}  SIZE"]
    lines += [f"{n:<{w0}}  {i.dtype:<{w1}}  {s:<{w2}}  {human_bytes(i.nbytes)}"
              for n, i, s in zip(names, infos, shapes)]
    lines.append(f"{len(infos)} tensors, {human_bytes(total)} in {_where(listing)}: "
                 f"{printable(listing.path)}")
    out.write("\n".join(lines) + "\n")
    return EXIT_OK


def _where(listing) -> str:
    return (f"{listing.num_shards} shard(s)" if listing.format == "tf"
            else f"{listing.format} format")


def _run_tree(args) -> int:
    from tfshard.tree import model_tree

    tree = model_tree(args.path, args.patterns)
    if tree.warning:
        print(f"tfshard ls: warning: {tree.warning}", file=sys.stderr)
    if args.json:
        doc = {"prefix": tree.path, "format": tree.format, "num_shards": tree.num_shards,
               "tree_kind": tree.kind, "objects": tree.objects,
               "tensors": len(tree.tensors), "total_bytes": tree.total_bytes, "tree": tree.root}
        if tree.outside is not None:
            doc["outside_tree"] = tree.outside["children"]
        dump_json(doc)
        return EXIT_OK
    lines = [printable(tree.path)] + _tree_lines(tree.root, args.keys)
    if tree.outside is not None and tree.outside["children"]:
        lines.append("(tensors no object path names)")
        lines += _tree_lines(tree.outside, args.keys)
    what = (f"object graph of {plural(tree.objects, 'object')}" if tree.kind == "object_graph"
            else "name scopes")
    lines.append(f"{plural(len(tree.tensors), 'tensor')}, {human_bytes(tree.total_bytes)} in "
                 f"{_where(tree)} ({what}): {printable(tree.path)}")
    sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK


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
        cols = [entry["dtype"], shape_text(entry["shape"]), human_bytes(entry["nbytes"])]
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


def add_parser(sub) -> None:
    ls = add_command(
        sub, "ls", run, "list the tensors of a checkpoint (or another model file)",
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
    ls.add_argument("path", metavar="PATH", help=PATH_HELP)
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
