"""``tfshard show``: one tensor's values or statistics."""

from __future__ import annotations

import sys

from tfshard._util import printable

from ._common import EXIT_OK, FORMATS, PATH_HELP, add_command, dump_json, json_float, shape_text


def run(args) -> int:
    import numpy as np

    from tfshard.formats import open_source
    from tfshard.stats import is_integral, tensor_stats

    with open_source(args.path, args.src_format) as source:
        dtype, shape = source.info(args.name)
        array = source.read(args.name)
        stats = tensor_stats(array) if args.stats or args.json else None
        if args.json:
            doc = {"name": args.name, "dtype": dtype, "shape": list(shape)}
            if stats is None:
                doc["stats"] = None
                doc["note"] = f"no statistics for {dtype} tensors"
            else:
                integral = is_integral(array.dtype)
                for key in ("min", "max"):
                    v = stats[key]
                    stats[key] = (None if v is None else
                                  int(v) if integral else json_float(v))
                doc["stats"] = {k: json_float(v) if k in ("mean", "std") else v
                                for k, v in stats.items()}
            dump_json(doc)
            return EXIT_OK
        print(f"{printable(args.name)}: {dtype} {shape_text(shape)}")
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


def add_parser(sub) -> None:
    show = add_command(
        sub, "show", run, "print one tensor's values or statistics",
        "Print a tensor's dtype and shape, then its values with numpy's print options "
        "(long tensors are summarized with '...' unless --full), or statistics with --stats: "
        "count, number of NaN, Inf and zeros, min, max, mean and std (population, accumulated "
        "in float64, NaN ignored). String and complex tensors have no statistics.",
        ["tfshard show train/ckpt-100 dense/kernel",
         "tfshard show train/ckpt-100 dense/kernel --full > kernel.txt",
         "tfshard show model.safetensors encoder.weight --stats",
         "tfshard show train/ 'bert/embeddings/word_embeddings' --stats --json"])
    show.add_argument("path", metavar="PATH", help=PATH_HELP)
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
