"""A bounded fuzzing campaign over the reader (scripts/fuzz.py), and the saved findings.

Longer campaigns run on demand: ``scripts/fuzz.py --time 600`` (see its --help).
"""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("fuzz", ROOT / "scripts" / "fuzz.py")
fuzz = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fuzz)


@pytest.mark.parametrize("seeds", ["all", "v2", "v1", "graph"])
def test_mutations_are_reproducible(seeds):
    a, b = fuzz.make_case(17, 3, seeds), fuzz.make_case(17, 3, seeds)
    assert a["files"] == b["files"] and a["mutated"] == b["mutated"]
    assert fuzz.make_case(18, 3, seeds)["files"] != a["files"]


def test_every_seed_set_is_drawn():
    names = {fuzz.make_case(n, 1)["seed_checkpoint"] for n in range(300)}
    assert names == set(fuzz.SEEDS) | set(fuzz.V1_SEEDS) | set(fuzz.GRAPH_SEEDS)
    assert all(fuzz.is_graph(fuzz.make_case(n, 1, "graph")["seed_checkpoint"])
               for n in range(50))
    assert all(fuzz.is_v1(fuzz.make_case(n, 1, "v1")["seed_checkpoint"]) for n in range(50))
    assert not any(fuzz.is_v1(fuzz.make_case(n, 1, "v2")["seed_checkpoint"])
                   for n in range(50))


def test_unmutated_seeds_read_cleanly(tmp_path):
    for name in fuzz.SEEDS + fuzz.V1_SEEDS + fuzz.GRAPH_SEEDS:
        case = {"files": fuzz.seed_files(name)}
        (tmp_path / name.replace("/", "_")).mkdir()
        prefix = fuzz.write_case(case, str(tmp_path / name.replace("/", "_")))
        assert fuzz.exercise(prefix) == "ok", name
    # V1 seeds are written as V1 files: the prefix itself, or -SSSSS-of-NNNNN shards.
    assert sorted(fuzz.seed_files("v1/sharded/model.ckpt")) == ["-00000-of-00002",
                                                                "-00001-of-00002"]
    assert list(fuzz.seed_files("v1/dtypes/model.ckpt")) == [""]


def test_v1_records_round_trip_through_the_protobuf_codec():
    """Unmutated, every record of every V1 seed decodes into fields and re-encodes to the
    same bytes, so that a mutated record differs from the seed only where it was mutated."""
    for name in fuzz.V1_SEEDS:
        for data in fuzz.seed_files(name).values():
            pairs = fuzz.table_pairs(data)
            assert fuzz.build_table(pairs) == data, name
            for key, value in pairs:
                fields = fuzz.parse_message(value)
                assert fields is not None and fuzz.encode_message(fields) == value, (name, key)


def test_v1_record_mutations_keep_valid_checksums():
    """Structure-aware V1 cases rebuild the mutated file with valid block checksums and
    alter its records (the meta record too), not the SSTable around them."""
    import tfshard
    from tfshard import _v1

    cases = [fuzz.make_case(n, 4, "v1") for n in range(300)]
    records = [c for c in cases if c["pairs"] is not None]
    assert 120 < len(records) < 260 and len(cases) - len(records) > 50   # raw ones too
    meta_changed = 0
    for case in records:
        data = case["files"][case["file"]]
        assert fuzz.table_pairs(data) == case["pairs"]        # parses: checksums hold
        seed = dict(fuzz.table_pairs(fuzz.seed_files(case["seed_checkpoint"])[case["file"]]))
        assert dict(case["pairs"]) != seed
        meta_changed += dict(case["pairs"]).get(b"") != seed[b""]
    assert meta_changed > 40
    # Most mutated records are still protobuf the V1 parsers get past.
    parsed = 0
    for case in records:
        try:
            _v1.parse_meta(dict(case["pairs"])[b""])
            parsed += 1
        except tfshard.TFShardError:
            pass
    assert parsed > len(records) // 2


def test_graph_mutations_reach_the_decoder(tmp_path):
    """Graph cases mutate only the graph file (the checkpoint beside it stays as the seed
    holds it), mostly field by field; many of those still decode in full, and the rest
    end in a TFShardError."""
    cases = [fuzz.make_case(n, 4, "graph") for n in range(100)]
    fields = [c for c in cases if c["mutated"].endswith("(fields)")]
    assert 50 < len(fields) < 90 and len(cases) - len(fields) > 10
    for case in cases:
        seed = fuzz.seed_files(case["seed_checkpoint"])
        target = case["file"]
        assert target in fuzz.GRAPH_SUFFIXES and case["files"][target] != seed[target]
        assert {k: v for k, v in case["files"].items() if k != target} == \
            {k: v for k, v in seed.items() if k != target}
    outcomes = {}
    for i, case in enumerate(fields):
        (tmp_path / str(i)).mkdir()
        outcome = fuzz.exercise(fuzz.write_case(case, str(tmp_path / str(i))))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes.get("ok", 0) > len(fields) // 4, outcomes
    assert outcomes.get("CorruptGraphError", 0) > 5, outcomes


# V2 and V1 seeds each get 1500 cases; the V2 half is the campaign this test ran before
# the V1 seeds were added (seed 11, the same cases).  Graph seeds get 600.
@pytest.mark.parametrize("seed, seeds, count", [(11, "v2", 1500), (12, "v1", 1500),
                                                (13, "graph", 600)])
def test_bounded_campaign_finds_nothing(tmp_path, seed, seeds, count):
    """Mutated checkpoints (raw bytes, and V2 index entries or V1 protobuf records
    re-encoded behind valid block checksums) through open/list/read/verify, and mutated
    graph files (raw bytes, and protobuf fields) through the whole tfshard.graph API, in
    worker processes: only TFShardError may come out, no crash or hang."""
    summary = fuzz.run(seed, count, None, batch=500, case_timeout=5.0,
                       findings=tmp_path / "findings", log=lambda *a: None, seeds=seeds)
    assert summary["findings"] == []
    assert summary["cases"] == count
    # The campaign reaches past the checksums: many cases parse, some read fine.
    assert summary["outcomes"].get("ok", 0) > 0
    corrupt = "CorruptGraphError" if seeds == "graph" else "CorruptCheckpointError"
    assert summary["outcomes"].get(corrupt, 0) > 100


def test_saved_findings_replay_cleanly():
    for path, outcome in fuzz.replay(ROOT / "tests" / "data" / "fuzz"):
        assert outcome == "ok" or outcome.endswith("Error"), path


# A crash is SIGSEGV here; under the sanitizers ASan turns it into SIGABRT.
@pytest.mark.parametrize("kind, why", [("crash", "signal SIG"), ("raise", "RuntimeError")])
def test_harness_catches_and_saves_findings(tmp_path, monkeypatch, kind, why):
    monkeypatch.setenv("TFSHARD_FUZZ_SELFTEST", f"{kind}:7")
    summary = fuzz.run(5, 20, None, batch=10, case_timeout=5.0, findings=tmp_path,
                       log=lambda *a: None)
    assert [f["case"] for f in summary["findings"]] == [7]
    assert why in summary["findings"][0]["why"]
    saved = tmp_path / "seed5-case7"
    assert (saved / "finding.json").exists() and list(saved.glob("ckpt*"))
    assert summary["cases"] == 20  # the campaign went on after the finding


def test_harness_saves_v1_findings(tmp_path, monkeypatch):
    """A V1 case is saved as V1 files (ckpt, or ckpt-SSSSS-of-NNNNN) that replay."""
    monkeypatch.setenv("TFSHARD_FUZZ_SELFTEST", "raise:3")
    summary = fuzz.run(6, 5, None, batch=5, case_timeout=5.0, findings=tmp_path,
                       log=lambda *a: None, seeds="v1")
    assert [f["case"] for f in summary["findings"]] == [3]
    saved = tmp_path / "seed6-v1-case3"
    info = json.loads((saved / "finding.json").read_text())
    assert info["seeds"] == "v1" and info["seed_checkpoint"].startswith("v1/")
    assert not (saved / "ckpt.index").exists() and list(saved.glob("ckpt*"))
    assert [path for path, _ in fuzz.replay(tmp_path)] == [str(saved)]


def test_minimize_shrinks_towards_the_seed(monkeypatch):
    """With a stand-in failure ("the index holds DE AD"), minimization cuts what follows
    the trigger and puts back every other mutated byte."""
    original = fuzz.seed_files("strings/ckpt")[".index"]
    mutated = bytearray(original)
    for pos in (3, 40, 77):
        mutated[pos] ^= 0x55
    mutated[100:100] = b"\xde\xad"
    case = {"seed_checkpoint": "strings/ckpt", "mutated": ".index",
            "files": dict(fuzz.seed_files("strings/ckpt"), **{".index": bytes(mutated)})}
    monkeypatch.setattr(fuzz, "fails", lambda files, timeout: b"\xde\xad" in files[".index"])
    small = fuzz.minimize(case, 5.0)
    assert small[".index"] == original[:100] + b"\xde\xad"


def test_minimize_v1_records_behind_valid_checksums(monkeypatch):
    """A record-level V1 case shrinks record by record, each try rebuilt with valid
    checksums: with a stand-in failure ("the meta record holds FE ED"), the other
    mutated records go back to the seed's, untouched data records are dropped, and
    the meta record's bytes shrink towards the seed's."""
    name = "v1/partitioned/model.ckpt"
    seed = fuzz.table_pairs(fuzz.seed_files(name)[""])
    meta = seed[0][1]
    pairs = dict(seed)
    pairs[b""] = meta[:50] + b"\xfe\xed" + meta[50:70] + b"\x00" + meta[71:]
    other = seed[3][0]
    pairs[other] = pairs[other][::-1]
    pairs = sorted(pairs.items())
    case = {"seed_checkpoint": name, "mutated": "ckpt (records)", "file": "",
            "pairs": pairs, "files": {"": fuzz.build_table(pairs)}}

    def fails(files, timeout):
        got = dict(fuzz.table_pairs(files[""]))   # parses: the checksums hold
        return b"\xfe\xed" in got[b""]

    monkeypatch.setattr(fuzz, "fails", fails)
    small = dict(fuzz.table_pairs(fuzz.minimize(case, 5.0)[""]))
    assert list(small) == [b""]
    assert small[b""] == meta[:50] + b"\xfe\xed"
