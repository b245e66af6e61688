#!/usr/bin/env python
"""Benchmark tfshard's model conversion (``tfshard.conversion.convert``): speed and memory.

Inputs are generated once into a cache directory (``--workdir``, default
``$TMPDIR/tfshard-bench``) and reused on later runs:

* ``bert``: a BERT-base-shaped model, 199 float32 tensors, about 440 MB (about 4 MB with
  ``--quick``), written by TensorFlow itself (``tf.raw_ops.SaveV2``);
* ``big``: 20 float32 tensors of 110 MB each, 2.2 GB (20 of 1 MB with ``--quick``), written
  one tensor at a time with ``tfshard.CheckpointWriter`` (TensorFlow would need the whole
  model in memory and take far longer; the reader does not care who wrote it);
* ``avg``: five BERT-base-shaped checkpoints (199 float32 tensors and ``global_step``, 440 MB
  each; about 4 MB each with ``--quick``), each written by TensorFlow (``SaveV2``) from its
  own random values;
* ``tiny``: three tensors (shared with bench_read), converted once by every child before it
  measures anything, so lazy imports and first-use allocations are not charged to the
  conversion.

How a conversion is measured
----------------------------
Every conversion runs in a fresh Python process, which does its imports, converts ``tiny``,
collects garbage, then records its resident set size (the *baseline*), resets the kernel's
RSS high-water mark (``/proc/self/clear_refs``) and converts the input.  It reports:

* the time of the conversion alone (``time.perf_counter`` around it): interpreter start and
  imports are excluded; opening the checkpoint and writing the output (to the page cache;
  nobody fsyncs) are included;
* *peak RSS growth*: ``VmHWM`` after the conversion minus the baseline, exact (the kernel
  keeps the high-water mark; it counts anonymous and file-backed pages);
* ``ru_maxrss``: the process's peak RSS over its whole life, imports included.  Children are
  started through ``/bin/sh``, which forks them: a process exec'd directly from this one
  (Python uses vfork) would inherit this process's own peak in ``ru_maxrss``, as Linux carries
  the high-water mark of the pre-exec address space over ``exec``;
* where noted, peak anonymous memory (``RssAnon``).  The kernel keeps no high-water mark for
  it, so this script polls the child's ``/proc/PID/status`` every millisecond from a thread of
  its own (the child's GIL cannot delay it).  A tensor-sized buffer lives for as long as that
  tensor takes to copy (tens of milliseconds at 110 MB), far longer than the interval.

Outputs are deleted, and ``sync()`` called, after every run, outside anything timed.  Input
files are read once before the first run (warm page cache).  The script reports, it does not
assert: it exits 0 when targets are missed (rows say MISS) and 1 only when a case fails to
run (ERROR) or tfshard writes something other than the reference (WRONG).

Cases
-----
tf_to_st, tf_to_st_rss
    The ``bert`` TF checkpoint to one ``.safetensors`` file.  tfshard:
    ``tfshard.conversion.convert(prefix, "out.safetensors")``.  The reference is the usual
    script::

        r = tf.train.load_checkpoint(prefix)
        d = {n: r.get_tensor(n) for n, _ in tf.train.list_variables(prefix)}
        safetensors.numpy.save_file(d, out)

    (shown in the TF column).  One untimed round of both runs first, with ``RssAnon``
    sampling; its outputs must hold the same tensors (names, dtypes, shapes, bytes), else
    both rows are WRONG.  Then ``--repeat`` timed rounds, the two tools alternating.
    ``tf_to_st``: median conversion time, target tfshard >= 2x faster.  ``tf_to_st_rss``:
    median peak RSS growth, ratio tfshard / script, target <= 1x (tfshard uses less).  The
    growth, not ``ru_maxrss``, is the target: the script's ``ru_maxrss`` includes importing
    TensorFlow, which says nothing about converting.  Total RSS, not just anonymous memory,
    because this row asks which conversion the system sees using less memory, and counting
    tfshard's mapped input pages against it is the conservative choice.  ``ru_maxrss``, the
    baselines and the sampled anonymous peaks of both are in the notes.
stream_memory
    ``convert(prefix, "out.safetensors")`` of ``big``, ``--repeat`` times (each in a fresh
    process, with ``RssAnon`` sampling).  Target: peak growth of *anonymous* memory <= the
    largest tensor + 64 MiB (the ratio is growth / that budget; target <= 1x); median over
    the runs.  Anonymous memory is what the process allocates: if ``convert`` streams, that
    stays near one tensor's buffer whatever the model's size.  Total RSS is reported too but
    is not the target: ``convert`` reads tensors as views of a memory map of the input, and
    every page of the map it has touched counts in RSS until the map is closed, so total RSS
    grows with the model even when nothing is copied.  Those pages are clean page cache
    shared with the file, not memory the process allocated; the kernel can evict them at any
    time.  The output is checked once against the input (names, dtypes, shapes, bytes).

avg_bert, avg_bert_rss
    The element-wise mean of the five ``avg`` checkpoints, written as a TF checkpoint.
    tfshard: ``tfshard.conversion.average(out, prefixes)``.  The reference is the usual
    TF-reader + numpy script (what tensor2tensor's ``avg_checkpoints.py`` does, saving with
    TF's own ``SaveV2`` kernel instead of building variables)::

        acc = {}                                        # name -> float64 sum
        for p in prefixes:
            r = tf.train.load_checkpoint(p)
            for n in floating names: acc[n] = acc[n] + r.get_tensor(n)  (float64)
        out = {n: (acc[n] / 5).astype(dtype) ...} + the last checkpoint's integers
        tf.raw_ops.SaveV2(prefix=out_prefix, tensor_names=..., tensors=...)

    Both sum in float64 in input order and round once, so their outputs must hold the same
    bytes (checked once, untimed, else both rows are WRONG).  Then ``--repeat`` timed rounds,
    alternating.  ``avg_bert``: median time, ratio script / tfshard, target >= 1x.
    ``avg_bert_rss``: median peak RSS growth (VmHWM - baseline), ratio tfshard / script,
    target <= 0.5x.
avg_memory, avg_memory_n
    What averaging holds in memory.  tfshard averages one tensor at a time: a float64
    accumulator of it and the mapped pages of one input's copy of it.  ``avg_memory``: peak
    RSS growth (VmHWM, exact: anonymous and file-backed pages together) of averaging the
    five checkpoints, divided by the budget 8 bytes x the largest tensor's elements + that
    tensor's bytes + 64 MiB; target <= 1x.  ``avg_memory_n``: the same growth for five
    checkpoints divided by the growth for two of them; target <= 1.1x (memory does not grow
    with the number of checkpoints).  Medians of ``--repeat`` fresh processes each.

Examples
--------
    python benchmarks/bench_convert.py                  # full run, ~5 GB of inputs, minutes
    python benchmarks/bench_convert.py --quick          # tiny inputs, one repeat (smoke test)
    python benchmarks/bench_convert.py --cases stream_memory --repeat 3 --json out.json
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CASES = ("tf_to_st", "tf_to_st_rss", "stream_memory", "avg_bert", "avg_bert_rss", "avg_memory",
         "avg_memory_n")
TF_TO_ST_CASES = ("tf_to_st", "tf_to_st_rss")
AVG_CASES = ("avg_bert", "avg_bert_rss", "avg_memory", "avg_memory_n")
AVG_CHECKPOINTS = 5

TARGETS = {  # case: (op, threshold)
    "tf_to_st": (">=", 2.0),
    "tf_to_st_rss": ("<=", 1.0),
    "stream_memory": ("<=", 1.0),
    "avg_bert": (">=", 1.0),
    "avg_bert_rss": ("<=", 0.5),
    "avg_memory": ("<=", 1.0),
    "avg_memory_n": ("<=", 1.1),
}

# stream_memory's model: BIG_TENSORS float32 tensors of this shape (110 MB; 1 MB with --quick).
BIG_TENSORS = 20
BIG_SHAPE = (27_500, 1000)
BIG_SHAPE_QUICK = (250, 1000)
# What stream_memory allows on top of the largest tensor: the interpreter's own churn,
# the output's header and index, allocator slack.
STREAM_SLACK = 64 << 20

SAMPLE_INTERVAL = 0.001  # seconds between polls of a child's /proc/PID/status
CHILD_TIMEOUT = 900      # seconds; a child that takes longer is killed and the case errors
TOOLS = {"tfshard": "tfshard convert", "script": "the usual script",
         "tfshard-average": "tfshard average", "script-average": "the TF + numpy script"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def import_converter():
    """``(tfshard.conversion, None)`` if tfshard can convert, else ``(None, reason)``."""
    try:
        mod = importlib.import_module("tfshard.conversion")
        mod.convert  # noqa: B018
    except Exception as exc:  # ImportError (e.g. a module not written yet), a broken build
        return None, f"{type(exc).__name__}: {exc}"
    return mod, None


# --------------------------------------------------------------------------------------------
# memory of another process


def proc_status(pid="self") -> dict:
    """Memory fields of ``/proc/PID/status`` in bytes: VmHWM (peak RSS), VmRSS, and RSS split
    into anonymous, file-backed and shared-memory pages."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(value.split()[0]) * 1024  # the kernel writes "123 kB"
    return fields


class PeakSampler(threading.Thread):
    """Polls another process's ``/proc/PID/status`` and keeps the largest value of each
    field, until :meth:`stop` (or the process is gone)."""

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak: dict = {}
        self.samples = 0
        self._stopped = threading.Event()

    def run(self):
        while not self._stopped.is_set():
            try:
                fields = proc_status(self.pid)
            except (OSError, ValueError):  # exited, or caught half torn down
                return
            for key, value in fields.items():
                self.peak[key] = max(self.peak.get(key, 0), value)
            self.samples += 1
            self._stopped.wait(self.interval)

    def stop(self) -> dict:
        self._stopped.set()
        self.join()
        return {"peak": self.peak, "samples": self.samples}


# The child: argv is TOOL TINY TINY_OUT SRC DST (for the *-average tools SRC is a JSON list of
# prefixes).  It prints "BASE <json>" once ready, waits for a line on stdin (the parent's
# sampler starts in between), converts, prints "DONE <json>".
CHILD = inspect.getsource(proc_status) + r'''
import gc, json, os, resource, sys, time
tool, tiny, tiny_out, src, dst = sys.argv[1:6]
if tool == "tfshard":
    from tfshard.conversion import convert

    def run(src, dst):
        return convert(src, dst).tensors
elif tool == "tfshard-average":
    from tfshard.conversion import average

    def run(src, dst):
        return average(dst, json.loads(src)).tensors
elif tool == "script-average":  # a TF reader and numpy, as tensor2tensor's avg_checkpoints.py
    import numpy as np
    import tensorflow as tf

    def run(src, dst):
        prefixes = json.loads(src)
        names = [n for n, _ in tf.train.list_variables(prefixes[-1])]
        last = tf.train.load_checkpoint(prefixes[-1])
        types = last.get_variable_to_dtype_map()
        acc = {}
        for prefix in prefixes:
            reader = tf.train.load_checkpoint(prefix)
            for n in names:
                if types[n].is_floating:
                    value = reader.get_tensor(n)
                    acc[n] = acc[n] + value if n in acc else value.astype(np.float64)
        out = {n: (acc[n] / len(prefixes)).astype(types[n].as_numpy_dtype) if n in acc
               else last.get_tensor(n) for n in names}
        tf.raw_ops.SaveV2(prefix=dst, tensor_names=list(out), shape_and_slices=[""] * len(out),
                          tensors=list(out.values()))
        return len(out)
else:  # "script": the usual way, with TensorFlow and safetensors
    import tensorflow as tf
    from safetensors.numpy import save_file

    def run(src, dst):
        r = tf.train.load_checkpoint(src)
        d = {n: r.get_tensor(n) for n, _ in tf.train.list_variables(src)}
        save_file(d, dst)
        return len(d)

def maxrss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

# Lazy imports and first-use allocations happen here.
run(json.dumps([tiny, tiny]) if tool.endswith("average") else tiny, tiny_out)
for leftover in [tiny_out] + [tiny_out + s for s in (".index", ".data-00000-of-00001")]:
    if os.path.exists(leftover):
        os.remove(leftover)
gc.collect()
base = proc_status()
maxrss_before = maxrss()
try:  # "5": reset VmHWM to the current RSS (Linux >= 4.0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = True
except OSError:
    reset = False
print("BASE " + json.dumps({"pid": os.getpid(), "base": base}), flush=True)
sys.stdin.readline()
t0 = time.perf_counter()
tensors = run(src, dst)
seconds = time.perf_counter() - t0
end = proc_status()
print("DONE " + json.dumps({"seconds": seconds, "tensors": tensors, "end": end,
                            "hwm_reset": reset,
                            "maxrss": max(maxrss_before, maxrss())}), flush=True)
'''


def _expect(stream, tag: str, proc, err) -> dict:
    """The JSON of the next stdout line starting with ``tag``; raises with the child's
    stderr if it ends first."""
    for line in stream:
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1:])
    proc.wait()
    err.seek(0)
    tail = err.read().decode(errors="replace")[-3000:]
    raise RuntimeError(f"conversion child exited {proc.returncode} before {tag}: {tail}")


def _kill_group(proc) -> None:
    """Kill a child started with ``start_new_session`` and everything in its group."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_child(tool: str, tiny: str, tiny_out: Path, src: str, dst: Path, *,
              sample: bool) -> dict:
    """Convert ``src`` to ``dst`` in a fresh process; its report, with ``growth`` (peak RSS
    growth) and, if ``sample``, ``sampled`` (peaks polled from outside) added."""
    # Through sh, which forks the child: see the docstring about ru_maxrss.
    argv = ["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-c", CHILD,
            tool, tiny, str(tiny_out), src, str(dst)]
    with tempfile.TemporaryFile() as err, subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
            env=C.CHILD_ENV, start_new_session=True) as proc:
        # A new session, so that a hung child and its sh go together, by process group.
        watchdog = threading.Timer(CHILD_TIMEOUT, _kill_group, (proc,))
        watchdog.start()
        sampler = None
        try:
            ready = _expect(proc.stdout, "BASE", proc, err)
            if sample:
                sampler = PeakSampler(ready["pid"])
                sampler.start()
            proc.stdin.write("go\n")
            proc.stdin.flush()
            done = _expect(proc.stdout, "DONE", proc, err)
            sampled = sampler.stop() if sampler else None
            sampler = None
            if proc.wait():
                err.seek(0)
                raise RuntimeError(f"conversion child exited {proc.returncode}: "
                                   f"{err.read().decode(errors='replace')[-3000:]}")
        except BaseException:
            # Otherwise closing its stdin would let a child waiting for "go" start converting.
            _kill_group(proc)
            raise
        finally:
            watchdog.cancel()
            if sampler is not None:
                sampler.stop()
    result = {"tool": tool, **ready, **done}
    result["growth"] = done["end"]["VmHWM"] - ready["base"]["VmRSS"]
    if sampled is not None:
        result["sampled"] = sampled
        result["anon_growth"] = sampled["peak"].get("RssAnon", 0) - ready["base"]["RssAnon"]
    return result


# --------------------------------------------------------------------------------------------
# inputs


def build_inputs(args, tfshard_mod) -> dict:
    workdir = args.workdir
    bert_cfg = C.BERT_TINY if args.quick else C.BERT_BASE
    big_shape = BIG_SHAPE_QUICK if args.quick else BIG_SHAPE
    inputs: dict = {}
    files: list = []
    log(f"inputs in {workdir}")

    # Same name, spec and contents as bench_read's "tiny", so the two share the cache entry.
    def build_tiny(tmp: Path):
        C.tf_save_v2(tmp / "ckpt", C.many_small_tensors(3, seed=3))

    tiny, _ = C.cached_input(workdir, "tiny", {"n": 3}, build_tiny, log=log)
    inputs["tiny"] = str(tiny / "ckpt")

    if any(c in TF_TO_ST_CASES for c in args.cases):
        def build_bert(tmp: Path):
            tensors = C.random_tensors(C.bert_shapes(**bert_cfg), seed=2)
            C.tf_save_v2(tmp / "ckpt", tensors)
            return {"tensors": len(tensors),
                    "bytes": int(sum(a.nbytes for a in tensors.values()))}

        # Not bench_read's "bert-..." entry: that one also holds a .safetensors copy.
        bert, m = C.cached_input(workdir, "convert-bert-" + "x".join(map(str, bert_cfg.values())),
                                 bert_cfg, build_bert, log=log)
        inputs.update(bert=str(bert / "ckpt"), bert_tensors=m["tensors"], bert_bytes=m["bytes"])
        files += C.checkpoint_files(inputs["bert"])

    if "stream_memory" in args.cases and tfshard_mod is not None:
        def build_big(tmp: Path):
            rng = np.random.default_rng(4)
            # One tensor at a time: building the input should not need the whole model in RAM.
            with tfshard_mod.CheckpointWriter(tmp / "ckpt") as writer:
                for i in range(BIG_TENSORS):
                    writer.add(f"block_{i:02d}/dense/kernel",
                               rng.random(big_shape, dtype=np.float32))
            nbytes = int(np.prod(big_shape)) * 4
            return {"tensors": BIG_TENSORS, "bytes": BIG_TENSORS * nbytes, "largest": nbytes}

        spec = {"tensors": BIG_TENSORS, "shape": list(big_shape), "writer": "tfshard"}
        big, m = C.cached_input(workdir, f"convert-big-{BIG_TENSORS}x"
                                + "x".join(map(str, big_shape)), spec, build_big, log=log)
        inputs.update(big=str(big / "ckpt"), big_tensors=m["tensors"], big_bytes=m["bytes"],
                      big_largest=m["largest"])
        files += C.checkpoint_files(inputs["big"])

    if any(c in AVG_CASES for c in args.cases):
        def build_avg(tmp: Path):
            shapes = C.bert_shapes(**bert_cfg)
            largest = max(shapes.values(), key=lambda s: int(np.prod(s)))
            for i in range(AVG_CHECKPOINTS):  # one model in memory at a time
                tensors = C.random_tensors(shapes, seed=100 + i)
                tensors["global_step"] = np.int64(1000 * (i + 1))
                C.tf_save_v2(tmp / f"ckpt-{i + 1}", tensors)
                del tensors
            return {"tensors": len(shapes) + 1, "largest_elements": int(np.prod(largest)),
                    "bytes": AVG_CHECKPOINTS * 4 * sum(int(np.prod(v)) for v in shapes.values())}

        spec = {"checkpoints": AVG_CHECKPOINTS, **bert_cfg}
        avg, m = C.cached_input(workdir, "convert-avg-" + "x".join(map(str, bert_cfg.values())),
                                spec, build_avg, log=log)
        inputs.update(avg=[str(avg / f"ckpt-{i + 1}") for i in range(AVG_CHECKPOINTS)],
                      avg_tensors=m["tensors"], avg_bytes=m["bytes"],
                      avg_largest=m["largest_elements"])
        for prefix in inputs["avg"]:
            files += C.checkpoint_files(prefix)

    C.warm(files + C.checkpoint_files(inputs["tiny"]))
    return inputs


def same_tensors(a: str, b: str) -> str | None:
    """None if two .safetensors files hold the same tensors (names, dtypes, shapes, bytes),
    else what differs first."""
    from safetensors import safe_open

    with safe_open(a, framework="np") as fa, safe_open(b, framework="np") as fb:
        ka, kb = set(fa.keys()), set(fb.keys())
        if ka != kb:
            return (f"{len(ka)} vs {len(kb)} tensors; e.g. {sorted(ka ^ kb)[0]!r} is in only "
                    f"one")
        for name in sorted(ka):
            x, y = fa.get_tensor(name), fb.get_tensor(name)
            # Bytes, not ==: -0.0 vs 0.0 or a changed NaN payload would be a bug too.
            if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
                return (f"{name!r} is {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}"
                        + (" with different bytes" if x.shape == y.shape else ""))
        if not ka:
            return "no tensors at all"
    return None


def same_checkpoints(a: str, b: str, tfshard_mod) -> str | None:
    """None if two TF checkpoints hold the same tensors (names, dtypes, shapes, bytes)."""
    with tfshard_mod.open(a) as ca, tfshard_mod.open(b) as cb:
        if set(ca) != set(cb):
            return f"{len(ca)} vs {len(cb)} tensors"
        for name in sorted(ca):
            x, y = ca[name], cb[name]
            if (ca.info(name).dtype != cb.info(name).dtype or x.shape != y.shape
                    or x.tobytes() != y.tobytes()):
                return f"{name!r} differs"
    return None


def matches_checkpoint(st_file: str, prefix: str, tfshard_mod) -> str | None:
    """None if a .safetensors file holds exactly the tensors of a TF checkpoint."""
    from safetensors import safe_open

    with tfshard_mod.open(prefix) as ckpt, safe_open(st_file, framework="np") as f:
        want, got = set(ckpt), set(f.keys())
        if want != got:
            return f"{len(got)} tensors written, {len(want)} in the input"
        for name in sorted(want):
            x, y = ckpt[name], f.get_tensor(name)
            if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(
                    x.reshape(-1).view(np.uint8), y.reshape(-1).view(np.uint8)):
                return f"{name!r} differs from the input"
    return None


# --------------------------------------------------------------------------------------------
# cases


def _median(values):
    return statistics.median(values) if values else None


def _file_growth(run: dict) -> int:
    """Sampled peak growth of a run's file-backed RSS (pages of mapped files)."""
    return run["sampled"]["peak"].get("RssFile", 0) - run["base"]["RssFile"]


def _mib(nbytes) -> str:
    return C.fmt_value(nbytes, "bytes")


class Bench:
    def __init__(self, args, inputs, tfshard_mod, converter, outdir: Path):
        self.args, self.inp, self.tfs, self.conv = args, inputs, tfshard_mod, converter
        self.outdir = outdir
        self._tf_to_st = None  # runs shared by tf_to_st and tf_to_st_rss
        self._avg = None  # runs shared by the avg_* cases

    def _clear(self) -> None:
        for entry in os.scandir(self.outdir):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        # Write-back of a deleted output must not land in the next run.
        if hasattr(os, "sync"):
            os.sync()

    def _run(self, tool: str, src: str, *, sample: bool) -> dict:
        try:
            return run_child(tool, self.inp["tiny"], self.outdir / f"tiny-{tool}.safetensors",
                             src, self.outdir / f"{tool}.safetensors", sample=sample)
        finally:
            self._clear()

    # -- TF checkpoint -> safetensors ------------------------------------------------------

    def tf_to_st_runs(self):
        if self._tf_to_st is not None:
            return self._tf_to_st
        src = self.inp["bert"]
        tools = ["tfshard", "script"] if self.conv else ["script"]
        log(f"  check round ({', '.join(tools)}), then {self.args.repeat} timed round(s)")
        # The untimed check round: both outputs are kept until compared.
        check, problem = {}, None
        try:
            for tool in tools:
                dst = self.outdir / f"{tool}.safetensors"
                check[tool] = run_child(tool, self.inp["tiny"],
                                        self.outdir / f"tiny-{tool}.safetensors", src, dst,
                                        sample=True)
            if "tfshard" in check:
                problem = same_tensors(str(self.outdir / "tfshard.safetensors"),
                                       str(self.outdir / "script.safetensors"))
        finally:
            self._clear()
        runs = {tool: [] for tool in tools}
        for _ in range(self.args.repeat):
            for tool in tools:
                runs[tool].append(self._run(tool, src, sample=False))
        self._tf_to_st = check, runs, problem
        return self._tf_to_st

    def _tf_to_st_common(self, row: C.Row):
        check, runs, problem = self.tf_to_st_runs()
        row.detail = {"check": check, "runs": runs}
        if "tfshard" in runs:
            if problem:
                row.status = C.WRONG
                row.notes.append(f"tfshard's output differs from the script's: {problem}")
            else:
                row.notes.append("checked: tfshard's output holds the same tensors as the "
                                 "script's (names, dtypes, shapes, bytes)")
        return check, runs

    def tf_to_st(self, row: C.Row):
        check, runs = self._tf_to_st_common(row)
        nbytes = self.inp["bert_bytes"]
        med = {tool: _median([r["seconds"] for r in rs]) for tool, rs in runs.items()}
        row.tf = med["script"]
        row.notes.insert(0, f"{self.inp['bert_tensors']} tensors, {nbytes / 1e6:.0f} MB; "
                            + ", ".join(f"{TOOLS[t]} {C.fmt_value(s, 's')} "
                                        f"({nbytes / s / 1e9:.2f} GB/s)"
                                        for t, s in med.items())
                            + "; conversion only, in a fresh process (no interpreter start "
                              "or imports)")
        if "tfshard" in med:
            row.tfshard = med["tfshard"]
            row.ratio = row.tf / row.tfshard

    def tf_to_st_rss(self, row: C.Row):
        check, runs = self._tf_to_st_common(row)
        growth = {tool: _median([r["growth"] for r in rs]) for tool, rs in runs.items()}
        maxrss = {tool: _median([r["maxrss"] for r in rs]) for tool, rs in runs.items()}
        base = {tool: _median([r["base"]["VmRSS"] for r in rs]) for tool, rs in runs.items()}
        row.tf = growth["script"]
        if "tfshard" in growth:
            row.tfshard = growth["tfshard"]
            row.ratio = row.tfshard / row.tf
        each = list(runs)
        row.notes.insert(0, "peak RSS growth over the RSS after imports (VmHWM - baseline): "
                         + ", ".join(f"{TOOLS[t]} {_mib(growth[t])}" for t in each))
        row.notes.insert(1, "peak RSS of the whole process (ru_maxrss, imports included): "
                         + ", ".join(f"{TOOLS[t]} {_mib(maxrss[t])}" for t in each)
                         + "; RSS after imports: "
                         + ", ".join(f"{TOOLS[t]} {_mib(base[t])}" for t in each))
        row.notes.insert(2, "check run, sampled: peak growth of anonymous memory "
                         + ", ".join(f"{TOOLS[t]} {_mib(check[t]['anon_growth'])}" for t in each)
                         + "; of file-backed RSS "
                         + ", ".join(f"{TOOLS[t]} {_mib(_file_growth(check[t]))}" for t in each))
        if not all(r["hwm_reset"] for rs in runs.values() for r in rs):
            row.notes.append("could not reset VmHWM: growth includes the import phase's peak "
                             "(an upper bound)")

    # -- averaging checkpoints ---------------------------------------------------------------

    def _run_avg(self, tool: str, prefixes, *, sample: bool) -> dict:
        try:
            return run_child(tool, self.inp["tiny"], self.outdir / f"tiny-{tool}",
                             json.dumps(prefixes), self.outdir / tool / "ckpt", sample=sample)
        finally:
            self._clear()

    def avg_runs(self):
        if self._avg is not None:
            return self._avg
        prefixes = self.inp["avg"]
        tools = ["tfshard-average", "script-average"] if self.conv else ["script-average"]
        log(f"  check round ({', '.join(tools)}), then {self.args.repeat} timed round(s)")
        check, problem = {}, None
        try:
            for tool in tools:
                check[tool] = run_child(tool, self.inp["tiny"], self.outdir / f"tiny-{tool}",
                                        json.dumps(prefixes), self.outdir / tool / "ckpt",
                                        sample=True)
            if self.conv:
                problem = same_checkpoints(str(self.outdir / "tfshard-average" / "ckpt"),
                                           str(self.outdir / "script-average" / "ckpt"),
                                           self.tfs)
        finally:
            self._clear()
        runs = {tool: [] for tool in tools}
        two = []
        for _ in range(self.args.repeat):
            for tool in tools:
                runs[tool].append(self._run_avg(tool, prefixes, sample=False))
            if self.conv:
                two.append(self._run_avg("tfshard-average", prefixes[-2:], sample=False))
        self._avg = check, runs, two, problem
        return self._avg

    def _avg_common(self, row: C.Row):
        check, runs, two, problem = self.avg_runs()
        row.detail = {"check": check, "runs": runs, "two": two}
        if "tfshard-average" in runs:
            if problem:
                row.status = C.WRONG
                row.notes.append(f"tfshard's average differs from the script's: {problem}")
            else:
                row.notes.append("checked: tfshard's output holds the same tensors as the "
                                 "script's (names, dtypes, shapes, bytes)")
        return check, runs, two

    def avg_bert(self, row: C.Row):
        check, runs, _ = self._avg_common(row)
        med = {tool: _median([r["seconds"] for r in rs]) for tool, rs in runs.items()}
        row.tf = med["script-average"]
        nbytes = self.inp["avg_bytes"]
        row.notes.insert(0, f"{AVG_CHECKPOINTS} checkpoints of {self.inp['avg_tensors']} "
                            f"tensors, {nbytes / 1e6:.0f} MB in all; "
                            + ", ".join(f"{TOOLS[t]} {C.fmt_value(v, 's')}"
                                        for t, v in med.items())
                            + "; averaging only, in a fresh process")
        if "tfshard-average" in med:
            row.tfshard = med["tfshard-average"]
            row.ratio = row.tf / row.tfshard

    def avg_bert_rss(self, row: C.Row):
        check, runs, _ = self._avg_common(row)
        growth = {tool: _median([r["growth"] for r in rs]) for tool, rs in runs.items()}
        row.tf = growth["script-average"]
        if "tfshard-average" in growth:
            row.tfshard = growth["tfshard-average"]
            row.ratio = row.tfshard / row.tf
        row.notes.insert(0, "peak RSS growth over the RSS after imports (VmHWM - baseline): "
                         + ", ".join(f"{TOOLS[t]} {_mib(g)}" for t, g in growth.items()))
        row.notes.insert(1, "check run, sampled: peak growth of anonymous memory "
                         + ", ".join(f"{TOOLS[t]} {_mib(c['anon_growth'])}"
                                     for t, c in check.items()))
        if not all(r["hwm_reset"] for rs in runs.values() for r in rs):
            row.notes.append("could not reset VmHWM: growth includes the import phase's peak")

    def _avg_budget(self) -> int:
        largest = self.inp["avg_largest"]
        return 8 * largest + 4 * largest + STREAM_SLACK

    def avg_memory(self, row: C.Row):
        if self.conv is None:
            row.notes.append("tfshard cannot convert; not measured")
            return
        check, runs, two = self._avg_common(row)
        five = _median([r["growth"] for r in runs["tfshard-average"]])
        budget = self._avg_budget()
        row.tfshard, row.ratio = five, five / budget
        row.notes.insert(0, f"largest tensor {self.inp['avg_largest']} float32 elements; budget "
                            f"= its float64 accumulator + its bytes + {_mib(STREAM_SLACK)} = "
                            f"{_mib(budget)}; peak RSS growth (VmHWM, exact) averaging "
                            f"{AVG_CHECKPOINTS} checkpoints: {_mib(five)}")
        row.notes.insert(1, f"check run, sampled: anonymous {_mib(check['tfshard-average']['anon_growth'])}, "
                            f"file-backed {_mib(_file_growth(check['tfshard-average']))}")

    def avg_memory_n(self, row: C.Row):
        if self.conv is None:
            row.notes.append("tfshard cannot convert; not measured")
            return
        _, runs, two = self._avg_common(row)
        five = _median([r["growth"] for r in runs["tfshard-average"]])
        pair = _median([r["growth"] for r in two])
        row.tfshard, row.ratio = five, five / pair
        row.notes.insert(0, f"peak RSS growth (VmHWM): {AVG_CHECKPOINTS} checkpoints "
                            f"{_mib(five)}, 2 checkpoints {_mib(pair)}; medians of "
                            f"{len(two)} run(s) each")

    # -- streaming a big model ---------------------------------------------------------------

    def stream_memory(self, row: C.Row):
        if self.conv is None:
            row.notes.append("tfshard cannot convert; not measured")
            return
        src, largest = self.inp["big"], self.inp["big_largest"]
        budget = largest + STREAM_SLACK
        runs = []
        for i in range(self.args.repeat):
            dst = self.outdir / "tfshard.safetensors"
            try:
                runs.append(run_child("tfshard", self.inp["tiny"],
                                      self.outdir / "tiny-tfshard.safetensors", src, dst,
                                      sample=True))
                if i == 0:
                    problem = matches_checkpoint(str(dst), src, self.tfs)
                    if problem:
                        row.status = C.WRONG
                        row.notes.append(f"the output does not match the input: {problem}")
                    else:
                        row.notes.append("checked: the output holds the input's tensors "
                                         "(names, dtypes, shapes, bytes)")
            finally:
                self._clear()
        row.detail = {"budget": budget, "runs": runs}
        anon = _median([r["anon_growth"] for r in runs])
        total = _median([r["growth"] for r in runs])
        file_peak = _median([_file_growth(r) for r in runs])
        seconds = _median([r["seconds"] for r in runs])
        samples = _median([r["sampled"]["samples"] for r in runs])
        row.tfshard = anon
        row.ratio = anon / budget
        row.notes.insert(0, f"{self.inp['big_tensors']} tensors, "
                            f"{self.inp['big_bytes'] / 1e9:.2f} GB, largest "
                            f"{_mib(largest)}; budget = largest + {_mib(STREAM_SLACK)} = "
                            f"{_mib(budget)}; medians of {len(runs)} run(s)")
        row.notes.insert(1, f"peak growth: anonymous {_mib(anon)} (the target; sampled, "
                            f"~{samples:.0f} polls per run); total RSS {_mib(total)} (VmHWM, "
                            f"exact), file-backed {_mib(file_peak)} (sampled; pages of the "
                            f"input's memory map)")
        row.notes.insert(2, f"conversion {C.fmt_value(seconds, 's')}, "
                            f"{self.inp['big_bytes'] / seconds / 1e9:.2f} GB/s")
        if not all(r["hwm_reset"] for r in runs):
            row.notes.append("could not reset VmHWM: total growth includes the import "
                             "phase's peak (an upper bound)")


DESCRIPTIONS = {
    "tf_to_st": "TF checkpoint ({bert_tensors} float32 tensors, written by TF) -> one "
                ".safetensors: tfshard convert vs load_checkpoint + get_tensor + "
                "safetensors save_file (TF column); time, fresh process each",
    "tf_to_st_rss": "same conversions: peak RSS growth over the process's RSS after imports; "
                    "ratio = tfshard / script",
    "stream_memory": "convert of a {big_gb} GB, {big_tensors}-tensor checkpoint to "
                     ".safetensors: peak anonymous-memory growth / (largest tensor + 64 MiB)",
    "avg_bert": "average of 5 BERT-shaped TF checkpoints -> TF checkpoint: tfshard average vs "
                "TF reader + numpy + SaveV2 (TF column); time, fresh process each",
    "avg_bert_rss": "same averages: peak RSS growth over the RSS after imports; ratio = "
                    "tfshard / script",
    "avg_memory": "tfshard average of 5 checkpoints: peak RSS growth / (float64 accumulator "
                  "of the largest tensor + its bytes + 64 MiB)",
    "avg_memory_n": "tfshard average: peak RSS growth for 5 checkpoints / for 2",
}


def parse_args(argv=None):
    parser = C.benchmark_parser(__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="tiny inputs (~4 MB BERT-shaped model, 20 MB streaming model), one "
                             "timed round: a smoke test, not a measurement")
    parser.add_argument("--repeat", type=int, default=None, metavar="N",
                        help="timed rounds for tf_to_st and runs for stream_memory, each a "
                             "fresh process per tool (default 5; 1 with --quick)")
    parser.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                        help=f"cache for generated inputs (default {C.default_workdir()}); "
                             "reused when present.  Outputs go to a scratch directory in it, "
                             "removed at the end")
    args = C.parse_benchmark_args(parser, argv, CASES, others="the reference script")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    if not Path("/proc/self/status").exists():
        log("this benchmark measures memory through /proc (Linux only)")
        return 1
    tf = C.import_tf()
    converter, why = (None, "--no-tfshard") if args.no_tfshard else import_converter()
    tfshard_mod = importlib.import_module("tfshard") if converter is not None else None
    if converter is None:
        log(f"tfshard not measured ({why}); its columns will say n/a")
    inputs = build_inputs(args, tfshard_mod)
    sizes = dict(inputs)
    if "big_bytes" in inputs:
        sizes["big_gb"] = f"{inputs['big_bytes'] / 1e9:.2f}"
    sizes.setdefault("big_gb", "?")
    sizes.setdefault("big_tensors", BIG_TENSORS)
    sizes.setdefault("bert_tensors", "?")
    args.workdir.mkdir(parents=True, exist_ok=True)
    # A directory of its own, so emptying it between runs can touch nothing else.
    outdir = Path(tempfile.mkdtemp(prefix="convert.", dir=args.workdir))
    log(f"writing into {outdir}")
    bench = Bench(args, inputs, tfshard_mod, converter, outdir)

    rows = []
    try:
        for case in args.cases:
            op, threshold = TARGETS[case]
            row = C.Row(case=case, what=DESCRIPTIONS[case].format(**sizes),
                        unit="s" if case in ("tf_to_st", "avg_bert") else "bytes", op=op,
                        threshold=threshold)
            rows.append(C.run_case(row, getattr(bench, case), log=log))
    finally:
        shutil.rmtree(outdir, ignore_errors=True)

    env = C.library_environment(tf, tfshard_mod, why)
    return C.finish("bench_convert", args, rows, env, inputs,
                    f"repeat {args.repeat}, RSS sampling every {SAMPLE_INTERVAL * 1e3:g} ms, "
                    f"workdir {args.workdir}",
                    t_start)


if __name__ == "__main__":
    sys.exit(main())
