"""The ``tfshard`` command line."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tfshard
from tfshard import cli, formats
from tfshard.stats import tensor_stats

GOLDEN = Path(__file__).parent / "data" / "golden"


def run(*args):
    return subprocess.run([sys.executable, "-m", "tfshard", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_ls_table(capsys):
    assert cli.main(["ls", str(GOLDEN / "partitioned")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "DTYPE", "SHAPE", "SIZE"]
    rows = {line.split()[0]: line for line in out[1:-1]}
    assert set(rows) == {"cols", "dense/bias", "dense/kernel", "global_step"}
    assert "float32" in rows["dense/kernel"] and "[10, 4]" in rows["dense/kernel"]
    assert out[-1].startswith("4 tensors, 504 B in 1 shard(s)")


def test_ls_json_patterns_and_sort(capsys):
    assert cli.main(["ls", str(GOLDEN / "sharded" / "model.ckpt.index"), "--json", "[ab]",
                     "--sort", "size"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["num_shards"] == 2
    assert [t["name"] for t in doc["tensors"]] == ["b", "a"]
    assert doc["tensors"][0] == {"name": "b", "dtype": "int64", "shape": [2], "nbytes": 16,
                                 "shard": 1, "offset": 0, "partitioned": False}
    assert doc["total_bytes"] == 24


def test_exit_codes_and_help(tmp_path):
    missing = run("ls", tmp_path / "nope")
    assert missing.returncode == 1
    assert "tfshard ls: error:" in missing.stderr and "nope.index does not exist" in missing.stderr
    assert run("ls").returncode == 2
    assert run("frobnicate").returncode == 2
    help_ = run("ls", "--help")
    assert help_.returncode == 0 and "examples:" in help_.stdout and "--json" in help_.stdout


def test_corrupt_checkpoint_exits_1(tmp_path):
    (tmp_path / "bad.index").write_bytes(b"\x00" * 100)
    proc = run("ls", tmp_path / "bad")
    assert proc.returncode == 1 and "bad magic number" in proc.stderr


# ---- every subcommand, through cli.main ------------------------------------------------

COMMANDS = ("ls", "show", "verify", "extract", "convert", "merge", "rename", "strip", "diff")


def cli_run(capsys, *argv):
    """(exit status, stdout, stderr) of ``tfshard ARGV...`` run in-process."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*"))


def read_all(path, fmt=None):
    with formats.open_source(path, fmt) as src:
        return {n: (src.info(n)[0], np.array(src.read(n))) for n in src.names()}


@pytest.fixture
def model(tmp_path):
    """A small TF checkpoint with floating and non-floating tensors."""
    rng = np.random.default_rng(0)
    tensors = {
        "dense/kernel": rng.standard_normal((4, 3)).astype(np.float32),
        "dense/bias": rng.standard_normal(3),  # float64
        "half": np.array([0.5, -1.25, 3.0], dtype=np.float16),
        "step": np.int64(7),
        "mask": np.array([True, False, True]),
        "ids": np.arange(5, dtype=np.int32),
    }
    return tfshard.save(tmp_path / "model" / "ckpt", tensors), tensors


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(capsys, command):
    code, out, _ = cli_run(capsys, command, "--help")
    assert code == 0
    assert "examples:" in out and f"tfshard {command} " in out.split("examples:")[1]


def test_top_level_help_lists_every_command(capsys):
    code, out, _ = cli_run(capsys, "--help")
    assert code == 0
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("argv", [
    [],
    ["frobnicate"],
    ["convert", "only-src"],
    ["convert", "a", "b", "--max-shard-size", "lots"],
    ["convert", "a", "b", "--max-shard-size", "0"],
    ["convert", "a", "b", "--dtype", "int8"],
    ["convert", "a", "b", "--to", "hdf5"],
    ["extract", "a"],  # no -o
    ["extract", "a", "-o", "b", "--format", "tf"],
    ["merge", "out"],
    ["merge", "out", "a", "--on-conflict", "newest"],
    ["rename", "a", "b"],  # no --rule
    ["rename", "a", "--rule", "x=y"],  # no OUT without --dry-run
    ["strip", "a"],
    ["diff", "a"],
    ["diff", "a", "b", "--atol", "-1"],
    ["diff", "a", "b", "--rtol", "nan"],
    ["show", "a"],
    ["verify", "a", "--frobnicate"],
])
def test_usage_errors_exit_2(capsys, argv):
    code, out, err = cli_run(capsys, *argv)
    assert code == 2
    assert "usage:" in err and out == ""


def test_formats_match_the_library():
    assert cli.FORMATS == formats.FORMATS


@pytest.mark.parametrize("text, size", [
    ("4096", 4096), ("500MB", 500 * 10**6), ("500mb", 500 * 10**6), ("2GiB", 2 * 2**30),
    ("5G", 5 * 2**30), ("5g", 5 * 2**30), ("64K", 65536), ("1.5GB", 1_500_000_000),
    ("10 MiB", 10 * 2**20), ("1TB", 10**12), ("100B", 100),
])
def test_parse_size(text, size):
    assert cli.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "-5MB", "5XB", "0", "0.0001", "5 M B", "1e9"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="size"):
        cli.parse_size(text)


# ---- ls ----------------------------------------------------------------------------------

def test_ls_lists_other_formats(capsys, model, tmp_path):
    prefix, tensors = model
    assert cli_run(capsys, "convert", prefix, tmp_path / "m.safetensors", "-q")[0] == 0
    code, out, _ = cli_run(capsys, "ls", tmp_path / "m.safetensors", "dense/*")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[1:-1]] == ["dense/bias", "dense/kernel"]
    assert "in safetensors format" in out.splitlines()[-1]
    code, out, _ = cli_run(capsys, "ls", tmp_path / "m.safetensors", "--json")
    doc = json.loads(out)
    assert doc["format"] == "safetensors" and doc["num_shards"] is None
    assert {t["name"]: t["nbytes"] for t in doc["tensors"]} == {
        n: np.asarray(a).nbytes for n, a in tensors.items()}
    code, out, _ = cli_run(capsys, "ls", prefix, "--json")
    assert json.loads(out)["format"] == "tf"


# ---- show --------------------------------------------------------------------------------

def test_show_values_and_full(capsys, tmp_path):
    big = np.arange(2000, dtype=np.int32).reshape(40, 50)
    prefix = tfshard.save(tmp_path / "ckpt", {"big": big, "small": np.float32([1.5, -2.0])})
    code, out, _ = cli_run(capsys, "show", prefix, "small")
    assert code == 0
    assert out.splitlines()[0] == "small: float32 [2]"
    assert out.splitlines()[1] == str(np.float32([1.5, -2.0]))
    code, out, _ = cli_run(capsys, "show", prefix, "big")
    assert code == 0 and "..." in out and "1025" not in out
    code, out, _ = cli_run(capsys, "show", prefix, "big", "--full")
    assert code == 0 and "..." not in out
    values = out.split("\n", 1)[1].replace("[", " ").replace("]", " ").split()
    assert [int(v) for v in values] == list(range(2000))


def test_show_stats_text_and_json(capsys, tmp_path):
    values = np.array([[1.0, np.nan, 0.0], [np.inf, -3.0, 0.0], [2.0, 4.0, np.nan]],
                      dtype=np.float32)
    finite = np.array([1.0, 0.0, -3.0, 0.0, 2.0, 4.0])
    prefix = tfshard.save(tmp_path / "ckpt", {"v": values, "f": finite,
                                              "s": np.array([b"a", b"bc"], dtype=object)})
    code, out, _ = cli_run(capsys, "show", prefix, "v", "--stats")
    assert code == 0
    rows = dict(line.split() for line in out.splitlines()[1:])
    assert rows == {"count": "9", "nan": "2", "inf": "1", "zeros": "2", "min": "-3.0",
                    "max": "inf", "mean": "inf", "std": "nan"}
    code, out, _ = cli_run(capsys, "show", prefix, "f", "--stats", "--json")
    doc = json.loads(out)
    assert doc["name"] == "f" and doc["dtype"] == "float64" and doc["shape"] == [6]
    stats = doc["stats"]
    assert stats["count"] == 6 and stats["nan"] == 0 and stats["zeros"] == 2
    assert stats["min"] == -3.0 and stats["max"] == 4.0
    assert stats["mean"] == pytest.approx(finite.mean())
    assert stats["std"] == pytest.approx(finite.std())
    code, out, _ = cli_run(capsys, "show", prefix, "v", "--json")  # --json implies --stats
    stats = json.loads(out)["stats"]
    assert (stats["max"], stats["mean"], stats["std"]) == ("inf", "inf", "nan")
    code, out, _ = cli_run(capsys, "show", prefix, "s", "--stats")
    assert code == 0 and "no statistics for string tensors" in out
    code, out, _ = cli_run(capsys, "show", prefix, "s", "--json")
    doc = json.loads(out)
    assert doc["stats"] is None and "string" in doc["note"]


def test_tensor_stats_chunks_agree_with_numpy():
    rng = np.random.default_rng(1)
    values = rng.standard_normal(1001) * 100 + 7
    values[[3, 500, 999]] = np.nan
    stats = tensor_stats(values.astype(np.float32), chunk=64)
    v32 = values.astype(np.float32).astype(np.float64)
    assert stats["count"] == 1001 and stats["nan"] == 3 and stats["inf"] == 0
    assert stats["mean"] == pytest.approx(np.nanmean(v32), rel=1e-12)
    assert stats["std"] == pytest.approx(np.nanstd(v32), rel=1e-12)
    assert stats["min"] == np.nanmin(v32) and stats["max"] == np.nanmax(v32)
    big = np.array([2**62 + 1, -(2**62) - 3], dtype=np.int64)  # exact min/max for int64
    assert (int(tensor_stats(big)["min"]), int(tensor_stats(big)["max"])) == (
        -(2**62) - 3, 2**62 + 1)
    assert tensor_stats(np.zeros(0, np.float32))["min"] is None
    assert tensor_stats(np.ones(2, np.complex64)) is None


def test_show_stats_every_golden_dtype(capsys):
    path = GOLDEN / "dtypes" / "ckpt"
    for name in tfshard.list_variables(path):
        code, out, _ = cli_run(capsys, "show", path, name[0], "--json")
        assert code == 0, name
        doc = json.loads(out)
        assert (doc["stats"] is None) == ("complex" in doc["dtype"]), name


def test_show_other_formats_and_missing_tensor(capsys, model, tmp_path):
    prefix, tensors = model
    cli_run(capsys, "convert", prefix, tmp_path / "m.npz", "-q")
    code, out, _ = cli_run(capsys, "show", tmp_path / "m.npz", "ids")
    assert code == 0 and out.splitlines() == ["ids: int32 [5]", "[0 1 2 3 4]"]
    code, out, err = cli_run(capsys, "show", prefix, "dense/kernal")
    assert code == 1 and out == ""
    assert err.startswith("tfshard show: error:") and "did you mean 'dense/kernel'" in err


# ---- verify ------------------------------------------------------------------------------

def test_verify_ok_and_json(capsys):
    code, out, _ = cli_run(capsys, "verify", GOLDEN / "partitioned")
    assert code == 0 and out.startswith("OK: 4 tensors")
    code, out, _ = cli_run(capsys, "verify", GOLDEN / "sharded", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["ok"] is True and doc["problems"] == [] and doc["checked"] > 0


def test_verify_flipped_data_byte(capsys, tmp_path):
    prefix = tfshard.save(tmp_path / "ckpt", {"good": np.arange(64, dtype=np.float32),
                                              "victim": np.arange(64, dtype=np.float64),
                                              "other": np.ones(8, np.int32)})
    with tfshard.open(prefix) as ckpt:
        info = ckpt.info("victim")
    data = Path(f"{prefix}.data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[info.offset + 100] ^= 0x01
    data.write_bytes(bytes(raw))
    code, out, _ = cli_run(capsys, "verify", prefix)
    assert code == 1
    bad = [line for line in out.splitlines() if line.startswith("BAD")]
    assert len(bad) == 1 and bad[0].startswith("BAD  victim:")
    assert out.splitlines()[-1].startswith("FAILED: 1 of 3 tensors bad")
    code, out, _ = cli_run(capsys, "verify", prefix, "--json")
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False and doc["checked"] == 3
    assert [p["name"] for p in doc["problems"]] == ["victim"]


def test_verify_missing_checkpoint_exits_1(capsys, tmp_path):
    code, out, err = cli_run(capsys, "verify", tmp_path / "nope")
    assert code == 1 and "tfshard verify: error:" in err


# ---- extract -----------------------------------------------------------------------------

def test_extract_patterns_to_npz_and_safetensors(capsys, model, tmp_path):
    prefix, tensors = model
    code, out, _ = cli_run(capsys, "extract", prefix, "dense/*", "-o", tmp_path / "d.npz")
    assert code == 0 and out.startswith("extracted 2 tensors")
    got = read_all(tmp_path / "d.npz")
    assert sorted(got) == ["dense/bias", "dense/kernel"]
    np.testing.assert_array_equal(got["dense/kernel"][1], tensors["dense/kernel"])
    # Patterns after options too; --quiet prints nothing.
    code, out, _ = cli_run(capsys, "extract", prefix, "-o", tmp_path / "x.safetensors", "ids",
                           "--quiet", "step")
    assert code == 0 and out == ""
    assert sorted(read_all(tmp_path / "x.safetensors")) == ["ids", "step"]


def test_extract_unmatched_pattern_exits_1(capsys, model, tmp_path):
    prefix, _ = model
    code, _, err = cli_run(capsys, "extract", prefix, "dense/*", "nothing*", "-o",
                           tmp_path / "d.npz")
    assert code == 1 and "'nothing*'" in err
    assert not (tmp_path / "d.npz").exists()


def test_extract_npy_hostile_names_stay_inside_out(capsys, tmp_path):
    hostile = {"../x": np.arange(3.0), "a/b": np.ones(2, np.int32), "/abs": np.zeros(1),
               "..": np.ones(1), "names": np.float32([4]), "a\\..\\..\\y": np.ones(1)}
    prefix = tfshard.save(tmp_path / "src" / "ckpt", hostile)
    (tmp_path / "work").mkdir()
    before = files_under(tmp_path)
    out_dir = tmp_path / "work" / "out"
    code, out, _ = cli_run(capsys, "extract", prefix, "-o", out_dir, "--format", "npy")
    assert code == 0
    new = sorted(set(files_under(tmp_path)) - set(before))
    assert new and all(p == "work/out" or p.startswith("work/out/") for p in new), new
    assert all("/" not in p[len("work/out/"):] for p in new if p != "work/out")
    got = read_all(out_dir)
    assert sorted(got) == sorted(hostile)
    for name, value in hostile.items():
        np.testing.assert_array_equal(got[name][1], value)


def test_extract_refuses_to_overwrite(capsys, model, tmp_path):
    prefix, _ = model
    out_file = tmp_path / "w.npz"
    assert cli_run(capsys, "extract", prefix, "ids", "-o", out_file)[0] == 0
    stamp = out_file.read_bytes()
    code, out, err = cli_run(capsys, "extract", prefix, "step", "-o", out_file)
    assert code == 1 and "--overwrite" in err and "overwrite=True" not in err
    assert out_file.read_bytes() == stamp
    assert cli_run(capsys, "extract", prefix, "step", "-o", out_file, "--overwrite")[0] == 0
    assert sorted(read_all(out_file)) == ["step"]


# ---- convert -----------------------------------------------------------------------------

def test_convert_bfloat16_round_trip(capsys, model, tmp_path):
    prefix, tensors = model
    st = tmp_path / "m.safetensors"
    code, out, _ = cli_run(capsys, "convert", prefix, st, "--dtype", "bfloat16")
    assert code == 0 and out.startswith("converted 6 tensors") and str(st) in out
    floating = {"dense/kernel", "dense/bias", "half"}
    got = read_all(st)
    assert sorted(got) == sorted(tensors)
    for name, value in tensors.items():
        dtype, array = got[name]
        if name in floating:
            assert dtype == "bfloat16", name
            np.testing.assert_array_equal(array, np.asarray(value).astype(array.dtype))
        else:
            assert dtype == str(np.asarray(value).dtype), name
            np.testing.assert_array_equal(array, value)
    back = tmp_path / "back" / "ckpt"
    assert cli_run(capsys, "convert", st, back, "--quiet")[0] == 0
    with tfshard.open(back) as ckpt:
        assert {n: ckpt.info(n).dtype for n in ckpt} == {n: got[n][0] for n in got}
        for name in tensors:
            np.testing.assert_array_equal(ckpt[name], got[name][1])
    code, out, _ = cli_run(capsys, "diff", st, back)
    assert code == 0 and "same: 6 tensors compared" in out


def test_convert_include_exclude_rename(capsys, model, tmp_path):
    prefix, tensors = model
    out_file = tmp_path / "sel.npz"
    code, out, _ = cli_run(capsys, "convert", prefix, out_file, "--include", "dense/*",
                           "--include", "step", "--exclude", "*/bias",
                           "--rename", "^dense/=layer0/", "--rename", "kernel$=w")
    assert code == 0
    assert "2 tensors renamed" not in out and "1 tensor renamed" in out
    assert "4 tensors left out" in out
    got = read_all(out_file)
    assert sorted(got) == ["layer0/w", "step"]
    np.testing.assert_array_equal(got["layer0/w"][1], tensors["dense/kernel"])


def test_convert_rename_collision_writes_nothing(capsys, model, tmp_path):
    prefix, _ = model
    code, _, err = cli_run(capsys, "convert", prefix, tmp_path / "c.npz",
                           "--rename", "^dense/.*=same")
    assert code == 1 and "'same'" in err and "dense/bias" in err and "dense/kernel" in err
    assert not (tmp_path / "c.npz").exists()


def test_convert_max_shard_size_and_formats(capsys, tmp_path):
    tensors = {f"t{i}": np.full(1000, i, np.float32) for i in range(4)}  # 4000 bytes each
    src = tmp_path / "src.npz"
    np.savez(src, **tensors)
    out_prefix = tmp_path / "out" / "ckpt"
    code, out, _ = cli_run(capsys, "convert", src, out_prefix, "--max-shard-size", "8KB")
    assert code == 0
    with tfshard.open(out_prefix) as ckpt:
        assert ckpt.num_shards >= 2
        assert all(np.array_equal(ckpt[n], tensors[n]) for n in tensors)
    # --from/--to override what the names say.
    odd = tmp_path / "weights.data"
    code, _, _ = cli_run(capsys, "convert", src, odd, "--to", "safetensors", "-q")
    assert code == 0
    assert sorted(read_all(odd, "safetensors")) == sorted(tensors)


def test_convert_unsupported_tensor_exits_1(capsys, tmp_path):
    prefix = tfshard.save(tmp_path / "ckpt", {"s": np.array([b"x"], dtype=object)})
    code, _, err = cli_run(capsys, "convert", prefix, tmp_path / "s.safetensors")
    assert code == 1 and "tfshard convert: error:" in err and "'s'" in err
    assert not (tmp_path / "s.safetensors").exists()


def test_convert_refuses_to_overwrite(capsys, model, tmp_path):
    prefix, _ = model
    out_prefix = tmp_path / "copy" / "ckpt"
    assert cli_run(capsys, "convert", prefix, out_prefix, "-q")[0] == 0
    code, _, err = cli_run(capsys, "convert", prefix, out_prefix, "--exclude", "ids")
    assert code == 1 and "--overwrite" in err
    assert "ids" in tfshard.open(out_prefix)
    assert cli_run(capsys, "convert", prefix, out_prefix, "--exclude", "ids", "--overwrite",
                   "-q")[0] == 0
    assert "ids" not in tfshard.open(out_prefix)


def test_convert_subprocess(tmp_path):
    proc = run("convert", GOLDEN / "partitioned", tmp_path / "p.safetensors", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""
    got = read_all(tmp_path / "p.safetensors")
    assert sorted(got) == ["cols", "dense/bias", "dense/kernel", "global_step"]
    np.testing.assert_array_equal(got["dense/kernel"][1],
                                  tfshard.load_variable(GOLDEN / "partitioned", "dense/kernel"))
    again = run("convert", GOLDEN / "partitioned", tmp_path / "p.safetensors")
    assert again.returncode == 1 and "--overwrite" in again.stderr


# ---- merge -------------------------------------------------------------------------------

@pytest.fixture
def two_models(tmp_path):
    a = tfshard.save(tmp_path / "a" / "ckpt", {"x": np.float32([1]), "y": np.float32([2]),
                                               "only_a": np.int64(1)})
    b = tfshard.save(tmp_path / "b" / "ckpt", {"x": np.float32([10]), "y": np.float32([20]),
                                               "only_b": np.int64(2)})
    return a, b


def test_merge_with_scopes(capsys, two_models, tmp_path):
    a, b = two_models
    out_prefix = tmp_path / "m" / "ckpt"
    code, out, _ = cli_run(capsys, "merge", out_prefix, f"{a}:left/", f"{b}:right/")
    assert code == 0 and out.startswith("merged 6 tensors")
    got = tfshard.load(out_prefix)
    assert sorted(got) == ["left/only_a", "left/x", "left/y", "right/only_b", "right/x",
                           "right/y"]
    assert got["right/x"][0] == 10


def test_merge_conflicts(capsys, two_models, tmp_path):
    a, b = two_models
    out_file = tmp_path / "m.npz"
    code, out, err = cli_run(capsys, "merge", out_file, a, b)
    assert code == 1 and out == ""
    assert "2 tensor name(s)" in err and "'x'" in err and "'y'" in err
    assert "--on-conflict" in err
    assert not out_file.exists()
    code, out, _ = cli_run(capsys, "merge", out_file, a, b, "--on-conflict", "first")
    assert code == 0 and "2 conflicting tensors dropped" in out
    got = read_all(out_file)
    assert sorted(got) == ["only_a", "only_b", "x", "y"]
    assert (got["x"][1][0], got["y"][1][0]) == (1, 2)
    code, _, _ = cli_run(capsys, "merge", out_file, a, b, "--on-conflict", "last",
                         "--overwrite", "-q")
    assert code == 0
    got = read_all(out_file)
    assert (got["x"][1][0], got["y"][1][0]) == (10, 20)


def test_merge_missing_source_exits_1(capsys, two_models, tmp_path):
    a, _ = two_models
    code, _, err = cli_run(capsys, "merge", tmp_path / "m.npz", a, tmp_path / "nope")
    assert code == 1 and "tfshard merge: error:" in err
    assert not (tmp_path / "m.npz").exists()


# ---- rename ------------------------------------------------------------------------------

def test_rename_prints_mapping_and_writes(capsys, model, tmp_path):
    prefix, tensors = model
    out_prefix = tmp_path / "r" / "ckpt"
    code, out, _ = cli_run(capsys, "rename", prefix, out_prefix, "--rule", "^dense/=encoder/")
    assert code == 0
    lines = out.splitlines()
    assert lines[:2] == ["dense/bias -> encoder/bias", "dense/kernel -> encoder/kernel"]
    assert lines[-1].startswith("2 tensors renamed, 4 unchanged; written to")
    got = tfshard.load(out_prefix)
    assert sorted(got) == sorted(["encoder/bias", "encoder/kernel", "half", "step", "mask",
                                  "ids"])
    np.testing.assert_array_equal(got["encoder/kernel"], tensors["dense/kernel"])


def test_rename_dry_run_and_json(capsys, model, tmp_path):
    prefix, _ = model
    out_prefix = tmp_path / "r" / "ckpt"
    code, out, _ = cli_run(capsys, "rename", prefix, out_prefix, "--rule", "^(\\w+)$=top/\\1",
                           "--dry-run", "--all")
    assert code == 0
    assert "half -> top/half" in out and "dense/bias (unchanged)" in out
    assert "nothing written (--dry-run)" in out
    assert not (tmp_path / "r").exists()
    code, out, _ = cli_run(capsys, "rename", prefix, "--rule", "^ids$=token_ids", "--dry-run",
                           "--json")
    doc = json.loads(out)
    assert doc["renamed"] == {"ids": "token_ids"} and doc["dry_run"] is True
    assert doc["output"] is None and len(doc["unchanged"]) == 5


def test_rename_collision_refused(capsys, model, tmp_path):
    prefix, _ = model
    out_prefix = tmp_path / "r" / "ckpt"
    code, out, err = cli_run(capsys, "rename", prefix, out_prefix, "--rule", "^dense/.*=w")
    assert code == 1 and out == ""
    assert "'w' <- 'dense/bias', 'dense/kernel'" in err
    assert not (tmp_path / "r").exists()


def test_rename_bad_rule_exits_1(capsys, model, tmp_path):
    prefix, _ = model
    code, _, err = cli_run(capsys, "rename", prefix, tmp_path / "r", "--rule", "(unclosed=x")
    assert code == 1 and "rename rule" in err
    code, _, err = cli_run(capsys, "rename", prefix, tmp_path / "r", "--rule", "no-equals-sign")
    assert code == 1 and "REGEX=REPLACEMENT" in err


# ---- strip -------------------------------------------------------------------------------

KERAS_ADAM = GOLDEN / "keras_adam" / "ckpt-2"
# Keras 3 saves the model's weights once, under the optimizer's path
# (tests/data/make_goldens.py): these four keys are the model, not optimizer state.
KERAS_WEIGHTS = [f"optimizer/_trainable_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE"
                 for i in range(4)]


@pytest.fixture
def tf1_checkpoint(tmp_path):
    w, b = np.ones((3, 2), np.float32), np.zeros(2, np.float32)
    tensors = {"w": w, "w/Adam": w * 0.1, "w/Adam_1": w * 0.01, "b": b, "b/Adam": b,
               "b/Adam_1": b, "beta1_power": np.float32(0.9), "beta2_power": np.float32(0.999),
               "global_step": np.int64(1000)}
    return tfshard.save(tmp_path / "tf1" / "model.ckpt", tensors)


def test_strip_tf1_checkpoint(capsys, tf1_checkpoint, tmp_path):
    out_prefix = tmp_path / "stripped" / "model.ckpt"
    code, out, _ = cli_run(capsys, "strip", tf1_checkpoint, out_prefix)
    assert code == 0
    dropped = ["b/Adam", "b/Adam_1", "beta1_power", "beta2_power", "w/Adam", "w/Adam_1"]
    assert [line.split()[1] for line in out.splitlines() if line.startswith("drop ")] == dropped
    saved = 2 * 24 + 2 * 8 + 2 * 4
    assert f"6 tensors dropped, {saved} B saved ({saved} bytes); 3 kept" in out
    assert sorted(tfshard.load(out_prefix)) == ["b", "global_step", "w"]
    code, out, _ = cli_run(capsys, "strip", tf1_checkpoint, tmp_path / "s2" / "ckpt",
                           "--drop-step", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["dropped"] == sorted(dropped + ["global_step"])
    assert doc["kept"] == 2 and doc["saved_bytes"] == saved + 8
    assert sorted(tfshard.load(tmp_path / "s2" / "ckpt")) == ["b", "w"]


def test_strip_dry_run_writes_nothing(capsys, tf1_checkpoint, tmp_path):
    code, out, _ = cli_run(capsys, "strip", tf1_checkpoint, tmp_path / "s" / "ckpt",
                           "--dry-run")
    assert code == 0 and "6 tensors dropped" in out and "nothing written" in out
    assert not (tmp_path / "s").exists()
    code, out, _ = cli_run(capsys, "strip", tf1_checkpoint, "--dry-run", "--drop-step")
    assert code == 0 and "drop global_step (8 B)" in out


def test_strip_refuses_to_overwrite(capsys, tf1_checkpoint, tmp_path):
    out_prefix = tmp_path / "s" / "ckpt"
    assert cli_run(capsys, "strip", tf1_checkpoint, out_prefix)[0] == 0
    code, _, err = cli_run(capsys, "strip", tf1_checkpoint, out_prefix, "--drop-step")
    assert code == 1 and "--overwrite" in err
    assert "global_step" in tfshard.open(out_prefix)


def test_strip_keras_adam_drops_optimizer_state(capsys, tmp_path):
    out_prefix = tmp_path / "stripped" / "ckpt"
    code, out, _ = cli_run(capsys, "strip", KERAS_ADAM, out_prefix)
    assert code == 0
    names = set(tfshard.open(out_prefix))
    assert not [n for n in names if ".OPTIMIZER_SLOT" in n]
    assert not [n for n in names if n.startswith(("optimizer/_variables/",
                                                  "optimizer/_iterations/",
                                                  "optimizer/_learning_rate/"))]
    assert {"_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE"} <= names
    # What --dry-run announces is what a real run does.
    code, dry, _ = cli_run(capsys, "strip", KERAS_ADAM, "--dry-run", "--json")
    assert sorted(json.loads(dry)["dropped"]) == sorted(set(tfshard.open(KERAS_ADAM)) - names)


def test_strip_keras_adam_keeps_model_weights(capsys, tmp_path):
    out_prefix = tmp_path / "stripped" / "ckpt"
    assert cli_run(capsys, "strip", KERAS_ADAM, out_prefix)[0] == 0
    with tfshard.open(out_prefix) as ckpt, tfshard.open(KERAS_ADAM) as original:
        for key in KERAS_WEIGHTS:
            np.testing.assert_array_equal(ckpt[key], original[key])


# ---- diff --------------------------------------------------------------------------------

def test_diff_exit_codes_and_tolerances(capsys, tmp_path):
    base = {"w": np.array([1.0, 2.0, 100.0], np.float32), "n": np.int64(3)}
    a = tfshard.save(tmp_path / "a" / "ckpt", base)
    b = tfshard.save(tmp_path / "b" / "ckpt", {"w": np.array([1.0, 2.001, 100.5], np.float32),
                                               "n": np.int64(3)})
    code, out, _ = cli_run(capsys, "diff", a, a)
    assert code == 0 and out.strip() == "same: 2 tensors compared"
    code, out, _ = cli_run(capsys, "diff", a, b)
    assert code == 1
    line = next(line for line in out.splitlines() if line.startswith("differs"))
    assert "w:" in line and "max abs diff 0.5" in line
    assert cli_run(capsys, "diff", a, b, "--atol", "0.1")[0] == 1
    assert cli_run(capsys, "diff", a, b, "--atol", "0.6")[0] == 0
    # |a - b| > atol + rtol * |b|: 0.5 > 1e-3 * 100.5 differs; 0.5 < 6e-3 * 100.5 does not.
    assert cli_run(capsys, "diff", a, b, "--rtol", "1e-3")[0] == 1
    assert cli_run(capsys, "diff", a, b, "--rtol", "6e-3")[0] == 0
    assert cli_run(capsys, "diff", a, b, "--atol", "1e-3", "--rtol", "5e-3")[0] == 0


def test_diff_json_and_structure(capsys, tmp_path):
    a = tfshard.save(tmp_path / "a" / "ckpt", {"same": np.ones(2), "gone": np.ones(1),
                                               "shape": np.ones(2), "val": np.float32([1, 2]),
                                               "s": np.array([b"x"], dtype=object)})
    b = tfshard.save(tmp_path / "b" / "ckpt", {"same": np.ones(2), "new": np.ones(1),
                                               "shape": np.ones(3), "val": np.float32([1, 0]),
                                               "s": np.array([b"y"], dtype=object)})
    code, out, _ = cli_run(capsys, "diff", a, b, "--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["same"] is False and doc["compared"] == 3
    assert doc["missing"] == ["gone"] and doc["unexpected"] == ["new"]
    assert doc["mismatched"] == {"shape": {"a": "float64 [2]", "b": "float64 [3]"}}
    assert doc["differing"]["val"] == {"max_abs": 2.0, "max_rel": "inf"}
    assert doc["differing"]["s"] == {"max_abs": None, "max_rel": None}
    code, out, _ = cli_run(capsys, "diff", a, b)
    assert "missing     gone" in out and "unexpected  new" in out
    assert "mismatched  shape: float64 [2] vs float64 [3]" in out
    assert "differs     s: values differ" in out
    assert out.splitlines()[-1].startswith("different: 1 missing, 1 unexpected, 1 mismatched")
    code, out, _ = cli_run(capsys, "diff", a, a, "--json")
    assert code == 0 and json.loads(out)["same"] is True


def test_diff_non_finite_values(capsys, tmp_path):
    a = tfshard.save(tmp_path / "a" / "ckpt", {"x": np.float32([np.inf, -np.inf, np.nan, 1])})
    b = tfshard.save(tmp_path / "b" / "ckpt", {"x": np.float32([np.inf, -np.inf, np.nan, 1])})
    c = tfshard.save(tmp_path / "c" / "ckpt", {"x": np.float32([np.inf, -np.inf, np.nan, np.inf])})
    d = tfshard.save(tmp_path / "d" / "ckpt", {"x": np.float32([np.inf, -np.inf, 2, 1])})
    assert cli_run(capsys, "diff", a, b)[0] == 0
    for x, y in [(a, c), (c, a), (a, d), (d, a)]:
        code, out, _ = cli_run(capsys, "diff", x, y, "--rtol", "0.5", "--json")
        assert code == 1, (x, y)
        assert json.loads(out)["differing"]["x"] == {"max_abs": "inf", "max_rel": "inf"}


def test_diff_missing_input_exits_1(capsys, tmp_path):
    code, _, err = cli_run(capsys, "diff", GOLDEN / "partitioned", tmp_path / "nope")
    assert code == 1 and "tfshard diff: error:" in err


def test_os_errors_exit_1(capsys, model, tmp_path):
    prefix, _ = model
    (tmp_path / "afile").write_text("")
    code, _, err = cli_run(capsys, "convert", prefix, tmp_path / "afile" / "sub" / "x.npz")
    assert code == 1 and err.startswith("tfshard convert: error:")


# ---- TensorFlow ----------------------------------------------------------------------------

def test_stripped_keras_checkpoint_restores_in_tf(capsys, tmp_path):
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")

    def build():  # the model of make_goldens.make_keras_adam
        return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"),
                                 keras.layers.Dense(2)])

    stripped = tmp_path / "stripped" / "ckpt"
    assert cli_run(capsys, "strip", KERAS_ADAM, stripped, "-q")[0] == 0
    model, reference = build(), build()
    tf.train.Checkpoint(model=model).restore(str(stripped)).assert_existing_objects_matched()
    tf.train.Checkpoint(model=reference).restore(str(KERAS_ADAM)).expect_partial()
    assert len(model.weights) == 4
    for got, want in zip(model.weights, reference.weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    # Fine-tuning: the stripped checkpoint restores beside a fresh optimizer, too.
    model2 = build()
    optimizer = keras.optimizers.Adam(learning_rate=0.01)
    model2.compile(optimizer=optimizer, loss="mse")
    optimizer.build(model2.trainable_variables)
    status = tf.train.Checkpoint(model=model2, optimizer=optimizer).restore(str(stripped))
    status.assert_existing_objects_matched()
    assert int(optimizer.iterations.numpy()) == 0
    for got, want in zip(model2.weights, reference.weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
