"""The ``tfshard`` command line.

Exit codes: 0 success, 1 failure (a corrupt checkpoint, models that differ, an
output that already exists...), 2 usage error, 130 interrupted (Ctrl-C).

Each command lives in a module of its own that registers its options
(``add_parser``) and runs (``run``); the modules parse arguments and print, and
import the library functions they call when the command runs, so that
``tfshard ls`` starts fast.
"""

from __future__ import annotations

import argparse
import gc
import re
import sys

import tfshard

from . import average, convert, diff, extract, graph, ls, merge, rename, reshard, show, strip, verify
from tfshard.storage import default_options, parse_option

from ._common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, FORMATS, parse_size

__all__ = ["main", "parse_size", "FORMATS", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE"]

# In the order `tfshard --help` lists them.
COMMANDS = (ls, show, verify, extract, convert, merge, rename, strip, diff, average, reshard, graph)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tfshard",
        description="Read, write and convert TensorFlow checkpoints without TensorFlow.",
        epilog="Run 'tfshard COMMAND --help' for the options of one command.\n"
               "Exit status: 0 success, 1 failure (bad data, models that differ...), "
               "2 usage error, 130 interrupted.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"tfshard {tfshard.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        command.add_parser(sub)
    for command_parser in dict.fromkeys(sub.choices.values()):
        command_parser.add_argument(
            "--storage-option", action="append", default=[], metavar="KEY=VALUE",
            type=_storage_option,
            help="for paths that are URLs (s3://, gs://, https://...): an option for "
                 "fsspec's filesystem, e.g. anon=true or "
                 "client_kwargs.endpoint_url=http://127.0.0.1:9000 (dotted keys nest; "
                 "values are JSON where they parse); repeatable")
    return p


def _storage_option(text: str):
    if "=" not in text or not text.partition("=")[0].strip():
        raise argparse.ArgumentTypeError(
            f"invalid storage option {text!r}: expected KEY=VALUE, e.g. anon=true")
    return text


# The library's messages name its keyword arguments; here they are options.
_FORMAT_OPTION = {"extract": "--format", "convert": "--to", "merge": "--to", "average": "--to"}


def _error_message(exc: BaseException, command: str) -> str:
    message = str(exc).replace("overwrite=True", "--overwrite")
    if command in _FORMAT_OPTION:
        message = re.sub(r"\bfmt='(\w+)'", _FORMAT_OPTION[command] + r" \1", message)
    return message


def main(argv=None) -> int:
    """Entry point of the ``tfshard`` console script; returns the exit status."""
    parser = _parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # argparse cannot take positional patterns after an option ("ls P --json 'a*'").
        dest = getattr(args, "extra_dest", None)
        if extra and dest and not any(e.startswith("-") for e in extra):
            getattr(args, dest).extend(extra)
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if getattr(args, "output", "") is None and not args.dry_run:
            args.subparser.error("OUT is required unless --dry-run is given")
        if getattr(args, "keys", False) and not args.tree:
            args.subparser.error("--keys needs --tree (the listing shows keys already)")
        check = getattr(args, "check", None)  # a command's own checks of its options
        if check is not None:
            check(args)
    except SystemExit as exc:  # usage errors (2), --help and --version (0): return, not exit
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    # Anything printed that the terminal cannot encode (a lone surrogate missed by
    # printable(), a name in a narrow locale) is escaped rather than a traceback.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):
                pass
    # Commands build large listings of small objects; the cyclic GC only costs time.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    options: dict | None = None
    for text in getattr(args, "storage_option", None) or ():
        options = parse_option(text, options if options is not None else {})
    try:
        with default_options(options):
            return args.func(args)
    except KeyboardInterrupt:
        # Outputs are written under temporary names that the interrupted command removed
        # on its way out: nothing partial is left to mention.
        print(f"tfshard {args.command}: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (tfshard.TFShardError, OSError) as exc:
        if isinstance(exc, BrokenPipeError):
            return EXIT_OK
        print(f"tfshard {args.command}: error: {_error_message(exc, args.command)}",
              file=sys.stderr)
        return EXIT_FAILED
    finally:
        if gc_was_enabled:
            gc.enable()
