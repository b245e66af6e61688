"""Shared helpers for the tfshard benchmark scripts (bench_read, bench_write, bench_convert).

Everything here is plain Python on top of numpy and the standard library; TensorFlow and
safetensors are imported lazily by the functions that need them, so a script can report a
missing optional library as a skipped comparison rather than crash on import.

Conventions the scripts share:

* Inputs are generated once into a cache directory (``--workdir``, default
  ``$TMPDIR/tfshard-bench``) and reused while their recorded spec still matches.  A cache entry
  is a directory with a ``manifest.json`` written last; a directory without one is rebuilt.
* Timings are medians of ``--repeat`` samples.  Each sample runs the operation ``number``
  times (calibrated like ``timeit.autorange`` so one sample lasts at least ``--min-time``
  seconds) with the garbage collector disabled, as ``timeit`` does.  The libraries being
  compared are sampled in turn (A, B, C, A, B, C, ...) so that drift on a noisy machine hits
  them alike.
* Files are read once in full before timing (warm page cache).
* A row's ratio is "other library's median / tfshard's median" for times (bigger is better)
  and "tfshard's bytes / reference bytes" for memory (smaller is better).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

# Bump when the way an input is generated changes, so stale caches are rebuilt.
CACHE_FORMAT = 1

PASS, MISS, SKIP, ERROR, WRONG = "PASS", "MISS", "SKIP", "ERROR", "WRONG"
# A measured row that has no target (shown for information, never gating).
INFO = "INFO"

# Environment for every child process: keep TF's C++ logging quiet (it only affects stderr).
CHILD_ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))


# --------------------------------------------------------------------------------------------
# optional libraries


def import_tf():
    """Import TensorFlow with its start-up chatter turned down; eager mode is TF2's default."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def import_tfshard() -> tuple[Any, str | None]:
    """Return ``(module, None)`` if tfshard's reader is usable, else ``(None, reason)``."""
    try:
        mod = importlib.import_module("tfshard")
        mod.open  # noqa: B018 - the reader is what the benchmarks need
    except Exception as exc:  # ImportError, AttributeError, or a broken build
        return None, f"{type(exc).__name__}: {exc}"
    return mod, None


def version_of(modname: str) -> str:
    try:
        mod = importlib.import_module(modname)
    except Exception:
        return "not installed"
    return str(getattr(mod, "__version__", "?"))


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        "numpy": np.__version__,
    }
    env.update(extra or {})
    return env


# --------------------------------------------------------------------------------------------
# input generation and caching


def default_workdir() -> Path:
    return Path(tempfile.gettempdir()) / "tfshard-bench"


def cached_input(workdir: Path, name: str, spec: Mapping[str, Any],
                 build: Callable[[Path], Mapping[str, Any] | None], *,
                 log=print) -> tuple[Path, dict]:
    """Return ``(directory, manifest)`` for a generated input, building it if needed.

    ``build(tmpdir)`` writes the input's files into ``tmpdir`` and may return extra manifest
    fields.  The directory is renamed into place only after ``manifest.json`` is written, so an
    interrupted build never looks complete.
    """
    spec = {"cache_format": CACHE_FORMAT, **spec}
    final = workdir / name
    manifest_path = final / "manifest.json"
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:
            manifest = {}
        if manifest.get("spec") == spec:
            return final, manifest
        log(f"  cache {final} is stale; rebuilding")
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=workdir))
    try:
        t0 = time.perf_counter()
        extra = build(tmp) or {}
        manifest = {"spec": spec, **extra, "build_seconds": round(time.perf_counter() - t0, 2)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"  built {final} in {manifest['build_seconds']} s")
    return final, manifest


def tf_save_v2(prefix: str | os.PathLike, tensors: Mapping[str, np.ndarray]) -> None:
    """Write a V2 checkpoint with TensorFlow's own ``SaveV2`` kernel (eager mode)."""
    tf = import_tf()
    names = list(tensors)
    tf.raw_ops.SaveV2(prefix=os.fspath(prefix), tensor_names=names,
                      shape_and_slices=[""] * len(names),
                      tensors=[tensors[n] for n in names])


_BERT_LAYER_PARTS = (
    "attention/self/query/kernel", "attention/self/query/bias",
    "attention/self/key/kernel", "attention/self/key/bias",
    "attention/self/value/kernel", "attention/self/value/bias",
    "attention/output/dense/kernel", "attention/output/dense/bias",
    "attention/output/LayerNorm/gamma", "attention/output/LayerNorm/beta",
    "intermediate/dense/kernel", "intermediate/dense/bias",
    "output/dense/kernel", "output/dense/bias",
    "output/LayerNorm/gamma", "output/LayerNorm/beta",
)

_SMALL_SHAPES = ((8,), (4, 4), (16,), (2, 3, 4), (), (32,))


def many_small_tensors(n: int, seed: int = 0, per_part: int = 8) -> dict[str, np.ndarray]:
    """``n`` small float32 tensors, named like
    ``bert/encoder/layer_123/attention/self/query/kernel_7``."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    per_layer = len(_BERT_LAYER_PARTS) * per_part
    for i in range(n):
        layer, rest = divmod(i, per_layer)
        part, k = divmod(rest, per_part)
        shape = _SMALL_SHAPES[i % len(_SMALL_SHAPES)]
        out[f"bert/encoder/layer_{layer}/{_BERT_LAYER_PARTS[part]}_{k}"] = (
            rng.standard_normal(shape, dtype=np.float32))
    return out


BERT_BASE = dict(vocab=30522, hidden=768, layers=12, intermediate=3072, max_pos=512, type_vocab=2)
# About 4 MB: small enough for a smoke test, big enough that rows 1000:1100 of the table exist.
BERT_TINY = dict(vocab=4000, hidden=128, layers=2, intermediate=512, max_pos=512, type_vocab=2)


def bert_shapes(vocab: int, hidden: int, layers: int, intermediate: int, max_pos: int,
                type_vocab: int) -> dict[str, tuple[int, ...]]:
    """Variable names and shapes of Google's BERT checkpoints (``bert_model.ckpt``)."""
    h, i = hidden, intermediate
    shapes: dict[str, tuple[int, ...]] = {
        "bert/embeddings/word_embeddings": (vocab, h),
        "bert/embeddings/position_embeddings": (max_pos, h),
        "bert/embeddings/token_type_embeddings": (type_vocab, h),
        "bert/embeddings/LayerNorm/gamma": (h,),
        "bert/embeddings/LayerNorm/beta": (h,),
    }
    part_shapes = {"kernel": (h, h), "bias": (h,), "gamma": (h,), "beta": (h,)}
    for layer in range(layers):
        for part in _BERT_LAYER_PARTS:
            kind = part.rsplit("/", 1)[1]
            shape = part_shapes[kind]
            if part == "intermediate/dense/kernel":
                shape = (h, i)
            elif part == "intermediate/dense/bias":
                shape = (i,)
            elif part == "output/dense/kernel":
                shape = (i, h)
            shapes[f"bert/encoder/layer_{layer}/{part}"] = shape
    shapes["bert/pooler/dense/kernel"] = (h, h)
    shapes["bert/pooler/dense/bias"] = (h,)
    return shapes


def random_tensors(shapes: Mapping[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in shapes.items()}


def bert_input(workdir: Path, cfg: Mapping[str, int], *, log=print) -> tuple[Path, dict]:
    """The cached BERT-shaped input shared by the read benchmarks: ``ckpt`` written by TF's
    ``SaveV2`` and the same tensors as ``model.safetensors``.  Returns ``(directory,
    manifest)``; the manifest records ``tensors`` and ``bytes``."""
    def build(tmp: Path):
        from safetensors.numpy import save_file

        tensors = random_tensors(bert_shapes(**cfg), seed=2)
        tf_save_v2(tmp / "ckpt", tensors)
        save_file(tensors, str(tmp / "model.safetensors"))
        return {"tensors": len(tensors), "bytes": int(sum(a.nbytes for a in tensors.values()))}

    return cached_input(workdir, "bert-" + "x".join(map(str, cfg.values())), cfg, build, log=log)


def checkpoint_files(prefix: str | os.PathLike) -> list[Path]:
    prefix = Path(prefix)
    return sorted(p for p in prefix.parent.iterdir() if p.name.startswith(prefix.name + "."))


def warm(paths: Iterable[str | os.PathLike]) -> int:
    """Read every file once so timings see a warm page cache; returns the bytes read."""
    total = 0
    buf = bytearray(8 << 20)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return total


# --------------------------------------------------------------------------------------------
# timing


def _time_once(fn: Callable[[], Any], number: int) -> float:
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        return time.perf_counter() - t0
    finally:
        if gc_was_enabled:
            gc.enable()


def _calibrate(fn: Callable[[], Any], first: float, min_time: float) -> int:
    """Loops per sample so one sample lasts >= ``min_time`` (timeit.autorange's 1-2-5 steps)."""
    if first >= min_time or min_time <= 0:
        return 1
    number, scale = 1, 1
    while True:
        for step in (1, 2, 5):
            number = step * scale
            if number == 1:
                continue
            if _time_once(fn, number) >= min_time:
                return number
        scale *= 10


@dataclass
class Timing:
    median: float                      # seconds per call
    samples: list[float]               # seconds per call, one per repeat
    number: int                        # calls per sample
    result: Any = field(default=None, repr=False)   # what the warm-up call returned

    def to_json(self) -> dict:
        return {"median_s": self.median, "samples_s": self.samples, "number": self.number}


def bench_interleaved(fns: Mapping[str, Callable[[], Any]], *, repeat: int,
                      min_time: float,
                      after_sample: Callable[[], Any] | None = None) -> dict[str, Timing]:
    """Time several callables, sampling them in turn; each gets one untimed warm-up call.

    ``after_sample``, if given, runs untimed after each callable's warm-up/calibration and
    after every sample, e.g. to delete the files a writer just made, so that no sample pays
    for another's leftovers.
    """
    warm_results, numbers = {}, {}
    for key, fn in fns.items():
        t0 = time.perf_counter()
        warm_results[key] = fn()
        numbers[key] = _calibrate(fn, time.perf_counter() - t0, min_time)
        if after_sample is not None:
            after_sample()
    samples: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(repeat):
        for key, fn in fns.items():
            gc.collect()
            samples[key].append(_time_once(fn, numbers[key]) / numbers[key])
            if after_sample is not None:
                after_sample()
    return {key: Timing(statistics.median(s), s, numbers[key], warm_results[key])
            for key, s in samples.items()}


def time_process(argv: Sequence[str], *, repeat: int) -> Timing:
    """Median wall time of a whole child process (stdout discarded; failure raises)."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=CHILD_ENV)
        samples.append(time.perf_counter() - t0)
        if proc.returncode:
            raise RuntimeError(f"{argv!r} exited {proc.returncode}: "
                               f"{proc.stderr.decode(errors='replace')[-2000:]}")
    return Timing(statistics.median(samples), samples, 1)


def run_checked(argv: Sequence[str], *, timeout: float | None = None) -> str:
    """Run a child process, return its stdout; raise with its stderr if it fails."""
    proc = subprocess.run(argv, capture_output=True, env=CHILD_ENV, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{argv!r} exited {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace')[-2000:]}")
    return proc.stdout.decode(errors="replace")


def run_json_child(code: str, args: Sequence[str], *, timeout: float | None = None) -> dict:
    """Run ``python -c code *args`` in a fresh interpreter; its last stdout line is JSON."""
    out = run_checked([sys.executable, "-c", code, *map(str, args)], timeout=timeout)
    return json.loads(out.strip().splitlines()[-1])


# Source for child processes that measure their own memory.  Resident set size comes from
# /proc/self/statm (Linux); RssAnon from /proc/self/status separates heap from mapped files.
RSS_SNIPPET = r'''
import os
def rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None
def rss_anon_bytes():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
'''


# --------------------------------------------------------------------------------------------
# results


@dataclass
class Row:
    case: str                     # stable id, first column of the table
    what: str                     # one-line description
    unit: str                     # "s" or "bytes"
    tfshard: float | None = None
    tf: float | None = None
    safetensors: float | None = None
    ratio: float | None = None
    op: str = ">="                # how ratio is compared with threshold
    threshold: float | None = None
    status: str = SKIP
    notes: list[str] = field(default_factory=list)
    detail: dict = field(default_factory=dict)

    @property
    def target(self) -> str:
        return "-" if self.threshold is None else f"{self.op} {self.threshold:g}x"

    def judge(self) -> None:
        """Set PASS/MISS from ratio, unless the row is already SKIP-by-absence/ERROR/WRONG;
        a measured ratio without a threshold is INFO."""
        if self.status in (ERROR, WRONG):
            return
        if self.ratio is None:
            self.status = SKIP
            return
        if self.threshold is None:
            self.status = INFO
            return
        ok = self.ratio >= self.threshold if self.op == ">=" else self.ratio <= self.threshold
        self.status = PASS if ok else MISS

    def to_json(self) -> dict:
        d = asdict(self)
        d["target"] = self.target
        return d


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "bytes":
        for scale, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if abs(value) >= scale:
                return f"{value / scale:.2f} {name}"
        return f"{value:.0f} B"
    for scale, name in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if value >= scale:
            return f"{value / scale:.3g} {name}"
    return f"{value * 1e9:.3g} ns"


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "n/a"
    return f"{ratio:.3g}x" if ratio < 1000 else f"{ratio:,.0f}x"


def print_table(rows: Sequence[Row], file=None, columns=("TF", "safetensors")) -> None:
    """Print the table; ``columns`` names the two comparison columns (rows keep their
    values in ``tf`` and ``safetensors``)."""
    file = file or sys.stdout
    header = ("case", "tfshard", *columns, "ratio", "target", "result")
    body = [(r.case, fmt_value(r.tfshard, r.unit), fmt_value(r.tf, r.unit),
             fmt_value(r.safetensors, r.unit), fmt_ratio(r.ratio), r.target, r.status)
            for r in rows]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    print(line(header), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for cells in body:
        print(line(cells), file=file)
    print(file=file)
    for r in rows:
        print(f"{r.case}: {r.what}", file=file)
        for note in r.notes:
            print(f"    {note}", file=file)


def run_case(row: Row, body: Callable[[Row], None], *, log=print) -> Row:
    """Run one benchmark case; an exception becomes an ERROR row instead of ending the script."""
    log(f"[{row.case}] {row.what}")
    t0 = time.perf_counter()
    try:
        body(row)
    except Exception as exc:
        row.status = ERROR
        row.notes.append(f"error: {type(exc).__name__}: {exc}")
        traceback.print_exc()
    else:
        row.judge()
    log(f"[{row.case}] {row.status} ({time.perf_counter() - t0:.1f} s)")
    return row


def dump_json(dest: str, payload: Mapping[str, Any]) -> None:
    text = json.dumps(payload, indent=1, default=str)
    if dest == "-":
        print(text)
    else:
        Path(dest).write_text(text + "\n")


def benchmark_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's parser: description and the "Cases" section of ``--help`` come from the
    script's docstring."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   epilog=doc[doc.index("Cases\n"):],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def parse_benchmark_args(parser: argparse.ArgumentParser, argv, cases: Sequence[str], *,
                         others: str) -> argparse.Namespace:
    """Add the options every benchmark shares (``--cases``, ``--no-tfshard``, ``--json``),
    parse, and apply the shared defaults: ``--repeat`` 5 (1 with ``--quick``), the default
    ``--workdir``, and ``args.cases`` as a list in the script's order.  ``others`` names what
    is still measured with ``--no-tfshard``.  Usage errors go through ``parser``."""
    parser.add_argument("--cases", default=",".join(cases), metavar="LIST",
                        help=f"comma-separated subset of: {', '.join(cases)}")
    parser.add_argument("--no-tfshard", action="store_true",
                        help=f"measure only {others} (tfshard columns say n/a)")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                        help="also write all results, with every sample, as JSON to PATH "
                             "(stdout if no PATH is given)")
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (1 if args.quick else 5)
    args.workdir = args.workdir or default_workdir()
    wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(wanted) - set(cases))
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)}")
    args.cases = [c for c in cases if c in wanted]
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def library_environment(tf, tfshard_module, why: str | None) -> dict[str, str]:
    """:func:`environment` plus the versions of the libraries the benchmarks compare."""
    return environment({
        "tensorflow": tf.__version__,
        "safetensors": version_of("safetensors"),
        "tfshard": (getattr(tfshard_module, "__version__", "?") + " "
                    + str(Path(tfshard_module.__file__).parent))
                   if tfshard_module else f"not measured ({why})",
    })


def finish(benchmark: str, args, rows: Sequence[Row], env: Mapping[str, str], inputs: Any,
           settings: str, t_start: float, columns=("TF", "safetensors")) -> int:
    """Print a benchmark's header and table, write ``--json``; returns the exit status
    (1 when a case failed to run or returned wrong values, else 0)."""
    print()
    print(f"tfshard {benchmark.split('_', 1)[-1]} benchmark"
          + (" (--quick: tiny inputs, not a measurement)" if args.quick else ""))
    print("  " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print(f"  {settings}")
    print()
    print_table(rows, columns=columns)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    if args.json:
        dump_json(args.json, {
            "benchmark": benchmark, "environment": env, "inputs": inputs,
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "rows": [r.to_json() for r in rows],
        })
    return 1 if any(r.status in (ERROR, WRONG) for r in rows) else 0


class ScratchWrites:
    """What a write benchmark's ``Bench`` shares: checkpoints written under fresh names in
    ``self.outdir`` (``self._serial`` counts them), and a clear between samples that
    remakes ``self._existing`` (``(prefix, tensors)``, saved with ``self.tfs``) when set."""

    def _path(self, stem: str) -> str:
        """A name never used before in this run, so no writer ever replaces a file."""
        return str(self.outdir / f"{stem}-{next(self._serial)}")

    def _clear(self) -> None:
        for entry in os.scandir(self.outdir):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        if self._existing is not None:  # what the overwrite writer's next call replaces
            self.tfs.save(*self._existing)
        # Commit the creations and deletions now, rather than in whichever writer's sample
        # the file system's periodic flush would land in.
        if hasattr(os, "sync"):
            os.sync()
