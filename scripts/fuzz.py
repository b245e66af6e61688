#!/usr/bin/env python
"""Mutation fuzzing of tfshard's checkpoint reader.

Each case takes a seed checkpoint (the golden files under tests/data/golden),
mutates its ``.index`` or a data shard (flipped bits, interesting byte values,
truncations, duplicated or deleted runs, overwritten varints), then opens the
result, lists it and reads and verifies every tensor.  The only acceptable
outcomes are success and a ``tfshard.TFShardError``; anything else is a
finding: another exception, a hang (past ``--case-timeout``), or a crash.

Cases run in a worker process, so a crash (SIGSEGV, SIGBUS, abort) is caught;
the worker writes each case's number before running it, so the parent knows
which case killed it, saves the input under ``--findings`` (with a copy shrunk
towards the seed checkpoint, in ``minimized/``, when the failure reproduces in
a fresh process) and starts a new worker.  Everything is reproducible from
``--seed``.

Examples::

    scripts/fuzz.py --time 600                 # ten minutes, on demand
    scripts/fuzz.py --count 300 --seed 1       # a bounded run, as CI does
    scripts/fuzz.py --replay tests/data/fuzz   # re-run saved findings

Run it under the sanitizer build (scripts/sanitize.sh builds one) to catch
memory errors that do not crash.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"
# Small seeds, so each case is fast: every dtype, strings, partitioned, sharded, variant,
# an object-based checkpoint.
SEEDS = ["dtypes/ckpt", "strings/ckpt", "partitioned/model.ckpt", "sharded/model.ckpt",
         "variant/ckpt", "keras_adam/ckpt-2"]
INTERESTING = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0x3A, 0x12, 0x08]


def seed_files(name: str) -> dict:
    """``{suffix: bytes}`` of one golden checkpoint (".index", ".data-...")."""
    prefix = GOLDEN / name
    out = {}
    for path in sorted(prefix.parent.glob(prefix.name + ".*")):
        suffix = path.name[len(prefix.name):]
        if suffix == ".index" or suffix.startswith(".data-"):
            out[suffix] = path.read_bytes()
    return out


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random edits of ``data``."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not buf:
            buf += bytes([rng.choice(INTERESTING)])
            continue
        op = rng.randrange(7)
        i = rng.randrange(len(buf))
        if op == 0:
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[i] = rng.choice(INTERESTING)
        elif op == 2:
            del buf[rng.randrange(len(buf)):]                   # truncate
        elif op == 3:
            n = rng.randint(1, 16)
            del buf[i:i + n]                                     # delete a run
        elif op == 4:
            n = rng.randint(1, 16)
            buf[i:i] = buf[i:i + n]                              # duplicate a run
        elif op == 5:
            # An over-long or huge varint where a length or count might be.
            buf[i:i + 1] = bytes([0xFF] * rng.randint(1, 10) + [rng.choice([0x01, 0x7F])])
        else:
            j = rng.randrange(len(buf))
            buf[i], buf[j] = buf[j], buf[i]
    return bytes(buf)


def mutate_entries(index: bytes, rng: random.Random) -> bytes:
    """Mutate entries or keys inside the index, then rebuild it with valid block
    checksums: raw mutations mostly stop at a block CRC, these reach the entry,
    shape, slice and key parsers."""
    from tfshard import _build, _index

    table = _index.IndexTable(index)
    pairs = [(b"", table.header_value)]
    for h in table.handles():
        code, shape, shard, offset, size, crc, nslices, _ = table.entry(h)
        value = (_build.encode_partitioned_entry(code, shape, table.slices(h)) if nslices
                 else _build.encode_entry(code, shape, shard, offset, size, crc))
        pairs.append((table.key(h), value))
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(pairs))
        key, value = pairs[i]
        if rng.random() < 0.8:
            value = mutate(value, rng)
        elif key:
            key = mutate(key, rng)
        pairs[i] = (key, value)
    pairs = sorted(dict(pairs).items())  # the builder needs strictly increasing keys
    return _build.build_table([k for k, _ in pairs], [v for _, v in pairs])


def make_case(number: int, seed: int) -> dict:
    """The files of case ``number``: a seed checkpoint with one file mutated."""
    rng = random.Random(f"{seed}:{number}")
    name = rng.choice(SEEDS)
    files = seed_files(name)
    how = rng.random()
    if how < 0.5:
        target = ".index (entries)"
        files[".index"] = mutate_entries(files[".index"], rng)
    else:
        target = rng.choice(sorted(files)) if how < 0.75 else ".index"
        files[target] = mutate(files[target], rng)
    return {"seed_checkpoint": name, "mutated": target, "files": files}


def exercise(prefix: str) -> str:
    """Open, list, read and verify everything; 'ok' or the TFShardError's class name.
    Any other exception propagates: that is a finding."""
    import tfshard

    try:
        with tfshard.open(prefix) as ckpt:
            ckpt.infos()
            for name in ckpt:
                ckpt.read(name)
                info = ckpt.info(name)
                if info.shape and info.shape[0] > 1:
                    ckpt.read(name, index=slice(0, 1))
            ckpt.verify_all()
        tfshard.list_variables(prefix)
        return "ok"
    except tfshard.TFShardError as exc:
        return type(exc).__name__


def write_case(case: dict, directory: str) -> str:
    prefix = os.path.join(directory, "ckpt")
    for suffix, data in case["files"].items():
        with open(prefix + suffix, "wb") as f:
            f.write(data)
    return prefix


# ---- worker: runs cases in-process, reporting progress through a file --------------

def worker(first: int, count: int, seed: int, progress_path: str) -> int:
    outcomes: dict = {}
    with tempfile.TemporaryDirectory(prefix="tfshard-fuzz-") as tmp:
        for number in range(first, first + count):
            with open(progress_path, "w") as f:
                f.write(str(number))
            case_dir = os.path.join(tmp, str(number))
            os.mkdir(case_dir)
            prefix = write_case(make_case(number, seed), case_dir)
            # Self-test hooks, so tests can check that a crash or a stray exception in a
            # case is caught and saved: TFSHARD_FUZZ_SELFTEST="crash:N" or "raise:N".
            selftest = os.environ.get("TFSHARD_FUZZ_SELFTEST", "")
            if selftest == f"crash:{number}":
                os.kill(os.getpid(), signal.SIGSEGV)
            try:
                if selftest == f"raise:{number}":
                    raise RuntimeError("self-test")
                outcome = exercise(prefix)
            except Exception as exc:  # a finding: report it and stop this worker
                with open(progress_path, "w") as f:
                    json.dump({"number": number, "error": f"{type(exc).__name__}: {exc}"}, f)
                return 3
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            shutil.rmtree(case_dir)
    with open(progress_path, "w") as f:
        json.dump({"done": first + count, "outcomes": outcomes}, f)
    return 0


# ---- parent ----------------------------------------------------------------------

def fails(files: dict, case_timeout: float) -> bool:
    """Whether these checkpoint files make a fresh process fail in another way than
    success or a TFShardError (a stray exception, a crash or a hang)."""
    with tempfile.TemporaryDirectory(prefix="tfshard-fuzz-min-") as tmp:
        prefix = write_case({"files": files}, tmp)
        code = ("import sys; sys.path.insert(0, %r); import fuzz; fuzz.exercise(%r)"
                % (str(Path(__file__).parent), prefix))
        try:
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                                  timeout=case_timeout)
        except subprocess.TimeoutExpired:
            return True
        return proc.returncode != 0


def minimize(case: dict, case_timeout: float, budget: int = 200) -> dict:
    """Shrink a failing case towards its seed checkpoint: put back runs of the seed's
    bytes (halving the run length, as delta debugging does) and cut the mutated file
    short, keeping each change that still fails.  Returns the smaller files."""
    files = dict(case["files"])
    target = ".index" if case["mutated"].startswith(".index") else case["mutated"]
    original = seed_files(case["seed_checkpoint"])[target]
    tries = 0

    def attempt(candidate: bytes) -> bool:
        nonlocal tries
        tries += 1
        trial = dict(files, **{target: candidate})
        if fails(trial, case_timeout):
            files[target] = candidate
            return True
        return False

    # Cut the end off while it still fails.
    lo, hi = 0, len(files[target])
    while lo < hi and tries < budget:
        mid = (lo + hi) // 2
        if attempt(files[target][:mid]):
            hi = len(files[target])
        else:
            lo = mid + 1
    # Restore the seed's bytes in shrinking runs (same offsets, where both files have them).
    run = max(1, len(files[target]) // 2)
    while run >= 1 and tries < budget:
        pos = 0
        while pos < len(files[target]) and tries < budget:
            current = files[target]
            patched = current[:pos] + original[pos:pos + run] + current[pos + run:]
            patched = patched[:len(current)]
            if patched != current:
                attempt(patched)
            pos += run
        run //= 2
    return files


def save_finding(findings: Path, number: int, seed: int, why: str,
                 case_timeout: float = 5.0) -> Path:
    case = make_case(number, seed)
    out = findings / f"seed{seed}-case{number}"
    out.mkdir(parents=True, exist_ok=True)
    write_case(case, str(out))
    minimized = out / "minimized"
    if fails(case["files"], case_timeout):  # reproducible in a fresh process: shrink it
        minimized.mkdir(exist_ok=True)
        write_case({"files": minimize(case, case_timeout)}, str(minimized))
    (out / "finding.json").write_text(json.dumps({
        "seed": seed, "case": number, "seed_checkpoint": case["seed_checkpoint"],
        "mutated": case["mutated"], "why": why,
        "minimized": minimized.is_dir()}, indent=1) + "\n")
    return out


def run(seed: int, count: int | None, seconds: float | None, batch: int, case_timeout: float,
        findings: Path, log=print) -> dict:
    """Run cases in worker processes until ``count`` cases or ``seconds`` have passed."""
    start, number = time.monotonic(), 0
    totals: dict = {}
    found = []
    while (count is None or number < count) and (seconds is None
                                                 or time.monotonic() - start < seconds):
        n = batch if count is None else min(batch, count - number)
        with tempfile.NamedTemporaryFile("r", suffix=".progress", delete=False) as p:
            progress = p.name
        cmd = [sys.executable, __file__, "--worker", str(number), str(n), str(seed), progress]
        try:
            proc = subprocess.run(cmd, timeout=case_timeout * n, capture_output=True, text=True)
            status = proc.returncode
            detail = proc.stderr.strip().splitlines()[-1:] if proc.stderr else []
        except subprocess.TimeoutExpired:
            status, detail = "timeout", []
        text = Path(progress).read_text()
        os.unlink(progress)
        if status == 0:
            report = json.loads(text)
            for k, v in report["outcomes"].items():
                totals[k] = totals.get(k, 0) + v
            number = report["done"]
            continue
        try:
            info = json.loads(text)
            failed, why = info["number"], info["error"]
        except (ValueError, KeyError, TypeError):
            failed = int(text) if text.strip().isdigit() else number
            why = (f"worker ended by signal {signal.Signals(-status).name}"
                   if isinstance(status, int) and status < 0 else
                   f"worker: {status} {' '.join(detail)}")
        where = save_finding(findings, failed, seed, why, case_timeout)
        found.append({"case": failed, "why": why, "saved": str(where)})
        log(f"FINDING case {failed}: {why} -> {where}")
        number = failed + 1
    return {"cases": number, "outcomes": totals, "findings": found,
            "seconds": round(time.monotonic() - start, 1)}


def replay(directory: Path) -> list:
    """Re-run saved findings (directories holding ckpt.index and finding.json);
    returns ``[(path, outcome)]`` — each must now end in 'ok' or a TFShardError."""
    results = []
    for finding in sorted(directory.glob("*/finding.json")):
        prefix = str(finding.parent / "ckpt")
        results.append((str(finding.parent), exercise(prefix)))
    return results


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        first, count, seed, progress = argv[1:5]
        return worker(int(first), int(count), int(seed), progress)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__[__doc__.index("Examples"):],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="campaign seed (default 0)")
    parser.add_argument("--count", type=int, help="number of cases")
    parser.add_argument("--time", type=float, metavar="SECONDS", help="run for this long")
    parser.add_argument("--batch", type=int, default=200, help="cases per worker process")
    parser.add_argument("--case-timeout", type=float, default=5.0, metavar="SECONDS",
                        help="a case slower than this (on average over its batch) is a hang")
    parser.add_argument("--findings", type=Path, default=Path("fuzz-findings"),
                        help="where inputs that fail are saved (default ./fuzz-findings); "
                             "move real ones to tests/data/fuzz/ as regression files")
    parser.add_argument("--replay", type=Path, metavar="DIR", help="re-run saved findings")
    args = parser.parse_args(argv)
    if args.replay:
        results = replay(args.replay)
        for path, outcome in results:
            print(f"{outcome:28s} {path}")
        return 0
    if args.count is None and args.time is None:
        parser.error("give --count or --time")
    summary = run(args.seed, args.count, args.time, args.batch, args.case_timeout, args.findings)
    print(json.dumps(summary, indent=1))
    return 1 if summary["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
