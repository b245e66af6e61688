#!/usr/bin/env python
"""Benchmark tfshard's distributed loaders: tfshard.torch.DCPReader and tfshard.jax.load.

The input is a BERT-large-sized TF checkpoint (391 float32 tensors, about 1.34 GB; about 4 MB
with ``--quick``) written once by tfshard into the cache directory (``--workdir``, default
``$TMPDIR/tfshard-bench``), and, for the DCP comparison, the same tensors saved once by
``torch.distributed.checkpoint.save`` with DCP's own ``FileSystemWriter``.  Files are in the
page cache (read once before timing) unless ``--cold`` evicts them before every sample.  Times
are medians of ``--repeat`` samples, the two sides sampled in turn; a sample of a multi-rank
load is the slowest rank's time, between two barriers.  The script reports, it does not assert:
it exits 0 when targets are missed (MISS) and 1 only when a case fails to run (ERROR) or a
loaded value differs from the checkpoint (WRONG, checked on every rank after timing).

Cases
-----
dcp_bytes
    Bytes each of ``--ranks`` (4) torchrun ranks (gloo, CPU) reads when ``dcp.load`` fills a
    state dict of ``Shard(0)`` DTensors from the TF checkpoint through ``DCPReader``, counted by
    the reader as it copies elements out of the data files; printed per rank.  Ratio: the
    largest rank's bytes / (checkpoint bytes / ranks).  Target: <= 1.1x.
dcp_load
    Time of that 4-rank ``dcp.load`` via ``DCPReader`` vs the same state dict loaded by DCP's
    ``FileSystemReader`` from the DCP checkpoint of the same tensors.  Ratio: FileSystemReader's
    median / DCPReader's.  Target: >= 1x.
jax_time
    ``tfshard.jax.load(path, shardings)`` into a 2x4 mesh vs ``tfshard.load(path)`` +
    ``jax.device_put`` of every tensor into the same shardings, in a JAX job of two processes on
    this machine (``jax.distributed`` with a coordinator on 127.0.0.1, 4 CPU devices each, so
    each process holds half of every tensor; every tensor is split along its first dimension
    over the processes and its last over each process's devices).  Time: the slower process.
    Ratio: device_put path / sharded path.  No target (information).  In a multi-process job
    ``jax.device_put`` of a host array first checks across the processes that each passed the
    same value (``multihost_utils.assert_equal``), which is part of what it costs.
jax_rss
    Peak resident memory gained during that load (VmHWM after resetting it with
    ``/proc/self/clear_refs``), the larger of the two processes, for each path.  Ratio: sharded
    path's peak / checkpoint bytes.  Target: <= 0.75x (each process keeps half the model, so the
    sharded path must never hold the whole model).
jax_time_1proc, jax_rss_1proc
    The same two loads in one process that holds all 8 devices (so both paths hold the whole
    model, and device_put makes no cross-process check).  No targets (information).

Examples
--------
    python benchmarks/bench_distributed.py                 # full run, a few minutes
    python benchmarks/bench_distributed.py --quick         # tiny model, one repeat (smoke test)
    python benchmarks/bench_distributed.py --cases dcp_bytes,dcp_load --repeat 5 --cold
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CASES = ("dcp_bytes", "dcp_load", "jax_time", "jax_rss", "jax_time_1proc", "jax_rss_1proc")
TARGETS = {"dcp_bytes": ("<=", 1.1), "dcp_load": (">=", 1.0), "jax_time": (">=", None),
           "jax_rss": ("<=", 0.75), "jax_time_1proc": (">=", None),
           "jax_rss_1proc": ("<=", None)}
BERT_LARGE = dict(vocab=30522, hidden=1024, layers=24, intermediate=4096, max_pos=512,
                  type_vocab=2)
WORKER_TIMEOUT = 1800


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- inputs -------------------------------------------------------------------------------

def build_inputs(args) -> tuple[str, str, int]:
    """(TF prefix, DCP directory, checkpoint bytes), built once into the cache."""
    import tfshard

    shape_args = C.BERT_TINY if args.quick else BERT_LARGE
    shapes = C.bert_shapes(**shape_args)

    def build_tf(tmp: Path):
        rng = np.random.default_rng(0)
        with tfshard.CheckpointWriter(tmp / "bert") as w:
            for name, shape in shapes.items():
                w.add(name, rng.standard_normal(shape, dtype=np.float32))
        return {"tensors": len(shapes),
                "bytes": sum(4 * int(np.prod(s)) for s in shapes.values())}

    tf_dir, manifest = C.cached_input(Path(args.workdir), f"distributed_tf_{len(shapes)}",
                                      {"shapes": shape_args}, build_tf, log=log)
    prefix = str(tf_dir / "bert")

    def build_dcp(tmp: Path):
        import warnings

        import torch
        import torch.distributed.checkpoint as dcp

        with tfshard.open(prefix) as ckpt, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Copies: DCP's writer pickles tensors, and a copy keeps the mmap unexported.
            sd = {name: torch.from_numpy(np.array(ckpt[name])) for name in ckpt}
            dcp.save(sd, storage_writer=dcp.FileSystemWriter(str(tmp / "dcp")))

    dcp_dir, _ = C.cached_input(Path(args.workdir), f"distributed_dcp_{len(shapes)}",
                                {"shapes": shape_args, "from": prefix}, build_dcp, log=log)
    return prefix, str(dcp_dir / "dcp"), int(manifest["bytes"])


def input_files(prefix: str, dcp_dir: str) -> list:
    return C.checkpoint_files(prefix) + sorted(Path(dcp_dir).iterdir())


def evict(paths) -> None:
    """Drop these files' pages from the OS cache (only these files)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ---- DCP worker (one torchrun rank) -------------------------------------------------------

def dcp_worker(prefix: str, dcp_dir: str, out: str, repeat: int, cold: bool) -> None:
    import warnings

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor import zeros as dtensor_zeros
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    import tfshard
    from tfshard.torch import DCPReader

    warnings.filterwarnings("ignore")
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    shapes = dict(tfshard.list_variables(prefix))

    class CountingFileSystemReader(dcp.FileSystemReader):
        """DCP's reader, counting the bytes of the stored items it reads (whole items)."""

        bytes_read = 0

        def read_data(self, plan, planner):
            self.bytes_read = sum(self.storage_data[r.storage_index].length for r in plan.items)
            return super().read_data(plan, planner)

    sd = {name: dtensor_zeros(shape, device_mesh=mesh, placements=[Shard(0)])
          for name, shape in shapes.items()}
    readers = {"tfshard": lambda: DCPReader(prefix), "fs": lambda: CountingFileSystemReader(dcp_dir)}
    files = input_files(prefix, dcp_dir)
    samples = {k: [] for k in readers}
    counted = {}
    for i in range(repeat + 1):                      # the first round warms up, untimed
        for key, make in readers.items():
            if cold and rank == 0:
                evict(files)
            reader = make()
            dist.barrier()
            t0 = time.perf_counter()
            dcp.load(sd, storage_reader=reader)
            dist.barrier()
            if i:
                samples[key].append(time.perf_counter() - t0)
            counted[key] = reader.bytes_read
    # Check the last load (FileSystemReader's) and then tfshard's, against whole reads.
    wrong = []
    with tfshard.open(prefix) as ckpt:
        for key in ("fs", "tfshard"):
            if key == "tfshard":
                for t in sd.values():
                    t.to_local().zero_()
                dcp.load(sd, storage_reader=DCPReader(prefix))
            for name, t in sd.items():
                sizes, offsets = compute_local_shape_and_global_offset(t.shape, mesh,
                                                                       t.placements)
                region = tuple(slice(o, o + n) for o, n in zip(offsets, sizes))
                if not np.array_equal(t.to_local().numpy(), ckpt.read(name, region)):
                    wrong.append(f"{key}:{name}")
    Path(out, f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "samples": samples, "bytes": counted, "wrong": wrong[:10]}))
    dist.barrier()
    dist.destroy_process_group()


def run_dcp(args, prefix, dcp_dir, total: int, rows: dict) -> None:
    import shutil
    import tempfile

    out = tempfile.mkdtemp(prefix="dcp-bench-", dir=args.workdir)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={args.ranks}", __file__, "--dcp-worker", prefix, dcp_dir, out,
           str(args.repeat), "1" if args.cold else "0"]
    env = dict(C.CHILD_ENV, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=WORKER_TIMEOUT)
    if proc.returncode:
        raise RuntimeError(f"torchrun exited {proc.returncode}: {proc.stderr[-3000:]}")
    ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(args.ranks)]
    shutil.rmtree(out, ignore_errors=True)
    wrong = sorted({w for r in ranks for w in r["wrong"]})

    def fill_bytes(row):
        per_rank = [r["bytes"]["tfshard"] for r in ranks]
        row.tfshard = max(per_rank)
        row.baseline = max(r["bytes"]["fs"] for r in ranks)
        row.ratio = max(per_rank) / (total / args.ranks)
        row.notes.append("DCPReader bytes per rank: " + ", ".join(
            f"rank {i}: {b:,} ({b / total:.3f} of {total:,})" for i, b in enumerate(per_rank)))
        row.notes.append("FileSystemReader bytes per rank (stored items it reads whole): "
                         + ", ".join(f"{r['bytes']['fs']:,}" for r in ranks))
        row.detail = {"per_rank": per_rank, "total": total}

    def fill_time(row):
        # One sample = the slowest rank (the load ends for everyone at the second barrier).
        per_sample = {k: [max(r["samples"][k][i] for r in ranks) for i in range(args.repeat)]
                      for k in ("tfshard", "fs")}
        row.tfshard = statistics.median(per_sample["tfshard"])
        row.baseline = statistics.median(per_sample["fs"])
        row.ratio = row.baseline / row.tfshard
        row.detail = {"samples_s": per_sample}
        row.notes.append(f"{args.ranks} ranks, gloo, CPU; page cache "
                         f"{'evicted before each sample' if args.cold else 'warm'}")

    for case, fill in (("dcp_bytes", fill_bytes), ("dcp_load", fill_time)):
        if case in rows:
            fill(rows[case])
            if wrong:
                rows[case].status = C.WRONG
                rows[case].notes.append(f"values differ from the checkpoint: {wrong}")


# ---- JAX worker (one of two processes) ----------------------------------------------------

def jax_worker(pid: str, nproc: str, port: str, method: str, prefix: str, out: str) -> None:
    nproc = int(nproc)
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // nproc}"
    import jax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import tfshard
    import tfshard.jax

    if nproc > 1:
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc,
                                   process_id=int(pid), initialization_timeout=300)
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("a", "b"))

    def sharding(name, shape, dtype=None):
        # First dimension across the processes, last across each process's devices.
        spec = [None] * len(shape)
        if shape and shape[0] % 2 == 0:
            spec[0] = "a"
        if len(shape) > 1 and shape[-1] % 4 == 0:
            spec[-1] = "b"
        elif len(shape) == 1 and shape[0] % 8 == 0:
            spec[0] = ("a", "b")
        return NamedSharding(mesh, P(*spec))

    def reset_peak():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def peak_rss():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return None

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    from jax.experimental import multihost_utils

    if nproc > 1:
        multihost_utils.sync_global_devices("start")
    before = rss()
    reset_peak()
    t0 = time.perf_counter()
    if method == "sharded":
        arrays = tfshard.jax.load(prefix, sharding)
    else:
        arrays = {name: jax.device_put(value, sharding(name, value.shape))
                  for name, value in tfshard.load(prefix).items()}
    jax.block_until_ready(list(arrays.values()))
    seconds = time.perf_counter() - t0
    peak = peak_rss()
    wrong = []
    with tfshard.open(prefix) as ckpt:
        for name, arr in arrays.items():
            for shard in arr.addressable_shards:
                if not np.array_equal(np.asarray(shard.data), ckpt.read(name, shard.index)):
                    wrong.append(name)
                    break
    Path(out).write_text(json.dumps({"seconds": seconds, "peak_gain": peak - before,
                                     "wrong": wrong[:10]}))
    if nproc > 1:
        multihost_utils.sync_global_devices("done")
        jax.distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_jax_job(args, method: str, prefix: str, nproc: int) -> list:
    """One load by a JAX job of ``nproc`` processes on this machine; each one's result."""
    import shutil
    import tempfile

    port = _free_port()
    tmp = tempfile.mkdtemp(prefix=f"jax-{method}-", dir=args.workdir)
    outs = [os.path.join(tmp, f"p{i}.json") for i in range(nproc)]
    env = dict(C.CHILD_ENV, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, __file__, "--jax-worker", str(i), str(nproc),
                               str(port), method, prefix, outs[i]], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(nproc)]
    try:
        errs = [p.communicate(timeout=WORKER_TIMEOUT)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, err in zip(procs, errs):
        if p.returncode:
            raise RuntimeError(f"JAX process exited {p.returncode}: {err[-3000:]}")
    results = [json.loads(Path(o).read_text()) for o in outs]
    shutil.rmtree(tmp, ignore_errors=True)
    return results


def run_jax(args, prefix, total: int, rows: dict, nproc: int) -> None:
    time_case, rss_case = ("jax_time", "jax_rss") if nproc == 2 else ("jax_time_1proc",
                                                                      "jax_rss_1proc")
    runs = {"sharded": [], "device_put": []}
    files = C.checkpoint_files(prefix)
    for _ in range(args.repeat):
        for method in runs:
            if args.cold:
                evict(files)
            runs[method].append(run_jax_job(args, method, prefix, nproc))
    wrong = sorted({w for m in runs.values() for job in m for r in job for w in r["wrong"]})
    secs = {m: [max(r["seconds"] for r in job) for job in v] for m, v in runs.items()}
    peaks = {m: [max(r["peak_gain"] for r in job) for job in v] for m, v in runs.items()}
    layout = ("2 processes x 4 CPU devices, one 2x4 mesh" if nproc == 2 else
              "1 process, 8 CPU devices in a 2x4 mesh")
    if time_case in rows:
        row = rows[time_case]
        row.tfshard = statistics.median(secs["sharded"])
        row.baseline = statistics.median(secs["device_put"])
        row.ratio = row.baseline / row.tfshard
        row.detail = {"samples_s": secs}
        row.notes.append(f"{layout}; the slower process")
    if rss_case in rows:
        row = rows[rss_case]
        row.tfshard = statistics.median(peaks["sharded"])
        row.baseline = statistics.median(peaks["device_put"])
        row.ratio = row.tfshard / total
        row.detail = {"samples_bytes": peaks, "total": total}
        row.notes.append(f"{layout}; checkpoint {total:,} bytes; peak RSS gained by the "
                         f"larger process: sharded {row.tfshard / total:.2f}x, tfshard.load + "
                         f"device_put {row.baseline / total:.2f}x of the checkpoint")
    for case in (time_case, rss_case):
        if case in rows and wrong:
            rows[case].status = C.WRONG
            rows[case].notes.append(f"values differ from the checkpoint: {wrong}")


# ---- table --------------------------------------------------------------------------------

def print_table(rows) -> None:
    header = ("case", "tfshard", "baseline", "ratio", "target", "result")
    body = [(r.case, C.fmt_value(r.tfshard, r.unit), C.fmt_value(r.baseline, r.unit),
             C.fmt_ratio(r.ratio), r.target, r.status) for r in rows]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]
    for cells in (header, tuple("-" * w for w in widths), *body):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(cells, widths))).rstrip())
    print()
    for r in rows:
        print(f"{r.case}: {r.what}")
        for note in r.notes:
            print(f"    {note}")


DESCRIPTIONS = {
    "dcp_bytes": "bytes per rank, dcp.load into Shard(0) DTensors via DCPReader "
                 "(baseline: FileSystemReader)",
    "dcp_load": "dcp.load time, DCPReader from the TF checkpoint vs FileSystemReader from a DCP "
                "checkpoint",
    "jax_time": "tfshard.jax.load into a 2x4 mesh vs tfshard.load + jax.device_put, 2 processes",
    "jax_rss": "peak RSS gained per process: tfshard.jax.load vs tfshard.load + jax.device_put",
    "jax_time_1proc": "as jax_time, one process holding all 8 devices",
    "jax_rss_1proc": "as jax_rss, one process holding all 8 devices",
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--dcp-worker"]:
        dcp_worker(argv[1], argv[2], argv[3], int(argv[4]), argv[5] == "1")
        return 0
    if argv[:1] == ["--jax-worker"]:
        jax_worker(*argv[1:7])
        return 0
    parser = C.benchmark_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny model, one repeat")
    parser.add_argument("--repeat", type=int, default=None, help="samples per side (default 5)")
    parser.add_argument("--workdir", type=Path, default=None, help="input cache directory")
    parser.add_argument("--ranks", type=int, default=4, help="torchrun ranks (default 4)")
    parser.add_argument("--cold", action="store_true",
                        help="evict the checkpoint files from the page cache before each sample")
    args = C.parse_benchmark_args(parser, argv, CASES, others="nothing")
    if args.no_tfshard:
        parser.error("every case measures tfshard; --no-tfshard leaves nothing to run")
    t_start = time.perf_counter()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    prefix, dcp_dir, total = build_inputs(args)
    if not args.cold:
        C.warm(input_files(prefix, dcp_dir))
    rows = {}
    for case in args.cases:
        op, threshold = TARGETS[case]
        row = C.Row(case, DESCRIPTIONS[case], "bytes" if "bytes" in case or "rss" in case else "s",
                    op=op, threshold=threshold)
        row.baseline = None
        rows[case] = row

    def measured(cases, fn):
        wanted = [c for c in cases if c in rows]
        if not wanted:
            return
        log(f"[{', '.join(wanted)}]")
        try:
            fn({c: rows[c] for c in wanted})
        except Exception as exc:
            for c in wanted:
                rows[c].status = C.ERROR
                rows[c].notes.append(f"error: {type(exc).__name__}: {exc}")
        for c in wanted:
            rows[c].judge()

    measured(("dcp_bytes", "dcp_load"), lambda r: run_dcp(args, prefix, dcp_dir, total, r))
    measured(("jax_time", "jax_rss"), lambda r: run_jax(args, prefix, total, r, 2))
    measured(("jax_time_1proc", "jax_rss_1proc"), lambda r: run_jax(args, prefix, total, r, 1))
    ordered = [rows[c] for c in args.cases]
    import tfshard
    import torch

    env = C.environment({"torch": torch.__version__, "jax": C.version_of("jax"),
                         "tfshard": tfshard.__version__})
    print()
    print("tfshard distributed benchmark"
          + (" (--quick: tiny inputs, not a measurement)" if args.quick else ""))
    print("  " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print(f"  checkpoint {total:,} bytes; repeat {args.repeat}; ranks {args.ranks}; "
          f"{'cold' if args.cold else 'warm'} page cache")
    print()
    print_table(ordered)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    if args.json:
        payload_rows = []
        for r in ordered:
            d = r.to_json()
            d["baseline"] = r.baseline
            payload_rows.append(d)
        C.dump_json(args.json, {"benchmark": "bench_distributed", "environment": env,
                                "inputs": {"tf": prefix, "dcp": dcp_dir, "bytes": total},
                                "options": {k: str(v) for k, v in vars(args).items()},
                                "rows": payload_rows})
    return 1 if any(r.status in (C.ERROR, C.WRONG) for r in ordered) else 0


if __name__ == "__main__":
    sys.exit(main())
