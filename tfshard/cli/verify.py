"""``tfshard verify``: check every checksum and index entry of a TF checkpoint (or the
checksums tfshard records in a safetensors file), and with ``--graph`` (or for a
SavedModel directory) whether it holds what the graph restores."""

from __future__ import annotations

import os

from tfshard._util import printable

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    add_command,
    dump_json,
    human_bytes,
    plural,
    progress,
)


def run(args) -> int:
    from tfshard import conversion

    report = conversion.verify(args.path, progress=progress(args))
    graph = args.graph
    if graph is None and os.path.isfile(os.path.join(args.path, "saved_model.pb")):
        graph = args.path   # a SavedModel directory: its own graph
    check = None
    if graph is not None:
        from tfshard.graph import check_restore

        check = check_restore(graph, args.path, tags=args.tags)
    ok = report.ok and (check is None or check.ok)
    if args.json:
        doc = {"path": report.path, "ok": ok, "checked": report.checked,
               "nbytes": report.nbytes,
               "problems": [{"name": n, "message": m} for n, m in report.problems],
               "notes": list(report.notes), "missing_files": report.missing_files}
        if check is not None:
            doc["graph"] = _check_json(check)
        dump_json(doc)
        return EXIT_OK if ok else EXIT_FAILED
    for name, message in report.problems:
        print(f"BAD  {printable(name)}: {printable(message)}")
    for note in report.notes:
        print(f"note: {note}")
    if report.ok:
        print(f"OK: {plural(report.checked, 'tensor')} ({human_bytes(report.nbytes)}) "
              f"checked: {report.path}")
    else:
        missing = len(report.missing_files)
        bad = f"{len(report.problems) - missing} of {plural(report.checked, 'tensor')} bad"
        if missing:
            bad = f"{plural(missing, 'data file')} missing, {bad}"
        print(f"FAILED: {bad}: {report.path}")
    if check is not None:
        _print_check(check)
    return EXIT_OK if ok else EXIT_FAILED


def _check_json(check) -> dict:
    return {"graph": check.graph, "ok": check.ok, "source": check.source,
            "expected": len(check.expected),
            "missing": [{"key": k, "variables": list(v)} for k, v in check.missing],
            "mismatched": [{"key": m.key, "variables": list(m.variables), "what": m.what,
                            "expected": m.expected, "found": m.found,
                            "restores_anyway": m.restores_anyway} for m in check.mismatched],
            "unused": list(check.unused), "notes": list(check.notes)}


def _print_check(check) -> None:
    for key, variables in check.missing:
        print(f"MISSING   {printable(key)} (for {', '.join(map(printable, variables)) or '?'})")
    for m in check.mismatched:
        print(f"MISMATCH  {printable(m.message)}")
    for key in check.unused:
        print(f"UNUSED    {printable(key)}")
    for note in check.notes:
        print(f"note: {note}")
    counts = f"{plural(len(check.expected), 'tensor')} the graph restores ({check.source})"
    if check.ok:
        print(f"OK: the checkpoint holds all {counts}: {check.graph}")
    else:
        print(f"FAILED: {len(check.missing)} missing, {len(check.mismatched)} mismatched of "
              f"{counts}: {check.graph}")


def add_parser(sub) -> None:
    verify = add_command(
        sub, "verify", run, "check every checksum of a TF checkpoint",
        "Read every tensor of a TensorFlow checkpoint and check its CRC-32C and index entry, "
        "reporting every bad tensor (not just the first) and notes about the checkpoint as a "
        "whole. A .safetensors file (or .safetensors.index.json) is checked against the "
        "CRC-32C of each tensor that tfshard records in its metadata. With --graph (and for "
        "a SavedModel directory, against its own graph), also check that the checkpoint "
        "holds every tensor the graph's Saver restores (or, for a TF2 SavedModel, every "
        "variable of its object graph) with the dtype and shape the graph expects, listing "
        "the missing, mismatched and unused ones. Exit status 1 when anything is wrong.",
        ["tfshard verify train/ckpt-100",
         "tfshard verify train/ --json",
         "tfshard verify model.safetensors",
         "tfshard verify train/model.ckpt-100 --graph train/model.ckpt-100.meta",
         "tfshard verify export/1/"])
    verify.add_argument("path", metavar="PATH",
                        help="checkpoint prefix, its .index file, a data shard, a directory "
                             "with a 'checkpoint' state file or a SavedModel directory; or a "
                             ".safetensors file")
    verify.add_argument("--graph", metavar="GRAPH",
                        help="a .meta file, saved_model.pb or SavedModel directory whose "
                             "variables the checkpoint must hold")
    verify.add_argument("--tags", metavar="TAGS",
                        help="with a SavedModel of several meta graphs: the one with these "
                             "comma-separated tags")
    verify.add_argument("--json", action="store_true", help="print JSON instead of text")
    verify.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
