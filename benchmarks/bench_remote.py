#!/usr/bin/env python
"""Benchmark tfshard's reads from http:// URLs against downloading the files first.

A Range-capable HTTP server (``tests/remote_servers.py``) runs in a child process on
127.0.0.1 over the cache directory (``--workdir``, default ``$TMPDIR/tfshard-bench``) and
counts the requests and body bytes it serves.  Inputs are written by tfshard itself:

* ``table``: a 30522x768 float32 embedding table plus a bias (3000x64 with ``--quick``);
* ``bert``: a BERT-base-shaped model, 199 float32 tensors, about 440 MB (about 4 MB with
  ``--quick``), in one data shard as Google's release has it.

Loopback has no network latency and a server that answers at once: the ratios show what
tfshard's own work costs (fetch, check, decode), not what a cloud link would add.  Times are
medians of ``--repeat`` samples, tfshard and the baseline sampled in turn; the "baseline"
column is the comparison each case names.  The script reports, it does not assert: it
exits 0 when targets are missed (MISS) and 1 only when a case fails to run (ERROR) or
returns wrong values (WRONG).

Cases
-----
rows_bytes
    ``tfshard.open(url)`` + ``read("emb", index=np.s_[1000:1100])`` on ``table``: body bytes
    the server sent, against the budget "index + the rows + 1 MiB".  Target: <= 1.0x of the
    budget.  The requests are counted too (index 1, rows 1).
load_bert
    ``tfshard.load(url)`` of ``bert`` (every tensor fetched, CRC-checked, decoded) vs
    downloading the checkpoint's files with fsspec (``fs.get``) into a temporary folder and
    ``tfshard.load`` of the local copy.  Target: >= 1.0x (moonshot 1.5x).
load_bert_paced
    ``load_bert`` again against a second server that paces each response to 100 MiB/s
    (``--rate``), as object stores limit each connection: what concurrent ranged requests
    buy against a single download stream.  For information (loopback with a simulated
    limit is not a cloud store).
rows_time, rows_ratio_bytes
    The same row-range read vs a full download of ``table``'s files (``fs.get``, as
    ``gsutil cp`` would): time ratio (download / rows) and bytes ratio (rows / download),
    for information.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import (  # noqa: E402
    WRONG,
    Row,
    bench_interleaved,
    benchmark_parser,
    bert_shapes,
    cached_input,
    environment,
    finish,
    import_tfshard,
    parse_benchmark_args,
    random_tensors,
    run_case,
    version_of,
)

CASES = ("rows_bytes", "load_bert", "load_bert_paced", "rows_time", "rows_ratio_bytes")
BERT_FULL = dict(vocab=30522, hidden=768, layers=12, intermediate=3072, max_pos=512,
                 type_vocab=2)
BERT_QUICK = dict(vocab=1000, hidden=64, layers=2, intermediate=256, max_pos=64, type_vocab=2)
MiB = 1 << 20


def _table_input(workdir: Path, rows: int, cols: int, tfshard, log):
    def build(tmp: Path):
        rng = np.random.default_rng(5)
        tfshard.save(tmp / "table", {"emb": rng.standard_normal((rows, cols), dtype=np.float32),
                                     "bias": np.zeros(cols, np.float32)})
    return cached_input(workdir, f"remote-table-{rows}x{cols}", {"rows": rows, "cols": cols},
                        build, log=log)


def _bert_input(workdir: Path, cfg: dict, tfshard, log):
    def build(tmp: Path):
        tensors = random_tensors(bert_shapes(**cfg), seed=2)
        tfshard.save(tmp / "ckpt", tensors)
        return {"tensors": len(tensors), "bytes": int(sum(a.nbytes for a in tensors.values()))}
    return cached_input(workdir, "remote-bert-" + "x".join(map(str, cfg.values())), cfg, build,
                        log=log)


def _download_then(fs, urls: list, then):
    """fsspec's whole-file download of ``urls`` into a temporary folder, then ``then(dir)``."""
    tmp = Path(tempfile.mkdtemp(prefix="tfshard-bench-dl-"))
    try:
        fs.get(urls, str(tmp) + "/")
        return then(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny inputs (smoke test)")
    parser.add_argument("--repeat", type=int, default=0, help="samples per timing (default 5)")
    parser.add_argument("--min-time", type=float, default=0.0,
                        help="least seconds per sample (calibrates calls per sample)")
    parser.add_argument("--workdir", type=Path, default=None, help="input cache directory")
    parser.add_argument("--rate", type=float, default=100.0,
                        help="MiB/s per response of the paced server (load_bert_paced)")
    args = parse_benchmark_args(parser, argv, CASES, others="the baseline")
    t_start = time.perf_counter()
    log = print
    tfshard, why = import_tfshard()
    if tfshard is None:
        print(f"tfshard not importable: {why}")
        return 1
    import fsspec

    from remote_servers import ServerProcess

    rows, cols = (3000, 64) if args.quick else (30522, 768)
    cfg = BERT_QUICK if args.quick else BERT_FULL
    table_dir, _ = _table_input(args.workdir, rows, cols, tfshard, log)
    bert_dir, bert_manifest = _bert_input(args.workdir, cfg, tfshard, log)
    server = ServerProcess(args.workdir)
    fs = fsspec.filesystem("http")
    out_rows = []
    try:
        table_url = server.url_of(f"{table_dir.name}/table")
        bert_url = server.url_of(f"{bert_dir.name}/ckpt")
        table_files = sorted(p.name for p in table_dir.iterdir() if p.name.startswith("table."))
        bert_files = sorted(p.name for p in bert_dir.iterdir() if p.name.startswith("ckpt."))
        index_size = (table_dir / "table.index").stat().st_size
        row_bytes = 100 * cols * 4
        with tfshard.open(table_dir / "table") as local:
            want_rows = np.array(local.read("emb", index=np.s_[1000:1100]))

        def rows_read():
            with tfshard.open(table_url) as ckpt:
                return np.array(ckpt.read("emb", index=np.s_[1000:1100]))

        def rows_bytes(row: Row):
            server.reset()
            got = rows_read()
            stats = server.stats()
            if not np.array_equal(got, want_rows):
                row.status = WRONG
            row.tfshard = stats["bytes"]
            row.tf = index_size + row_bytes + MiB
            row.ratio = row.tfshard / row.tf
            row.detail = {"requests": stats["requests"], "index_bytes": index_size,
                          "row_bytes": row_bytes}
            row.notes.append(f"{stats['requests']} requests, {stats['bytes']} bytes "
                             f"(index {index_size} + rows {row_bytes}); baseline column: "
                             f"the budget index + rows + 1 MiB")

        def load_bert(row: Row, srv=None):
            srv = srv or server
            url = srv.url_of(f"{bert_dir.name}/ckpt")

            def remote():
                return tfshard.load(url)

            def download():
                return _download_then(fs, [f"{url}{f[4:]}" for f in bert_files],
                                      lambda d: tfshard.load(d / "ckpt"))

            srv.reset()
            got = remote()
            stats = srv.stats()
            with tfshard.open(bert_dir / "ckpt") as local:
                if got.keys() != set(local) or not all(
                        np.array_equal(got[k], local[k]) for k in local):
                    row.status = WRONG
            del got
            timings = bench_interleaved({"tfshard": remote, "baseline": download},
                                        repeat=args.repeat, min_time=args.min_time)
            row.tfshard = timings["tfshard"].median
            row.tf = timings["baseline"].median
            row.ratio = row.tf / row.tfshard
            data = bert_manifest["bytes"]
            row.detail = {k: t.to_json() for k, t in timings.items()}
            row.detail["served"] = stats
            row.notes.append(
                f"{data / MiB:.1f} MiB of tensors; tfshard.load made {stats['requests']} "
                f"requests for {stats['bytes'] / MiB:.1f} MiB; "
                f"{data / MiB / row.tfshard:.0f} MiB/s vs {data / MiB / row.tf:.0f} MiB/s "
                f"(baseline: fsspec fs.get, then tfshard.load of the local copy); "
                f"moonshot 1.5x")

        def load_bert_paced(row: Row):
            paced = ServerProcess(args.workdir, rate=args.rate * MiB)
            try:
                load_bert(row, paced)
            finally:
                paced.stop()
            row.notes.append(f"each response paced to {args.rate:g} MiB/s")

        timing_cache: dict = {}

        def rows_timings():
            if not timing_cache:
                server.reset()
                full = _download_then(fs, [f"{table_url}{f[5:]}" for f in table_files],
                                      lambda d: None)
                del full
                timing_cache["download_bytes"] = server.stats()["bytes"]
                server.reset()
                rows_read()
                timing_cache["rows_bytes"] = server.stats()["bytes"]
                timing_cache.update(bench_interleaved(
                    {"rows": rows_read,
                     "download": lambda: _download_then(
                         fs, [f"{table_url}{f[5:]}" for f in table_files], lambda d: None)},
                    repeat=args.repeat, min_time=args.min_time))
            return timing_cache

        def rows_time(row: Row):
            t = rows_timings()
            row.tfshard, row.tf = t["rows"].median, t["download"].median
            row.ratio = row.tf / row.tfshard
            row.notes.append("baseline column: downloading the whole checkpoint (fs.get)")

        def rows_ratio_bytes(row: Row):
            t = rows_timings()
            row.tfshard, row.tf = t["rows_bytes"], t["download_bytes"]
            row.ratio = row.tfshard / row.tf
            row.op = "<="
            row.notes.append("bytes of open + 100 rows over bytes of the full download")

        bodies = {
            "rows_bytes": (Row("rows_bytes", f"open + rows 1000:1100 of a {rows}x{cols} table: "
                               f"bytes served vs budget", "bytes", op="<=", threshold=1.0),
                           rows_bytes),
            "load_bert": (Row("load_bert", "tfshard.load(http url) vs fsspec download + load",
                              "s", threshold=1.0), load_bert),
            "load_bert_paced": (Row("load_bert_paced", "load_bert against a server pacing "
                                    "each response (per-connection limit)", "s"),
                                load_bert_paced),
            "rows_time": (Row("rows_time", "open + 100 rows vs full download: time", "s"),
                          rows_time),
            "rows_ratio_bytes": (Row("rows_ratio_bytes", "open + 100 rows vs full download: "
                                     "bytes", "bytes", op="<="), rows_ratio_bytes),
        }
        for case in args.cases:
            row, body = bodies[case]
            out_rows.append(run_case(row, body, log=log))
    finally:
        server.stop()
    env = environment({"fsspec": version_of("fsspec"), "aiohttp": version_of("aiohttp"),
                       "tfshard": getattr(tfshard, "__version__", "?") + " "
                       + str(Path(tfshard.__file__).parent)})
    return finish("bench_remote", args, out_rows, env,
                  {"table": [rows, cols], "bert": cfg}, f"repeat {args.repeat}, loopback HTTP",
                  t_start, columns=("baseline", "-"))


if __name__ == "__main__":
    sys.exit(main())
