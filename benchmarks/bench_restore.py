#!/usr/bin/env python
"""Benchmark tfshard.tf.restore against TensorFlow's own restore paths.

The input is one checkpoint, written once by ``tf.train.Checkpoint(model=module).write`` into
the cache directory (``--workdir``, default ``$TMPDIR/tfshard-bench``): a ``tf.Module`` holding
the variables of a BERT-base-shaped model (199 float32 tensors, about 440 MB; about 4 MB with
``--quick``), so the file carries TF2's object graph.  Both cases restore that same checkpoint,
with its files in the page cache (read once before timing), into variables created once before
timing; every sample overwrites all of them.  Times are medians of ``--repeat`` samples, the
two sides sampled in turn; ratios are "TF's median / tfshard's median" (bigger: tfshard
faster).  The script reports, it does not assert: it exits 0 when targets are missed (rows say
MISS) and 1 only when a case fails to run (ERROR) or tfshard leaves a variable holding anything
but the checkpoint's bytes (WRONG, checked once per case after timing by reading every variable
back and comparing with the checkpoint read by TF).

Cases
-----
tf2_eager
    ``tfshard.tf.restore(path, module)`` (variables matched through the object graph) vs
    ``tf.train.Checkpoint(model=module).restore(path)``, eager, TF2 variables.  Target: >= 1x.
tf1_session
    TF1 graph variables in a ``tf.compat.v1.Session``, named by the checkpoint's keys:
    ``tfshard.tf.restore(path, {key: variable}, session=sess)`` vs
    ``tf.compat.v1.train.Saver({key: variable}).restore(sess, path)`` (the Saver and its restore
    ops built before timing).  Target: >= 1x.

Examples
--------
    python benchmarks/bench_restore.py                 # full run, about a minute
    python benchmarks/bench_restore.py --quick         # tiny model, one repeat (smoke test)
    python benchmarks/bench_restore.py --cases tf1_session --repeat 9 --json out.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CASES = ("tf2_eager", "tf1_session")
TARGETS = {"tf2_eager": (">=", 1.0), "tf1_session": (">=", 1.0)}
DESCRIPTIONS = {
    "tf2_eager": "tfshard.tf.restore(path, module) vs tf.train.Checkpoint.restore, "
                 "{tensors} TF2 variables, {mbytes:.0f} MB",
    "tf1_session": "tfshard.tf.restore(path, {{key: var}}, session=sess) vs TF1 Saver.restore, "
                   "same checkpoint",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def import_restore():
    """``(tfshard, None)`` if ``tfshard.tf.restore`` is usable, else ``(None, reason)``."""
    mod, why = C.import_tfshard()
    if mod is None:
        return None, why
    try:
        import tfshard.tf  # noqa: F401
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return mod, None


class Model:
    """The module whose variables the checkpoint holds, rebuilt on demand."""

    def __init__(self, tf, shapes):
        self.module = tf.Module()
        self.module.vars = {name: tf.Variable(tf.zeros(shape), name=name)
                            for name, shape in shapes.items()}


def build_checkpoint(tf, shapes, workdir: Path) -> str:
    """The cached input checkpoint's prefix (written by TF on first use)."""
    def build(tmp: Path):
        values = C.random_tensors(shapes, seed=5)
        model = Model(tf, shapes)
        for name, var in model.module.vars.items():
            var.assign(values[name])
        tf.train.Checkpoint(model=model.module).write(str(tmp / "ckpt"))
    spec = {"shapes": {k: list(v) for k, v in shapes.items()}, "writer": "tf.train.Checkpoint"}
    directory, _ = C.cached_input(workdir, f"restore-{len(shapes)}-"
                                  f"{sum(int(np.prod(s)) for s in shapes.values())}",
                                  spec, build, log=log)
    prefix = str(directory / "ckpt")
    C.warm(C.checkpoint_files(prefix))
    return prefix


def wrong_values(tf, prefix: str, actual: dict) -> str | None:
    """What differs between the variables' values ``{key: array}`` and the checkpoint."""
    reader = tf.train.load_checkpoint(prefix)
    for key, got in actual.items():
        want = reader.get_tensor(key)
        if got.dtype != want.dtype or got.shape != want.shape or got.tobytes() != want.tobytes():
            return f"variable for {key!r} does not hold the checkpoint's value"
    return None


class Bench:
    def __init__(self, args, tf, tfshard, shapes, prefix):
        self.args, self.tf, self.tfs, self.shapes, self.prefix = args, tf, tfshard, shapes, prefix
        self.keys = {name: f"model/vars/{name.replace('.', '..').replace('/', '.S')}"
                     f"/.ATTRIBUTES/VARIABLE_VALUE" for name in shapes}

    def timings(self, fns):
        return C.bench_interleaved({k: f for k, f in fns.items() if f is not None},
                                   repeat=self.args.repeat, min_time=0.0)

    def _finish(self, row, t, read_back):
        row.detail = {k: v.to_json() for k, v in t.items()}
        row.tf = t["tf"].median
        nbytes = sum(int(np.prod(s)) * 4 for s in self.shapes.values())
        row.notes.append(", ".join(f"{k} {nbytes / v.median / 1e9:.2f} GB/s"
                                   for k, v in t.items()))
        if "tfshard" in t:
            row.tfshard = t["tfshard"].median
            row.ratio = row.tf / row.tfshard
            # The last sample was tfshard's: the variables hold what it assigned.
            problem = wrong_values(self.tf, self.prefix, read_back())
            if problem:
                row.status = C.WRONG
                row.notes.append(f"tfshard restored wrong values: {problem}")
            else:
                row.notes.append("checked: after tfshard's restore every variable equals the "
                                 "checkpoint as TF reads it")

    def tf2_eager(self, row):
        tf = self.tf
        model = Model(tf, self.shapes)
        ckpt = tf.train.Checkpoint(model=model.module)

        def tf_restore():
            ckpt.restore(self.prefix).expect_partial()

        fns = {"tf": tf_restore}
        if self.tfs:
            restore = self.tfs.tf.restore
            fns["tfshard"] = lambda: restore(self.prefix, model.module)
        t = self.timings(fns)
        self._finish(row, t, lambda: {self.keys[n]: v.numpy()
                                      for n, v in model.module.vars.items()})

    def tf1_session(self, row):
        tf = self.tf
        graph = tf.Graph()
        with graph.as_default():
            variables = {self.keys[name]: tf.compat.v1.get_variable(
                name, shape, initializer=tf.compat.v1.zeros_initializer())
                for name, shape in self.shapes.items()}
            saver = tf.compat.v1.train.Saver(variables)
            sess = tf.compat.v1.Session(graph=graph)
            sess.run(tf.compat.v1.global_variables_initializer())
        try:
            def tf_restore():
                with graph.as_default():   # Saver.restore outside its graph goes eager
                    saver.restore(sess, self.prefix)

            fns = {"tf": tf_restore}
            if self.tfs:
                restore = self.tfs.tf.restore

                def tfshard_restore():
                    with graph.as_default():
                        restore(self.prefix, variables, session=sess)
                fns["tfshard"] = tfshard_restore
            t = self.timings(fns)
            self._finish(row, t, lambda: sess.run(variables))
        finally:
            sess.close()


def parse_args(argv=None):
    parser = C.benchmark_parser(__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="tiny model (~4 MB), one sample per side: a smoke test, not a "
                             "measurement")
    parser.add_argument("--repeat", type=int, default=None, metavar="N",
                        help="timed samples per side and case (default 5; 1 with --quick)")
    parser.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                        help=f"cache directory for the input checkpoint "
                             f"(default {C.default_workdir()})")
    return C.parse_benchmark_args(parser, argv, CASES, others="TensorFlow's restore")


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    tf = C.import_tf()
    tfshard, why = (None, "--no-tfshard") if args.no_tfshard else import_restore()
    if tfshard is None:
        log(f"tfshard not measured ({why}); its columns will say n/a")
    shapes = C.bert_shapes(**(C.BERT_TINY if args.quick else C.BERT_BASE))
    prefix = build_checkpoint(tf, shapes, args.workdir)
    sizes = {"tensors": len(shapes),
             "mbytes": sum(int(np.prod(s)) * 4 for s in shapes.values()) / 1e6}
    bench = Bench(args, tf, tfshard, shapes, prefix)
    rows = []
    for case in args.cases:
        op, threshold = TARGETS[case]
        row = C.Row(case=case, what=DESCRIPTIONS[case].format(**sizes), unit="s", op=op,
                    threshold=threshold)
        rows.append(C.run_case(row, getattr(bench, case), log=log))
    env = C.library_environment(tf, tfshard, why)
    return C.finish("bench_restore", args, rows, env, sizes,
                    f"repeat {args.repeat}, workdir {args.workdir}", t_start)


if __name__ == "__main__":
    sys.exit(main())
