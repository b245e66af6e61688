"""``tfshard merge``: mix several models into one, under name scopes."""

from __future__ import annotations

from tfshard._util import printable

from ._common import (
    EXIT_OK,
    FORMATS,
    SIZE_HELP,
    add_command,
    add_write_options,
    plural,
    print_written,
    progress,
    size_arg,
)


def run(args) -> int:
    from tfshard import conversion

    report = conversion.merge(args.output, args.sources, on_conflict=args.on_conflict,
                              dst_format=args.dst_format, max_shard_size=args.max_shard_size,
                              overwrite=args.overwrite, progress=progress(args))
    print_written(args, report, "merged")
    if not args.quiet and report.dropped:
        kept = "first" if args.on_conflict == "first" else "last"
        print(f"{plural(len(report.dropped), 'conflicting tensor')} dropped "
              f"(--on-conflict {args.on_conflict} keeps the {kept} source's):")
        for entry in report.dropped:
            print(f"  {printable(entry)}")
    return EXIT_OK


def add_parser(sub) -> None:
    merge = add_command(
        sub, "merge", run, "mix several models into one, under name scopes",
        "Write every tensor of every SRC to OUT, each SRC optionally under a name scope: "
        "'SRC:SCOPE/' writes tensor NAME as SCOPE/NAME (the scope must end with '/'). Two "
        "sources giving the same output name are an error listing every such name, unless "
        "--on-conflict first|last says which source wins.\n\n" + SIZE_HELP + ".",
        ["tfshard merge mixed/ckpt vgg16/model.ckpt:vgg/ head/ckpt-3:head/",
         "tfshard merge out.safetensors base.safetensors lora.safetensors --on-conflict last"],
        extra_dest="sources")
    merge.add_argument("output", metavar="OUT", help="the merged model (any output format)")
    merge.add_argument("sources", metavar="SRC[:SCOPE/]", nargs="+",
                       help="input models, each optionally followed by ':' and a name scope "
                            "ending in '/'")
    merge.add_argument("--on-conflict", choices=("error", "first", "last"), default="error",
                       help="when two sources give the same name: fail (default), keep the "
                            "first source's tensor, or the last one's")
    merge.add_argument("--to", dest="dst_format", choices=FORMATS, metavar="FMT",
                       help=f"format of OUT: {', '.join(FORMATS)} (default: told by its name)")
    merge.add_argument("--max-shard-size", type=size_arg, metavar="SIZE",
                       help="split the output into files of at most SIZE")
    add_write_options(merge)
