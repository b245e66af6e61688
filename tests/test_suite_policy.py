"""The test suite's own rule: under CI=true a skipped test fails, naming what was missing;
elsewhere it is an ordinary skip whose reason the summary lists."""

from pathlib import Path

pytest_plugins = ["pytester"]

# The skip rule alone: the frameworks CI requires are not this test's business.
CONFTEST = (Path(__file__).parent / "conftest.py").read_text().replace(
    'REQUIRED_IN_CI = ("tensorflow", "torch", "jax")', "REQUIRED_IN_CI = ()")
TESTS = """
import pytest

def test_needs_the_moon():
    pytest.skip("the moon is absent")

@pytest.mark.skipif(True, reason="no moon on this platform")
def test_marked():
    pass

@pytest.mark.xfail(reason="a known bug, not a skip")
def test_known_bug():
    assert False
"""


def test_the_framework_list_was_found():
    assert "REQUIRED_IN_CI = ()" in CONFTEST


def _run(pytester, monkeypatch, **env):
    for key in ("CI", "TFSHARD_ALLOW_SKIPS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_policy=TESTS)
    return pytester.runpytest_inprocess("-ra", "-p", "no:cacheprovider")


def test_skips_fail_under_ci(pytester, monkeypatch):
    result = _run(pytester, monkeypatch, CI="true")
    result.assert_outcomes(failed=1, errors=1, xfailed=1)
    # (pytest versions order the errors and failures sections differently)
    result.stdout.fnmatch_lines(["*skipped under CI=true*the moon is absent*"])
    result.stdout.fnmatch_lines(["*skipped under CI=true*no moon on this platform*"])


def test_skips_are_listed_elsewhere(pytester, monkeypatch):
    result = _run(pytester, monkeypatch)
    result.assert_outcomes(skipped=2, xfailed=1)
    result.stdout.fnmatch_lines(["SKIPPED*the moon is absent*", "*2 skipped, 1 xfailed*"])


def test_wheel_builders_may_skip(pytester, monkeypatch):
    result = _run(pytester, monkeypatch, CI="true", TFSHARD_ALLOW_SKIPS="1")
    result.assert_outcomes(skipped=2, xfailed=1)
