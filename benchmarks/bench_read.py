#!/usr/bin/env python
"""Benchmark tfshard's reader against TensorFlow (and safetensors where it applies).

Inputs are written by TensorFlow itself (``tf.raw_ops.SaveV2`` in eager mode) into a cache
directory (``--workdir``, default ``$TMPDIR/tfshard-bench``) and reused on later runs:

* ``many``: 30,000 small float32 tensors named like
  ``bert/encoder/layer_123/attention/self/query/kernel_7`` (300 with ``--quick``);
* ``bert``: a BERT-base-shaped model, 199 float32 tensors, about 440 MB (about 4 MB with
  ``--quick``), also written with ``safetensors.numpy.save_file``;
* ``tiny``: three tensors, opened once in memory-measuring children so lazy imports and
  allocator start-up are not counted as the cost of opening ``many``.

Every file is read once before timing (warm page cache).  Times are medians of ``--repeat``
samples; the libraries are sampled in turn so machine noise hits them alike; ratios are
"other library's median / tfshard's median".  The script reports, it does not assert: it
exits 0 when targets are missed (rows say MISS) and 1 only when a case fails to run (ERROR)
or tfshard returns values that differ from TensorFlow's (WRONG).

Cases
-----
open_list
    ``tfshard.list_variables(p)`` vs ``tf.train.load_checkpoint(p).get_variable_to_shape_map()``
    on ``many``.  Target: tfshard >= 10x faster.  (The two results are compared once.)
read_all_tf, read_all_st
    Open the ``bert`` checkpoint and deliver every element of every tensor to the caller:
    ``tfshard.open(p, verify=True)`` + ``ckpt[name]`` vs TF ``load_checkpoint(p)`` +
    ``get_tensor(name)`` vs ``safetensors.safe_open(f, "np")`` + ``get_tensor(name)``, same
    names in the same order.  Opening is inside the timed region, so every repeat re-verifies
    CRCs (tfshard and TF check CRC-32C; safetensors has no checksum).  Targets: >= 2x TF,
    >= 1.2x safetensors.

    Why a "consume" step: tfshard returns zero-copy views of an mmap, TF and safetensors
    return freshly filled arrays.  Merely fetching would let a lazy view skip work the others
    must do, so each returned array is consumed identically in all three loops.  The default,
    ``--consume sum``, computes ``float(a.sum())`` per tensor: it reads every byte once, makes
    no extra copy, and the sums double as a correctness check (identical bytes and shapes give
    bit-identical sums).  ``--consume copy`` does ``np.array(a)`` instead, which gives tfshard
    owned memory but charges TF and safetensors a second, redundant copy; it is there for
    comparison, not the headline number.
read_rows
    Rows 1000:1100 of the word-embedding table on an already-open checkpoint (both readers
    opened once, outside the timing): ``np.array(ckpt.read(name, index=np.s_[1000:1100]))``
    vs ``np.array(reader.get_tensor(name)[1000:1100])`` (TF has no partial read).  Target:
    >= 100x.  safetensors' ``get_slice(name)[1000:1100]`` is shown for information.
cli_ls
    Whole process: ``python -m tfshard ls p`` (or the ``tfshard`` console script) vs
    ``python -m tensorflow.python.tools.inspect_checkpoint --file_name=p`` on ``many``, stdout
    discarded; one untimed run of each first, whose output must name the tensors.  Target:
    >= 15x.
memory, memory_keys
    Memory held by an open ``many`` checkpoint, measured in a fresh interpreter: resident set
    size (``/proc/self/statm``) after ``tfshard.open(p)`` minus RSS just before the open (after
    ``import tfshard`` and an open/close of ``tiny``), compared with the size of ``p.index``;
    target <= 3x.  ``memory`` is the growth from the open alone; ``memory_keys`` the growth
    once the keys have been iterated as well (a lazy reader may build its name list then;
    that list is held for as long as the checkpoint is).  A separate child reports Python
    allocations with ``tracemalloc`` (not gating: it cannot see C allocations).  TF's RSS
    growth for ``load_checkpoint`` (+ ``get_variable_to_shape_map``) is shown for information.

Examples
--------
    python benchmarks/bench_read.py                  # full run, ~1 GB of inputs, a few minutes
    python benchmarks/bench_read.py --quick          # tiny inputs, one repeat (smoke test)
    python benchmarks/bench_read.py --cases read_rows,cli_ls --repeat 9 --json out.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CASES = ("open_list", "read_all_tf", "read_all_st", "read_rows", "cli_ls", "memory",
         "memory_keys")
ROW_SLICE = slice(1000, 1100)
EMBEDDING = "bert/embeddings/word_embeddings"

TARGETS = {  # case: (op, threshold)
    "open_list": (">=", 10.0),
    "read_all_tf": (">=", 2.0),
    "read_all_st": (">=", 1.2),
    "read_rows": (">=", 100.0),
    "cli_ls": (">=", 15.0),
    "memory": ("<=", 3.0),
    "memory_keys": ("<=", 3.0),
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# inputs


def build_inputs(args) -> dict:
    n_many = 300 if args.quick else 30_000
    bert_cfg = C.BERT_TINY if args.quick else C.BERT_BASE
    workdir = args.workdir

    def build_many(tmp: Path):
        tensors = C.many_small_tensors(n_many, seed=1)
        C.tf_save_v2(tmp / "ckpt", tensors)
        return {"tensors": len(tensors)}

    def build_tiny(tmp: Path):
        C.tf_save_v2(tmp / "ckpt", C.many_small_tensors(3, seed=3))

    log(f"inputs in {workdir}")
    many, many_m = C.cached_input(workdir, f"many-{n_many}", {"n": n_many}, build_many, log=log)
    bert, bert_m = C.bert_input(workdir, bert_cfg, log=log)
    tiny, _ = C.cached_input(workdir, "tiny", {"n": 3}, build_tiny, log=log)
    inputs = {
        "many": str(many / "ckpt"), "many_tensors": many_m["tensors"],
        "many_index_bytes": (many / "ckpt.index").stat().st_size,
        "bert": str(bert / "ckpt"), "bert_st": str(bert / "model.safetensors"),
        "bert_tensors": bert_m["tensors"], "bert_bytes": bert_m["bytes"],
        "tiny": str(tiny / "ckpt"),
    }
    files = (C.checkpoint_files(inputs["many"]) + C.checkpoint_files(inputs["bert"])
             + [Path(inputs["bert_st"])] + C.checkpoint_files(inputs["tiny"]))
    C.warm(files)
    return inputs


# --------------------------------------------------------------------------------------------
# cases


class Bench:
    def __init__(self, args, inputs, tfshard, tf):
        self.args, self.inp, self.tfs, self.tf = args, inputs, tfshard, tf
        self.repeat, self.min_time = args.repeat, args.min_time
        self._read_all = None  # timings shared by read_all_tf and read_all_st

    def timings(self, fns):
        return C.bench_interleaved({k: f for k, f in fns.items() if f is not None},
                                   repeat=self.repeat, min_time=self.min_time)

    # -- open + list ---------------------------------------------------------------------

    def open_list(self, row: C.Row):
        p, tf, tfs = self.inp["many"], self.tf, self.tfs

        def with_tf():
            return tf.train.load_checkpoint(p).get_variable_to_shape_map()

        def with_tfshard():
            return tfs.list_variables(p)

        t = self.timings({"tf": with_tf, "tfshard": with_tfshard if tfs else None})
        row.tf = t["tf"].median
        expected = sorted((k, list(v)) for k, v in t["tf"].result.items())
        if tfs:
            row.tfshard = t["tfshard"].median
            row.ratio = row.tf / row.tfshard
            got = [(k, list(v)) for k, v in t["tfshard"].result]
            if got != expected:
                diff = [(a, b) for a, b in zip(got, expected) if a != b][:1]
                row.status = C.WRONG
                row.notes.append(f"list_variables differs from TF's: {len(got)} vs "
                                 f"{len(expected)} entries; first difference (tfshard, TF): "
                                 f"{diff[0] if diff else 'lengths only'}")
        row.detail = {k: v.to_json() for k, v in t.items()}

    # -- read everything -----------------------------------------------------------------

    def _consume(self):
        if self.args.consume == "sum":
            return lambda a: float(a.sum())
        return lambda a: np.array(a)  # "copy": the result is dropped, the copy is the cost

    def read_all(self):
        if self._read_all is not None:
            return self._read_all
        p, st_file, tf, tfs = self.inp["bert"], self.inp["bert_st"], self.tf, self.tfs
        consume = self._consume()
        names = sorted(tf.train.load_checkpoint(p).get_variable_to_shape_map())
        fns = {}

        def with_tf():
            reader = tf.train.load_checkpoint(p)
            return [consume(reader.get_tensor(n)) for n in names]
        fns["tf"] = with_tf

        try:
            from safetensors import safe_open
        except ImportError:
            safe_open = None
        if safe_open is not None:
            def with_st():
                with safe_open(st_file, framework="np") as f:
                    return [consume(f.get_tensor(n)) for n in names]
            fns["safetensors"] = with_st

        if tfs:
            def with_tfshard():
                with tfs.open(p, verify=True) as ckpt:
                    return [consume(ckpt[n]) for n in names]
            fns["tfshard"] = with_tfshard

        timings = self.timings(fns)
        # For scale: the consume step alone, on arrays already in memory (a floor for all three).
        reader = tf.train.load_checkpoint(p)
        timings["consume_only"] = self._consume_only(consume, [reader.get_tensor(n) for n in names])
        self._read_all = timings, names
        return self._read_all

    def _consume_only(self, consume, arrays):
        return self.timings({"c": lambda: [consume(a) for a in arrays]})["c"]

    def _read_all_row(self, row: C.Row, other: str):
        t, names = self.read_all()
        row.tf = t["tf"].median
        row.safetensors = t["safetensors"].median if "safetensors" in t else None
        row.detail = {k: v.to_json() for k, v in t.items()}
        row.notes.append(f"{len(names)} tensors, {self.inp['bert_bytes'] / 1e6:.0f} MB, "
                         f"consume={self.args.consume}; the consume step alone, on arrays "
                         f"already in memory, takes {C.fmt_value(t['consume_only'].median, 's')}")
        if "tfshard" not in t or other not in t:
            return
        row.tfshard = t["tfshard"].median
        row.ratio = t[other].median / row.tfshard
        if self.args.consume == "sum" and t["tfshard"].result != t[other].result:
            bad = [n for n, x, y in zip(names, t["tfshard"].result, t[other].result) if x != y]
            row.status = C.WRONG
            row.notes.append(f"tfshard's data differs from {other}'s in {len(bad)} tensors, "
                             f"e.g. {bad[0] if bad else '(count differs)'!r}")
        gbps = self.inp["bert_bytes"] / row.tfshard / 1e9
        row.notes.append(f"tfshard delivers {gbps:.2f} GB/s")

    def read_all_tf(self, row: C.Row):
        self._read_all_row(row, "tf")

    def read_all_st(self, row: C.Row):
        self._read_all_row(row, "safetensors")

    # -- row range -----------------------------------------------------------------------

    def read_rows(self, row: C.Row):
        p, tf, tfs = self.inp["bert"], self.tf, self.tfs
        reader = tf.train.load_checkpoint(p)
        fns = {"tf": lambda: np.array(reader.get_tensor(EMBEDDING)[ROW_SLICE])}
        st = None
        try:
            from safetensors import safe_open
            st = safe_open(self.inp["bert_st"], framework="np")
        except ImportError:
            pass
        if st is not None:
            fns["safetensors"] = lambda: np.array(st.get_slice(EMBEDDING)[ROW_SLICE])
        ckpt = None
        if tfs:
            ckpt = tfs.open(p)
            fns["tfshard"] = lambda: np.array(ckpt.read(EMBEDDING, index=np.s_[ROW_SLICE]))
        try:
            t = self.timings(fns)
        finally:
            if ckpt is not None:
                ckpt.close()
        row.tf = t["tf"].median
        row.safetensors = t["safetensors"].median if "safetensors" in t else None
        row.detail = {k: v.to_json() for k, v in t.items()}
        row.notes.append(f"{EMBEDDING}[{ROW_SLICE.start}:{ROW_SLICE.stop}] of "
                         f"{reader.get_variable_to_shape_map()[EMBEDDING]}; ratio is vs TF; "
                         f"readers opened once, outside the timing")
        if "tfshard" in t:
            row.tfshard = t["tfshard"].median
            row.ratio = row.tf / row.tfshard
            if not np.array_equal(t["tfshard"].result, t["tf"].result):
                row.status = C.WRONG
                row.notes.append("tfshard's rows differ from TF's")
            if row.safetensors is not None:
                row.notes.append(f"tfshard is {row.safetensors / row.tfshard:.3g}x "
                                 f"safetensors' get_slice")

    # -- command line --------------------------------------------------------------------

    def _tfshard_ls_argv(self, p: str) -> list[str]:
        import importlib.util

        if importlib.util.find_spec("tfshard.__main__") is not None:
            return [sys.executable, "-m", "tfshard", "ls", p]
        exe = Path(sys.executable).with_name("tfshard")
        if exe.exists():
            return [str(exe), "ls", p]
        raise RuntimeError("neither `python -m tfshard` nor a `tfshard` console script exists")

    def cli_ls(self, row: C.Row):
        p = self.inp["many"]
        names = sorted(self.tf.train.load_checkpoint(p).get_variable_to_shape_map())
        sample = names[:: max(1, len(names) // 50)] + [names[-1]]
        argvs = {"tf": [sys.executable, "-m", "tensorflow.python.tools.inspect_checkpoint",
                        f"--file_name={p}"]}
        if self.tfs:
            argvs["tfshard"] = self._tfshard_ls_argv(p)
        samples = {key: [] for key in argvs}
        for key, argv in argvs.items():  # first run: warms caches, checks the output
            t0 = time.perf_counter()
            out = C.run_checked(argv, timeout=600)
            if self.args.quick:  # a smoke test: let the checked run be the only sample
                samples[key].append(time.perf_counter() - t0)
            missing = [n for n in sample if n not in out]
            if missing:
                row.notes.append(f"`{' '.join(argv[1:3])}` output lacks {missing[0]!r}")
                if key == "tfshard":
                    row.status = C.WRONG
        for _ in range(0 if self.args.quick else self.args.cli_repeat):  # interleaved rounds
            for key, argv in argvs.items():
                samples[key] += C.time_process(argv, repeat=1).samples
        med = {k: float(np.median(v)) for k, v in samples.items()}
        row.tf = med["tf"]
        row.detail = {"argv": argvs, "samples_s": samples}
        row.notes.append(f"{len(names)} tensors, {len(samples['tf'])} timed runs each"
                         + (f"; tfshard run as {' '.join(argvs['tfshard'][:-1])} PREFIX"
                            if "tfshard" in argvs else ""))
        if "tfshard" in med:
            row.tfshard = med["tfshard"]
            row.ratio = row.tf / row.tfshard

    # -- memory --------------------------------------------------------------------------

    # Both children print one JSON line: growth after the open ("open") and after one pass
    # over the keys as well ("keys").  RSS is measured without tracemalloc running, since its
    # bookkeeping would itself grow the RSS; a separate child reports tracemalloc's view.
    TFSHARD_MEMORY_CHILD = C.RSS_SNIPPET + r"""
import gc, json, sys, tracemalloc
import numpy, tfshard
mode, tiny, p = sys.argv[1:4]
with tfshard.open(tiny) as c:          # lazy imports, first-use allocations: not counted
    for k in c:
        c.info(k)
gc.collect()
def sample():
    gc.collect()
    if mode == "tracemalloc":
        return tracemalloc.get_traced_memory()[0], None
    return rss_bytes(), rss_anon_bytes()
if mode == "tracemalloc":
    tracemalloc.start()
base = sample()
ckpt = tfshard.open(p)
after_open = sample()
n = sum(1 for _ in ckpt)               # one pass over the keys, not keeping them
after_keys = sample()
def delta(a, b):
    return [None if x is None or y is None else y - x for x, y in zip(a, b)]
print(json.dumps({"open": delta(base, after_open), "keys": delta(base, after_keys), "n": n}))
"""

    TF_MEMORY_CHILD = C.RSS_SNIPPET + r"""
import gc, json, sys
import tensorflow as tf
tiny, p = sys.argv[1:3]
tf.train.load_checkpoint(tiny).get_variable_to_shape_map()
def sample():
    gc.collect()
    return rss_bytes(), rss_anon_bytes()
base = sample()
reader = tf.train.load_checkpoint(p)
after_open = sample()
n = len(reader.get_variable_to_shape_map())
after_keys = sample()
def delta(a, b):
    return [None if x is None or y is None else y - x for x, y in zip(a, b)]
print(json.dumps({"open": delta(base, after_open), "keys": delta(base, after_keys), "n": n}))
"""

    def _memory(self):
        if getattr(self, "_memory_result", None) is None:
            p, tiny = self.inp["many"], self.inp["tiny"]
            res = {"tf": C.run_json_child(self.TF_MEMORY_CHILD, [tiny, p], timeout=600)}
            if self.tfs:
                # Median over a few children: RSS is page-granular and allocator-dependent.
                res["tfshard"] = [
                    C.run_json_child(self.TFSHARD_MEMORY_CHILD, ["rss", tiny, p], timeout=600)
                    for _ in range(1 if self.args.quick else 3)]
                res["tracemalloc"] = C.run_json_child(
                    self.TFSHARD_MEMORY_CHILD, ["tracemalloc", tiny, p], timeout=600)
            self._memory_result = res
        return self._memory_result

    def _memory_row(self, row: C.Row, stage: str):
        index_size = self.inp["many_index_bytes"]
        res = self._memory()
        row.detail = {"index_bytes": index_size, **res}
        row.tf = res["tf"][stage][0]
        row.notes.append(f"p.index is {C.fmt_value(index_size, 'bytes')} for "
                         f"{self.inp['many_tensors']} tensors; values are RSS growth")
        if "tfshard" not in res:
            return
        runs = res["tfshard"]
        if runs[0]["n"] != self.inp["many_tensors"]:
            row.status = C.WRONG
            row.notes.append(f"tfshard lists {runs[0]['n']} keys, TF {self.inp['many_tensors']}")
        traced = res["tracemalloc"][stage][0]
        if runs[0][stage][0] is None:  # no /proc: fall back to Python-visible allocations
            row.tfshard = traced
            row.notes.append("no /proc/self/statm: using tracemalloc (misses C allocations)")
        else:
            row.tfshard = float(np.median([r[stage][0] for r in runs]))
            anon = (float(np.median([r[stage][1] for r in runs]))
                    if runs[0][stage][1] is not None else None)
            row.notes.append(f"tfshard RSS growth {C.fmt_value(row.tfshard, 'bytes')} "
                             f"(anonymous {C.fmt_value(anon, 'bytes')}); Python allocations "
                             f"(tracemalloc) {C.fmt_value(traced, 'bytes')} = "
                             f"{traced / index_size:.2f}x index")
        row.ratio = row.tfshard / index_size

    def memory(self, row: C.Row):
        self._memory_row(row, "open")

    def memory_keys(self, row: C.Row):
        self._memory_row(row, "keys")


DESCRIPTIONS = {
    "open_list": "open + list_variables, {many_tensors} tensors vs tf.train.load_checkpoint "
                 "+ get_variable_to_shape_map",
    "read_all_tf": "read + consume every tensor of a BERT-shaped model ({bert_tensors} tensors), "
                   "CRC verified, vs TF CheckpointReader.get_tensor",
    "read_all_st": "same, vs safetensors safe_open(...).get_tensor",
    "read_rows": "100 rows of the word-embedding table, open checkpoint, vs TF get_tensor[...]",
    "cli_ls": "`tfshard ls` process vs `python -m ...inspect_checkpoint`, {many_tensors} tensors",
    "memory": "RSS growth from opening a {many_tensors}-tensor checkpoint vs its .index size",
    "memory_keys": "same, after one pass over its keys (TF: get_variable_to_shape_map)",
}


def parse_args(argv=None):
    parser = C.benchmark_parser(__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="tiny inputs (300 tensors, ~4 MB model), one sample per library, no "
                             "calibration or warm-up process: a smoke test, not a measurement")
    parser.add_argument("--repeat", type=int, default=None, metavar="N",
                        help="timed samples per library and case (default 5; 1 with --quick)")
    parser.add_argument("--cli-repeat", type=int, default=None, metavar="N",
                        help="processes per tool for cli_ls (default: --repeat)")
    parser.add_argument("--min-time", type=float, default=None, metavar="SECONDS",
                        help="shortest duration of one sample; fast calls are looped "
                             "(default 0.2; 0 with --quick)")
    parser.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                        help=f"cache for generated inputs (default {C.default_workdir()}); "
                             "reused when present")
    parser.add_argument("--consume", choices=("sum", "copy"), default="sum",
                        help="what read_all does with each returned array (default sum; see "
                             "the docstring)")
    args = C.parse_benchmark_args(parser, argv, CASES, others="TF and safetensors")
    args.cli_repeat = args.cli_repeat or args.repeat
    if args.min_time is None:
        args.min_time = 0.0 if args.quick else 0.2
    if args.cli_repeat < 1:
        parser.error("--cli-repeat must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    tf = C.import_tf()
    tfshard, why = (None, "--no-tfshard") if args.no_tfshard else C.import_tfshard()
    if tfshard is None:
        log(f"tfshard not measured ({why}); its columns will say n/a")
    inputs = build_inputs(args)
    bench = Bench(args, inputs, tfshard, tf)

    rows = []
    for case in args.cases:
        op, threshold = TARGETS[case]
        row = C.Row(case=case, what=DESCRIPTIONS[case].format(**inputs),
                    unit="bytes" if case.startswith("memory") else "s", op=op, threshold=threshold)
        rows.append(C.run_case(row, getattr(bench, case), log=log))

    env = C.library_environment(tf, tfshard, why)
    return C.finish("bench_read", args, rows, env, inputs,
                    f"repeat {args.repeat}, min-time {args.min_time} s, consume={args.consume}, "
                    f"workdir {args.workdir}",
                    t_start)


if __name__ == "__main__":
    sys.exit(main())
