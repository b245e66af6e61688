"""The ``tfshard`` command line.

Exit codes: 0 success, 1 failure (e.g. a corrupt checkpoint), 2 usage error.
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import json
import sys

import tfshard

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _cmd_ls(args) -> int:
    with tfshard.open(args.path, verify=False) as ckpt:
        infos = ckpt.infos()
        prefix, num_shards = ckpt.prefix, ckpt.num_shards
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
            "num_shards": num_shards,
            "total_bytes": total,
            "tensors": [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape),
                         "nbytes": i.nbytes, "shard": i.shard, "offset": i.offset,
                         "partitioned": bool(i.slices)} for i in infos],
        }, out, indent=1)
        out.write("\n")
        return EXIT_OK
    shapes = ["[" + ", ".join(map(str, i.shape)) + "]" for i in infos]
    w0 = max([4] + [len(i.name) for i in infos])
    w1 = max([5] + [len(i.dtype) for i in infos])
    w2 = max([5] + [len(s) for s in shapes])
    lines = [f"{'NAME':<{w0}}  {'DTYPE':<{w1}}  {'SHAPE':<{w2}}  SIZE"]
    lines += [f"{i.name:<{w0}}  {i.dtype:<{w1}}  {s:<{w2}}  {_human_bytes(i.nbytes)}"
              for i, s in zip(infos, shapes)]
    lines.append(f"{len(infos)} tensors, {_human_bytes(total)} in {num_shards} shard(s): {prefix}")
    out.write("\n".join(lines) + "\n")
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tfshard",
        description="Read TensorFlow checkpoints without TensorFlow.",
        epilog="Run 'tfshard COMMAND --help' for the options of one command.",
    )
    p.add_argument("--version", action="version", version=f"tfshard {tfshard.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    ls = sub.add_parser(
        "ls", help="list the tensors of a checkpoint",
        description="List the tensors of a checkpoint: name, dtype, shape and size on disk, "
                    "then totals. Partitioned tensors appear once, with their full shape.",
        epilog="examples:\n"
               "  tfshard ls train/ckpt-100\n"
               "  tfshard ls train/ 'bert/encoder/layer_0/*' --sort size\n"
               "  tfshard ls model.ckpt.index --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ls.add_argument("path", metavar="PATH",
                    help="checkpoint prefix, its .index file, a data shard, or a directory "
                         "with a 'checkpoint' state file")
    ls.add_argument("patterns", metavar="PATTERN", nargs="*",
                    help="only tensors whose name matches one of these globs")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.add_argument("--sort", choices=("name", "size", "offset"), default="name",
                    help="order of the listing (default: name)")
    ls.set_defaults(func=_cmd_ls)
    return p


def main(argv=None) -> int:
    """Entry point of the ``tfshard`` console script."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # argparse cannot take positional patterns after an option ("ls P --json 'a*'").
    if extra and hasattr(args, "patterns") and not any(e.startswith("-") for e in extra):
        args.patterns += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # Commands build large listings of small objects; the cyclic GC only costs time.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return args.func(args)
    except tfshard.TFShardError as exc:
        print(f"tfshard {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        return EXIT_OK
    finally:
        if gc_was_enabled:
            gc.enable()
