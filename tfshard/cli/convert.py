"""``tfshard convert``: convert a model between formats, selecting, renaming and casting."""

from __future__ import annotations


from ._common import (
    CAST_DTYPES,
    EXIT_OK,
    FORMATS,
    FRAMEWORKS,
    PATH_HELP,
    PRESET_HELP,
    SIZE_HELP,
    add_command,
    add_ema_option,
    add_skip_option,
    add_write_options,
    plural,
    print_ema,
    print_written,
    progress,
    report_json,
    size_arg,
)


def run(args) -> int:
    from tfshard import conversion

    report = conversion.convert(
        args.src, args.dst, src_format=args.src_format, dst_format=args.dst_format,
        dtype=args.dtype, keep=args.keep, include=args.include, exclude=args.exclude,
        rename=args.rename, rename_preset=args.rename_preset, transpose=args.transpose,
        prefer_ema=args.prefer_ema, framework=args.framework,
        max_shard_size=args.max_shard_size, overwrite=args.overwrite,
        progress=False if args.json else progress(args),
        skip_unsupported=args.skip_unsupported)
    if args.json:
        report_json(args.src, args.dst, report)
        return EXIT_OK
    print_written(args, report, "converted")
    if not args.quiet:
        renamed = sum(1 for old, new in report.mapping.items() if old != new)
        if renamed:
            print(f"{plural(renamed, 'tensor')} renamed")
        if report.transposed:
            print(f"{plural(len(report.transposed), 'tensor')} transposed")
        if report.not_cast:
            print(f"{plural(len(report.not_cast), 'floating tensor')} kept in their dtype "
                  f"by --keep")
        if report.dropped:
            print(f"{plural(len(report.dropped), 'tensor')} left out"
                  + (" (--include/--exclude, a preset's exclusions, moving averages written "
                     "under their variables' names)" if args.rename_preset or args.prefer_ema
                     else " by --include/--exclude"))
        if args.prefer_ema:
            print_ema(report)
    return EXIT_OK


def add_parser(sub) -> None:
    convert = add_command(
        sub, "convert", run, "convert a model between formats",
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
         "tfshard convert ckpt model.npz --exclude '*/Adam*' --rename '^bert/=encoder/'",
         "tfshard convert ckpt model.safetensors --dtype bfloat16 --keep LayerNorm --keep "
         "'/bias$'",
         "tfshard convert bert_model.ckpt model.safetensors --rename-preset bert --for torch",
         "tfshard convert train/ckpt-100 model.safetensors --prefer-ema --json",
         "tfshard convert ckpt model.npz --transpose '/kernel$'"])
    convert.add_argument("src", metavar="SRC", help="the input model: " + PATH_HELP)
    convert.add_argument("dst", metavar="DST",
                         help="the output: a TF checkpoint prefix, a .safetensors, .npz or "
                              ".pt/.bin file, or a directory for .npy files")
    convert.add_argument("--from", dest="src_format", choices=FORMATS, metavar="FMT",
                         help=f"format of SRC: {', '.join(FORMATS)} (default: told by its name)")
    convert.add_argument("--to", dest="dst_format", choices=FORMATS, metavar="FMT",
                         help=f"format of DST: {', '.join(FORMATS)} (default: told by its name)")
    convert.add_argument("--dtype", choices=CAST_DTYPES, metavar="D",
                         help=f"cast floating tensors to D: {', '.join(CAST_DTYPES)}")
    convert.add_argument("--keep", action="append", default=[], metavar="REGEX",
                         help="with --dtype: leave floating tensors whose name matches REGEX "
                              "(re.search) in their dtype, e.g. LayerNorm, '/bias$'; "
                              "repeatable")
    convert.add_argument("--include", action="append", default=[], metavar="GLOB",
                         help="keep only tensors matching a GLOB (repeatable)")
    convert.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                         help="drop tensors matching GLOB (repeatable)")
    convert.add_argument("--rename", action="append", default=[], metavar="REGEX=REPL",
                         help="rename tensors: re.sub(REGEX, REPL, name); repeatable, applied "
                              "in order; write '\\=' for a '=' inside REGEX")
    convert.add_argument("--rename-preset", metavar="NAME", help=PRESET_HELP)
    convert.add_argument("--transpose", action="append", default=[], metavar="REGEX",
                         help="reverse the axes of tensors whose input name matches REGEX "
                              "(re.search): TF [in, out] kernels become torch [out, in] "
                              "weights; repeatable")
    convert.add_argument("--max-shard-size", type=size_arg, metavar="SIZE",
                         help="split the output into files of at most SIZE (TF data shards, "
                              "safetensors shards)")
    convert.add_argument("--for", dest="framework", choices=FRAMEWORKS, metavar="FRAMEWORK",
                         help=f"a safetensors output is meant for FRAMEWORK "
                              f"({', '.join(FRAMEWORKS)}): record it in the "
                              "file's metadata (torch: {\"format\": \"pt\"}, which "
                              "transformers expects); otherwise the output records no format "
                              "unless the input did")
    add_ema_option(convert)
    add_skip_option(convert)
    convert.add_argument("--json", action="store_true",
                         help="print what was written as JSON instead of text")
    add_write_options(convert)
