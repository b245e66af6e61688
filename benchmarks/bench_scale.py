#!/usr/bin/env python
"""Benchmark tfshard at scale: per-tensor overhead on a million tensors, large writes, reads.

Inputs (cached under ``--workdir``, default ``$TMPDIR/tfshard-bench``, except where noted):

* ``million``: 1,000,000 small float32 tensors (shapes of 1 to 32 elements, named like
  ``bert/encoder/layer_123/attention/self/query/kernel_7``), written by ``tfshard.save``
  (about 100 MB with the default 64-byte alignment); 2,000 with ``--quick``;
* ``many``: 30,000 of the same tensors written by TensorFlow's ``SaveV2`` (500 with
  ``--quick``);
* ``bert``: a BERT-base-shaped model (199 float32 tensors, 110M parameters, 440 MB; about 4 MB
  with ``--quick``) written by ``SaveV2`` and as ``model.safetensors``; the write cases
  generate the same tensors in memory.

Every file is read once before timing (warm page cache).  Times are medians of ``--repeat``
samples (default 3; 1 with ``--quick``), libraries sampled in turn so that machine noise hits
them alike; ratios are "other's median / tfshard's median", or, for rows whose goal is an
absolute time or speed, "goal / tfshard" (1x or more meets the goal).  The script reports, it
does not assert: it exits 0 when goals are missed (MISS) and 1 only when a case fails to run
(ERROR) or tfshard's values differ from TensorFlow's (WRONG).

Cases
-----
open_list_30k
    ``tfshard.list_variables(p)`` vs ``tf.train.load_checkpoint(p).get_variable_to_shape_map()``
    on ``many``.  Target: >= 15x.
m_open
    ``tfshard.open(p).close()`` on ``million``.  Goal: <= 0.1 s.
m_list
    ``tfshard.list_variables(p)`` on ``million``; TF's ``tf.train.list_variables`` timed once in
    the same run for the TF column.  Goal: <= 0.15 s.
m_read
    ``ckpt[name]`` for every name of ``million`` (verify=True, one open).  TF's
    ``reader.get_tensor`` loop takes minutes: it is timed on an evenly spaced sample of
    names (``--tf-sample``, default 20,000) and extrapolated to all of them, as the notes say.
    Goal: <= 2 s.
m_load
    ``tfshard.load(p)`` (verify=True) on ``million``.  Goal: <= 1 s.
m_verify
    ``tfshard.open(p).verify_all()`` on ``million``.  Goal: <= 1 s.
m_save
    ``tfshard.save(p, tensors)`` of ``million``'s tensors (already in memory).  Goal: <= 1 s.
m_save_rss
    Peak resident memory gained during that save, measured in a fresh interpreter (VmHWM
    reset through ``/proc/self/clear_refs`` once the tensors exist), vs the checkpoint's size
    on disk.  Goal: <= 2x.

The three BERT write cases share one interleaved run of the writers, at least 11 samples each.

bert_plain
    ``tfshard.save(p, bert, num_shards=1)`` vs ``open()`` + ``f.write(a)`` of every array into
    one new file: ratio plain / tfshard; goal >= 0.97.
bert_overwrite
    ``tfshard.save(p, bert)`` (defaults) where ``p`` holds a checkpoint of the same model,
    vs a save to a new prefix: ratio fresh / overwrite; goal >= 0.91 (overwrite <= 1.1x the
    fresh time).  The old checkpoint is rewritten untimed before each sample.
bert_st
    ``tfshard.save(p, bert)`` with the default settings vs ``safetensors.numpy.save_file``.
    Goal: >= 1.3x.
bert_read
    Open ``bert`` with ``verify=True`` and read every tensor (CRC-32C checked), vs TF's
    ``load_checkpoint`` + ``get_tensor`` and safetensors' ``safe_open`` + ``get_tensor``
    (no checksum).  The ratio is tfshard's GB/s / 12 GB/s (goal >= 1x); TF and safetensors
    are shown for comparison.
scale_verify_1, scale_verify_2, scale_load_1, scale_load_2
    ``verify_all()`` and ``load()`` with ``threads=1`` and ``threads=2`` on ``bert`` (large
    tensors) and on ``million`` (small ones): the scaling table; ratio = 1-thread /
    N-thread time on ``bert`` (information, no target); the notes give ``million`` too.
big
    Only with ``--big``: a ~30 GB checkpoint (``--big-gb``) written by tfshard, converted to
    safetensors (``tfshard.convert``, which records CRC-32Cs), then read in full on a cold
    page cache (``/proc/sys/vm/drop_caches``, where writable) with verification by tfshard
    (every tensor read, checked and released), vs ``cat`` of the same file to /dev/null;
    peak RSS tracked (goal < 1 GiB).  The ratio is for the safetensors file (goal >= 0.8x
    cat's speed); the TF checkpoint read the same way, and safetensors' own ``safe_open``
    (no checksums), are in the notes.  The files are deleted afterwards.

Examples
--------
    python benchmarks/bench_scale.py                  # full run, ~1 GB of inputs, several minutes
    python benchmarks/bench_scale.py --quick          # tiny inputs, one repeat (smoke test)
    python benchmarks/bench_scale.py --cases m_open,m_list --repeat 5
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CASES = ("open_list_30k", "m_open", "m_list", "m_read", "m_load", "m_verify", "m_save",
         "m_save_rss", "bert_plain", "bert_overwrite", "bert_st", "bert_read",
         "scale_verify_1", "scale_verify_2", "scale_load_1", "scale_load_2", "big")
INFO_CASES = {"scale_verify_1", "scale_verify_2", "scale_load_1", "scale_load_2"}
BERT_WRITE_CASES = ("bert_plain", "bert_overwrite", "bert_st")

TARGETS = {  # case: (op, threshold)
    "open_list_30k": (">=", 15.0),
    "m_open": (">=", 1.0), "m_list": (">=", 1.0), "m_read": (">=", 1.0),
    "m_load": (">=", 1.0), "m_verify": (">=", 1.0), "m_save": (">=", 1.0),
    "m_save_rss": ("<=", 2.0),
    "bert_plain": (">=", 0.97), "bert_overwrite": (">=", 0.91), "bert_st": (">=", 1.3),
    "bert_read": (">=", 1.0), "big": (">=", 0.8),
}
GOAL_SECONDS = {"m_open": 0.1, "m_list": 0.15, "m_read": 2.0, "m_load": 1.0,
                "m_verify": 1.0, "m_save": 1.0}
READ_GOAL_GBPS = 12.0

DESCRIPTIONS = {
    "open_list_30k": "list_variables of {many_tensors} tensors vs TF's "
                     "load_checkpoint + get_variable_to_shape_map",
    "m_open": "open + close of {million_tensors} tensors; ratio = 0.1 s / tfshard",
    "m_list": "list_variables of {million_tensors} tensors; ratio = 0.15 s / tfshard",
    "m_read": "ckpt[name] for each of {million_tensors} tensors (verified); "
              "ratio = 2 s / tfshard",
    "m_load": "tfshard.load of {million_tensors} tensors (verified); ratio = 1 s / tfshard",
    "m_verify": "verify_all of {million_tensors} tensors; ratio = 1 s / tfshard",
    "m_save": "tfshard.save of {million_tensors} tensors; ratio = 1 s / tfshard",
    "m_save_rss": "peak RSS gained by that save vs the checkpoint's size on disk",
    "bert_plain": "tfshard.save(num_shards=1) of BERT-base ({bert_mb} MB) vs plain write(); "
                  "ratio = plain / tfshard",
    "bert_overwrite": "tfshard.save of BERT-base over an existing prefix vs a new one; "
                      "ratio = fresh / overwrite",
    "bert_st": "tfshard.save of BERT-base (defaults) vs safetensors save_file",
    "bert_read": "open(verify=True) + read every tensor of BERT-base; "
                 "ratio = tfshard GB/s / 12 GB/s",
    "scale_verify_1": "verify_all(threads=1) of BERT-base; ratio = 1.0 (the reference)",
    "scale_verify_2": "verify_all(threads=2) of BERT-base; ratio = 1-thread / 2-thread",
    "scale_load_1": "load(threads=1) of BERT-base; ratio = 1.0 (the reference)",
    "scale_load_2": "load(threads=2) of BERT-base; ratio = 1-thread / 2-thread",
    "big": "--big: cold read of a ~{big_gb} GB checkpoint (verified) vs cat; ratio = "
           "tfshard speed / cat speed",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def gbps(nbytes: int, seconds: float | None) -> str:
    return "n/a" if not seconds else f"{nbytes / seconds / 1e9:.2f} GB/s"


# --------------------------------------------------------------------------------------------
# inputs


def build_inputs(args, tfshard) -> dict:
    n_million = 2_000 if args.quick else 1_000_000
    n_many = 500 if args.quick else 30_000
    bert_cfg = C.BERT_TINY if args.quick else C.BERT_BASE
    workdir = args.workdir

    def build_million(tmp: Path):
        if tfshard is None:
            raise RuntimeError("the million-tensor input is written by tfshard")
        tensors = C.many_small_tensors(n_million, seed=5)
        tfshard.save(tmp / "ckpt", tensors)
        return {"tensors": len(tensors), "bytes": int(sum(a.nbytes for a in tensors.values()))}

    def build_many(tmp: Path):
        tensors = C.many_small_tensors(n_many, seed=1)
        C.tf_save_v2(tmp / "ckpt", tensors)
        return {"tensors": len(tensors)}

    log(f"inputs in {workdir}")
    inputs: dict = {}
    if any(c.startswith("m_") or c.startswith("scale") for c in args.cases) and tfshard:
        million, m = C.cached_input(workdir, f"million-{n_million}", {"n": n_million},
                                    build_million, log=log)
        inputs.update(million=str(million / "ckpt"), million_tensors=m["tensors"],
                      million_bytes=sum(p.stat().st_size
                                        for p in C.checkpoint_files(million / "ckpt")))
        C.warm(C.checkpoint_files(million / "ckpt"))
    inputs["million_tensors"] = inputs.get("million_tensors", n_million)
    many, many_m = C.cached_input(workdir, f"many-{n_many}", {"n": n_many}, build_many, log=log)
    inputs.update(many=str(many / "ckpt"), many_tensors=many_m["tensors"])
    bert, bert_m = C.bert_input(workdir, bert_cfg, log=log)
    inputs.update(bert=str(bert / "ckpt"), bert_st=str(bert / "model.safetensors"),
                  bert_tensors=bert_m["tensors"], bert_bytes=bert_m["bytes"],
                  bert_mb=round(bert_m["bytes"] / 1e6), bert_cfg=bert_cfg,
                  big_gb=args.big_gb)
    C.warm(C.checkpoint_files(many / "ckpt") + C.checkpoint_files(bert / "ckpt")
           + [bert / "model.safetensors"])
    return inputs


# --------------------------------------------------------------------------------------------
# children measuring memory

SAVE_RSS_CHILD = C.RSS_SNIPPET + r'''
import json, sys
sys.path.insert(0, sys.argv[3])
import _common as C
import tfshard
n, out = int(sys.argv[1]), sys.argv[2]
tensors = C.many_small_tensors(n, seed=5)
tfshard.save(out + "-warm", C.many_small_tensors(10, seed=6))
def hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = rss_bytes()
tfshard.save(out, tensors)
print(json.dumps({"peak": hwm() - before, "before": before}))
'''


# --------------------------------------------------------------------------------------------
# cases


class Bench(C.ScratchWrites):
    def __init__(self, args, inputs, tfshard, tf, outdir: Path):
        self.args, self.inp, self.tfs, self.tf = args, inputs, tfshard, tf
        self.outdir = outdir
        self._serial = itertools.count()
        self._existing = None
        self._bert_write = None
        self._million_tensors = None
        self._scale = None

    # -- helpers ---------------------------------------------------------------------------

    def timings(self, fns, after=None):
        return C.bench_interleaved({k: f for k, f in fns.items() if f is not None},
                                   repeat=self.args.repeat, min_time=0.0, after_sample=after)

    def _need_tfshard(self):
        if self.tfs is None:
            raise _Skip()

    def _goal_row(self, row: C.Row, seconds: float):
        n = self.inp["million_tensors"]
        row.tfshard = seconds
        # The goal is for a million tensors; --quick scales it to the tensors it has.
        row.ratio = GOAL_SECONDS[row.case] * n / 1_000_000 / seconds
        row.notes.append(f"{C.fmt_value(seconds / n, 's')} per tensor; goal "
                         f"{GOAL_SECONDS[row.case]:g} s for 1M tensors"
                         + (f" ({n} here: --quick)" if n != 1_000_000 else ""))

    def million_tensors(self):
        if self._million_tensors is None:
            self._million_tensors = C.many_small_tensors(self.inp["million_tensors"], seed=5)
        return self._million_tensors

    # -- per-tensor overhead ---------------------------------------------------------------

    def open_list_30k(self, row: C.Row):
        p, tf, tfs = self.inp["many"], self.tf, self.tfs
        fns = {"tf": lambda: tf.train.load_checkpoint(p).get_variable_to_shape_map()}
        if tfs:
            fns["tfshard"] = lambda: tfs.list_variables(p)
        t = C.bench_interleaved(fns, repeat=max(self.args.repeat, 5), min_time=0.2)
        row.detail = {k: v.to_json() for k, v in t.items()}
        row.tf = t["tf"].median
        if tfs:
            got = dict(t["tfshard"].result)
            want = {k: list(v) for k, v in t["tf"].result.items()}
            if got != want:
                row.status = C.WRONG
                row.notes.append("tfshard's names/shapes differ from TF's")
            row.tfshard = t["tfshard"].median
            row.ratio = row.tf / row.tfshard

    def m_open(self, row: C.Row):
        self._need_tfshard()
        p, tfs = self.inp["million"], self.tfs
        t = self.timings({"tfshard": lambda: tfs.open(p).close()})
        self._goal_row(row, t["tfshard"].median)

    def m_list(self, row: C.Row):
        self._need_tfshard()
        p, tfs = self.inp["million"], self.tfs
        t = self.timings({"tfshard": lambda: tfs.list_variables(p)})
        self._goal_row(row, t["tfshard"].median)
        t0 = time.perf_counter()
        want = self.tf.train.list_variables(p)
        row.tf = time.perf_counter() - t0
        got = t["tfshard"].result
        if [(n, list(s)) for n, s in want] != [(n, list(s)) for n, s in got]:
            row.status = C.WRONG
            row.notes.append("tfshard.list_variables differs from tf.train.list_variables")
        row.notes.append(f"TF's list_variables (one call): {C.fmt_value(row.tf, 's')}, "
                         f"{row.tf / row.tfshard:.1f}x tfshard")

    def m_read(self, row: C.Row):
        self._need_tfshard()
        p, tfs = self.inp["million"], self.tfs
        with tfs.open(p) as probe:
            names = list(probe)

        def loop():
            with tfs.open(p, verify=True) as ckpt:
                for name in names:
                    ckpt[name]
        t = self.timings({"tfshard": loop})
        self._goal_row(row, t["tfshard"].median)
        step = max(1, len(names) // self.args.tf_sample)
        sample = names[::step]
        reader = self.tf.train.load_checkpoint(p)
        with tfs.open(p) as ckpt:
            for name in sample[:50]:  # spot check values
                if not np.array_equal(reader.get_tensor(name), ckpt[name]):
                    row.status = C.WRONG
                    row.notes.append(f"tensor {name!r} differs from TF's")
        t0 = time.perf_counter()
        for name in sample:
            reader.get_tensor(name)
        elapsed = time.perf_counter() - t0
        row.tf = elapsed * len(names) / len(sample)
        row.notes.append(f"TF's get_tensor loop: {len(sample)} of {len(names)} names timed "
                         f"({C.fmt_value(elapsed, 's')}), extrapolated to "
                         f"{C.fmt_value(row.tf, 's')} ({row.tf / row.tfshard:.1f}x tfshard)")

    def m_load(self, row: C.Row):
        self._need_tfshard()
        p, tfs = self.inp["million"], self.tfs
        t = self.timings({"tfshard": lambda: tfs.load(p)})
        self._goal_row(row, t["tfshard"].median)
        got = t["tfshard"].result
        if len(got) != self.inp["million_tensors"]:
            row.status = C.WRONG
            row.notes.append(f"load returned {len(got)} tensors")

    def m_verify(self, row: C.Row):
        self._need_tfshard()
        p, tfs = self.inp["million"], self.tfs

        def verify():
            with tfs.open(p) as ckpt:
                return ckpt.verify_all()
        t = self.timings({"tfshard": verify})
        self._goal_row(row, t["tfshard"].median)
        if t["tfshard"].result:
            row.status = C.WRONG
            row.notes.append(f"verify_all reported {len(t['tfshard'].result)} problems")

    def m_save(self, row: C.Row):
        self._need_tfshard()
        tensors, tfs = self.million_tensors(), self.tfs
        t = self.timings({"tfshard": lambda: tfs.save(self._path("m"), tensors)},
                         after=self._clear)
        self._goal_row(row, t["tfshard"].median)

    def m_save_rss(self, row: C.Row):
        self._need_tfshard()
        if not Path("/proc/self/clear_refs").exists():
            raise _Skip("needs /proc/self/clear_refs (Linux)")
        out = self._path("rss")
        got = C.run_json_child(SAVE_RSS_CHILD, [self.inp["million_tensors"], out,
                                                Path(__file__).resolve().parent])
        size = sum(p.stat().st_size for p in C.checkpoint_files(out))
        row.unit = "bytes"
        row.tfshard = got["peak"]
        row.safetensors = None
        row.ratio = got["peak"] / size
        row.notes.append(f"peak RSS gained {C.fmt_value(got['peak'], 'bytes')}; checkpoint "
                         f"{C.fmt_value(size, 'bytes')}; RSS before the save (tensors in "
                         f"memory) {C.fmt_value(got['before'], 'bytes')}")
        self._clear()

    # -- BERT writes -----------------------------------------------------------------------

    def bert_write(self):
        if self._bert_write is None:
            self._need_tfshard()
            tensors = C.random_tensors(C.bert_shapes(**self.inp["bert_cfg"]), seed=2)
            tfs = self.tfs
            arrays = list(tensors.values())

            def plain():
                with open(self._path("plain") + ".bin", "wb") as f:
                    for a in arrays:
                        f.write(a)

            existing = str(self.outdir / "existing")
            self._existing = (existing, tensors)
            fns = {
                "tfshard": lambda: tfs.save(self._path("t"), tensors),
                "tfshard_1": lambda: tfs.save(self._path("t1"), tensors, num_shards=1),
                "overwrite": lambda: tfs.save(existing, tensors),
                "plain": plain,
            }
            try:
                from safetensors.numpy import save_file
                fns["safetensors"] = lambda: save_file(tensors,
                                                       self._path("st") + ".safetensors")
            except ImportError:
                pass
            try:
                self._clear()
                # Page-cache writes stall now and then (writeback); more samples keep
                # the medians clear of the stalls.
                self._bert_write = C.bench_interleaved(
                    fns, repeat=self.args.repeat if self.args.quick else max(self.args.repeat, 11),
                    min_time=0.0, after_sample=self._clear)
            finally:
                self._existing = None
                self._clear()
            # Correctness: TF reads tfshard's default save back as the input.
            prefix = tfs.save(self._path("check"), tensors)
            reader = self.tf.train.load_checkpoint(prefix)
            self._bert_problem = next(
                (n for n, a in tensors.items()
                 if reader.get_tensor(n).tobytes() != a.tobytes()), None)
            reader = None
            self._clear()
        return self._bert_write

    def _bert_row(self, row, t):
        nbytes = self.inp["bert_bytes"]
        row.detail = {k: v.to_json() for k, v in t.items()}
        row.notes.append(", ".join(f"{k} {C.fmt_value(v.median, 's')} "
                                   f"({gbps(nbytes, v.median)})" for k, v in t.items()))
        if self._bert_problem:
            row.status = C.WRONG
            row.notes.append(f"TF reads {self._bert_problem!r} differently")

    def bert_plain(self, row: C.Row):
        t = self.bert_write()
        row.tfshard = t["tfshard_1"].median
        row.ratio = t["plain"].median / row.tfshard
        self._bert_row(row, t)

    def bert_overwrite(self, row: C.Row):
        t = self.bert_write()
        row.tfshard = t["overwrite"].median
        row.ratio = t["tfshard"].median / row.tfshard
        self._bert_row(row, t)

    def bert_st(self, row: C.Row):
        t = self.bert_write()
        row.tfshard = t["tfshard"].median
        if "safetensors" in t:
            row.safetensors = t["safetensors"].median
            row.ratio = row.safetensors / row.tfshard
        self._bert_row(row, t)

    # -- BERT reads ------------------------------------------------------------------------

    def bert_read(self, row: C.Row):
        p, st_path, tf, tfs = self.inp["bert"], self.inp["bert_st"], self.tf, self.tfs
        names = list(tf.train.load_checkpoint(p).get_variable_to_shape_map())

        def read_tf():
            reader = tf.train.load_checkpoint(p)
            for name in names:
                reader.get_tensor(name)

        fns = {"tf": read_tf}
        try:
            from safetensors import safe_open

            def read_st():
                with safe_open(st_path, "np") as f:
                    for name in names:
                        f.get_tensor(name)
            fns["safetensors"] = read_st
        except ImportError:
            pass
        if tfs:
            def read_tfs():
                with tfs.open(p, verify=True) as ckpt:
                    for name in names:
                        ckpt[name]
            fns["tfshard"] = read_tfs
        t = C.bench_interleaved(fns, repeat=max(self.args.repeat, 5), min_time=0.2)
        row.detail = {k: v.to_json() for k, v in t.items()}
        nbytes = self.inp["bert_bytes"]
        row.tf = t["tf"].median
        row.safetensors = t.get("safetensors") and t["safetensors"].median
        row.notes.append(", ".join(f"{k} {C.fmt_value(v.median, 's')} ({gbps(nbytes, v.median)})"
                                   for k, v in t.items()))
        if tfs:
            row.tfshard = t["tfshard"].median
            row.ratio = nbytes / row.tfshard / 1e9 / READ_GOAL_GBPS
            row.notes.append(f"tfshard {row.tf / row.tfshard:.1f}x TF"
                             + (f", {row.safetensors / row.tfshard:.1f}x safetensors"
                                if row.safetensors else ""))

    # -- scaling ---------------------------------------------------------------------------

    def scale(self):
        if self._scale is None:
            self._need_tfshard()
            tfs = self.tfs
            out = {}
            for label, p in (("bert", self.inp["bert"]), ("million", self.inp.get("million"))):
                if p is None:
                    continue
                fns = {}
                for n in (1, 2):
                    def verify(n=n, p=p):
                        with tfs.open(p) as ckpt:
                            return ckpt.verify_all(threads=n)
                    fns[f"verify_{n}"] = verify
                    fns[f"load_{n}"] = lambda n=n, p=p: tfs.load(p, threads=n)
                out[label] = self.timings(fns)
            self._scale = out
        return self._scale

    def _scale_row(self, row: C.Row, what: str, n: int):
        s = self.scale()
        t = s["bert"]
        row.tfshard = t[f"{what}_{n}"].median
        row.ratio = t[f"{what}_1"].median / row.tfshard
        nbytes = self.inp["bert_bytes"]
        row.notes.append(f"BERT-base: {C.fmt_value(row.tfshard, 's')} "
                         f"({gbps(nbytes, row.tfshard)})")
        if "million" in s:
            m = s["million"]
            row.notes.append(f"{self.inp['million_tensors']} tiny tensors: "
                             f"{C.fmt_value(m[f'{what}_{n}'].median, 's')} "
                             f"(1-thread / {n}-thread "
                             f"{m[f'{what}_1'].median / m[f'{what}_{n}'].median:.2f}x)")

    def scale_verify_1(self, row):
        self._scale_row(row, "verify", 1)

    def scale_verify_2(self, row):
        self._scale_row(row, "verify", 2)

    def scale_load_1(self, row):
        self._scale_row(row, "load", 1)

    def scale_load_2(self, row):
        self._scale_row(row, "load", 2)

    # -- bigger than RAM -------------------------------------------------------------------

    def big(self, row: C.Row):
        if not self.args.big:
            raise _Skip("run with --big (writes ~30 GB; minutes)")
        self._need_tfshard()
        big_read(self, row)


class _Skip(Exception):
    pass


def _drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
        return True
    except OSError:
        return False


BIG_READ_CHILD = C.RSS_SNIPPET + r'''
import json, sys, threading, time
import tfshard
p = sys.argv[1]  # argv[2]: "tfshard" or "safetensors" (its own reader)
peak = [0]
stop = threading.Event()
def watch():
    while not stop.is_set():
        peak[0] = max(peak[0], rss_bytes())
        time.sleep(0.05)
w = threading.Thread(target=watch, daemon=True)
w.start()
t0 = time.perf_counter()
if sys.argv[2] == "safetensors":
    from safetensors import safe_open
    with safe_open(p, "np") as f:
        for name in f.keys():
            f.get_tensor(name)
elif p.endswith(".safetensors"):  # tfshard's reader, checking the CRCs it recorded
    from tfshard import formats
    with formats.open_source(p, verify=True) as src:
        for name in src.names():
            src.read(name)
            src.release(name)
else:
    with tfshard.open(p, verify=True) as ckpt:
        for name in ckpt:
            ckpt[name]
            ckpt.release(name)
elapsed = time.perf_counter() - t0
stop.set(); w.join()
print(json.dumps({"seconds": elapsed, "peak_rss": peak[0]}))
'''


def big_read(bench: Bench, row: C.Row):
    tfs = bench.tfs
    gb = bench.args.big_gb
    free = shutil.disk_usage(bench.outdir).free
    if free < 2.3 * gb * 1e9:
        raise _Skip(f"needs {2.3 * gb:.0f} GB free, {free / 1e9:.0f} GB here")
    prefix = bench._path("big")
    per = 64 << 20  # 64 MiB tensors, generated one at a time
    count = max(1, int(gb * 1e9) // per)
    rng = np.random.default_rng(7)
    block = rng.standard_normal(per // 4, dtype=np.float32)
    try:
        t0 = time.perf_counter()
        with tfs.CheckpointWriter(prefix) as w:
            for i in range(count):
                block[:1] = i
                w.add(f"layer_{i:05d}/kernel", block)
        write_s = time.perf_counter() - t0
        from tfshard import conversion
        st = prefix + ".safetensors"
        t0 = time.perf_counter()
        conversion.convert(prefix, st)
        convert_s = time.perf_counter() - t0
        files = [str(f) for f in C.checkpoint_files(prefix) if not str(f).endswith("safetensors")]

        def cat(paths):
            _drop_caches()
            t0 = time.perf_counter()
            subprocess.run(["cat", *paths], stdout=subprocess.DEVNULL, check=True)
            return time.perf_counter() - t0

        def read(path, how):
            _drop_caches()
            return C.run_json_child(BIG_READ_CHILD, [path, how])

        cold = _drop_caches()
        cat_s, cat_st_s = cat(files), cat([st])
        got, got_st = read(prefix, "tfshard"), read(st, "tfshard")
        got_lib = read(st, "safetensors")
        nbytes = count * per
        # The goal is for the converted safetensors file read by tfshard with verify=True;
        # the TF checkpoint read the same way is in the notes.
        row.tfshard = got_st["seconds"]
        row.ratio = cat_st_s / got_st["seconds"]
        row.safetensors = got_lib["seconds"]
        row.notes.append(f"{count} tensors, {nbytes / 1e9:.1f} GB; page cache "
                         f"{'dropped before each read' if cold else 'NOT dropped (no permission)'}")
        row.notes.append(f"write {gbps(nbytes, write_s)}, convert to safetensors "
                         f"{C.fmt_value(convert_s, 's')}")
        row.notes.append(f"safetensors file: cat {gbps(nbytes, cat_st_s)}; tfshard verified "
                         f"{gbps(nbytes, got_st['seconds'])} (peak RSS "
                         f"{C.fmt_value(got_st['peak_rss'], 'bytes')}); safetensors' safe_open "
                         f"{gbps(nbytes, got_lib['seconds'])} (no checksum; peak RSS "
                         f"{C.fmt_value(got_lib['peak_rss'], 'bytes')})")
        row.notes.append(f"TF checkpoint: cat {gbps(nbytes, cat_s)}; tfshard verified "
                         f"{gbps(nbytes, got['seconds'])} ({cat_s / got['seconds']:.2f}x cat; "
                         f"peak RSS {C.fmt_value(got['peak_rss'], 'bytes')})")
        worst = max(got["peak_rss"], got_st["peak_rss"])
        if worst > 1 << 30:
            row.notes.append(f"MISS: tfshard's RSS reached {C.fmt_value(worst, 'bytes')} (goal "
                             f"< 1 GiB)")
            row.ratio = 0.0
    finally:
        for f in C.checkpoint_files(prefix):
            f.unlink()


# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = C.benchmark_parser(__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="tiny inputs (2,000 tensors, ~4 MB model), one sample: a smoke "
                             "test, not a measurement")
    parser.add_argument("--repeat", type=int, default=None, metavar="N",
                        help="timed samples per case (default 3; 1 with --quick)")
    parser.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                        help=f"cache and scratch directory (default {C.default_workdir()})")
    parser.add_argument("--tf-sample", type=int, default=20_000, metavar="N",
                        help="names of the million timed in TF's get_tensor loop (default "
                             "20,000; the time is extrapolated)")
    parser.add_argument("--big", action="store_true",
                        help="also run the bigger-than-RAM case (writes ~--big-gb GB)")
    parser.add_argument("--big-gb", type=float, default=30.0, metavar="GB",
                        help="size of the --big checkpoint (default 30)")
    given = argv if argv is not None else sys.argv[1:]
    args = C.parse_benchmark_args(parser, argv, CASES, others="TensorFlow and safetensors")
    if not any(a == "--repeat" or a.startswith("--repeat=") for a in given) and not args.quick:
        args.repeat = 3
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    tf = C.import_tf()
    tfshard, why = (None, "--no-tfshard") if args.no_tfshard else C.import_tfshard()
    if tfshard is None:
        log(f"tfshard not measured ({why}); its columns will say n/a")
    inputs = build_inputs(args, tfshard)
    args.workdir.mkdir(parents=True, exist_ok=True)
    outdir = Path(tempfile.mkdtemp(prefix="scale.", dir=args.workdir))
    bench = Bench(args, inputs, tfshard, tf, outdir)
    rows = []
    try:
        for case in args.cases:
            op, threshold = TARGETS.get(case, (">=", None))
            row = C.Row(case=case, what=DESCRIPTIONS[case].format(**inputs), unit="s", op=op,
                        threshold=threshold)

            def body(r, case=case):
                try:
                    getattr(bench, case)(r)
                except _Skip as skip:
                    r.ratio = None
                    if skip.args:
                        r.notes.append(f"skipped: {skip.args[0]}")
            rows.append(C.run_case(row, body, log=log))
    finally:
        shutil.rmtree(outdir, ignore_errors=True)
    env = C.library_environment(tf, tfshard, why)
    shown = {k: v for k, v in inputs.items() if k != "bert_cfg"}
    return C.finish("bench_scale", args, rows, env, shown,
                    f"repeat {args.repeat}, workdir {args.workdir}", t_start)


if __name__ == "__main__":
    sys.exit(main())
