"""Read a checkpoint's step counter and other non-trainable state without TensorFlow.

Scripts that only need to know how far a training run got (``global_step``,
a Keras optimizer's ``iterations``, ``save_counter``) or want to look at
non-trainable state (BatchNorm moving averages, Adam's ``beta1_power``) do not
need TensorFlow: tfshard parses the checkpoint's index and memory-maps its
data, in milliseconds, with nothing but numpy.

The script shows:

* ``tfshard.list_variables(path)`` and a glob filter (``fnmatch``; ``*``
  matches ``/`` too) to find the state tensors in TF1 name-based checkpoints
  (``global_step``, ``.../moving_mean``, ``beta1_power``) and in TF2
  object-based ones (``optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE``);
* ``tfshard.open(path)`` and ``Checkpoint.info(name)`` for dtype and shape
  without reading the data, and reading values from the open checkpoint;
* ``tfshard.load_variable(path, name)`` for one value;
* ``tfshard.save`` writing the values found to a small checkpoint of their own
  in ``--workdir`` (for example to carry the step count into another run).

It ends by asserting that TensorFlow was never imported.

Each PATH may be a checkpoint prefix, its ``.index`` file, or a directory
holding a ``checkpoint`` state file (its latest checkpoint is read).  Without
PATH the script reads two small TensorFlow-written checkpoints that ship with
the tfshard repository: ``tests/data/golden/partitioned`` (a TF1 ``Saver``
checkpoint with ``global_step``) and ``tests/data/golden/keras_adam`` (a TF2
Keras model trained with Adam).  The exit code is 1 when a checkpoint holds no
step counter.

Run::

    python examples/read_without_tf.py [PATH ...] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

import tfshard

DEFAULT_CHECKPOINTS = [
    Path(__file__).resolve().parent.parent / "tests" / "data" / "golden" / name
    for name in ("partitioned", "keras_adam")
]

# How training loops name their step counter, most specific first: TF1's
# global step, a Keras optimizer's iteration count (Keras 3: "_iterations",
# Keras 2: "iter"), tf.train.Checkpoint's save counter.
STEP_PATTERNS = [
    "global_step",
    "*/global_step",
    "*optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE",
    "*optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE",
    "save_counter/.ATTRIBUTES/VARIABLE_VALUE",
]
# Other non-trainable state worth a look.
STATE_PATTERNS = [
    "*moving_mean*",
    "*moving_variance*",
    "*beta1_power*",
    "*beta2_power*",
    "*optimizer/_learning_rate/.ATTRIBUTES/VARIABLE_VALUE",
]


def matching(names, patterns) -> list:
    """The names matching any glob, in the order of ``patterns`` (then name)."""
    out = []
    for pattern in patterns:
        out += [n for n in sorted(names) if fnmatch.fnmatchcase(n, pattern) and n not in out]
    return out


def describe(value: np.ndarray) -> str:
    if value.ndim == 0:
        return f"{value.item():.6g}" if value.dtype.kind == "f" else str(value.item())
    if value.size <= 4:
        return np.array2string(value, precision=4)
    return (f"min {value.min():.4g}, mean {value.mean():.4g}, max {value.max():.4g} "
            f"({value.size} values)")


def inspect(path: str, workdir: str, index: int) -> bool:
    """Print the state tensors of one checkpoint; False when it has no step."""
    # list_variables: [(name, shape)] sorted by name, like tf.train.list_variables.
    names = [name for name, _ in tfshard.list_variables(path)]
    step_names = matching(names, STEP_PATTERNS)
    state_names = [n for n in matching(names, STATE_PATTERNS) if n not in step_names]

    found = {}
    with tfshard.open(path) as ckpt:
        print(f"\n{ckpt.prefix}: {len(ckpt)} tensors")
        for name in step_names + state_names:
            info = ckpt.info(name)          # index metadata only, no data read
            # A zero-copy view of the memory map, CRC-32C checked on first read;
            # copy it to keep it beyond the checkpoint's lifetime if needed.
            found[name] = np.array(ckpt[name])
            print(f"  {name}: {info.dtype} {list(info.shape)} = {describe(found[name])}")

    if not step_names:
        print(f"  no step counter found (looked for {', '.join(STEP_PATTERNS)})")
        return False
    # One value, without keeping the checkpoint open.
    step = tfshard.load_variable(path, step_names[0])
    print(f"  step: {int(step)} (from {step_names[0]})")

    # The values found, as a small checkpoint of their own.
    out = tfshard.save(os.path.join(workdir, f"state-{index}", "state.ckpt"), found)
    back = tfshard.load(out)
    assert sorted(back) == sorted(found) and all(
        np.array_equal(back[n], found[n]) for n in found), "the saved state differs"
    print(f"  saved {len(found)} tensors to {out}")
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="checkpoints to read (default: two TensorFlow-written checkpoints "
                             "from the repository's tests/data/golden)")
    parser.add_argument("--workdir", help="where the extracted state is written "
                                          "(default: a temp dir)")
    args = parser.parse_args(argv)
    paths = args.paths or [str(p) for p in DEFAULT_CHECKPOINTS]
    for p in paths:
        if not args.paths and not os.path.isdir(p):
            parser.error(f"default checkpoint {p} not found (the script reads the tfshard "
                         f"repository's test data by default); pass a checkpoint PATH")

    with tempfile.TemporaryDirectory(prefix="tfshard-read-") as tmp:
        workdir = args.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        ok = [inspect(p, workdir, i) for i, p in enumerate(paths)]

    # The point of the exercise: none of this needed TensorFlow.
    assert "tensorflow" not in sys.modules, "TensorFlow was imported"
    print("\nTensorFlow was not imported")
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
