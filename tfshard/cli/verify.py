"""``tfshard verify``: check every checksum and index entry of a TF checkpoint (or the
checksums tfshard records in a safetensors file)."""

from __future__ import annotations

from tfshard._util import printable

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    add_command,
    dump_json,
    human_bytes,
    plural,
    progress,
)


def run(args) -> int:
    from tfshard import conversion

    report = conversion.verify(args.path, progress=progress(args))
    if args.json:
        dump_json({"path": report.path, "ok": report.ok, "checked": report.checked,
                    "nbytes": report.nbytes,
                    "problems": [{"name": n, "message": m} for n, m in report.problems],
                    "notes": list(report.notes), "missing_files": report.missing_files})
    else:
        for name, message in report.problems:
            print(f"BAD  {printable(name)}: {printable(message)}")
        for note in report.notes:
            print(f"note: {note}")
        if report.ok:
            print(f"OK: {plural(report.checked, 'tensor')} ({human_bytes(report.nbytes)}) "
                  f"checked: {report.path}")
        else:
            missing = len(report.missing_files)
            bad = f"{len(report.problems) - missing} of {plural(report.checked, 'tensor')} bad"
            if missing:
                bad = f"{plural(missing, 'data file')} missing, {bad}"
            print(f"FAILED: {bad}: {report.path}")
    return EXIT_OK if report.ok else EXIT_FAILED


def add_parser(sub) -> None:
    verify = add_command(
        sub, "verify", run, "check every checksum of a TF checkpoint",
        "Read every tensor of a TensorFlow checkpoint and check its CRC-32C and index entry, "
        "reporting every bad tensor (not just the first) and notes about the checkpoint as a "
        "whole. A .safetensors file (or .safetensors.index.json) is checked against the "
        "CRC-32C of each tensor that tfshard records in its metadata. Exit status 1 when "
        "anything is wrong.",
        ["tfshard verify train/ckpt-100",
         "tfshard verify train/ --json",
         "tfshard verify model.safetensors"])
    verify.add_argument("path", metavar="PATH",
                        help="checkpoint prefix, its .index file, a data shard, or a directory "
                             "with a 'checkpoint' state file; or a .safetensors file")
    verify.add_argument("--json", action="store_true", help="print JSON instead of text")
    verify.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
