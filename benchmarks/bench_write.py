#!/usr/bin/env python
"""Benchmark tfshard's checkpoint writer against TensorFlow, safetensors and plain file writes.

Inputs are generated in memory (no cache; numpy's generator is fast enough):

* ``bert``: a BERT-base-shaped model, 199 float32 tensors, about 440 MB (about 4 MB with
  ``--quick``);
* ``small``: 20,000 small float32 tensors named like
  ``bert/encoder/layer_123/attention/self/query/kernel_7`` (200 with ``--quick``).

Every writer writes to a new prefix (or file) in one scratch directory under ``--workdir``
(default ``$TMPDIR/tfshard-bench``) on every call.  After each writer's warm-up and after
every sample, untimed, the directory is emptied and ``sync()`` is called, so no writer pays
inside its timing for overwriting or unlinking files, or for flushing another writer's
metadata.  Writes go to the page cache (tfshard runs with its default ``fsync=False``;
TensorFlow and safetensors do not fsync either), so this measures CPU and copying cost, not
the disk.  Times are medians of ``--repeat`` samples of one call each (full-size writes take
tens of milliseconds or more, and looping would let a sample's later writes run beside its
earlier files); the writers are sampled in turn so machine noise hits them alike; each has one
untimed warm-up call; ratios are "other's median / tfshard's median".  The script reports, it
does not assert: it exits 0 when targets are missed (rows say MISS) and 1 only when a case
fails to run (ERROR) or a checkpoint tfshard wrote does not read back in TensorFlow as its
input (WRONG).

Correctness is checked once per input, outside the timing: tfshard saves it, the directory
must then hold exactly ``P.index`` and the ``P.data-*`` shards (no temporary files left), and
``tf.train.load_checkpoint(P)`` must list the same names and return every tensor with the
input's dtype, shape and bytes.

Cases
-----
bert_tf
    ``tfshard.save(p, bert)`` (defaults: 64-byte alignment, and two data files written by
    two threads for a model this size on a machine with two or more cores, else one) vs
    ``tf.raw_ops.SaveV2`` in eager mode, with the tensors, names and (empty) slice specs
    converted to TF tensors before timing, so TF is charged only for the save.  Target:
    tfshard >= 1.25x faster.
bert_st
    Same, vs ``safetensors.numpy.save_file(bert, f)``.  Target: >= 1.1x.
bert_disk
    Same, vs the page-cache limit: ``open(f, "wb")`` and ``f.write(a)`` for every array in
    turn, into one new file (what tfshard's single data file costs without the index,
    checksums or padding).  Ratio: plain time / tfshard time; target >= 0.85 (tfshard at
    least 85% of plain-write speed).  The GB/s of both are shown.
small_tf
    ``tfshard.save`` vs ``tf.raw_ops.SaveV2`` (tensors already in TF, as in bert_tf) on
    ``small``: per-tensor overhead.  Target: >= 3x.
sharded
    ``tfshard.save(p, bert, num_shards=4)`` vs ``num_shards=1``, for information (no target):
    the tfshard column is the 4-shard time, the ratio is 1-shard / 4-shard (above 1: sharding
    helps).  The shards are written by parallel threads, at most one per CPU.
overwrite
    ``tfshard.save(p, bert)`` where ``p`` already holds a checkpoint of the same model (the
    ``saver.save(sess, "model.ckpt")`` loop), vs a save to a new prefix, for information (no
    target): the tfshard column is the overwrite time, the ratio is fresh / overwrite (1: as
    fast as a fresh save).  The old checkpoint is written untimed before every sample; the
    overwrite includes deleting the old files after the commit (freeing their blocks).

The bert cases share one interleaved run of all the writers they need, so every ratio is
taken against the same tfshard samples.

Examples
--------
    python benchmarks/bench_write.py                  # full run, a few minutes
    python benchmarks/bench_write.py --quick          # tiny inputs, one repeat (smoke test)
    python benchmarks/bench_write.py --cases small_tf --repeat 9 --json out.json
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CASES = ("bert_tf", "bert_st", "bert_disk", "small_tf", "sharded", "overwrite")
BERT_CASES = ("bert_tf", "bert_st", "bert_disk", "sharded", "overwrite")
SHARDS = 4

TARGETS = {  # case: (op, threshold); None: informational
    "bert_tf": (">=", 1.25),
    "bert_st": (">=", 1.1),
    "bert_disk": (">=", 0.85),
    "small_tf": (">=", 3.0),
    "sharded": (">=", None),
    "overwrite": (">=", None),
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def import_writer():
    """``(tfshard, None)`` if tfshard's writer is usable, else ``(None, reason)``."""
    mod, why = C.import_tfshard()
    if mod is not None and not callable(getattr(mod, "save", None)):
        return None, "tfshard has no save()"
    return mod, why


def gbps(nbytes: int, seconds: float | None) -> str:
    return "n/a" if not seconds else f"{nbytes / seconds / 1e9:.2f} GB/s"


# --------------------------------------------------------------------------------------------
# inputs


def build_inputs(args) -> dict:
    """The tensors the selected cases need, generated in memory."""
    inputs = {}
    if any(c in BERT_CASES for c in args.cases):
        cfg = C.BERT_TINY if args.quick else C.BERT_BASE
        inputs["bert"] = C.random_tensors(C.bert_shapes(**cfg), seed=2)
    if "small_tf" in args.cases:
        inputs["small"] = C.many_small_tensors(200 if args.quick else 20_000, seed=1)
    return inputs


def describe(inputs: dict) -> dict:
    """Sizes of the inputs, for the case descriptions and the JSON output."""
    out = {}
    for key, tensors in inputs.items():
        out[f"{key}_tensors"] = len(tensors)
        out[f"{key}_bytes"] = int(sum(a.nbytes for a in tensors.values()))
    return out


# --------------------------------------------------------------------------------------------
# cases


class Bench(C.ScratchWrites):
    def __init__(self, args, inputs, tfshard, tf, outdir: Path):
        self.args, self.inp, self.tfs, self.tf = args, inputs, tfshard, tf
        self.sizes = describe(inputs)
        self.outdir = outdir
        self._serial = itertools.count()
        self._checked: dict = {}  # (input, num_shards) -> problem or None
        self._bert = None         # timings shared by the bert cases
        self._existing = None     # (prefix, tensors): a checkpoint remade after each clear

    def timings(self, fns):
        return C.bench_interleaved({k: f for k, f in fns.items() if f is not None},
                                   repeat=self.args.repeat, min_time=self.args.min_time,
                                   after_sample=self._clear)

    # -- writers: each call makes a new checkpoint or file and returns its path -----------

    def tfshard_writer(self, tensors, **options):
        save = self.tfs.save
        return lambda: save(self._path("tfshard"), tensors, **options)

    def tf_writer(self, tensors):
        tf = self.tf
        # Converted once here: the comparison is with TF's save, not numpy -> TF conversion.
        names = tf.constant(list(tensors))
        slices = tf.constant([""] * len(tensors))
        values = [tf.constant(a) for a in tensors.values()]

        def write():
            prefix = self._path("tf")
            tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=slices,
                              tensors=values)
            return prefix
        return write

    def safetensors_writer(self, tensors):
        try:
            from safetensors.numpy import save_file
        except ImportError:
            return None

        def write():
            path = self._path("st") + ".safetensors"
            save_file(tensors, path)
            return path
        return write

    def plain_writer(self, tensors):
        arrays = list(tensors.values())

        def write():
            path = self._path("plain") + ".bin"
            with open(path, "wb") as f:
                for a in arrays:
                    f.write(a)
            return path
        return write

    # -- correctness -----------------------------------------------------------------------

    def check(self, row: C.Row, which: str, num_shards: int = 1) -> None:
        """Mark ``row`` WRONG if tfshard's checkpoint of input ``which`` is not read back by
        TensorFlow as that input (checked once per input and shard count)."""
        key = (which, num_shards)
        if key not in self._checked:
            self._checked[key] = self._roundtrip_problem(self.inp[which], num_shards)
        problem = self._checked[key]
        if problem:
            row.status = C.WRONG
            row.notes.append(f"tfshard.save(num_shards={num_shards}) is wrong: {problem}")
        else:
            row.notes.append(f"checked: TF reads tfshard's {num_shards}-shard checkpoint back "
                             f"as the input")

    def _roundtrip_problem(self, tensors, num_shards: int) -> str | None:
        self._clear()
        try:
            prefix = self.tfs.save(self._path("check"), tensors, num_shards=num_shards)
            base = os.path.basename(prefix)
            expected = {base + ".index"} | {f"{base}.data-{i:05d}-of-{num_shards:05d}"
                                            for i in range(num_shards)}
            present = set(os.listdir(self.outdir))
            if present != expected:
                return f"the directory holds {sorted(present)}, expected {sorted(expected)}"
            reader = self.tf.train.load_checkpoint(prefix)
            listed = reader.get_variable_to_shape_map()
            if set(listed) != set(tensors):
                return (f"TF lists {len(listed)} tensors, {len(tensors)} were saved; e.g. "
                        f"{sorted(set(listed) ^ set(tensors))[0]!r} is in only one")
            for name, want in tensors.items():
                got = reader.get_tensor(name)
                # Bytes, not ==: -0.0 vs 0.0 or a changed NaN payload would be a bug too.
                if (got.dtype != want.dtype or got.shape != want.shape
                        or got.tobytes() != want.tobytes()):
                    return (f"TF reads {name!r} as {got.dtype}{list(got.shape)}, saved "
                            f"{want.dtype}{list(want.shape)}"
                            + (" with different values" if got.shape == want.shape else ""))
            return None
        finally:
            reader = None  # let TF close its files before they are deleted
            self._clear()

    # -- bert ------------------------------------------------------------------------------

    def bert_timings(self):
        """One interleaved run of every writer the selected bert cases need."""
        if self._bert is None:
            tensors, cases = self.inp["bert"], self.args.cases
            fns = {}
            if self.tfs:
                fns["tfshard"] = self.tfshard_writer(tensors)
                if "sharded" in cases:
                    fns["tfshard_1"] = self.tfshard_writer(tensors, num_shards=1)
                    fns[f"tfshard_{SHARDS}"] = self.tfshard_writer(tensors, num_shards=SHARDS)
                if "overwrite" in cases:
                    existing = str(self.outdir / "existing")
                    self._existing = (existing, tensors)
                    save = self.tfs.save
                    fns["tfshard_overwrite"] = lambda: save(existing, tensors)
            if "bert_tf" in cases:
                fns["tf"] = self.tf_writer(tensors)
            if "bert_st" in cases:
                fns["safetensors"] = self.safetensors_writer(tensors)
            if "bert_disk" in cases:
                fns["plain"] = self.plain_writer(tensors)
            log(f"  timing {', '.join(k for k, f in fns.items() if f)} on "
                f"{self.sizes['bert_bytes'] / 1e6:.0f} MB")
            try:
                self._bert = self.timings(fns)
            finally:
                self._existing = None
                self._clear()
        return self._bert

    def _bert_row(self, row: C.Row, other: str | None) -> dict:
        t = self.bert_timings()
        nbytes = self.sizes["bert_bytes"]
        row.detail = {k: v.to_json() for k, v in t.items()}
        row.tf = t["tf"].median if "tf" in t else None
        row.safetensors = t["safetensors"].median if "safetensors" in t else None
        row.notes.append(f"{self.sizes['bert_tensors']} tensors, {nbytes / 1e6:.0f} MB; "
                         + ", ".join(f"{k} {gbps(nbytes, v.median)}" for k, v in t.items()))
        if "tfshard" in t:
            row.tfshard = t["tfshard"].median
            if other is not None and other in t:
                row.ratio = t[other].median / row.tfshard
            self.check(row, "bert")
        return t

    def bert_tf(self, row: C.Row):
        self._bert_row(row, "tf")

    def bert_st(self, row: C.Row):
        self._bert_row(row, "safetensors")

    def bert_disk(self, row: C.Row):
        t = self._bert_row(row, "plain")
        row.notes.insert(0, f"plain open+write of every array: "
                            f"{C.fmt_value(t['plain'].median, 's')}, "
                            f"{gbps(self.sizes['bert_bytes'], t['plain'].median)}; tfshard "
                            f"{gbps(self.sizes['bert_bytes'], row.tfshard)}")

    def sharded(self, row: C.Row):
        t = self._bert_row(row, None)
        row.tf = row.safetensors = None  # not part of this comparison; see the other rows
        four = f"tfshard_{SHARDS}"
        if four in t:
            one = t["tfshard_1"].median
            row.tfshard = t[four].median
            row.ratio = one / row.tfshard
            row.notes.insert(0, f"num_shards={SHARDS}: {C.fmt_value(row.tfshard, 's')}; "
                                f"num_shards=1: {C.fmt_value(one, 's')}; "
                                f"{min(SHARDS, os.cpu_count() or 1)} writer threads")
            self.check(row, "bert", num_shards=SHARDS)

    def overwrite(self, row: C.Row):
        t = self._bert_row(row, None)
        row.tf = row.safetensors = None  # not part of this comparison; see the other rows
        if "tfshard_overwrite" in t:
            fresh = t["tfshard"].median
            row.tfshard = t["tfshard_overwrite"].median
            row.ratio = fresh / row.tfshard
            row.notes.insert(0, f"over an existing checkpoint: {C.fmt_value(row.tfshard, 's')}"
                                f"; to a new prefix: {C.fmt_value(fresh, 's')}")

    # -- many small tensors ----------------------------------------------------------------

    def small_tf(self, row: C.Row):
        tensors = self.inp["small"]
        t = self.timings({"tf": self.tf_writer(tensors),
                          "tfshard": self.tfshard_writer(tensors) if self.tfs else None})
        row.detail = {k: v.to_json() for k, v in t.items()}
        row.tf = t["tf"].median
        n = len(tensors)
        row.notes.append(f"{n} tensors, {self.sizes['small_bytes'] / 1e6:.2f} MB; per tensor: "
                         + ", ".join(f"{k} {C.fmt_value(v.median / n, 's')}"
                                     for k, v in t.items()))
        if "tfshard" in t:
            row.tfshard = t["tfshard"].median
            row.ratio = row.tf / row.tfshard
            self.check(row, "small")


DESCRIPTIONS = {
    "bert_tf": "tfshard.save of a BERT-shaped model ({bert_tensors} float32 tensors) vs "
               "tf.raw_ops.SaveV2, tensors already in TF",
    "bert_st": "same, vs safetensors.numpy.save_file",
    "bert_disk": "same, vs open() + f.write(array) of every array into one file; "
                 "ratio = plain / tfshard",
    "small_tf": "tfshard.save of {small_tensors} small float32 tensors vs tf.raw_ops.SaveV2, "
                "tensors already in TF",
    "sharded": f"tfshard.save of the BERT-shaped model with num_shards={SHARDS} vs 1; "
               f"ratio = 1-shard / {SHARDS}-shard (information, no target)",
    "overwrite": "tfshard.save of the BERT-shaped model over an existing checkpoint of it vs "
                 "to a new prefix; ratio = fresh / overwrite (information, no target)",
}


def parse_args(argv=None):
    parser = C.benchmark_parser(__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="tiny inputs (200 tensors, ~4 MB model), one sample per writer: a "
                             "smoke test, not a measurement")
    parser.add_argument("--repeat", type=int, default=None, metavar="N",
                        help="timed samples per writer and case (default 5; 1 with --quick)")
    parser.add_argument("--min-time", type=float, default=None, metavar="SECONDS",
                        help="shortest duration of one sample; faster calls are looped, each "
                             "writing a new checkpoint, deleted after the sample (default 0: "
                             "one call per sample)")
    parser.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                        help=f"where the scratch directory for written files is made "
                             f"(default {C.default_workdir()}); it is removed at the end")
    args = C.parse_benchmark_args(parser, argv, CASES, others="the other writers")
    if args.min_time is None:
        args.min_time = 0.0
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    tf = C.import_tf()
    tfshard, why = (None, "--no-tfshard") if args.no_tfshard else import_writer()
    if tfshard is None:
        log(f"tfshard not measured ({why}); its columns will say n/a")
    inputs = build_inputs(args)
    sizes = describe(inputs)
    args.workdir.mkdir(parents=True, exist_ok=True)
    # A directory of its own, so emptying it between samples can touch nothing else.
    outdir = Path(tempfile.mkdtemp(prefix="write.", dir=args.workdir))
    log(f"writing into {outdir}")
    bench = Bench(args, inputs, tfshard, tf, outdir)

    rows = []
    try:
        for case in args.cases:
            op, threshold = TARGETS[case]
            row = C.Row(case=case, what=DESCRIPTIONS[case].format(**sizes), unit="s", op=op,
                        threshold=threshold)
            rows.append(C.run_case(row, getattr(bench, case), log=log))
    finally:
        shutil.rmtree(outdir, ignore_errors=True)

    env = C.library_environment(tf, tfshard, why)
    return C.finish("bench_write", args, rows, env, sizes,
                    f"repeat {args.repeat}, min-time {args.min_time} s, workdir {args.workdir}",
                    t_start)


if __name__ == "__main__":
    sys.exit(main())
