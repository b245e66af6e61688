"""Crash safety of CheckpointWriter + CheckpointManager: SIGKILL a process mid-save.

A child process saves new checkpoints with ``tfshard.CheckpointManager(dir,
max_to_keep=2).save(tensors)`` in a loop, into a directory that already holds
checkpoints; the test kills it with SIGKILL and then checks what a later reader
(or the next training run) would see:

* the state file parses, and every checkpoint it names exists, passes
  ``verify_all()`` and holds exactly the values written for its number;
* ``tfshard.latest_checkpoint(dir)`` is never None once a save has completed,
  and the latest number never goes backwards;
* every prefix that has a ``.index`` file (listed or not) is complete;
* the next process recovers from whatever was left and continues numbering.

Leftover ``*.tempstate*`` files are allowed (they are
counted and reported).  All saves use ``fsync=False``: this tests *process*
crashes, where the kernel keeps every completed write() and rename(); power
loss (which needs fsync) is out of scope here.

Two tests:

* ``test_sigkill_at_random_moments``: 60 kills after a uniform random 0-300 ms
  (seeded), so they land while tensors are generated, data written, the index
  written, the state file replaced and old checkpoints deleted.
* ``test_sigkill_at_every_filesystem_step``: deterministic fault injection --
  the child kills itself just before and just after each rename/unlink a save
  performs (data renames, index install, stale-shard removal, state file,
  deletions), so the rare short phases are covered every run.

To keep the run short, the processes are forked from a "zygote" Python process
that has already imported numpy and tfshard (a fresh interpreter per kill
would spend ~0.4 s importing); each forked process is an ordinary separate
process, killed with SIGKILL by this test.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import tfshard
from tfshard.state import read_state

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL")

MAX_TO_KEEP = 2

# Shared by the child processes and this test (exec'd here to recompute values).
COMMON = r'''
import numpy as np


def make_tensors(n, scale=1):
    """The tensors saved as checkpoint number ``n``: a pure function of ``n``.

    About 3 MiB * scale in 115 tensors (a few large, many small, a string tensor).
    """
    out = {
        "step": np.int64(n),
        "meta/name": np.array([("ckpt-%d" % n).encode(), b"\x00\xff" * (n % 5), b""],
                              dtype=object),
    }
    base = np.arange(16384 * scale, dtype=np.float32)
    for i in range(48):
        out["layer%02d/kernel" % i] = base + np.float32(n * 64 + i)  # exact below 2**24
    for i in range(64):
        out["small/%02d" % i] = np.full(5 + i, n - i, np.int32)
    out["emb"] = np.full((64 * scale, 100), n % 251, np.uint8)
    return out


def number_of(prefix):
    return int(prefix.rsplit("-", 1)[1])
'''

ZYGOTE = COMMON + r'''
import json
import os
import random
import signal
import sys
import traceback

import tfshard
import tfshard.manager as _manager
import tfshard.writer as _writer

LAYOUTS = [{}, {"num_shards": 2}, {"num_shards": 3}, {"max_shard_size": 1 << 20}]


def instrument(mark):
    """Record which phase of a save is running (written before the phase starts)."""
    def wrap(owner, attr, label):
        orig = getattr(owner, attr, None)
        if orig is None:
            return

        def wrapped(*args, **kwargs):
            mark(label)
            return orig(*args, **kwargs)

        setattr(owner, attr, wrapped)

    wrap(_writer.CheckpointWriter, "add_all", "data")
    wrap(_writer.CheckpointWriter, "commit", "commit")
    wrap(_manager, "write_state", "state")
    wrap(_manager, "_delete_checkpoint", "delete")


def install_step_killer(kill_at, when, armed, mark):
    """SIGKILL this process before/after the kill_at-th filesystem mutation of a save."""
    count = [0]

    def hook(name):
        orig = getattr(os, name)

        def wrapped(*args, **kwargs):
            if not armed[0]:
                return orig(*args, **kwargs)
            count[0] += 1
            if count[0] == kill_at:
                mark("step %s %s %s %s" % (when, name, os.path.basename(str(args[0])),
                                           os.path.basename(str(args[1])) if len(args) > 1
                                           else ""))
                if when == "before":
                    os.kill(os.getpid(), signal.SIGKILL)
            try:
                return orig(*args, **kwargs)
            finally:
                if count[0] == kill_at and when == "after":
                    os.kill(os.getpid(), signal.SIGKILL)

        setattr(os, name, wrapped)

    for name in ("replace", "rename", "unlink", "remove"):
        hook(name)


def child(cfg):
    directory = cfg["dir"]
    rng = random.Random(cfg["seed"])
    fd = os.open(cfg["marks"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def mark(text):
        os.write(fd, (text + "\n").encode())

    armed = [False]
    instrument(mark)
    if cfg.get("kill_at"):
        install_step_killer(cfg["kill_at"], cfg["when"], armed, mark)
    saves = 0
    while cfg.get("max_saves") is None or saves < cfg["max_saves"]:
        mark("recover")
        layout = cfg.get("layout")
        if layout is None:
            layout = rng.choice(LAYOUTS)
        # fsync=False: these are process crashes, not power loss (see the test module).
        mgr = tfshard.CheckpointManager(directory, max_to_keep=MAX_TO_KEEP_VALUE, fsync=False,
                                        **layout)
        latest = mgr.latest_checkpoint
        n = number_of(latest) + 1 if latest else 1
        mark("gen %d" % n)
        tensors = make_tensors(n, cfg.get("scale", 1))
        mark("save %d" % n)
        armed[0] = True
        path = mgr.save(tensors)
        armed[0] = False
        expect = os.path.join(directory, "ckpt-%d" % n)
        if path != expect:
            raise AssertionError("saved %r, expected %r" % (path, expect))
        mark("done %d" % n)
        saves += 1


def main():
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "run":
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    child(cmd)
                except BaseException:
                    with open(cmd["err"], "w") as f:
                        f.write(traceback.format_exc())
                    code = 1
                os._exit(code)
            sys.stdout.write("%d\n" % pid)
        elif cmd["op"] == "reap":
            _, status = os.waitpid(cmd["pid"], 0)
            sys.stdout.write("%d\n" % status)
        else:
            return
        sys.stdout.flush()


main()
'''.replace("MAX_TO_KEEP_VALUE", str(MAX_TO_KEEP))

_ns: dict = {}
exec(COMMON, _ns)
make_tensors = _ns["make_tensors"]
number_of = _ns["number_of"]
_EXPECTED: dict = {}


def expected(n):
    if n not in _EXPECTED:
        _EXPECTED[n] = make_tensors(n)
    return _EXPECTED[n]


class Zygote:
    """A Python process with numpy and tfshard imported that forks savers on request."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        script = tmp_path / "zygote.py"
        script.write_text(ZYGOTE)
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
                   MKL_NUM_THREADS="1")
        self.stderr = open(tmp_path / "zygote.err", "wb")
        self.proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, env=env)
        self.runs = 0
        assert self._line() == "ready", self._stderr()

    def _stderr(self):
        self.stderr.flush()
        return (self.tmp_path / "zygote.err").read_text(errors="replace")

    def _line(self):
        line = self.proc.stdout.readline().decode().strip()
        if not line:
            raise AssertionError(f"zygote died: {self._stderr()}")
        return line

    def _send(self, **cmd):
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()

    def start(self, directory, seed, **cfg):
        """Fork a saver; returns (pid, marks path, error path)."""
        self.runs += 1
        marks = self.tmp_path / f"marks-{self.runs}.txt"
        err = self.tmp_path / f"err-{self.runs}.txt"
        self._send(op="run", dir=str(directory), seed=seed, marks=str(marks), err=str(err),
                   **cfg)
        return int(self._line()), marks, err

    def reap(self, pid):
        """Wait for a forked saver; returns its raw wait status."""
        self._send(op="reap", pid=pid)
        return int(self._line())

    def close(self):
        try:
            self._send(op="quit")
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()  # only the process this test started
            self.proc.wait()
        self.stderr.close()


@pytest.fixture
def zygote(tmp_path):
    z = Zygote(tmp_path)
    yield z
    z.close()


def kill_and_reap(zygote, pid, err):
    """SIGKILL a saver (if still running); returns True if the kill ended it."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    status = zygote.reap(pid)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return True
    detail = err.read_text() if err.exists() else ""
    raise AssertionError(f"saver exited on its own (status {status}) before the kill:\n{detail}")


def run_to_completion(zygote, directory, seed, saves, **cfg):
    pid, marks, err = zygote.start(directory, seed, max_saves=saves, **cfg)
    status = zygote.reap(pid)
    detail = err.read_text() if err.exists() else ""
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, detail
    return marks


def check_complete(prefix):
    """The checkpoint at ``prefix`` verifies and holds make_tensors(its number)."""
    want = expected(number_of(prefix))
    with tfshard.open(prefix) as c:
        assert c.verify_all() == [], prefix
        assert sorted(c) == sorted(want), prefix
        for name, value in want.items():
            got = c[name]
            value = np.asarray(value)
            assert got.dtype == value.dtype and got.shape == value.shape, (prefix, name)
            if value.dtype == object:
                assert got.tolist() == value.tolist(), (prefix, name)
            else:
                assert np.array_equal(got, value), (prefix, name)


def check_directory(directory):
    """Check every invariant; returns (latest number, stats)."""
    st = read_state(str(directory))  # must parse
    assert st is not None, "the state file vanished"
    latest = tfshard.latest_checkpoint(str(directory))
    assert latest is not None, "latest_checkpoint is None after a complete save"
    assert latest == st.model_checkpoint_path
    assert st.all_model_checkpoint_paths[-1] == latest
    assert len(st.all_model_checkpoint_paths) <= MAX_TO_KEEP
    assert len(st.all_model_checkpoint_timestamps) == len(st.all_model_checkpoint_paths)
    named = set(st.all_model_checkpoint_paths)
    for prefix in named:
        assert os.path.isfile(prefix + ".index"), f"state names {prefix}, which is gone"
        check_complete(prefix)
    names = os.listdir(directory)
    indexed = {os.path.join(str(directory), n[:-len(".index")])
               for n in names if n.endswith(".index")}
    for prefix in indexed - named:
        check_complete(prefix)  # an unlisted checkpoint with an index must be whole too
    temps = [n for n in names if ".tempstate" in n]
    data_without_index = {n.split(".data-")[0] for n in names
                          if ".data-" in n and ".tempstate" not in n} - {
        os.path.basename(p) for p in indexed}
    return number_of(latest), {
        "temps": len(temps),
        "temp_bytes": sum(os.path.getsize(os.path.join(directory, n)) for n in temps),
        "unlisted_complete": len(indexed - named),
        "data_without_index": len(data_without_index),
    }


def last_phase(marks):
    """The phase the saver was in when it died, from its marks file."""
    try:
        lines = marks.read_text().splitlines()
    except FileNotFoundError:
        return "startup", 0
    done = sum(1 for line in lines if line.startswith("done "))
    if not lines:
        return "startup", done
    return lines[-1].split()[0], done


def populate(zygote, directory):
    """A directory that already holds MAX_TO_KEEP checkpoints (ckpt-1, ckpt-2)."""
    run_to_completion(zygote, directory, 0, MAX_TO_KEEP, layout={"num_shards": 2})
    latest, _ = check_directory(directory)
    assert latest == MAX_TO_KEEP


def test_sigkill_at_random_moments(tmp_path, zygote):
    kills = 60
    rng = random.Random(1234)
    directory = tmp_path / "train"
    populate(zygote, directory)
    latest, _ = check_directory(directory)
    phases: dict = {}
    saves_completed = 0
    worst = {"temps": 0, "temp_bytes": 0, "unlisted_complete": 0, "data_without_index": 0}
    started = time.monotonic()
    for k in range(kills):
        pid, marks, err = zygote.start(directory, seed=k + 1)
        try:
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            assert kill_and_reap(zygote, pid, err)
        phase, done = last_phase(marks)
        phases[phase] = phases.get(phase, 0) + 1
        saves_completed += done
        now_latest, stats = check_directory(directory)
        assert now_latest >= latest, f"latest went back from ckpt-{latest} to ckpt-{now_latest}"
        # Every completed save is recorded; one more if the kill came after the state
        # file was replaced but before the saver noted the save as done.
        assert now_latest - latest in (done, done + 1), (latest, now_latest, done)
        latest = now_latest
        for key in worst:
            worst[key] = max(worst[key], stats[key])
    # The next run recovers from the last kill and continues numbering.
    run_to_completion(zygote, directory, seed=10_000, saves=2)
    final, stats = check_directory(directory)
    assert final == latest + 2
    elapsed = time.monotonic() - started
    # ...and its saves' housekeeping reclaimed everything the kills left behind.
    leftover = sorted(os.listdir(directory))
    assert (stats["temps"], stats["unlisted_complete"], stats["data_without_index"]) == \
        (0, 0, 0), leftover
    assert not [n for n in leftover if ".aside" in n or n.endswith((".lock", ".deleting"))], \
        leftover

    mid_save = sum(phases.get(p, 0) for p in ("save", "data", "commit", "state", "delete"))
    print(f"\ncrash test: {kills} SIGKILLs in {elapsed:.1f}s; last phase at kill: "
          f"{dict(sorted(phases.items()))}; mid-save {mid_save}; saves completed "
          f"{saves_completed}; at most {worst['temps']} temp files "
          f"({worst['temp_bytes'] / 2**20:.1f} MiB) left, {worst['unlisted_complete']} "
          f"unlisted complete checkpoints, {worst['data_without_index']} data-only prefixes; "
          f"final ckpt-{final}, {stats['temps']} temp files at the end")
    # The kills must really have hit saves in progress, and the long phases of one.
    assert mid_save >= kills // 4, phases
    assert phases.get("data", 0) + phases.get("save", 0) >= 5, phases
    assert saves_completed >= kills // 4, phases


def _prepare_step_directory(zygote, directory):
    """ckpt-1, ckpt-2 listed (2 shards each) and an orphan ckpt-3 of 5 shards that the
    next save overwrites (so stale shards are removed, and ckpt-1 is deleted)."""
    populate(zygote, directory)
    tfshard.save(str(directory / "ckpt-3"), make_tensors(3), num_shards=5)


@pytest.mark.parametrize("layout", [{"num_shards": 2}, {"max_shard_size": 1 << 20}])
def test_sigkill_at_every_filesystem_step(tmp_path, zygote, layout):
    steps_seen = []
    for when in ("before", "after"):
        k = 0
        while True:
            k += 1
            assert k < 100, "the save never finished"
            directory = tmp_path / f"{when}-{k}"
            _prepare_step_directory(zygote, directory)
            pid, marks, err = zygote.start(directory, seed=k, max_saves=1, layout=layout,
                                           kill_at=k, when=when)
            status = zygote.reap(pid)
            if os.WIFEXITED(status):
                detail = err.read_text() if err.exists() else ""
                assert os.WEXITSTATUS(status) == 0, detail
                latest, _ = check_directory(directory)
                assert latest == 3
                break  # the save made fewer than k renames/unlinks: all covered
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            step = [line for line in marks.read_text().splitlines() if line.startswith("step")]
            steps_seen.append(step[-1])
            latest, _ = check_directory(directory)
            assert latest in (2, 3)
            # The next run recovers and continues after whatever is recorded.
            run_to_completion(zygote, directory, seed=1000 + k, saves=1, layout=layout)
            again, stats = check_directory(directory)
            assert again == latest + 1
    print(f"\nstep kills ({layout}): {len(steps_seen)}: " + "; ".join(steps_seen))
    # One save here renames its data files, installs the index, removes the orphan's
    # stale shards, replaces the state file and deletes ckpt-1: all must be hit.
    text = " ".join(steps_seen)
    for needle in ("replace ckpt-3.data", "replace ckpt-3.index.tempstate",
                   "unlink ckpt-3.data-00000-of-00005", "replace checkpoint.tempstate",
                   "unlink ckpt-1.index", "unlink ckpt-1.data"):
        assert needle in text, (needle, steps_seen)
