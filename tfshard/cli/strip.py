"""``tfshard strip``: copy a checkpoint without its optimizer state."""

from __future__ import annotations

from tfshard._util import printable

from ._common import (
    EXIT_OK,
    PATH_HELP,
    add_command,
    add_write_options,
    dump_json,
    human_bytes,
    plural,
    progress,
)


def run(args) -> int:
    from tfshard import conversion
    from tfshard.formats import open_source

    report = conversion.strip(args.path, args.output, drop_step=args.drop_step,
                              overwrite=args.overwrite, progress=progress(args),
                              dry_run=args.dry_run)
    dropped, kept, kept_bytes = sorted(report.dropped), report.tensors, report.nbytes
    with open_source(args.path) as source:
        sizes = {name: source.nbytes(name) for name in dropped}
    saved = report.dropped_bytes
    if args.json:
        dump_json({"input": args.path, "output": None if args.dry_run else args.output,
                    "dry_run": args.dry_run, "dropped": dropped, "kept": kept,
                    "saved_bytes": saved, "kept_bytes": kept_bytes})
        return EXIT_OK
    for name in dropped:
        print(f"drop {printable(name)} ({human_bytes(sizes[name])})")
    if not dropped:
        print("no optimizer state found")
    where = "nothing written (--dry-run)" if args.dry_run else f"written to {args.output}"
    print(f"{plural(len(dropped), 'tensor')} dropped, {human_bytes(saved)} saved "
          f"({saved} bytes); {kept} kept ({human_bytes(kept_bytes)}); {where}")
    return EXIT_OK


def add_parser(sub) -> None:
    strip = add_command(
        sub, "strip", run, "copy a checkpoint without its optimizer state",
        "Copy a checkpoint without its optimizer state, for inference or fine-tuning: TF1 "
        "slots (VAR/Adam, VAR/Adam_1, VAR/Momentum...) of variables that are present, "
        "beta1_power/beta2_power, and TF2 optimizer slots and variables. The model's "
        "variables, the TF2 object graph and save_counter are kept; global_step too unless "
        "--drop-step. Prints what is dropped and the bytes saved.",
        ["tfshard strip train/ckpt-100 inference/ckpt --dry-run",
         "tfshard strip train/ckpt-100 inference/ckpt --drop-step"])
    strip.add_argument("path", metavar="PATH", help=PATH_HELP)
    strip.add_argument("output", metavar="OUT", nargs="?",
                       help="the stripped copy (not needed with --dry-run)")
    strip.add_argument("--drop-step", action="store_true",
                       help="drop global_step too")
    strip.add_argument("--dry-run", action="store_true",
                       help="print what would be dropped, write nothing")
    strip.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_write_options(strip, quiet_help="no progress bar")
