#!/usr/bin/env bash
# Build the release artifacts the way a user or a wheel builder does, and test them:
#
#   1. `python -m build`: the sdist, then a wheel built from that sdist (not from the tree).
#   2. The sdist installed into a fresh venv with the test extras, then the test suite
#      shipped inside the sdist run against that install.
#   3. A wheel built for each other CPython given (default: 3.9 and 3.13 where found),
#      installed into a fresh venv, and the sdist's tests run against it without the
#      optional frameworks (their tests skip with reasons: TFSHARD_ALLOW_SKIPS=1).
#
# Every check imports the installed package, never the source tree: the tests run
# from the unpacked sdist with pytest's own entry point, whose sys.path does not hold
# the working directory.
#
# Usage: scripts/check_dist.sh [PYTHON ...]     (PYTHON: other interpreters for step 3)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
PY=${PYTHON:-python3}
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac
work=$(mktemp -d "${TMPDIR:-/tmp}/tfshard-dist.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "== build: sdist, then a wheel from the sdist"
"$PY" -m pip install -q build
"$PY" -m build --outdir "$work/dist" . > "$work/build.log" 2>&1 || { tail -40 "$work/build.log"; exit 1; }
sdist=$(ls "$work"/dist/tfshard-*.tar.gz)
wheel=$(ls "$work"/dist/tfshard-*.whl)
echo "built $(basename "$sdist") and $(basename "$wheel")"

echo "== the wheel holds no sources or generated C, and stripped binaries"
"$PY" - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
bad = [n for n in names if n.endswith((".c", ".pyx", ".pxd", ".h"))]
assert not bad, f"the wheel should not hold sources: {bad}"
assert any(n.startswith("tfshard/cli/") for n in names), "tfshard.cli is missing"
assert any(n.endswith("licenses/LICENSE") for n in names), "LICENSE is missing"
print(f"{len(names)} files, no sources")
PY
if command -v file > /dev/null; then
    mkdir "$work/whl" && (cd "$work/whl" && "$PY" -m zipfile -e "$wheel" .)
    if file "$work"/whl/tfshard/*.so | grep -v ", stripped" | grep -q ELF; then
        echo "unstripped extension modules in the wheel:"; file "$work"/whl/tfshard/*.so; exit 1
    fi
    echo "extension modules stripped"
fi

mkdir "$work/src" && tar xzf "$sdist" -C "$work/src"
tests=$(ls -d "$work"/src/tfshard-*)
# The package's sources go, so that nothing (`python -m tfshard` in a subprocess, a script
# that puts its folder on sys.path) can import them instead of the installed package.
rm -rf "$tests/tfshard"
# The real-world corpus lives beside the repository; the tests find it beside the sdist.
if [ -d "$root/../shared" ]; then
    ln -s "$(cd "$root/../shared" && pwd)" "$work/src/shared"
fi

echo "== the sdist in a fresh venv, with the test extras; the sdist's own test suite"
"$PY" -m venv "$work/venv-sdist"
"$work/venv-sdist/bin/pip" install -q "$sdist[test]" 2>&1 | grep -v "^WARNING: Location" || true
(cd "$work" && "$work/venv-sdist/bin/python" -c \
    "import tfshard, tfshard._index; print('installed', tfshard.__file__)")
(cd "$tests" && "$work/venv-sdist/bin/pytest" -q -p no:cacheprovider)

others=("$@")
if [ ${#others[@]} -eq 0 ]; then
    for v in 3.9 3.13; do
        found=""
        # pyenv's own installs first: its shims answer `command -v` for versions that
        # are installed but not selected, and then fail when run.
        for p in $(ls -d "$HOME"/.pyenv/versions/"$v".*/bin/python 2>/dev/null | sort -V) \
                 $(command -v "python$v" || true); do
            if "$p" -c "import sys; assert sys.version_info[:2] == tuple(map(int, '$v'.split('.')))" \
                    2>/dev/null; then
                found=$p
            fi
        done
        if [ -n "$found" ]; then
            others+=("$found")
        else
            echo "warning: no CPython $v found; its wheel is not built or tested" >&2
        fi
    done
fi
for other in "${others[@]}"; do
    ver=$("$other" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    echo "== a wheel for CPython $ver, in a fresh venv; the sdist's tests without frameworks"
    "$other" -m venv "$work/venv-$ver"
    "$work/venv-$ver/bin/pip" install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
    "$work/venv-$ver/bin/pip" wheel -q --no-deps -w "$work/wheels-$ver" "$sdist" 2>&1 \
        | grep -v "^WARNING: Location" || true
    "$work/venv-$ver/bin/pip" install -q "$work"/wheels-"$ver"/tfshard-*.whl pytest hypothesis \
        safetensors 2>&1 | grep -v "^WARNING: Location" || true
    (cd "$tests" && TFSHARD_ALLOW_SKIPS=1 "$work/venv-$ver/bin/pytest" -q -p no:cacheprovider)
done
echo "== dist checks passed"
