"""``tfshard diff``: compare two models tensor by tensor."""

from __future__ import annotations

import math

from tfshard._util import printable

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    PATH_HELP,
    add_command,
    dump_json,
    json_float,
    plural,
    progress,
    tolerance_arg,
)


def run(args) -> int:
    from tfshard import conversion

    report = conversion.diff(args.a, args.b, atol=args.atol, rtol=args.rtol,
                             progress=progress(args))
    if args.json:
        dump_json({
            "a": args.a, "b": args.b, "same": report.same, "compared": report.compared,
            "atol": args.atol, "rtol": args.rtol,
            "missing": report.missing, "unexpected": report.unexpected,
            "mismatched": {n: {"a": x, "b": y} for n, (x, y) in report.mismatched.items()},
            # Strings that differ have no numeric difference: null.
            "differing": {n: {"max_abs": None if math.isnan(d) else json_float(d),
                              "max_rel": None if math.isnan(r) else json_float(r)}
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
        print(f"same: {plural(report.compared, 'tensor')} compared")
        return EXIT_OK
    print(f"different: {len(report.missing)} missing, {len(report.unexpected)} unexpected, "
          f"{len(report.mismatched)} mismatched, {len(report.differing)} of "
          f"{report.compared} compared differ (atol={args.atol:g}, rtol={args.rtol:g})")
    return EXIT_FAILED


def add_parser(sub) -> None:
    diff = add_command(
        sub, "diff", run, "compare two models tensor by tensor",
        "Compare two models (any formats) tensor by tensor: names only in A (missing), only in "
        "B (unexpected), with another dtype or shape (mismatched), and values that differ: "
        "|a - b| > atol + rtol * |b| for some element (NaNs in the same places are equal; "
        "strings must be equal). Exit status 0 when they are the same, 1 when they differ.",
        ["tfshard diff train/ckpt-100 export/model.safetensors",
         "tfshard diff ckpt-1 ckpt-2 --atol 1e-6 --rtol 1e-3",
         "tfshard diff ckpt-1 ckpt-2 --json"])
    diff.add_argument("a", metavar="A", help=PATH_HELP)
    diff.add_argument("b", metavar="B", help="the model to compare A with")
    diff.add_argument("--atol", type=tolerance_arg, default=0.0, metavar="X",
                      help="absolute tolerance (default: 0)")
    diff.add_argument("--rtol", type=tolerance_arg, default=0.0, metavar="X",
                      help="tolerance relative to |b| (default: 0)")
    diff.add_argument("--json", action="store_true", help="print JSON instead of text")
    diff.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
