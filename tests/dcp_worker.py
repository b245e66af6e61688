"""One rank of the torch.distributed.checkpoint tests (tests/test_dcp.py).

Run as ``torchrun --standalone --nproc_per_node=N tests/dcp_worker.py OUT GOLDEN`` with the
gloo backend on CPU.  Every rank loads TensorFlow-written golden checkpoints through
``DCPReader`` into plain tensors and DTensors, checks its local values against tfshard's
whole-tensor reads and counts the bytes it read; saves a state dict of DTensors through
``DCPWriter`` (the test process then reads the result with TensorFlow); and checks that a
save that fails on one rank leaves nothing at its prefix.  Each rank writes what it found to
``OUT/rank<R>.json``; failing checks are recorded there, not raised, so that every rank
reaches every collective and none hangs.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

import tfshard
from tfshard._dcp import _TORCH_DTYPES as TORCH_DTYPES
from tfshard.formats._torch import tensor_to_numpy
from tfshard.torch import DCPReader, DCPWriter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dcp_cases import SAVE_CASES, full_tensor  # noqa: E402

warnings.filterwarnings("ignore", category=UserWarning)


class Checks:
    """Named results for this rank: True, or the reason a check failed."""

    def __init__(self):
        self.results: dict = {}

    def run(self, name, fn):
        try:
            fn()
        except (Exception, CheckpointException):  # recorded; the test process fails on it
            self.results[name] = traceback.format_exc(limit=6)
        else:
            self.results[name] = True


def local_region(dt: DTensor):
    """The global index of this rank's local shard of ``dt``."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    sizes, offsets = compute_local_shape_and_global_offset(dt.shape, dt.device_mesh,
                                                           dt.placements)
    return tuple(slice(o, o + s) for o, s in zip(offsets, sizes)), int(np.prod(sizes))


def check_equal(got: torch.Tensor, want: np.ndarray, what: str):
    got_np = tensor_to_numpy(got.detach())
    if got_np.shape != want.shape or not np.array_equal(got_np, want, equal_nan=True):
        raise AssertionError(f"{what}: got {got_np!r}, want {want!r}")


def load_cases(golden: Path, mesh, checks: Checks, stats: dict):
    """DCPReader into plain tensors and DTensors from TF-written goldens."""
    part = golden / "partitioned" / "model.ckpt"    # TF1 partitioned variables
    types = golden / "dtypes" / "ckpt"             # every dtype TF saves
    ref = {**tfshard.load(part), **tfshard.load(types)}
    tf_dtypes = {i.name: i.dtype for p in (part, types) for i in tfshard.open(p).infos()}
    world = dist.get_world_size()

    def run(label, path, layout, rename=None, on=mesh):
        """``layout``: {state-dict key: (tf name, placements or None for a plain tensor)}."""
        sd, expect_bytes = {}, 0
        for key, (tf_name, placements) in layout.items():
            value = ref[tf_name]
            zeros = torch.zeros(value.shape, dtype=TORCH_DTYPES[tf_dtypes[tf_name]])
            if placements is None:
                sd[key] = zeros
                expect_bytes += value.nbytes
            else:
                sd[key] = distribute_tensor(zeros, on, placements, src_data_rank=None)
                _, count = local_region(sd[key])
                expect_bytes += count * value.itemsize
        reader = DCPReader(path, rename=rename)
        dcp.load(sd, storage_reader=reader)
        for key, (tf_name, placements) in layout.items():
            value = ref[tf_name]
            if placements is None:
                check_equal(sd[key], value, f"{label}/{key}")
            else:
                region, _ = local_region(sd[key])
                check_equal(sd[key].to_local(), value[region], f"{label}/{key} rank "
                            f"{dist.get_rank()}")
        stats[label] = {"bytes_read": reader.bytes_read, "expected": expect_bytes}
        if reader.bytes_read != expect_bytes:
            raise AssertionError(f"{label}: read {reader.bytes_read} bytes, the local "
                                 f"shards hold {expect_bytes}")

    checks.run("load_partitioned_rows", lambda: run("load_partitioned_rows", part, {
        # [10, 4] stored as TF1 row slices 4/3/3: Shard(0) cuts across slice boundaries.
        "dense/kernel": ("dense/kernel", [Shard(0)]),
        "cols_as_rows": ("cols", [Shard(0)]),        # column-partitioned, loaded by rows
        "dense/bias": ("dense/bias", None),          # plain tensor, every rank whole
        "global_step": ("global_step", None),        # int64 scalar
    }, rename=lambda n: "cols_as_rows" if n == "cols" else n))
    checks.run("load_partitioned_cols", lambda: run("load_partitioned_cols", part, {
        "cols": ("cols", [Shard(1)]),                # strided reads within each slice
        "dense/kernel": ("dense/kernel", [Shard(1)]),
        "dense/bias": ("dense/bias", [Replicate()]),
    }))
    checks.run("load_dtypes", lambda: run("load_dtypes", types, {
        "t_bfloat16": ("t_bfloat16", [Shard(0)]),    # [2, 3]: with 4 ranks, 2 hold nothing
        "t_float16": ("t_float16", [Shard(1)]),      # [2, 3]: with 4 ranks, one holds nothing
        "t_int64": ("t_int64", [Shard(0)]),
        "scalar_int64": ("scalar_int64", None),
        "t_bool": ("t_bool", [Shard(1)]),
        "t_uint16": ("t_uint16", None),
        "t_float8_e4m3fn": ("t_float8_e4m3fn", [Shard(1)]),
        "empty_float32": ("empty_float32", [Shard(0)]),  # [0, 3]: no rank holds anything
    }))
    if world == 4:
        mesh2 = init_device_mesh("cpu", (2, 2))
        checks.run("load_2d_mesh", lambda: run("load_2d_mesh", part, {
            "dense/kernel": ("dense/kernel", [Shard(0), Shard(1)]),
            "cols": ("cols", [Replicate(), Shard(1)]),
        }, on=mesh2))


def build_save_state(mesh, world: int) -> dict:
    sd = {}
    for name, (shape, dtype, placements) in SAVE_CASES.items():
        full = full_tensor(name, shape, dtype)
        if placements is None:
            sd[name] = full
        elif placements == "2d":
            if world != 4:
                continue
            sd[name] = distribute_tensor(full, init_device_mesh("cpu", (2, 2)),
                                         [Shard(0), Shard(1)], src_data_rank=None)
        else:
            sd[name] = distribute_tensor(full, mesh, placements, src_data_rank=None)
    return sd


def save_cases(out: Path, mesh, checks: Checks, stats: dict):
    world = dist.get_world_size()
    prefix = out / "saved" / "ckpt-1"

    def save():
        writer = DCPWriter(prefix)
        dcp.save(build_save_state(mesh, world), storage_writer=writer)
        stats["save"] = {"bytes_written": writer.bytes_written}

    checks.run("save", save)

    def load_back():
        # Reload what was saved with other placements than it was saved with.
        swap = {"rows": [Shard(1)], "cols": [Shard(0)], "bf16": [Replicate()],
                "one_row": [Shard(0)], "tiles": [Shard(1)]}
        sd = {}
        for name, (shape, dtype, placements) in SAVE_CASES.items():
            if placements == "2d" and world != 4:
                continue
            zeros = torch.zeros(shape, dtype=dtype)
            sd[name] = (zeros if name not in swap else
                        distribute_tensor(zeros, mesh, swap[name], src_data_rank=None))
        dcp.load(sd, storage_reader=DCPReader(prefix))
        for name, value in sd.items():
            shape, dtype, _ = SAVE_CASES[name]
            want = tensor_to_numpy(full_tensor(name, shape, dtype))
            if isinstance(value, DTensor):
                region, _ = local_region(value)
                check_equal(value.to_local(), want[region], f"reload {name}")
            else:
                check_equal(value, want, f"reload {name}")

    checks.run("load_back", load_back)


class FailingPlanner(DefaultSavePlanner):
    """Makes rank 1 fail while writing its part, after other ranks may have written."""

    def resolve_data(self, write_item):
        if dist.get_rank() == 1:
            raise OSError(28, "No space left on device (simulated)")
        return super().resolve_data(write_item)


def failure_cases(out: Path, mesh, checks: Checks):
    prefix = out / "failed" / "ckpt"
    world = dist.get_world_size()

    def failing_save():
        sd = {"w": distribute_tensor(torch.arange(8.0 * world).reshape(2 * world, 4), mesh,
                                     [Shard(0)], src_data_rank=None)}
        try:
            dcp.save(sd, storage_writer=DCPWriter(prefix), planner=FailingPlanner())
        except CheckpointException as exc:  # DCP raises it on every rank
            if "No space left" not in str(exc):
                raise AssertionError(f"unexpected error: {exc!r}") from exc
        else:
            raise AssertionError("the save succeeded although rank 1 failed")
        dist.barrier()
        if os.path.exists(f"{prefix}.index"):
            raise AssertionError("a failed save left an index at its prefix")
        # A successful save of the same prefix then clears the scratch parts.
        dcp.save(sd, storage_writer=DCPWriter(prefix))
        dist.barrier()
        stray = [p.name for p in prefix.parent.iterdir() if ".tempstate" in p.name]
        if stray:
            raise AssertionError(f"scratch parts left after a successful save: {stray}")
        want = torch.arange(8.0 * world).reshape(2 * world, 4).numpy()
        if not np.array_equal(tfshard.load_variable(prefix, "w"), want):
            raise AssertionError("the save after a failed one wrote other values")

    checks.run("failing_rank", failing_save)

    def non_tensor():
        try:
            dcp.save({"w": torch.ones(2), "lr": 0.5}, storage_writer=DCPWriter(out / "obj" / "c"))
        except CheckpointException as exc:
            if "holds only tensors" not in str(exc):
                raise AssertionError(f"unexpected error: {exc!r}") from exc
        else:
            raise AssertionError("a non-tensor value was accepted")
        if (out / "obj" / "c.index").exists():
            raise AssertionError("a refused save left an index")

    checks.run("non_tensor_refused", non_tensor)


def main():
    out, golden = Path(sys.argv[1]), Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    checks, stats = Checks(), {}
    load_cases(golden, mesh, checks, stats)
    save_cases(out, mesh, checks, stats)
    failure_cases(out, mesh, checks)
    (out / f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "world": world, "checks": checks.results, "stats": stats}, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
