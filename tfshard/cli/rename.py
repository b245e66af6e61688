"""``tfshard rename``: copy a model with its tensors renamed by regular expressions."""

from __future__ import annotations


from tfshard._util import printable

from ._common import (
    EXIT_OK,
    PATH_HELP,
    add_command,
    add_write_options,
    dump_json,
    plural,
    progress,
)


def run(args) -> int:
    from tfshard import conversion

    mapping = conversion.rename(args.path, args.output, args.rules, dry_run=args.dry_run,
                                overwrite=args.overwrite, progress=progress(args))
    changed = {old: new for old, new in mapping.items() if old != new}
    unchanged = [old for old, new in mapping.items() if old == new]
    if args.json:
        dump_json({"input": args.path, "output": None if args.dry_run else args.output,
                    "dry_run": args.dry_run, "renamed": changed, "unchanged": unchanged})
        return EXIT_OK
    for old, new in changed.items():
        print(f"{printable(old)} -> {printable(new)}")
    if args.all:
        for name in unchanged:
            print(f"{printable(name)} (unchanged)")
    where = "nothing written (--dry-run)" if args.dry_run else f"written to {args.output}"
    print(f"{plural(len(changed), 'tensor')} renamed, {len(unchanged)} unchanged; {where}")
    return EXIT_OK


def add_parser(sub) -> None:
    rename = add_command(
        sub, "rename", run, "rename tensors with regular expressions",
        "Copy a model with its tensors renamed by --rule 'REGEX=REPL' (Python re.sub, rules "
        "applied in order; '\\=' is a '=' inside REGEX). Prints the renamed tensors and how "
        "many are unchanged. Rules that give two tensors the same name are refused before "
        "anything is written. With --dry-run, only prints the mapping. Note that renaming "
        "the tensors of a TF2 object-based checkpoint does not update its object graph.",
        ["tfshard rename ckpt out/ckpt --rule '^bert/=encoder/' --dry-run",
         "tfshard rename model.safetensors renamed.safetensors --rule '\\.weight$=.w' "
         "--rule '^model\\.='",
         "tfshard rename ckpt out/ckpt --rule 'layer_(\\d+)=block_\\1' --json"])
    rename.add_argument("path", metavar="PATH", help=PATH_HELP)
    rename.add_argument("output", metavar="OUT", nargs="?",
                        help="the renamed copy (not needed with --dry-run)")
    rename.add_argument("--rule", dest="rules", action="append", required=True,
                        metavar="REGEX=REPL", help="a rename rule (repeatable)")
    rename.add_argument("--dry-run", action="store_true", help="print the mapping, write nothing")
    rename.add_argument("--all", action="store_true", help="list unchanged names too")
    rename.add_argument("--json", action="store_true", help="print the mapping as JSON")
    add_write_options(rename, quiet_help="no progress bar")
