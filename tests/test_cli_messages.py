"""What the command line says, and leaves behind, when a job cannot do what was asked:
selections of nothing, collisions, casts, unsupported tensors, missing data files,
interrupts, progress that follows the real work."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tfshard
from tfshard import cli, conversion, formats


def cli_run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def ckpt(tmp_path):
    return tfshard.save(tmp_path / "in" / "ckpt", {
        "dense/kernel": np.arange(12, dtype=np.float32).reshape(3, 4),
        "dense/bias": np.ones(4, np.float32),
        "vocab": np.array([b"a", b"bc"], dtype=object),
        "global_step": np.int64(7)})


@pytest.mark.parametrize("command,how", [("convert", "unmatched-include"),
                                         ("convert", "everything-excluded"),
                                         ("extract", "unmatched-include")])
def test_nothing_selected_is_refused_and_writes_nothing(capsys, tmp_path, ckpt, command, how):
    out = tmp_path / "out.npz"
    if command == "extract":
        argv = ["extract", ckpt, "nomatch*", "-o", out]
    else:
        extra = (["--include", "nomatch*"] if how == "unmatched-include"
                 else ["--include", "dense/*", "--exclude", "dense/*"])
        argv = ["convert", ckpt, out, *extra]
    code, stdout, err = cli_run(capsys, *argv)
    assert code == 1 and stdout == ""
    assert err.startswith(f"tfshard {command}: error: ") and err.count("\n") == 1
    assert ("matches 'nomatch*'" in err) if how == "unmatched-include" else "leave out" in err
    assert not out.exists() and not list(tmp_path.glob("out*"))


def test_nothing_selected_in_the_library(tmp_path, ckpt):
    with pytest.raises(tfshard.NothingSelectedError, match="'x\\*'"):
        conversion.convert(ckpt, tmp_path / "o.npz", include=["dense/*", "x*"])
    with pytest.raises(KeyError):  # a TensorNotFoundError, so a KeyError too
        conversion.extract(ckpt, tmp_path / "o.npz", ["x*"])
    assert not (tmp_path / "o.npz").exists()


def test_rename_collisions_are_summarized(capsys, tmp_path):
    src = tfshard.save(tmp_path / "many", {f"layer_{i}/w": np.float32(i) for i in range(300)})
    code, _, err = cli_run(capsys, "rename", src, tmp_path / "o", "--rule", r"layer_\d+=layer")
    assert code == 1
    assert "1 output name(s) would be produced by several tensors" in err
    assert "and 297 more" in err and len(err) < 400
    assert not (tmp_path / "o.index").exists()


def test_cast_summary_reports_bytes_written(capsys, tmp_path, ckpt):
    code, out, _ = cli_run(capsys, "convert", ckpt, tmp_path / "o" / "ckpt", "--dtype",
                           "bfloat16")
    assert code == 0
    # 12 + 4 float32 values (64 B) become 32 B; the string and int64 are copied (10 + 8 B).
    with tfshard.open(tmp_path / "o" / "ckpt") as c:
        written = sum(i.nbytes for i in c.infos())
    with tfshard.open(ckpt) as c:
        read = sum(i.nbytes for i in c.infos())
    assert written < read
    assert (f"converted 4 tensors ({written} B written, {read} B read): "
            f"{tmp_path / 'o' / 'ckpt'}") in out


def test_skip_unsupported_leaves_out_and_lists(capsys, tmp_path, ckpt):
    out = tmp_path / "o.safetensors"
    code, _, err = cli_run(capsys, "convert", ckpt, out)
    assert code == 1 and "'vocab' is string" in err and not out.exists()
    code, stdout, _ = cli_run(capsys, "convert", ckpt, out, "--skip-unsupported")
    assert code == 0
    assert "skipped vocab: tensor 'vocab' is string, which the safetensors format cannot" in stdout
    assert "1 tensor skipped as unsupported by the output format" in stdout
    with formats.open_source(out) as s:
        assert s.names() == ["dense/bias", "dense/kernel", "global_step"]
    report = conversion.extract(ckpt, tmp_path / "o2.safetensors", ["vocab", "global_step"],
                                skip_unsupported=True)
    assert [name for name, _ in report.skipped] == ["vocab"] and report.tensors == 1


def test_verify_names_a_missing_data_file_once(capsys, tmp_path):
    arrays = {f"t{i}": np.full(10, i, np.float32) for i in range(40)}
    prefix = tfshard.save(tmp_path / "ckpt", arrays, num_shards=2)
    data = Path(prefix + ".data-00001-of-00002")
    held = tfshard.open(prefix).infos()
    in_shard_1 = sorted(i.name for i in held if i.shard == 1)
    data.unlink()
    code, out, _ = cli_run(capsys, "verify", prefix)
    assert code == 1
    bad = [line for line in out.splitlines() if line.startswith("BAD")]
    assert bad == [f"BAD  {data}: data file {data} is missing; it holds {len(in_shard_1)} "
                   f"tensors ({in_shard_1[0]!r}, {in_shard_1[1]!r}, {in_shard_1[2]!r} and "
                   f"{len(in_shard_1) - 3} more) that cannot be checked"]
    assert "different saves" not in out
    assert out.splitlines()[-1] == (f"FAILED: 1 data file missing, 0 of "
                                    f"{40 - len(in_shard_1)} tensors bad: {prefix}")


def test_verify_prints_the_checkpoint_it_checked(capsys, tmp_path):
    mgr = tfshard.CheckpointManager(tmp_path / "train", max_to_keep=2)
    mgr.save({"w": np.ones(3, np.float32)})
    latest = mgr.save({"w": np.zeros(3, np.float32)})
    code, out, _ = cli_run(capsys, "verify", tmp_path / "train")
    assert code == 0 and out.splitlines()[-1].endswith(f"checked: {latest}")


def test_diff_progress_bar(capsys, tmp_path, ckpt):
    pytest.importorskip("tqdm")
    report = conversion.diff(ckpt, ckpt, progress=True)
    assert report.same
    err = capsys.readouterr().err
    with tfshard.open(ckpt) as c:
        total = sum(i.nbytes for i in c.infos())
    assert f"comparing:   0%|          | 0.00/{float(total):.1f}" in err


def test_torch_progress_counts_the_writing_at_commit(tmp_path):
    pytest.importorskip("torch")
    plan = [("a", "float32", (1000,)), ("b", "float32", (3000,))]
    written = []
    with formats.create_sink(tmp_path / "m.pt", plan=plan) as sink:
        assert sink.writes_at_commit
        sink.add("a", np.zeros(1000, np.float32))
        sink.add("b", np.zeros(3000, np.float32))
        files = sink.commit(on_write=written.append)
    # Every byte torch.save wrote went through the callback.
    assert sum(written) == os.path.getsize(files[0]) > 16_000


def test_ctrl_c_exits_130_with_one_line_and_leaves_nothing(tmp_path):
    src = tfshard.save(tmp_path / "big", {f"t{i:03d}": np.full(1 << 20, i, np.float32)
                                          for i in range(200)})  # 800 MiB of input
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "tfshard", "convert", src, str(out),
                             "--to", "npy", "-q"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    # The output is written under a temporary name, renamed to OUT at the end: once that
    # temporary folder holds a file, the conversion is under way.
    while not any(p.is_file() for p in tmp_path.glob("out.tempstate*/*")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr == "tfshard convert: interrupted; nothing was written\n"
    assert not out.exists() and not list(tmp_path.glob("out*"))
