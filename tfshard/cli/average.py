"""``tfshard average``: the element-wise mean of several checkpoints."""

from __future__ import annotations

import argparse

from tfshard._util import printable

from ._common import (
    EXIT_OK,
    FORMATS,
    SIZE_HELP,
    add_command,
    add_write_options,
    count_arg,
    dump_json,
    human_bytes,
    plural,
    progress,
    size_arg,
)


def _weights(text: str) -> list:
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid weights {text!r}: expected numbers "
                                         f"separated by commas, e.g. 1,1,2") from None


def check(args) -> None:
    if args.last is not None and len(args.sources) != 1:
        args.subparser.error("--last N takes one directory (its 'checkpoint' file lists the "
                             "checkpoints), not a list of checkpoints")


def run(args) -> int:
    from tfshard import conversion

    report = conversion.average(
        args.output, args.sources, last=args.last, weights=args.weights,
        sum_integers=args.sum_integers, dst_format=args.dst_format,
        max_shard_size=args.max_shard_size, overwrite=args.overwrite,
        progress=False if args.json else progress(args))
    if args.json:
        dump_json({"output": args.output, "inputs": report.inputs, "weights": report.weights,
                   "tensors": report.tensors, "nbytes_read": report.nbytes,
                   "averaged": report.averaged, "summed": report.summed,
                   "from_last": report.from_last, "dropped": report.dropped,
                   "outputs": report.outputs})
        return EXIT_OK
    if args.quiet:
        return EXIT_OK
    print(f"averaged {plural(len(report.inputs), 'checkpoint')} "
          f"({human_bytes(report.nbytes)} read): {', '.join(report.inputs)}")
    if any(w != 1.0 for w in report.weights):
        print(f"weights {', '.join(f'{w:g}' for w in report.weights)}")
    print(f"{plural(len(report.averaged), 'tensor')} averaged, "
          f"{len(report.summed)} summed, {len(report.from_last)} taken from the last "
          f"checkpoint" + (f": {', '.join(report.from_last)}" if report.from_last else ""))
    print(f"written: {', '.join(map(printable, report.outputs))}")
    return EXIT_OK


def add_parser(sub) -> None:
    average = add_command(
        sub, "average", run, "write the element-wise mean of several checkpoints",
        "Write the element-wise mean of the checkpoints CKPT... to OUT (a TF prefix, or any "
        "output format 'tfshard convert' writes). Floating tensors are summed in float64 and "
        "rounded once to their stored dtype; integer tensors (global_step) are taken from the "
        "last checkpoint unless --sum-integers; bool, string and quantized tensors, and the "
        "TF2 object graph, from the last. The checkpoints must hold the same names, dtypes "
        "and shapes: every difference is listed and nothing is written. One tensor is "
        "averaged at a time, so memory stays near one tensor (in float64) whatever the number "
        "of checkpoints.\n\n" + SIZE_HELP + ".",
        ["tfshard average avg/ckpt train/ckpt-800 train/ckpt-900 train/ckpt-1000",
         "tfshard average avg/ckpt train/ --last 5",
         "tfshard average avg/ckpt a/ckpt b/ckpt --weights 1,3 --json",
         "tfshard average averaged.safetensors run1.safetensors run2.safetensors"],
        extra_dest="sources")
    average.set_defaults(check=check)
    average.add_argument("output", metavar="OUT", help="the averaged model")
    average.add_argument("sources", metavar="CKPT", nargs="+",
                         help="the checkpoints (any format tfshard reads), or with --last one "
                              "directory")
    average.add_argument("--last", type=count_arg, metavar="N",
                         help="average the last N checkpoints the directory's 'checkpoint' "
                              "state file lists")
    average.add_argument("--weights", type=_weights, metavar="W1,W2,...",
                         help="one weight per checkpoint: sum(w * x) / sum(w)")
    average.add_argument("--sum-integers", action="store_true",
                         help="write integer tensors as the sum over the checkpoints (checked "
                              "for overflow) instead of the last one's value")
    average.add_argument("--to", dest="dst_format", choices=FORMATS, metavar="FMT",
                         help=f"format of OUT: {', '.join(FORMATS)} (default: told by its name)")
    average.add_argument("--max-shard-size", type=size_arg, metavar="SIZE",
                         help="split the output into files of at most SIZE")
    average.add_argument("--json", action="store_true",
                         help="print what was written as JSON instead of text")
    add_write_options(average)
