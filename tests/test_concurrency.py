"""Readers and writers at the same time, in one directory."""

import threading

import numpy as np

import tfshard


def values(step: int) -> dict:
    return {f"layer{i}/w": np.full((64, 32), step * 100 + i, np.float32) for i in range(8)}


def test_readers_keep_working_while_a_manager_saves(tmp_path):
    """One thread saves numbered checkpoints (state file rewritten each time) while
    others follow `latest_checkpoint` and read everything: every read sees a
    complete checkpoint with the values of its own step."""
    manager = tfshard.CheckpointManager(tmp_path, max_to_keep=None)
    manager.save(values(1), checkpoint_number=1)
    done = threading.Event()
    errors, reads = [], [0]

    def writer():
        try:
            for step in range(2, 40):
                manager.save(values(step), checkpoint_number=step)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            done.set()

    def reader():
        try:
            while not done.is_set():
                prefix = tfshard.latest_checkpoint(tmp_path)
                step = int(prefix.rsplit("-", 1)[1])
                with tfshard.open(prefix) as ckpt:
                    got = {name: ckpt[name] for name in ckpt}
                    assert ckpt.verify_all() == []
                expect = values(step)
                assert sorted(got) == sorted(expect)
                for name, value in expect.items():
                    np.testing.assert_array_equal(got[name], value)
                reads[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader)
                                                   for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[0]
    assert reads[0] > 0
    assert tfshard.latest_checkpoint(tmp_path).endswith("ckpt-39")


def test_threads_share_one_open_checkpoint(tmp_path):
    """Many threads reading the same and different tensors of one open checkpoint,
    first reads (CRC checks) racing each other, get identical values."""
    tensors = {f"t{i}": np.random.default_rng(i).standard_normal((256, 256)).astype(np.float32)
               for i in range(12)}
    prefix = tfshard.save(tmp_path / "c", tensors, num_shards=3)
    errors = []
    with tfshard.open(prefix) as ckpt:
        barrier = threading.Barrier(6)

        def work(k):
            try:
                barrier.wait()
                for j in range(60):
                    name = f"t{(k + j) % 12}"
                    np.testing.assert_array_equal(ckpt[name], tensors[name])
                    rows = ckpt.read(name, index=slice(j, j + 3))
                    np.testing.assert_array_equal(rows, tensors[name][j:j + 3])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not errors, errors[0]
