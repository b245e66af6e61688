#!/usr/bin/env python
"""Benchmark tfshard's framework loaders against safetensors' and TensorFlow's reader.

The input is the ``bert`` model of bench_read (shared cache, ``--workdir``, default
``$TMPDIR/tfshard-bench``): a BERT-base-shaped model, 199 float32 tensors, about 440 MB
(about 4 MB with ``--quick``), written by TensorFlow's ``SaveV2`` and, the same tensors, by
``safetensors.numpy.save_file``.  Files are read once before timing (warm page cache).  Times
are medians of ``--repeat`` samples, the libraries sampled in turn; ratios are "other
library's median / tfshard's median" (bigger: tfshard faster) and, for memory, "tfshard's
bytes / the other's" (smaller: tfshard leaner).  The script reports, it does not assert: it
exits 0 when targets are missed (MISS) and 1 only when a case fails to run (ERROR) or tfshard
returns other values than the reference (WRONG, from the sums of every tensor).

safetensors maps its file lazily, so its load call alone measures little: the headline
cases time the load *and* one pass over every tensor (``float(t.sum())`` per tensor; torch
runs it on ``--torch-threads`` threads, default 1, so both sides get the same consume
step).  The load call alone is printed beside.  tfshard checks every tensor's CRC-32C
(``verify=True``, in worker threads) before its load returns; safetensors checks nothing.

Copies are counted after one untimed tfshard load: a tensor whose memory lies inside the
data file's mapping (``/proc/self/maps``) was handed over without a copy.

Cases
-----
torch_verified
    ``tfshard.torch.load_file(p)`` + pass vs ``safetensors.torch.load_file(f)`` + pass.
    Target: >= 0.9x (moonshot 1.2x).
torch_noverify
    Same with ``verify=False``.  Target: >= 1.0x.
torch_call
    The load calls alone (verified; ``verify=False`` in the notes), for information.
jax_verified, jax_noverify, jax_call
    The same for ``tfshard.jax.load_file`` vs ``safetensors.flax.load_file`` (which reads
    the file with safetensors.numpy and hands each array to ``jnp.array``); the pass is
    ``float(x.sum())``.  Targets: >= 0.9x and >= 1.0x.
reader_loop
    ``tfshard.load_checkpoint(p)`` + ``get_tensor`` of every tensor vs
    ``tf.train.load_checkpoint(p)`` + ``get_tensor`` (both check CRCs and return writable
    arrays the caller owns), results compared once.  Target: >= 3x.
rss_torch, rss_jax, rss_reader
    Peak resident memory of one load + pass (reader: the get_tensor loop, arrays kept),
    each in a fresh interpreter: the high-water mark (``VmHWM``, reset through
    ``/proc/self/clear_refs`` after the imports and a load of a 2 KB model of the same
    names) minus the RSS before.  For information.

Examples
--------
    python benchmarks/bench_frameworks.py               # full run, a few minutes
    python benchmarks/bench_frameworks.py --quick       # tiny model, one repeat (smoke test)
    python benchmarks/bench_frameworks.py --cases torch_verified,reader_loop --repeat 9
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CASES = ("torch_verified", "torch_noverify", "torch_call", "jax_verified", "jax_noverify",
         "jax_call", "reader_loop", "rss_torch", "rss_jax", "rss_reader")
TARGETS = {  # case: (op, threshold); None: for information
    "torch_verified": (">=", 0.9), "torch_noverify": (">=", 1.0), "torch_call": (">=", None),
    "jax_verified": (">=", 0.9), "jax_noverify": (">=", 1.0), "jax_call": (">=", None),
    "reader_loop": (">=", 3.0),
    "rss_torch": ("<=", None), "rss_jax": ("<=", None), "rss_reader": ("<=", None),
}
DESCRIPTIONS = {
    "torch_verified": "tfshard.torch.load_file + pass, CRCs checked, vs safetensors.torch "
                      "load_file + pass ({tensors} tensors, {mbytes:.0f} MB)",
    "torch_noverify": "same, verify=False",
    "torch_call": "the load call alone, verified, vs safetensors.torch.load_file alone",
    "jax_verified": "tfshard.jax.load_file + pass, CRCs checked, vs safetensors.flax "
                    "load_file + pass",
    "jax_noverify": "same, verify=False",
    "jax_call": "the load call alone, verified, vs safetensors.flax.load_file alone",
    "reader_loop": "tfshard.load_checkpoint + get_tensor of every tensor vs "
                   "tf.train.load_checkpoint + get_tensor",
    "rss_torch": "peak RSS growth of torch load + pass vs safetensors.torch's",
    "rss_jax": "peak RSS growth of JAX load + pass vs safetensors.flax's",
    "rss_reader": "peak RSS growth of the get_tensor loop vs TF's reader",
}


# The same names as the model, a few bytes each: loaded first in the memory children.
TINY = dict(vocab=8, hidden=2, layers=1, intermediate=4, max_pos=4, type_vocab=2)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _import_frameworks(tfshard):
    """``(tfshard.torch, tfshard.jax)``; raises if either cannot be imported."""
    import tfshard.jax
    import tfshard.torch

    return tfshard.torch, tfshard.jax


def _mapped_ranges(paths):
    ranges = []
    wanted = {str(Path(p).resolve()) for p in paths}
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and fields[5] in wanted:
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((lo, hi))
    return ranges


def zero_copy_count(pointers_and_sizes, files) -> tuple[int, int, int]:
    """``(tensors viewing the files' mappings, tensors in all, bytes copied)``."""
    if not Path("/proc/self/maps").exists():
        return -1, len(pointers_and_sizes), -1
    ranges = _mapped_ranges(files)
    inside, copied = 0, 0
    for ptr, nbytes in pointers_and_sizes:
        if any(lo <= ptr < hi for lo, hi in ranges):
            inside += 1
        else:
            copied += nbytes
    return inside, len(pointers_and_sizes), copied


class Bench:
    def __init__(self, args, inputs, tf, tfshard):
        self.args, self.inp, self.tf, self.tfs = args, inputs, tf, tfshard
        self.names = sorted(tf.train.load_checkpoint(inputs["bert"]).get_variable_to_shape_map())
        self._cache = {}
        self.data_files = [p for p in C.checkpoint_files(inputs["bert"]) if ".data-" in p.name]

    def timings(self, fns):
        return C.bench_interleaved({k: f for k, f in fns.items() if f is not None},
                                   repeat=self.args.repeat, min_time=self.args.min_time)

    # -- torch and JAX ----------------------------------------------------------------------

    def _framework(self, which):
        """One interleaved run of every loader of ``which`` ("torch" or "jax")."""
        if which in self._cache:
            return self._cache[which]
        p, st_file = self.inp["bert"], self.inp["bert_st"]
        if which == "torch":
            import torch
            from safetensors.torch import load_file as st_load

            torch.set_num_threads(self.args.torch_threads)

            def consume(d):
                return {n: float(t.sum()) for n, t in d.items()}
        else:
            from safetensors.flax import load_file as st_load

            def consume(d):
                return {n: float(x.sum()) for n, x in d.items()}

        fns = {"st": lambda: consume(st_load(st_file)), "st_call": lambda: st_load(st_file)}
        ours = None
        if self.tfs:
            ours = _import_frameworks(self.tfs)[0 if which == "torch" else 1]
            fns.update({
                "verified": lambda: consume(ours.load_file(p)),
                "noverify": lambda: consume(ours.load_file(p, verify=False)),
                "call": lambda: ours.load_file(p),
                "call_noverify": lambda: ours.load_file(p, verify=False),
            })
        t = self.timings(fns)
        copies = None
        if ours is not None:
            loaded = ours.load_file(p)
            if which == "torch":
                pointers = [(v.data_ptr(), v.numel() * v.element_size()) for v in loaded.values()]
            else:
                pointers = [(v.unsafe_buffer_pointer(), v.nbytes) for v in loaded.values()]
            copies = zero_copy_count(pointers, self.data_files)
            del loaded
        self._cache[which] = (t, copies)
        return self._cache[which]

    def _framework_row(self, row: C.Row, which: str, key: str, other: str):
        t, copies = self._framework(which)
        row.safetensors = t[other].median
        row.detail = {k: v.to_json() for k, v in t.items()}
        if key not in t:
            return
        row.tfshard = t[key].median
        row.ratio = row.safetensors / row.tfshard
        if key in ("verified", "noverify") and t[key].result != t["st"].result:
            bad = [n for n in t["st"].result if t[key].result.get(n) != t["st"].result[n]]
            row.status = C.WRONG
            row.notes.append(f"sums differ from safetensors' in {len(bad)} tensors, e.g. "
                             f"{bad[:1]}")
        if key == "verified":
            row.notes.append(f"load call alone: tfshard {C.fmt_value(t['call'].median, 's')}, "
                             f"safetensors {C.fmt_value(t['st_call'].median, 's')}; "
                             f"moonshot 1.2x: {'met' if row.ratio >= 1.2 else 'not met'}")
        if key == "noverify":
            row.notes.append(f"load call alone: tfshard "
                             f"{C.fmt_value(t['call_noverify'].median, 's')}")
        if key == "call":
            row.notes.append(f"verify=False: {C.fmt_value(t['call_noverify'].median, 's')}")
        if copies is not None:
            inside, total, copied = copies
            row.notes.append(f"tfshard handed over {inside} of {total} tensors without a copy; "
                             f"{C.fmt_value(copied, 'bytes')} copied")
        if which == "torch":
            row.notes.append(f"torch threads for the pass: {self.args.torch_threads}")

    def torch_verified(self, row):
        self._framework_row(row, "torch", "verified", "st")

    def torch_noverify(self, row):
        self._framework_row(row, "torch", "noverify", "st")

    def torch_call(self, row):
        self._framework_row(row, "torch", "call", "st_call")

    def jax_verified(self, row):
        self._framework_row(row, "jax", "verified", "st")

    def jax_noverify(self, row):
        self._framework_row(row, "jax", "noverify", "st")

    def jax_call(self, row):
        self._framework_row(row, "jax", "call", "st_call")

    # -- TF's reader ------------------------------------------------------------------------

    def reader_loop(self, row):
        p, tf, tfs, names = self.inp["bert"], self.tf, self.tfs, self.names

        def with_tf():
            reader = tf.train.load_checkpoint(p)
            return [reader.get_tensor(n) for n in names]

        fns = {"tf": with_tf}
        if tfs:
            def with_tfshard():
                with tfs.load_checkpoint(p) as reader:
                    return [reader.get_tensor(n) for n in names]
            fns["tfshard"] = with_tfshard
        t = self.timings(fns)
        row.tf = t["tf"].median
        row.detail = {k: v.to_json() for k, v in t.items()}
        row.notes.append(f"{len(names)} tensors; both readers check CRC-32C")
        if "tfshard" not in t:
            return
        row.tfshard = t["tfshard"].median
        row.ratio = row.tf / row.tfshard
        ours, theirs = t["tfshard"].result, t["tf"].result
        bad = [n for n, a, b in zip(names, ours, theirs)
               if type(a) is not type(b) or a.dtype != b.dtype or a.tobytes() != b.tobytes()]
        if bad:
            row.status = C.WRONG
            row.notes.append(f"values or types differ from TF's in {len(bad)} tensors, e.g. "
                             f"{bad[0]!r}")
        pointers = [(a.ctypes.data, a.nbytes) for a in ours]
        inside, total, copied = zero_copy_count(pointers, self.data_files)
        row.notes.append(f"tfshard handed over {inside} of {total} arrays without a copy; "
                         f"{C.fmt_value(copied, 'bytes')} copied")

    # -- memory -----------------------------------------------------------------------------

    MEMORY_CHILD = C.RSS_SNIPPET + r"""
import gc, json, sys
mode, p, st_file, threads, tiny, tiny_st = sys.argv[1:7]
def peak_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
if mode.endswith("torch"):
    import torch
    torch.set_num_threads(int(threads))
    if mode == "tfshard_torch":
        import tfshard.torch as m
        load = lambda p, st_file: m.load_file(p)
    else:
        from safetensors.torch import load_file
        load = lambda p, st_file: load_file(st_file)
    run = lambda p, st_file: [float(t.sum()) for t in load(p, st_file).values()]
elif mode.endswith("jax"):
    import jax
    if mode == "tfshard_jax":
        import tfshard.jax as m
        load = lambda p, st_file: m.load_file(p)
    else:
        from safetensors.flax import load_file
        load = lambda p, st_file: load_file(st_file)
    run = lambda p, st_file: [float(x.sum()) for x in load(p, st_file).values()]
else:
    if mode == "tfshard_reader":
        import tfshard
        open_reader = tfshard.load_checkpoint
    else:
        import tensorflow as tf
        open_reader = tf.train.load_checkpoint
    def run(p, st_file):
        r = open_reader(p)
        names = sorted(r.get_variable_to_shape_map())
        kept = [r.get_tensor(n) for n in names]
        return len(kept)
run(tiny, tiny_st)  # lazy imports and first-use allocations are not the load's
gc.collect()
base = rss_bytes()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current RSS
run(p, st_file)
print(json.dumps({"peak": peak_bytes() - base}))
"""

    def _rss_row(self, row, ours: str, theirs: str, column: str):
        if not Path("/proc/self/clear_refs").exists():
            row.notes.append("needs /proc/self/clear_refs (Linux)")
            return
        argv = [self.inp["bert"], self.inp["bert_st"], str(self.args.torch_threads),
                self.inp["tiny"], self.inp["tiny_st"]]
        other = C.run_json_child(self.MEMORY_CHILD, [theirs, *argv], timeout=900)["peak"]
        setattr(row, column, other)
        row.notes.append(f"model {C.fmt_value(self.inp['bert_bytes'], 'bytes')}; file pages "
                         f"mapped count as resident, as for safetensors")
        if self.tfs:
            row.tfshard = C.run_json_child(self.MEMORY_CHILD, [ours, *argv], timeout=900)["peak"]
            row.ratio = row.tfshard / other if other > 0 else None

    def rss_torch(self, row):
        self._rss_row(row, "tfshard_torch", "st_torch", "safetensors")

    def rss_jax(self, row):
        self._rss_row(row, "tfshard_jax", "st_jax", "safetensors")

    def rss_reader(self, row):
        self._rss_row(row, "tfshard_reader", "tf_reader", "tf")


def parse_args(argv=None):
    parser = C.benchmark_parser(__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="tiny model (~4 MB), one sample per library, no calibration: a "
                             "smoke test, not a measurement")
    parser.add_argument("--repeat", type=int, default=None, metavar="N",
                        help="timed samples per library and case (default 5; 1 with --quick)")
    parser.add_argument("--min-time", type=float, default=None, metavar="SECONDS",
                        help="shortest duration of one sample; fast calls are looped "
                             "(default 0.2; 0 with --quick)")
    parser.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                        help=f"cache for generated inputs (default {C.default_workdir()})")
    parser.add_argument("--torch-threads", type=int, default=1, metavar="N",
                        help="torch intra-op threads for the pass over the tensors (default 1)")
    args = C.parse_benchmark_args(parser, argv, CASES,
                                  others="safetensors and TensorFlow")
    if args.min_time is None:
        args.min_time = 0.0 if args.quick else 0.2
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    tf = C.import_tf()
    tfshard, why = (None, "--no-tfshard") if args.no_tfshard else C.import_tfshard()
    if tfshard is not None:
        try:
            _import_frameworks(tfshard)
        except Exception as exc:
            tfshard, why = None, f"{type(exc).__name__}: {exc}"
    if tfshard is None:
        log(f"tfshard not measured ({why}); its columns will say n/a")
    cfg = C.BERT_TINY if args.quick else C.BERT_BASE
    log(f"inputs in {args.workdir}")
    directory, manifest = C.bert_input(args.workdir, cfg, log=log)
    tiny, _ = C.bert_input(args.workdir, TINY, log=log)
    inputs = {"bert": str(directory / "ckpt"), "bert_st": str(directory / "model.safetensors"),
              "tiny": str(tiny / "ckpt"), "tiny_st": str(tiny / "model.safetensors"),
              "tensors": manifest["tensors"], "bert_bytes": manifest["bytes"],
              "mbytes": manifest["bytes"] / 1e6}
    C.warm(C.checkpoint_files(inputs["bert"]) + [Path(inputs["bert_st"])])
    bench = Bench(args, inputs, tf, tfshard)
    rows = []
    for case in args.cases:
        op, threshold = TARGETS[case]
        row = C.Row(case=case, what=DESCRIPTIONS[case].format(**inputs),
                    unit="bytes" if case.startswith("rss") else "s", op=op,
                    threshold=threshold)
        rows.append(C.run_case(row, getattr(bench, case), log=log))
    import jax
    import torch

    env = C.library_environment(tf, tfshard, why)
    env.update({"torch": torch.__version__, "jax": jax.__version__})
    return C.finish("bench_frameworks", args, rows, env, inputs,
                    f"repeat {args.repeat}, min-time {args.min_time} s, torch threads "
                    f"{args.torch_threads}, workdir {args.workdir}", t_start)


if __name__ == "__main__":
    sys.exit(main())
