"""Read what a TF1 ``Saver`` wrote beside a checkpoint -- the ``.meta`` graph -- without
TensorFlow.

The classic TF1 workflow restores a model with ``import_meta_graph``, then asks the
graph for ``get_collection("hyperparameters")`` or ``get_tensor_by_name(
"global_step:0")``.  Only TensorFlow could answer those questions; ``tfshard.graph``
decodes the ``MetaGraphDef`` itself, with nothing but numpy.

The script shows:

* ``tfshard.graph.open(path)`` and ``GraphFile.meta_graph()``;
* ``MetaGraph.collections``: every collection by kind (node lists, bytes, int64,
  float, Any), with the ``VariableDef`` entries of the variables collections decoded;
* ``global_step``: the variable its collection names, and its value read from the
  checkpoint beside the ``.meta`` (``GraphFile.variables_prefix``) with
  ``tfshard.load_variable``;
* a ``hyperparameters`` collection of ``Const`` tensors, each value decoded from the
  graph with ``MetaGraph.tensor(name).value()``;
* ``MetaGraph.variables()``: name, dtype, shape, trainable and the checkpoint key
  each one restores from, checked against the checkpoint's own listing.

It ends by asserting that TensorFlow was never imported.  Without PATH it reads the
small TF1 ``Saver`` model that ships with the tfshard repository
(``tests/data/graph/tf1/model.ckpt-3.meta``).  The exit code is 1 when the graph has
no ``global_step`` collection.

Run::

    python examples/read_meta_graph.py [PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import tfshard
from tfshard import graph

DEFAULT_META = (Path(__file__).resolve().parent.parent / "tests" / "data" / "graph" / "tf1"
                / "model.ckpt-3.meta")


def show_collections(g) -> None:
    print(f"{len(g.collections)} collections:")
    for c in g.collections.values():
        if c.variables is not None:
            what = ", ".join(v.variable_name for v in c.variables)
        elif c.kind == "bytes_list":
            what = f"{len(c.value)} byte strings"
        elif c.kind == "any_list":
            what = ", ".join(a.type_url for a in c.value)
        else:
            what = ", ".join(map(str, c.value[:6])) + (" ..." if len(c.value) > 6 else "")
        print(f"  {c.name:<22} {c.kind:<11} {what}")


def show_global_step(g, prefix) -> bool:
    entry = g.collections.get("global_step")
    if entry is None or not entry.variables:
        print("no global_step collection")
        return False
    name = entry.variables[0].variable_name            # "global_step:0"
    tensor = g.tensor(name)
    print(f"global_step collection: {name} ({tensor.op}, {tensor.dtype}), initial value "
          f"from {entry.variables[0].initial_value_name}")
    if prefix is None:
        print("no checkpoint beside the graph: the step value is not known")
        return True
    key = next(v.checkpoint_key for v in g.variables() if v.name == tensor.node.name)
    step = tfshard.load_variable(prefix, key)
    print(f"global_step = {int(step)} ({step.dtype}, read from {prefix})")
    return True


def show_hyperparameters(g) -> None:
    entry = g.collections.get("hyperparameters")
    if entry is None:
        print("no hyperparameters collection")
        return
    print(f"hyperparameters ({entry.kind}):")
    for name in entry.value:
        tensor = g.tensor(name)
        if tensor.op != "Const":
            print(f"  {name}: computed when the graph runs ({tensor.op})")
            continue
        value = tensor.value()
        shown = value.tolist() if value.size <= 12 else f"{value.size} values"
        print(f"  {name} = {shown!r} ({tensor.dtype} {tensor.shape})")


def show_variables(g, prefix) -> None:
    listed = dict(tfshard.list_variables(prefix)) if prefix else {}
    local = g.collections.get("local_variables")
    local = {d.variable_name.split(":")[0] for d in local.variables or []} if local else set()
    print(f"{len(g.variables())} variables:")
    for v in g.variables():
        where = ""
        if v.name in local:
            where = "  a local variable: not saved"
        elif listed:
            found = listed.get(v.checkpoint_key)
            where = ("  MISSING from the checkpoint" if found is None else
                     f"  checkpoint {v.checkpoint_key} {found}")
        part = f"  part of {v.slice_info.full_name}" if v.slice_info else ""
        print(f"  {v.name:<16} {v.dtype!s:<8} {v.shape!s:<8} "
              f"{'trainable' if v.trainable else '-':<9}{part}{where}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", default=str(DEFAULT_META),
                        help="a .meta file, or a checkpoint prefix with a .meta beside it "
                             "(default: the repository's TF1 fixture)")
    args = parser.parse_args(argv)
    with graph.open(args.path) as f:
        g = f.meta_graph()
        prefix = f.variables_prefix
        print(f"{f.path}: TensorFlow {g.tensorflow_version or '(unknown)'}, "
              f"{g.num_nodes} nodes")
        show_collections(g)
        found = show_global_step(g, prefix)
        show_hyperparameters(g)
        show_variables(g, prefix)
    assert "tensorflow" not in sys.modules
    print("TensorFlow was not imported")
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main())
