"""``tfshard graph``: what a ``.meta`` file or a SavedModel holds besides the weights."""

from __future__ import annotations

import sys

from ._common import EXIT_FAILED, EXIT_OK, add_command, dump_json


def run(args) -> int:
    from tfshard import graph

    with graph.open(args.path) as f:
        metas = f.meta_graphs if args.tags is None else [f.meta_graph(args.tags)]
        if args.ops:
            return _print_ops(args, metas)
        if args.risky:
            return _print_risky(args, metas)
        if args.json:
            dump_json(graph.summary(f, tags=args.tags))
        else:
            sys.stdout.write("\n".join(graph.summary_lines(f, tags=args.tags)) + "\n")
    return EXIT_OK


def _print_ops(args, metas) -> int:
    docs, lines = [], []
    for g in metas:
        nodes = g.nodes()
        functions = {fn.name: g.nodes(fn.name) for fn in g.functions()}
        docs.append({"tags": g.tags,
                     "nodes": [{"name": n.name, "op": n.op, "device": n.device} for n in nodes],
                     "functions": {name: [{"name": n.name, "op": n.op, "device": n.device}
                                          for n in heads] for name, heads in functions.items()}})
        lines.append(f"meta graph {g.index} (tags [{', '.join(g.tags)}]): {len(nodes)} nodes")
        lines += _node_rows(nodes, "  ")
        for name, heads in functions.items():
            lines.append(f"function {name}: {len(heads)} nodes")
            lines += _node_rows(heads, "  ")
    if args.json:
        dump_json({"meta_graphs": docs})
    else:
        sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK


def _node_rows(heads, indent) -> list:
    width = max([4] + [len(n.name) for n in heads])
    op_width = max([2] + [len(n.op) for n in heads])
    return [f"{indent}{n.name:<{width}}  {n.op:<{op_width}}  {n.device}".rstrip() for n in heads]


def _print_risky(args, metas) -> int:
    from tfshard import graph

    found = [(g, graph.risky_ops(g)) for g in metas]
    if args.json:
        dump_json({"meta_graphs": [{"tags": g.tags,
                                    "risky": [r._asdict() for r in risky]}
                                   for g, risky in found]})
    else:
        for g, risky in found:
            for r in risky:
                where = f" in function {r.function}" if r.function else ""
                print(f"RISKY  {r.node}  {r.op}{where}: {r.reason}")
            print(f"meta graph {g.index} (tags [{', '.join(g.tags)}]): "
                  f"{len(risky) or 'no'} risky op(s)")
    return EXIT_FAILED if any(risky for _, risky in found) else EXIT_OK


def add_parser(sub) -> None:
    p = add_command(
        sub, "graph", run, "show what a .meta file or a SavedModel holds",
        "Show the graph beside the weights, without TensorFlow: for each meta graph of a "
        ".meta file (TF1 Saver) or a SavedModel (saved_model.pb), its tags and TensorFlow "
        "version, collections (node lists, bytes, int64, float, Any), variables (dtype, "
        "shape, trainable, partitions, checkpoint keys), the SaverDef, signatures (inputs "
        "and outputs with tensor names, dtypes, shapes), assets, the TF2 object graph's "
        "functions and the op counts. --json prints it for machines (see docs/graph.md); "
        "--ops lists every node; --risky lists nodes whose ops run code or touch files "
        "(PyFunc, ReadFile, WriteFile, Save/Restore outside the saver...), exit status 1 "
        "when there is any.",
        ["tfshard graph train/model.ckpt-100.meta",
         "tfshard graph export/1/",
         "tfshard graph export/1/saved_model.pb --json",
         "tfshard graph export/1/ --tags serve --risky",
         "tfshard graph model.ckpt-100.meta --ops"])
    p.add_argument("path", metavar="PATH",
                   help="a .meta file, a saved_model.pb, a SavedModel directory, or a "
                        "checkpoint prefix P with P.meta beside it")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--tags", metavar="TAGS",
                   help="only the meta graph with these comma-separated tags (e.g. serve)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--ops", action="store_true",
                      help="list every node (name, op, device), then each library "
                           "function's nodes")
    what.add_argument("--risky", action="store_true",
                      help="list the nodes whose ops run code or touch files; exit status 1 "
                           "when there is any")
