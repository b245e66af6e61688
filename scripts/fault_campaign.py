#!/usr/bin/env python
"""Fault campaigns against tfshard's writes: kills, races, full disks, size limits.

Every campaign checks what a user would find afterwards and counts outcomes;
a *failure* is anything tfshard promises never happens: a checkpoint at rest
that is neither the old nor the new one (or holds wrong values), a save that
reports success but wrote less, an error that is not a ``TFShardError``, an
old output gone after a failed write, temporary files left by a failed write,
or a read that silently returns another save's bytes.

Campaigns (``MODE``):

``kill-steps``
    Deterministic: a child process saves over an existing prefix and SIGKILLs
    itself just before the k-th rename/replace/link/unlink of the commit, for
    every k, for several old -> new layouts (same shard count, more, fewer,
    stale files of a third count).  After each kill: the files at rest, and
    what ``tfshard.open`` gives (it repairs a commit killed in its window).
``random-kills``
    A child saves new versions to one prefix in a loop (random layouts, as a
    ``saver.save(sess, "model.ckpt")`` loop does); it is SIGKILLed after a random
    delay, ``--count`` times.
``manager-kills``
    The same with ``CheckpointManager.save`` (max_to_keep=2); after the last kill
    one more save must leave no temporary, orphaned or unlisted files.
``race-writers``
    ``--count`` rounds of two processes saving different versions (different
    shard counts) to one prefix at the same moment.
``race-readers``
    A writer saves versions in a loop while reader processes open the prefix and
    read row ranges without checksums (``--count`` opens per reader), checking
    each row against the version the checkpoint says it is.
``efbig``
    Every write path under a file-size limit (``RLIMIT_FSIZE``, SIGXFSZ ignored,
    so write() fails with EFBIG): each must raise WriteFailedError (errno EFBIG,
    naming the output), leave the old output intact and no temporary files.
``enospc``
    The same on a full file system: a small tmpfs mounted in a private mount
    namespace (``unshare``; root, or unprivileged user namespaces), including a
    save whose data fits but whose index does not.

Examples::

    scripts/fault_campaign.py kill-steps
    scripts/fault_campaign.py random-kills --count 500
    scripts/fault_campaign.py race-writers --count 600
    scripts/fault_campaign.py race-readers --count 3000 --readers 2
    scripts/fault_campaign.py efbig && scripts/fault_campaign.py enospc
    scripts/fault_campaign.py all --json          # everything, summary as JSON

The exit status is 1 if any failure was found.  tests/test_fault_campaigns.py
runs each campaign with small counts.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # children are forked: no BLAS threads
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import tfshard  # noqa: E402
from tfshard import _commit  # noqa: E402

ROWS, COLS = 256, 64


# ---- checkpoint versions -------------------------------------------------------------

def tensors(version: int, scale: int = 1) -> dict:
    """The tensors of save ``version``: a pure function of it (every value says
    which version and which row it belongs to)."""
    rows = ROWS * scale
    emb = np.arange(rows * COLS, dtype=np.int32).reshape(rows, COLS) + _row_base(version)
    out = {"version": np.int64(version), "emb": emb,
           "blob": np.full(200_000 * scale, version % 251, np.uint8),
           "tag": np.array([f"v{version}".encode()], dtype=object)}
    for i in range(12):
        out[f"small/{i:02d}"] = np.full(3 + i, version * 100 + i, np.int32)
    return out


def _row_base(version: int):
    # Distinct for 2000 versions in a row (all a check ever tells apart), and in int32.
    return np.int32((version % 2000) << 20)


def rows_of(version: int, start: int, stop: int):
    return (np.arange(start * COLS, stop * COLS, dtype=np.int32).reshape(-1, COLS)
            + _row_base(version))


def check_values(ckpt, version: int, scale: int = 1) -> str | None:
    """None if ``ckpt`` holds exactly version ``version``, else what differs."""
    want = tensors(version, scale)
    if sorted(ckpt) != sorted(want):
        return f"names differ: {sorted(ckpt)}"
    bad = ckpt.verify_all()
    if bad:
        return f"verify_all: {bad[0]}"
    for name, value in want.items():
        got = ckpt[name]
        value = np.asarray(value)
        same = (got.tolist() == value.tolist() if value.dtype == object
                else got.dtype == value.dtype and np.array_equal(got, value))
        if not same:
            return f"tensor {name} differs"
    return None


def state_of(prefix: str, allowed, *, repair: bool, scale: int = 1) -> str:
    """What is at ``prefix``: ``"v<N>"`` (a complete, correct version from
    ``allowed``), ``"none"``, or ``"BAD: ..."``.  Without ``repair`` the files are
    looked at as they are (no recovery of a commit killed in its window)."""
    if not repair and not os.path.isfile(prefix + ".index"):
        return "none"
    try:
        with tfshard.open(prefix) as c:
            version = int(c["version"])
            if version not in allowed:
                return f"BAD: version {version}, expected one of {sorted(allowed)}"
            problem = check_values(c, version, scale)
            return f"v{version}" if problem is None else f"BAD: v{version}: {problem}"
    except tfshard.CheckpointNotFoundError:
        return "none"
    except tfshard.TFShardError as exc:
        return f"BAD: {type(exc).__name__}: {exc}"


def leftovers(directory: str) -> list:
    """Names a finished (or failed) write must not leave behind."""
    return sorted(n for n in os.listdir(directory)
                  if ".tempstate" in n or _commit.ASIDE_MARK in n or n.endswith(".lock"))


# ---- forking ---------------------------------------------------------------------------

def fork(fn, *args) -> int:
    """Run ``fn(*args)`` in a forked child; returns its pid (exit 0, or 1 with a
    traceback on stderr)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn(*args)
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    return pid


def wait(pid: int) -> int:
    return os.waitpid(pid, 0)[1]


def killed(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def install_step_killer(kill_at: int, marks: str):
    """In a child: SIGKILL the process just before its ``kill_at``-th file-system
    mutation once armed (armed when a commit starts)."""
    count = [0]
    armed = [False]
    fd = os.open(marks, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def hook(name):
        orig = getattr(os, name)

        def wrapped(*args, **kwargs):
            if armed[0]:
                count[0] += 1
                if count[0] == kill_at:
                    text = " ".join(os.path.basename(str(a)) for a in args[:2])
                    os.write(fd, f"{name} {text}\n".encode())
                    os.kill(os.getpid(), signal.SIGKILL)
            return orig(*args, **kwargs)

        setattr(os, name, wrapped)

    for name in ("replace", "rename", "unlink", "remove", "link"):
        hook(name)
    commit = tfshard.CheckpointWriter.commit

    def armed_commit(self):
        armed[0] = True
        return commit(self)

    tfshard.CheckpointWriter.commit = armed_commit


# ---- kill-steps --------------------------------------------------------------------------

KILL_LAYOUTS = [
    ("1 -> 1 shard", {}, {}),
    ("2 -> 2 shards", {"num_shards": 2}, {"num_shards": 2}),
    ("1 -> 3 shards", {}, {"num_shards": 3}),
    ("3 -> 1 shard", {"num_shards": 3}, {}),
    ("2 -> 2 shards beside stale files of 4", {"num_shards": 2}, {"num_shards": 2}),
    # The new files (2 shards + 1 empty, "-of-00003") collide with stale files of that
    # count: the one case that still goes through the commit's window.
    ("2 -> 2 shards beside stale files of 3", {"num_shards": 2}, {"num_shards": 2}),
    ("max_shard_size, 3 files", {"max_shard_size": 100_000}, {"max_shard_size": 100_000}),
]


def campaign_kill_steps(work: str, args) -> dict:
    results, failures = [], []
    for name, old_layout, new_layout in KILL_LAYOUTS:
        k = 0
        while True:
            k += 1
            d = os.path.join(work, f"ks-{len(results)}")
            os.makedirs(d)
            prefix = os.path.join(d, "model.ckpt")
            tfshard.save(prefix, tensors(1), **old_layout)
            if "stale" in name:
                n = int(name.rsplit(" ", 1)[1])
                tfshard.save(os.path.join(d, "other"), tensors(9), num_shards=n)
                for i in range(n):
                    os.rename(os.path.join(d, f"other.data-{i:05d}-of-{n:05d}"),
                              f"{prefix}.data-{i:05d}-of-{n:05d}")
                os.unlink(os.path.join(d, "other.index"))
            marks = os.path.join(d, "marks")

            def child():
                install_step_killer(k, marks)
                tfshard.save(prefix, tensors(2), **new_layout)

            status = wait(fork(child))
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
                raw = state_of(prefix, {2}, repair=False)
                if raw != "v2":
                    failures.append(f"{name}: completed save left {raw}")
                shutil.rmtree(d)
                break
            if not killed(status):
                failures.append(f"{name}: step {k}: child failed (status {status})")
                break
            step = open(marks).read().strip()
            raw = state_of(prefix, {1, 2}, repair=False)
            repaired = state_of(prefix, {1, 2}, repair=True)
            entry = {"layout": name, "step": k, "op": step, "at_rest": raw, "opened": repaired}
            # The next save over whatever is left must work and be complete.
            try:
                tfshard.save(prefix, tensors(3), **new_layout)
                entry["next_save"] = state_of(prefix, {3}, repair=False)
            except Exception as exc:
                entry["next_save"] = f"BAD: {type(exc).__name__}: {exc}"
            # A killed writer's temporary files stay until the manager's sweep (or a
            # commit, once they are TEMP_MIN_AGE old); aside and lock files never do.
            left = leftovers(d)
            entry["temps_left"] = sum(1 for n in left if ".tempstate" in n)
            entry["leftovers"] = [n for n in left if ".tempstate" not in n]
            results.append(entry)
            if repaired.startswith(("BAD", "none")) or raw.startswith("BAD") or \
                    entry["next_save"] != "v3" or entry["leftovers"]:
                failures.append(entry)
            shutil.rmtree(d)
    at_rest = _count(r["at_rest"] for r in results)
    opened = _count(r["opened"] for r in results)
    # Where no file name is shared, every kill leaves the old or the new checkpoint at
    # its own names, as TensorFlow sees it: only colliding names have a window.
    for r in results:
        if "of 3" not in r["layout"] and not r["at_rest"].startswith("v"):
            failures.append({"no index at rest outside a name collision": r})
    return {"kills": len(results), "at_rest": at_rest, "opened": opened,
            "at_rest_by_layout": {name: _count(r["at_rest"] for r in results
                                               if r["layout"] == name)
                                  for name, _, _ in KILL_LAYOUTS},
            "layouts": len(KILL_LAYOUTS), "steps": [f"{r['layout']}: {r['op']}" for r in results],
            "killed_writers_temps_left": sum(r["temps_left"] for r in results),
            "failures": failures}


def _count(items) -> dict:
    out: dict = {}
    for item in items:
        key = item if not item.startswith("v") else "old" if item == "v1" else "new"
        out[key] = out.get(key, 0) + 1
    return out


# ---- random kills --------------------------------------------------------------------------

SAVE_LAYOUTS = [{}, {"num_shards": 2}, {"num_shards": 3}, {"max_shard_size": 400_000}]


def _saver_loop(prefix: str, first: int, marks: str, seed: int, scale: int):
    rng = random.Random(seed)
    fd = os.open(marks, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    v = first
    while True:
        tfshard.save(prefix, tensors(v, scale), **rng.choice(SAVE_LAYOUTS))
        os.write(fd, f"{v}\n".encode())
        v += 1


def campaign_random_kills(work: str, args) -> dict:
    rng = random.Random(args.seed)
    d = os.path.join(work, "rk")
    os.makedirs(d)
    prefix = os.path.join(d, "model.ckpt")
    scale = 4
    tfshard.save(prefix, tensors(1, scale))
    latest, outcomes, failures, saves = 1, {}, [], 0
    for k in range(args.count):
        marks = os.path.join(d, f"marks-{k}")
        pid = fork(_saver_loop, prefix, latest + 1, marks, args.seed + k, scale)
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(pid, signal.SIGKILL)
        status = wait(pid)
        if not killed(status):
            failures.append(f"kill {k}: saver exited by itself (status {status})")
            break
        done = [int(x) for x in open(marks).read().split()] if os.path.exists(marks) else []
        saves += len(done)
        last_done = done[-1] if done else latest
        allowed = {last_done, last_done + 1}
        raw = state_of(prefix, allowed, repair=False, scale=scale)
        opened = state_of(prefix, allowed, repair=True, scale=scale)
        key = ("old" if opened == f"v{last_done}" else "new" if opened.startswith("v") else
               opened)
        outcomes[key] = outcomes.get(key, 0) + 1
        if raw == "none":
            outcomes["none at rest (repaired on open)"] = \
                outcomes.get("none at rest (repaired on open)", 0) + 1
        if not opened.startswith("v") or raw.startswith("BAD"):
            failures.append({"kill": k, "at_rest": raw, "opened": opened,
                             "files": sorted(os.listdir(d))})
            # Start again from a fresh checkpoint, to count the rest of the run.
            latest = last_done + 2
            shutil.rmtree(d)
            os.makedirs(d)
            tfshard.save(prefix, tensors(latest, scale))
            continue
        latest = int(opened[1:])
    return {"kills": args.count, "saves_completed": saves, "outcomes": outcomes,
            "failures": failures}


# ---- manager kills ------------------------------------------------------------------------

def _manager_loop(directory: str, marks: str, seed: int):
    rng = random.Random(seed)
    fd = os.open(marks, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    while True:
        mgr = tfshard.CheckpointManager(directory, max_to_keep=2, **rng.choice(SAVE_LAYOUTS))
        latest = mgr.latest_checkpoint
        n = int(latest.rsplit("-", 1)[1]) + 1 if latest else 1
        mgr.save(tensors(n, 2))
        os.write(fd, f"{n}\n".encode())


def _manager_check(directory: str) -> list:
    """Problems with a manager directory at rest: the state file and every listed
    checkpoint must be whole, with the values of their numbers."""
    problems = []
    st = tfshard.state.read_state(directory)
    if st is None:
        return ["no state file"]
    for prefix in st.all_model_checkpoint_paths:
        n = int(prefix.rsplit("-", 1)[1])
        got = state_of(prefix, {n}, repair=False, scale=2)
        if got != f"v{n}":
            problems.append(f"{prefix}: {got}")
    return problems


def campaign_manager_kills(work: str, args) -> dict:
    rng = random.Random(args.seed)
    d = os.path.join(work, "mk")
    mgr = tfshard.CheckpointManager(d, max_to_keep=2)
    mgr.save(tensors(1, 2))
    failures, worst = [], {"temps": 0, "unlisted": 0, "data_only": 0}
    for k in range(args.count):
        marks = os.path.join(work, f"mk-marks-{k}")
        pid = fork(_manager_loop, d, marks, args.seed + k)
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(pid, signal.SIGKILL)
        if not killed(wait(pid)):
            failures.append(f"kill {k}: the saver exited by itself")
            break
        problems = _manager_check(d)
        if problems:
            failures.append({"kill": k, "problems": problems})
            break
        stats = _manager_leftovers(d)
        for key in worst:
            worst[key] = max(worst[key], stats[key])
    # One clean save must reclaim everything the kills left.
    n = int(tfshard.latest_checkpoint(d).rsplit("-", 1)[1]) + 1
    tfshard.CheckpointManager(d, max_to_keep=2).save(tensors(n, 2))
    final = _manager_leftovers(d)
    if _manager_check(d) or any(final.values()):
        failures.append({"after a clean save": final, "files": sorted(os.listdir(d))})
    return {"kills": args.count, "worst_between_kills": worst, "after_clean_save": final,
            "failures": failures}


def _manager_leftovers(d: str) -> dict:
    st = tfshard.state.read_state(d)
    listed = {os.path.basename(p) for p in st.all_model_checkpoint_paths}
    names = os.listdir(d)
    indexed = {n[:-6] for n in names if n.endswith(".index")}
    data = {n.split(".data-")[0] for n in names if ".data-" in n and ".tempstate" not in n
            and _commit.ASIDE_MARK not in n}
    return {"temps": sum(1 for n in names if ".tempstate" in n or _commit.ASIDE_MARK in n
                         or n.endswith((".lock", ".deleting"))),
            "unlisted": len(indexed - listed), "data_only": len(data - indexed)}


# ---- racing writers ------------------------------------------------------------------------

def campaign_race_writers(work: str, args) -> dict:
    rng = random.Random(args.seed)
    d = os.path.join(work, "rw")
    os.makedirs(d)
    prefix = os.path.join(d, "model.ckpt")
    tfshard.save(prefix, tensors(0))
    outcomes, failures, errors = {}, [], 0
    for r in range(args.count):
        va, vb = 2 * r + 1, 2 * r + 2
        la, lb = rng.sample(SAVE_LAYOUTS, 2)
        go_r, go_w = os.pipe()

        def saver(version, layout):
            os.close(go_w)
            os.read(go_r, 1)  # both start at once
            tfshard.save(prefix, tensors(version), **layout)

        pids = [fork(saver, va, la), fork(saver, vb, lb)]
        os.close(go_r)
        os.close(go_w)  # EOF releases both
        statuses = [wait(p) for p in pids]
        if any(not (os.WIFEXITED(s) and os.WEXITSTATUS(s) == 0) for s in statuses):
            errors += 1
        raw = state_of(prefix, {va, vb}, repair=False)
        stale = [n for n in os.listdir(d) if ".data-" in n and
                 not n.endswith(f"-of-{_shards_of(prefix):05d}")] if raw.startswith("v") else []
        key = raw if raw.startswith(("BAD", "none")) else "complete"
        outcomes[key] = outcomes.get(key, 0) + 1
        left = leftovers(d)
        if not raw.startswith("v") or stale or left:
            failures.append({"round": r, "at_rest": raw, "stale": stale, "leftovers": left})
            shutil.rmtree(d)  # start the next round from a clean prefix
            os.makedirs(d)
            tfshard.save(prefix, tensors(0))
    return {"rounds": args.count, "outcomes": outcomes, "saver_errors": errors,
            "failures": failures}


def _shards_of(prefix: str) -> int:
    with tfshard.open(prefix, verify=False) as c:
        return c.num_shards


# ---- racing readers -------------------------------------------------------------------------

def _reader_loop(prefix: str, opens: int, seed: int, out: str):
    rng = random.Random(seed)
    counts: dict = {}
    silent = []

    def count(key):
        counts[key] = counts.get(key, 0) + 1

    for _ in range(opens):
        try:
            with tfshard.open(prefix) as c:
                version = int(c["version"])
                time.sleep(rng.uniform(0, 0.002))  # let a save slip in between
                a = rng.randrange(ROWS)
                b = rng.randrange(a, ROWS) + 1
                got = c.read("emb", np.s_[a:b])
                if not np.array_equal(got, rows_of(version, a, b)):
                    silent.append(f"version {version} rows {a}:{b}")
                    count("SILENT WRONG ROWS")
                else:
                    count("ok")
        except tfshard.TFShardError as exc:
            count(type(exc).__name__)
        except Exception as exc:  # anything but a TFShardError is a finding
            count(f"NOT A TFSHARD ERROR: {type(exc).__name__}: {exc}")
    with open(out, "w") as f:
        json.dump({"counts": counts, "silent": silent[:20]}, f)


def _writer_loop(prefix: str, seed: int):
    rng = random.Random(seed)
    v = 1
    while True:
        tfshard.save(prefix, tensors(v), **rng.choice(SAVE_LAYOUTS[:3]))
        v += 1


def campaign_race_readers(work: str, args) -> dict:
    d = os.path.join(work, "rr")
    os.makedirs(d)
    prefix = os.path.join(d, "model.ckpt")
    tfshard.save(prefix, tensors(0))
    writer = fork(_writer_loop, prefix, args.seed)
    outs = [os.path.join(d, f"reader-{i}.json") for i in range(args.readers)]
    readers = [fork(_reader_loop, prefix, args.count, args.seed + 1 + i, out)
               for i, out in enumerate(outs)]
    for pid in readers:
        wait(pid)
    os.kill(writer, signal.SIGKILL)
    wait(writer)
    counts: dict = {}
    silent = []
    for out in outs:
        doc = json.load(open(out))
        for key, n in doc["counts"].items():
            counts[key] = counts.get(key, 0) + n
        silent += doc["silent"]
    bad = {k: n for k, n in counts.items() if k.startswith(("SILENT", "NOT A"))}
    return {"opens": args.count * args.readers, "outcomes": counts,
            "failures": [bad, silent] if bad else []}


# ---- EFBIG / ENOSPC ---------------------------------------------------------------------------

def _big(version: int) -> dict:
    """About 9 MiB, more than the size limit or the free space of the campaigns,
    in tensors of 1 MiB or more only (each written straight from its memory)."""
    return {"w": np.full(2_000_000, version, np.float32),
            "emb": np.full((513, 1024), version, np.int16)}


def _many_small(version: int) -> dict:
    out = {f"t/{i:04d}": np.full(2000, version, np.float32) for i in range(1100)}
    out["version"] = np.int64(version)
    return out


def _old_tf(out):
    tfshard.save(out, _small(1))


def _small(version: int) -> dict:
    return {"version": np.int64(version), "w": np.full(1000, version, np.float32)}


def _check_old_tf(out):
    with tfshard.open(out) as c:
        assert c.verify_all() == [], "the old checkpoint does not verify"
        assert int(c["version"]) == 1 and sorted(c) == ["version", "w"], "old values changed"


def _convert_to(fmt, **kw):
    def run(out, src):
        tfshard.convert(src, out, dst_format=fmt, overwrite=True, **kw)
    return run


def _check_old_source(out, fmt):
    from tfshard.formats import open_source

    with open_source(out, fmt) as s:
        assert s.names() == ["version", "w"], s.names()
        assert int(s.read("version")) == 1 and float(s.read("w")[0]) == 1.0


def _writer_add_one_by_one(out, src):
    with tfshard.CheckpointWriter(out) as w:
        for name, value in _big(2).items():
            w.add(name, value)


def _cli_convert(out, src):
    from tfshard import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["convert", src, out, "--overwrite", "--quiet"])
    if code != 1:
        raise AssertionError(f"tfshard convert exited {code} on a failed write")
    text = err.getvalue()
    if out not in text or "error" not in text:
        raise AssertionError(f"the error message does not name {out}: {text!r}")
    raise _CliFailed(text)


class _CliFailed(Exception):
    pass


def _manager_save(out, src):
    tfshard.CheckpointManager(out, max_to_keep=2).save(_big(2))


def _old_manager(out):
    tfshard.CheckpointManager(out, max_to_keep=2).save(_small(1))


def _check_old_manager(out):
    assert tfshard.latest_checkpoint(out) == os.path.join(out, "ckpt-1")
    _check_old_tf(os.path.join(out, "ckpt-1"))


# (name, output name, old output maker, the write, old output check, output format)
WRITE_CASES = [
    ("save, tensors >= 1 MiB (direct writes)", "direct", _old_tf,
     lambda out, src: tfshard.save(out, _big(2)), _check_old_tf, "tf"),
    ("save, many small tensors (staged writes)", "staged", _old_tf,
     lambda out, src: tfshard.save(out, _many_small(2)), _check_old_tf, "tf"),
    ("save, num_shards=4 (threaded writes)", "threaded", _old_tf,
     lambda out, src: tfshard.save(out, _big(2) | _many_small(2), num_shards=4),
     _check_old_tf, "tf"),
    ("save, max_shard_size (sharded writes)", "sharded", _old_tf,
     lambda out, src: tfshard.save(out, _big(2), max_shard_size=1 << 20), _check_old_tf, "tf"),
    ("CheckpointWriter.add one by one", "incremental", _old_tf, _writer_add_one_by_one,
     _check_old_tf, "tf"),
    ("CheckpointManager.save", "managed", _old_manager, _manager_save, _check_old_manager, "tf"),
    ("convert tf -> tf, overwrite", "convert_tf", _old_tf, _convert_to("tf"), _check_old_tf,
     "tf"),
    ("tfshard convert (command line)", "cli_tf", _old_tf, _cli_convert, _check_old_tf, "tf"),
    ("convert -> safetensors", "out.safetensors", None, _convert_to("safetensors"), None,
     "safetensors"),
    ("convert -> sharded safetensors", "sharded_st", None,
     _convert_to("safetensors", max_shard_size=1 << 20), None, "safetensors"),
    ("convert -> npz", "out.npz", None, _convert_to("npz"), None, "npz"),
    ("convert -> npy directory", "out_npy", None, _convert_to("npy"), None, "npy"),
    ("convert -> torch", "out.pt", None, _convert_to("torch"), None, "torch"),
]


def _prepare_cases(d: str) -> tuple:
    """The big input and every case's old output, written before any limit."""
    src = os.path.join(d, "source")
    tfshard.save(src, _big(2))
    old_src = os.path.join(d, "old-source")
    tfshard.save(old_src, _small(1))
    cases = []
    for name, out_name, make_old, write, check_old, fmt in WRITE_CASES:
        if fmt == "torch":
            try:
                import torch  # noqa: F401
            except ImportError:
                cases.append((name, None, None, None, None, "torch is not installed"))
                continue
        case_dir = os.path.join(d, f"case-{len(cases)}")
        os.makedirs(case_dir)
        out = os.path.join(case_dir, out_name)
        if make_old is not None:
            make_old(out)
        else:  # the same conversion, of the small old model
            tfshard.convert(old_src, out, dst_format=fmt,
                            max_shard_size=(1 << 20) if "sharded" in out_name else None)
        check = check_old or (lambda out, fmt=fmt: _check_old_source(out, fmt))
        cases.append((name, out, write, check, case_dir, None))
    return src, cases


def _run_case(name, out, write, check, case_dir, src, expect_errno) -> dict:
    """Run one failing write; returns its record (``ok`` False is a failure)."""
    rec = {"case": name, "ok": False}
    try:
        write(out, src)
        rec["problem"] = "reported success"
    except _CliFailed as exc:
        text = str(exc)
        rec.update(raised="exit 1", message=text.strip()[:300],
                   ok=errno.errorcode[expect_errno] in text)
        if not rec["ok"]:
            rec["problem"] = f"the message does not say {errno.errorcode[expect_errno]}"
    except tfshard.WriteFailedError as exc:
        rec.update(raised="WriteFailedError", errno=errno.errorcode.get(exc.errno),
                   message=str(exc)[:300])
        rec["ok"] = exc.errno == expect_errno and isinstance(exc, OSError)
        if not rec["ok"]:
            rec["problem"] = f"errno {exc.errno}, expected {expect_errno}"
        elif os.path.normpath(out) not in os.path.normpath(str(exc)):
            rec.update(ok=False, problem="the message does not name the output")
    except Exception as exc:
        rec.update(raised=type(exc).__name__, message=str(exc)[:300],
                   problem="not a WriteFailedError")
    return rec


def _finish_case(rec, out, check, case_dir):
    try:
        check(out)
        rec["old_intact"] = True
    except Exception as exc:
        rec.update(old_intact=False, ok=False, problem=f"old output: {exc!r}")
    left = [n for n in _walk(case_dir) if ".tempstate" in n or _commit.ASIDE_MARK in n
            or n.endswith(".lock")]
    rec["leftovers"] = left
    if left:
        rec.update(ok=False, problem=f"left {left}")


def _walk(d):
    for base, dirs, files in os.walk(d):
        for n in dirs + files:
            yield os.path.relpath(os.path.join(base, n), d)


def campaign_efbig(work: str, args) -> dict:
    d = os.path.join(work, "efbig")
    os.makedirs(d)
    src, cases = _prepare_cases(d)
    limit = 5_000_000  # below every new output, above every old one
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    records = []
    for name, out, write, check, case_dir, skip in cases:
        if skip:
            records.append({"case": name, "skipped": skip, "ok": True})
            continue
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        try:
            rec = _run_case(name, out, write, check, case_dir, src, errno.EFBIG)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        _finish_case(rec, out, check, case_dir)
        records.append(rec)
    signal.signal(signal.SIGXFSZ, old_handler)
    return {"limit_bytes": limit, "cases": records,
            "failures": [r for r in records if not r["ok"]]}


def _free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill(path: str, leave: int) -> str:
    """A filler file that leaves ``leave`` bytes free on ``path``'s file system."""
    filler = os.path.join(path, "filler")
    size = max(0, _free_bytes(path) - leave)
    with open(filler, "wb") as f:
        chunk = b"\0" * (1 << 20)
        while size > 0:
            size -= f.write(chunk[:min(size, len(chunk))])
    return filler


def campaign_enospc(work: str, args) -> dict:
    """Re-runs itself in a private mount namespace with a tmpfs at ``work/fs``."""
    if not args.mounted:
        mnt = os.path.join(work, "fs")
        os.makedirs(mnt)
        unshare = shutil.which("unshare")
        if unshare is None:
            return {"unavailable": "no unshare(1) here", "failures": []}
        inner = [sys.executable, os.path.abspath(__file__), "enospc", "--mounted", mnt,
                 "--json", "--seed", str(args.seed)]
        cmd = [unshare, "-rm", "sh", "-c",
               'mount -t tmpfs -o size=32m tmpfs "$0" && exec "$@"', mnt] + inner
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode not in (0, 1) or not proc.stdout.strip():
            return {"unavailable": f"cannot mount a tmpfs: {proc.stderr.strip()[-300:]}",
                    "failures": []}
        return json.loads(proc.stdout)["enospc"]
    d = os.path.join(args.mounted, "t")
    os.makedirs(d)
    src, cases = _prepare_cases(d)
    records = []
    for name, out, write, check, case_dir, skip in cases:
        if skip:
            records.append({"case": name, "skipped": skip, "ok": True})
            continue
        filler = _fill(args.mounted, 3 << 20)
        try:
            rec = _run_case(name, out, write, check, case_dir, src, errno.ENOSPC)
        finally:
            os.unlink(filler)
        _finish_case(rec, out, check, case_dir)
        records.append(rec)
    records.append(_index_does_not_fit(args.mounted))
    return {"fs": "tmpfs, 32 MiB", "cases": records,
            "failures": [r for r in records if not r["ok"]]}


def _index_does_not_fit(mnt: str) -> dict:
    """1 -> 4 shards where the new data fits but its index does not: the failure
    comes after every data file is written, and the old checkpoint must stay."""
    d = os.path.join(mnt, "index-case")
    os.makedirs(d)
    out = os.path.join(d, "model.ckpt")
    tfshard.save(out, _small(1))
    new = {f"t{i}": np.full(40_000 + i, i, np.float32) for i in range(8)}
    new["version"] = np.int64(2)
    page = os.statvfs(mnt).f_frsize
    # Pages the four data files take (the writer balances bytes across shards).
    probe = os.path.join(mnt, "probe")
    tfshard.save(probe, new, num_shards=4)
    need = sum(-(-os.path.getsize(f"{probe}.data-{i:05d}-of-00004") // page) * page
               for i in range(4))
    for name in os.listdir(mnt):
        if name.startswith("probe."):
            os.unlink(os.path.join(mnt, name))
    filler = _fill(mnt, need)
    rec = {"case": "save 1 -> 4 shards, data fits but the index does not", "ok": False}
    try:
        tfshard.save(out, new, num_shards=4)
        rec["problem"] = "reported success"
    except tfshard.WriteFailedError as exc:
        rec.update(raised="WriteFailedError", errno=errno.errorcode.get(exc.errno),
                   message=str(exc)[:300], ok=exc.errno == errno.ENOSPC)
        if "index" not in str(exc):
            rec.update(ok=False, problem="the failure was not the index write")
    except Exception as exc:
        rec.update(raised=type(exc).__name__, problem="not a WriteFailedError")
    finally:
        os.unlink(filler)
    _finish_case(rec, out, _check_old_tf, d)
    return rec


# ---- driver -------------------------------------------------------------------------------

CAMPAIGNS = {
    "kill-steps": campaign_kill_steps,
    "random-kills": campaign_random_kills,
    "manager-kills": campaign_manager_kills,
    "race-writers": campaign_race_writers,
    "race-readers": campaign_race_readers,
    "efbig": campaign_efbig,
    "enospc": campaign_enospc,
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=sorted(CAMPAIGNS) + ["all"])
    p.add_argument("--count", type=int, default=None,
                   help="kills, rounds or opens per reader (default: per campaign)")
    p.add_argument("--readers", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--mounted", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = {"random-kills": 200, "manager-kills": 80, "race-writers": 300,
                "race-readers": 2000}
    modes = sorted(CAMPAIGNS) if args.mode == "all" else [args.mode]
    results = {}
    with tempfile.TemporaryDirectory(prefix="tfshard-faults-") as work:
        for mode in modes:
            run = argparse.Namespace(**vars(args))
            if run.count is None:
                run.count = defaults.get(mode, 0)
            started = time.monotonic()
            results[mode] = CAMPAIGNS[mode](work, run)
            results[mode]["seconds"] = round(time.monotonic() - started, 1)
    failed = any(r.get("failures") for r in results.values())
    if args.json:
        json.dump(results, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        for mode, r in results.items():
            print(f"== {mode}: {'FAILED' if r.get('failures') else 'ok'} ({r['seconds']} s)")
            for key, value in r.items():
                if key not in ("seconds", "steps", "cases"):
                    print(f"  {key}: {value}")
            for case in r.get("cases", []):
                print(f"  {'ok ' if case['ok'] else 'BAD'} {case['case']}: "
                      f"{case.get('raised', case.get('skipped'))} {case.get('errno', '')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
