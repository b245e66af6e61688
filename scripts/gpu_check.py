#!/usr/bin/env python
"""One short check of tfshard's GPU paths, for a machine with an NVIDIA GPU.

Builds a BERT-base-shaped model (199 float32 tensors, 438 MB; ``--small``: 4 MB) once as a
TF checkpoint (``tfshard.save`` with ``--alignment``, 1 packs like TF) and as a safetensors
file, then, each part skipped with its reason when its framework has no GPU here:

* torch: ``tfshard.torch.load_file(p, device="cuda")`` (verified and ``verify=False``) vs
  ``safetensors.torch.load_file(f, device="cuda")``;
* JAX: ``tfshard.jax.load_file(p, device=<gpu>)`` vs ``safetensors.numpy.load_file`` +
  ``jax.device_put``;
* TF: ``tfshard.tf.restore(p, module)`` into variables on ``/GPU:0`` vs
  ``tf.train.Checkpoint(model=module).restore(p)``.

Every load is timed until the device holds the values (synchronized), medians of
``--repeat`` runs with warm page cache; each result is compared with the model's bytes.
Prints one JSON object (also written to ``--json`` or ``$OUT/gpu_check.json``); exits 1 if
any value was wrong or a part failed.

    python scripts/gpu_check.py                # about a minute on a GPU machine
    python scripts/gpu_check.py --small --repeat 1
    python scripts/gpu_check.py --small --cpu      # the same parts on the CPU (no GPU needed)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _common as C  # noqa: E402

import tfshard  # noqa: E402


def timed(fn, repeat, sync):
    """(median seconds, last result) of ``fn`` followed by ``sync(result)``."""
    times, result = [], None
    for _ in range(repeat + 1):  # the first run warms up and is not counted
        t0 = time.perf_counter()
        result = fn()
        sync(result)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]), result


def part_torch(prefix, st_file, tensors, repeat, cpu):
    import torch
    from safetensors.torch import load_file as st_load

    import tfshard.torch

    dev = "cpu" if cpu else "cuda"
    if not cpu and not torch.cuda.is_available():
        return {"skipped": "torch finds no CUDA device"}

    def sync(_):
        if not cpu:
            torch.cuda.synchronize()

    out = {"device": "cpu" if cpu else torch.cuda.get_device_name(0)}
    for key, fn in (("tfshard_verified", lambda: tfshard.torch.load_file(prefix, dev)),
                    ("tfshard_noverify",
                     lambda: tfshard.torch.load_file(prefix, dev, verify=False)),
                    ("safetensors", lambda: st_load(st_file, device=dev))):
        seconds, loaded = timed(fn, repeat, sync)
        wrong = [n for n, a in tensors.items()
                 if loaded[n].device.type != dev
                 or not np.array_equal(loaded[n].cpu().numpy(), a)]
        out[key] = {"seconds": seconds, "wrong": wrong[:5], "n_wrong": len(wrong)}
    out["ratio_verified"] = out["safetensors"]["seconds"] / out["tfshard_verified"]["seconds"]
    out["ratio_noverify"] = out["safetensors"]["seconds"] / out["tfshard_noverify"]["seconds"]
    return out


def part_jax(prefix, st_file, tensors, repeat, cpu):
    import jax
    from safetensors.numpy import load_file as st_load

    import tfshard.jax

    gpus = [d for d in jax.devices() if d.platform == ("cpu" if cpu else "gpu")]
    if not gpus:
        return {"skipped": f"JAX has no GPU ({jax.devices()})"}
    gpu = gpus[0]

    def sync(result):
        for x in result.values():
            x.block_until_ready()

    out = {"device": str(gpu)}
    for key, fn in (("tfshard_verified", lambda: tfshard.jax.load_file(prefix, gpu)),
                    ("tfshard_noverify",
                     lambda: tfshard.jax.load_file(prefix, gpu, verify=False)),
                    ("safetensors", lambda: {n: jax.device_put(a, gpu)
                                             for n, a in st_load(st_file).items()})):
        seconds, loaded = timed(fn, repeat, sync)
        wrong = [n for n, a in tensors.items()
                 if loaded[n].devices() != {gpu} or not np.array_equal(np.asarray(loaded[n]), a)]
        out[key] = {"seconds": seconds, "wrong": wrong[:5], "n_wrong": len(wrong)}
    out["ratio_verified"] = out["safetensors"]["seconds"] / out["tfshard_verified"]["seconds"]
    return out


def part_tf(tensors, workdir, repeat, cpu):
    tf = C.import_tf()
    import tfshard.tf

    if not cpu and not tf.config.list_logical_devices("GPU"):
        return {"skipped": "TensorFlow finds no GPU"}
    module = tf.Module()
    with tf.device("/CPU:0" if cpu else "/GPU:0"):
        module.vars = {n.replace("/", "__"): tf.Variable(a) for n, a in tensors.items()}
    prefix = tf.train.Checkpoint(model=module).write(str(Path(workdir) / "tf2" / "ckpt"))
    for v in module.vars.values():
        v.assign(tf.zeros_like(v))

    def sync(_):
        for v in module.vars.values():
            v.read_value().numpy()[:0]  # waits for the assignment, copies nothing

    out = {"devices": sorted({v.device for v in module.vars.values()})}
    for key, fn in (("tfshard", lambda: tfshard.tf.restore(prefix, module)),
                    ("tensorflow",
                     lambda: tf.train.Checkpoint(model=module).restore(prefix).expect_partial())):
        seconds, _ = timed(fn, repeat, sync)
        wrong = [n for n, a in tensors.items()
                 if not np.array_equal(module.vars[n.replace("/", "__")].numpy(), a)]
        out[key] = {"seconds": seconds, "wrong": wrong[:5], "n_wrong": len(wrong)}
        for v in module.vars.values():
            v.assign(tf.zeros_like(v))
    out["ratio"] = out["tensorflow"]["seconds"] / out["tfshard"]["seconds"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a 4 MB model")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--alignment", type=int, default=1,
                        help="tensor alignment in the checkpoint (1: packed like TF)")
    parser.add_argument("--cpu", action="store_true",
                        help="run every part on the CPU instead (checks the script itself)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from safetensors.numpy import save_file

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tfshard-gpu-"))
    tensors = C.random_tensors(C.bert_shapes(**(C.BERT_TINY if args.small else C.BERT_BASE)))
    prefix = tfshard.save(workdir / "ckpt", tensors, alignment=args.alignment)
    st_file = str(workdir / "model.safetensors")
    save_file(tensors, st_file)
    C.warm(C.checkpoint_files(prefix) + [Path(st_file)])
    report = {"environment": C.environment(), "model_bytes": sum(a.nbytes for a in
                                                                  tensors.values()),
              "tensors": len(tensors), "alignment": args.alignment}
    failed = False
    for name, run in (("torch", lambda: part_torch(prefix, st_file, tensors, args.repeat,
                                                   args.cpu)),
                      ("jax", lambda: part_jax(prefix, st_file, tensors, args.repeat, args.cpu)),
                      ("tf", lambda: part_tf(tensors, workdir, args.repeat, args.cpu))):
        try:
            report[name] = run()
        except Exception as exc:  # report every part, whatever one of them does
            report[name] = {"error": f"{type(exc).__name__}: {exc}",
                            "traceback": traceback.format_exc()[-3000:]}
            failed = True
        failed |= any(isinstance(v, dict) and v.get("n_wrong") for v in report[name].values())
    text = json.dumps(report, indent=1, default=str)
    print(text)
    dest = args.json or (os.path.join(os.environ["OUT"], "gpu_check.json")
                         if os.environ.get("OUT") else None)
    if dest:
        Path(dest).write_text(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
