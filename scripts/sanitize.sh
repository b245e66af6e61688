#!/usr/bin/env bash
# Build the extensions with AddressSanitizer + UndefinedBehaviorSanitizer and run the
# parser- and writer-facing tests under them; any report fails the run.  Rebuilds the normal
# extensions afterwards.  Usage: scripts/sanitize.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
TFSHARD_SANITIZE=1 "$PY" -m pip install -q -e . --no-build-isolation
trap '"$PY" -m pip install -q -e . --no-build-isolation' EXIT
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
"$PY" -m pytest -q -p no:cacheprovider tests/test_corruption.py tests/test_reader.py \
    tests/test_format.py tests/test_golden.py tests/test_paths.py tests/test_roundtrip_property.py \
    tests/test_encoding.py tests/test_writer.py tests/test_parts.py tests/test_fuzz.py tests/test_v1.py \
    tests/test_objectgraph.py tests/test_graph.py tests/test_graph_corruption.py tests/test_views.py \
    tests/test_commit_protocol.py "$@"
