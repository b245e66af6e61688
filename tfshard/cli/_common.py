"""What every command of the command line shares: argument types, option groups and
output formatting."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys

from tfshard._util import printable

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C

# The names tfshard.formats gives its formats (see tfshard.formats.detect_format).
FORMATS = ("tf", "safetensors", "npz", "npy", "torch")
# What --dtype may cast floating tensors to (conversion.convert refuses anything else).
CAST_DTYPES = ("float16", "bfloat16", "float32", "float64")
# What --for takes (conversion.convert's framework argument).
FRAMEWORKS = ("torch", "tf", "jax", "numpy")
# The presets of tfshard.surgery.presets.PRESETS, named here so that building the parser
# imports nothing (a test checks the two agree).
PRESET_NAMES = ("bert", "bert-pretraining")
PRESET_HELP = ("rename by a preset name map, with the transposes and exclusions it needs: "
               "'bert' (Google's original BERT checkpoint -> transformers BertModel names), "
               "'bert-pretraining' (-> BertForPreTraining, with the cls.* heads); runs "
               "before --rename rules")

PATH_HELP = ("a TF checkpoint (prefix, its .index, a data shard, or a directory with a "
             "'checkpoint' state file), a .safetensors, .npz or PyTorch file, or a "
             "directory of .npy files")


# ---- argument types ------------------------------------------------------------

_SIZE_UNITS = {"": 1, "b": 1,
               "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
               "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
SIZE_HELP = ("SIZE is bytes with an optional unit: 'KB', 'MB', 'GB', 'TB' are decimal "
             "(10**3...), 'KiB', 'MiB', 'GiB', 'TiB' and the bare letters 'K', 'M', 'G', 'T' "
             "binary (2**10...), as in GNU coreutils; case does not matter")


def parse_size(text: str) -> int:
    """Bytes from ``"500MB"`` (10**6), ``"2GiB"`` / ``"2G"`` (2**30), ``"1.5GB"``, ``"4096"``.

    Raises ``ValueError`` for anything else, zero and negative sizes.
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"invalid size {text!r}: expected a number of bytes with an optional "
                         f"unit, e.g. 500MB, 2GiB, 5G or 1048576")
    number, unit = m.group(1), _SIZE_UNITS[m.group(2).lower()]
    if "." in number:
        size = int(float(number) * unit)
    else:
        size = int(number) * unit
    if size <= 0:
        raise ValueError(f"invalid size {text!r}: must be at least one byte")
    return size


def size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def count_arg(text: str) -> int:
    """A positive integer option (--last N, --num-shards N)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: expected a positive integer")
    return n


def tolerance_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid tolerance {text!r}: expected a number") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"invalid tolerance {text!r}: must be finite and >= 0")
    return value


# ---- building the parser -----------------------------------------------------------

def add_command(sub, name, func, help_, description, examples, extra_dest=None):
    """A subcommand's parser, with its examples as the epilog.  ``extra_dest`` names the
    list that positional arguments given after options are appended to."""
    p = sub.add_parser(name, help=help_, description=description,
                       epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func, extra_dest=extra_dest, subparser=p)
    return p


def add_skip_option(p):
    p.add_argument("--skip-unsupported", action="store_true",
                   help="leave out (and list) the tensors the output format cannot hold, "
                        "such as strings in safetensors, instead of refusing")


def add_write_options(p, *, quiet_help="no progress bar and no summary"):
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (default: refuse)")
    p.add_argument("-q", "--quiet", action="store_true", help=quiet_help)


# ---- output ------------------------------------------------------------------------

def progress(args):
    """What the library's ``progress`` argument gets: None shows a bar when stderr is a
    terminal; --quiet turns it off."""
    return False if getattr(args, "quiet", False) else None


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def json_float(x):
    """A float for strict JSON: non-finite values become the strings "nan", "inf", "-inf"."""
    if x is None:
        return None
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def dump_json(doc) -> None:
    json.dump(doc, sys.stdout, indent=1, allow_nan=False)
    sys.stdout.write("\n")


def shape_text(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def add_ema_option(p) -> None:
    p.add_argument("--prefer-ema", action="store_true",
                   help="write each variable's exponential moving average under the "
                        "variable's name where the input keeps one (TF1 "
                        "X/ExponentialMovingAverage, TF2 averaged variables, Keras 3 "
                        "use_ema=True); lists what was replaced and what had none")


def print_ema(report) -> None:
    """The moving averages a --prefer-ema conversion used, and the tensors without one."""
    n = len(report.replaced)
    print(f"{plural(n, 'tensor')} replaced by "
          + ("its moving average" if n == 1 else "their moving averages")
          + (":" if n else " (the input keeps none)"))
    for name, ema in report.replaced.items():
        print(f"  {printable(name)} <- {printable(ema)}")
    if report.ema_not_found:
        print(f"{plural(len(report.ema_not_found), 'floating tensor')} without a moving "
              f"average, written as they are:")
        for name in report.ema_not_found:
            print(f"  {printable(name)}")


def report_json(src, dst, report) -> None:
    """A conversion's report as JSON (convert, extract)."""
    dump_json({"input": str(src), "output": str(dst), "tensors": report.tensors,
               "nbytes": report.nbytes, "outputs": [str(p) for p in report.outputs],
               "mapping": report.mapping, "dropped": report.dropped,
               "replaced": report.replaced, "ema_not_found": report.ema_not_found,
               "not_cast": report.not_cast, "transposed": report.transposed})


def print_written(args, report, verb: str) -> None:
    """The summary line of a command that wrote a model, then what it left out as
    unsupported (printed even with --quiet: the output lacks those tensors)."""
    for name, reason in report.skipped:
        print(f"skipped {printable(name)}: {printable(reason)}")
    if args.quiet:
        return
    files = ", ".join(printable(f) for f in report.outputs) or "(no file)"
    size = human_bytes(report.written_bytes)
    if report.written_bytes != report.nbytes:
        size += f" written, {human_bytes(report.nbytes)} read"
    print(f"{verb} {plural(report.tensors, 'tensor')} ({size}): {files}")
    if report.skipped:
        print(f"{plural(len(report.skipped), 'tensor')} skipped as unsupported by the output "
              f"format")
