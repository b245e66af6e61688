"""A bounded fuzzing campaign over the reader (scripts/fuzz.py), and the saved findings.

Longer campaigns run on demand: ``scripts/fuzz.py --time 600`` (see its --help).
"""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("fuzz", ROOT / "scripts" / "fuzz.py")
fuzz = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fuzz)


def test_mutations_are_reproducible():
    a, b = fuzz.make_case(17, 3), fuzz.make_case(17, 3)
    assert a["files"] == b["files"] and a["mutated"] == b["mutated"]
    assert fuzz.make_case(18, 3)["files"] != a["files"]


def test_unmutated_seeds_read_cleanly(tmp_path):
    for name in fuzz.SEEDS:
        case = {"files": fuzz.seed_files(name)}
        (tmp_path / name.replace("/", "_")).mkdir()
        prefix = fuzz.write_case(case, str(tmp_path / name.replace("/", "_")))
        assert fuzz.exercise(prefix) == "ok", name


@pytest.mark.parametrize("seed", [11, 12])
def test_bounded_campaign_finds_nothing(tmp_path, seed):
    """2 x 1500 mutated checkpoints (raw bytes, and entries re-encoded behind valid block
    checksums) through open/list/read/verify in worker processes: only TFShardError may
    come out, no crash or hang."""
    summary = fuzz.run(seed, 1500, None, batch=500, case_timeout=5.0,
                       findings=tmp_path / "findings", log=lambda *a: None)
    assert summary["findings"] == []
    assert summary["cases"] == 1500
    # The campaign reaches past the checksums: many cases parse, some read fine.
    assert summary["outcomes"].get("ok", 0) > 0
    assert summary["outcomes"].get("CorruptCheckpointError", 0) > 100


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
    assert (saved / "finding.json").exists() and (saved / "ckpt.index").exists()
    assert summary["cases"] == 20  # the campaign went on after the finding


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
