"""``tfshard reshard``: rewrite a TF checkpoint with other data shards or partitions."""

from __future__ import annotations

import argparse

from tfshard._util import printable

from ._common import (
    EXIT_OK,
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


def _partition(text: str):
    from tfshard.surgery.reshard import parse_partition

    try:
        return parse_partition(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args) -> int:
    from tfshard import conversion

    report = conversion.reshard(
        args.src, args.output, num_shards=args.num_shards, max_shard_size=args.max_shard_size,
        merge_partitions=args.merge_partitions, partition=args.partition,
        overwrite=args.overwrite, progress=False if args.json else progress(args))
    if args.json:
        dump_json({"input": report.input, "output": args.output,
                   "num_shards": report.num_shards, "tensors": report.tensors,
                   "nbytes": report.nbytes, "merged": report.merged,
                   "partitioned": report.partitioned, "outputs": report.outputs})
        return EXIT_OK
    if args.quiet:
        return EXIT_OK
    for name, parts in report.merged.items():
        print(f"merged {printable(name)} <- {', '.join(map(printable, parts))}")
    for name, n in report.partitioned.items():
        print(f"partitioned {printable(name)} into {plural(n, 'slice')}")
    print(f"resharded {plural(report.tensors, 'tensor')} ({human_bytes(report.nbytes)}) into "
          f"{plural(report.num_shards, 'data shard')}: {', '.join(report.outputs)}")
    return EXIT_OK


def add_parser(sub) -> None:
    reshard = add_command(
        sub, "reshard", run, "rewrite a TF checkpoint with other data shards or partitions",
        "Write the TF checkpoint IN to the new prefix OUT with --num-shards data files, or "
        "files of at most --max-shard-size (default: as many as IN has). Dtypes and the TF2 "
        "object graph are kept, and so is the slicing of partitioned variables unless "
        "--merge-partitions writes them whole (TF1 partitioned variables, TF2 ShardedVariable, "
        "and TF2 objects that hold their shards as part_0, part_1... children, whose keys "
        "are joined under the object's own key with the object graph rewritten, so that "
        "tf.train.Checkpoint.restore fills a whole variable) or --partition cuts a tensor "
        "into TF1 slices. Written one tensor at a time, atomically.\n\n" + SIZE_HELP + ".",
        ["tfshard reshard train/ckpt-100 out/ckpt --num-shards 8",
         "tfshard reshard train/ckpt-100 out/ckpt --max-shard-size 2GiB",
         "tfshard reshard ps_train/ckpt-5 whole/ckpt --merge-partitions --num-shards 1",
         "tfshard reshard model.ckpt sliced/model.ckpt --partition 'emb/*=0:4' --json"])
    reshard.add_argument("src", metavar="IN",
                         help="a TF checkpoint (prefix, its .index, a data shard, or a "
                              "directory with a 'checkpoint' state file)")
    reshard.add_argument("output", metavar="OUT", help="the new checkpoint's prefix")
    shards = reshard.add_mutually_exclusive_group()
    shards.add_argument("--num-shards", type=count_arg, metavar="N",
                        help="number of data files of OUT")
    shards.add_argument("--max-shard-size", type=size_arg, metavar="SIZE",
                        help="start a new data file when the next tensor would pass SIZE")
    reshard.add_argument("--merge-partitions", action="store_true",
                         help="write every partitioned variable as one whole tensor")
    reshard.add_argument("--partition", action="append", default=[], type=_partition,
                         metavar="NAME=AXIS:K",
                         help="cut the tensors matching the glob NAME into K slices along "
                              "AXIS (as TF's fixed_size_partitioner(K, AXIS)); repeatable")
    reshard.add_argument("--json", action="store_true",
                         help="print what was written as JSON instead of text")
    add_write_options(reshard)
