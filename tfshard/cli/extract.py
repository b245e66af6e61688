"""``tfshard extract``: write some tensors of a model to .npz, .safetensors or .npy files."""

from __future__ import annotations

from ._common import (
    EXIT_OK,
    PATH_HELP,
    add_command,
    add_ema_option,
    add_skip_option,
    add_write_options,
    print_ema,
    print_written,
    progress,
    report_json,
)


def run(args) -> int:
    from tfshard import conversion

    report = conversion.extract(args.path, args.output, args.patterns, fmt=args.format,
                                prefer_ema=args.prefer_ema, overwrite=args.overwrite,
                                progress=False if args.json else progress(args),
                                skip_unsupported=args.skip_unsupported)
    if args.json:
        report_json(args.path, args.output, report)
        return EXIT_OK
    print_written(args, report, "extracted")
    if args.prefer_ema and not args.quiet:
        print_ema(report)
    return EXIT_OK


def add_parser(sub) -> None:
    extract = add_command(
        sub, "extract", run, "write some tensors to .npz, .safetensors or .npy files",
        "Write the tensors of a model whose names match any PATTERN (all when none is given) "
        "to one .npz or .safetensors file, or to a directory of .npy files (--format npy). "
        "Names are made safe for .npy file names: nothing is written outside OUT. Patterns "
        "are globs where '*' matches '/' too; a pattern that matches nothing is an error.",
        ["tfshard extract train/ckpt-100 -o weights.npz",
         "tfshard extract train/ckpt-100 'dense/*' -o dense.safetensors",
         "tfshard extract train/ckpt-100 'bert/embeddings/*' -o emb/ --format npy",
         "tfshard extract train/ckpt-100 -o weights.safetensors --prefer-ema"],
        extra_dest="patterns")
    extract.add_argument("path", metavar="PATH", help=PATH_HELP)
    extract.add_argument("patterns", metavar="PATTERN", nargs="*",
                         help="only tensors whose name matches one of these globs")
    extract.add_argument("-o", "--output", metavar="OUT", required=True,
                         help="the output file or (npy) directory")
    extract.add_argument("--format", choices=("npz", "safetensors", "npy"),
                         help="output format (default: told by OUT's name)")
    add_ema_option(extract)
    add_skip_option(extract)
    extract.add_argument("--json", action="store_true",
                         help="print what was written as JSON instead of text")
    add_write_options(extract)
