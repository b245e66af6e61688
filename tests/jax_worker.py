"""One process of the two-process JAX test (tests/test_jax_sharding.py).

``python tests/jax_worker.py PROCESS_ID PORT MODEL PARTITIONED OUT.json`` joins a JAX job of two
processes (coordinator on 127.0.0.1:PORT, 4 CPU devices each), loads checkpoints into one 2x4
mesh over all 8 devices with several PartitionSpecs, checks its addressable shards against
whole-tensor reads, and records the bytes it read (at the loader's region reads) against the
bytes its distinct addressable shards hold.
"""

import json
import sys

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import tfshard
import tfshard._jax_sharding as jax_sharding
import tfshard.jax


def main():
    pid, port, model, partitioned, out = sys.argv[1:]
    jax.config.update("jax_enable_x64", True)
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=int(pid), initialization_timeout=120)
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("a", "b"))
    read = {}
    original = jax_sharding._read_region

    def counting(ckpt, info, index, verify):
        value = original(ckpt, info, index, verify)
        read[info.name] = read.get(info.name, 0) + value.nbytes
        return value

    jax_sharding._read_region = counting
    checks, stats = {}, {}
    cases = [(model, "w", P("a", "b")), (model, "w", P(None, "b")), (model, "emb", P("a")),
             (model, "ids", P(("a", "b"))), (partitioned, "dense/kernel", P("a")),
             (partitioned, "cols", P(None, "a")), (partitioned, "global_step", P())]
    for path, name, spec in cases:
        label = f"{name} {spec}"
        read.clear()
        ref = tfshard.load_variable(path, name)
        sharding = NamedSharding(mesh, spec)
        arr = tfshard.jax.load(path, {name: sharding})[name]
        ok = arr.sharding == sharding and not arr.is_fully_addressable
        for shard in arr.addressable_shards:
            ok = ok and np.asarray(shard.data).tobytes() == ref[shard.index].tobytes()
        checks[label] = ok or f"shards differ from the checkpoint ({arr.sharding})"
        distinct = {tuple(s.indices(d)[:2] for s, d in zip(idx, ref.shape)): idx
                    for idx in sharding.addressable_devices_indices_map(ref.shape).values()}
        stats[label] = {"read": read.get(name, 0),
                        "expected": sum(ref[idx].nbytes for idx in distinct.values())}
    with open(out, "w") as f:
        json.dump({"process": int(pid), "process_count": jax.process_count(),
                   "devices": jax.device_count(), "local_devices": jax.local_device_count(),
                   "checks": checks, "bytes": stats}, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
