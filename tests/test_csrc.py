"""The C core on its own, built with every C compiler found here.

- CRC-32C on each code path (hardware instructions where the CPU has them, and the
  portable slicing-by-8 loop) against published vectors and against the ``crc32c``
  package over every alignment and many lengths.
- The whole core compiles as strict C99 with warnings as errors, so that MSVC-era
  portability problems (GNU extensions, VLAs, implicit declarations) show up here.
- With an aarch64 cross compiler and qemu-user, the arm64 hardware path too.

In CI (CI=true) gcc, clang, the aarch64 cross compiler and qemu-user must be present
(.ci/run installs them); elsewhere a missing one is a skip that says what is missing.
"""

import os
import random
import shutil
import subprocess
from pathlib import Path

import crc32c
import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"
SOURCES = sorted(str(p) for p in CSRC.glob("*.c"))

HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include "tfs_format.h"
/* argv[1]: "extend" (dispatching) or "portable"; stdin: the buffer; then for each
 * "offset length" pair on argv[2..], the CRC of buf[offset..offset+length). */
int main(int argc, char **argv) {
    static uint8_t buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf, stdin);
    int i, portable = argv[1][0] == 'p';
    printf("%d %lu\n", tfs_crc32c_hardware(), (unsigned long)n);
    for (i = 2; i + 1 < argc; i += 2) {
        size_t off = strtoul(argv[i], NULL, 10), len = strtoul(argv[i + 1], NULL, 10);
        uint32_t c = portable ? tfs_crc32c_portable(0, buf + off, len)
                              : tfs_crc32c_extend(0, buf + off, len);
        printf("%08x\n", c);
    }
    return 0;
}
"""

# FORMAT.md §4 vectors: "123456789", 32 zeros, 32 0xff, 0..31, 31..0.
VECTOR_INPUTS = [b"123456789", bytes(32), b"\xff" * 32, bytes(range(32)), bytes(range(31, -1, -1))]
VECTORS = ["e3069283", "8a9136aa", "62a8ab43", "46dd794e", "113fdb5c"]

IN_CI = bool(os.environ.get("CI"))


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if IN_CI:
            pytest.fail(f"{tool} is not installed; .ci/run installs it for this test")
        pytest.skip(f"{tool} is not installed (apt-get install gcc clang gcc-aarch64-linux-gnu "
                    f"qemu-user runs every variant)")
    return path


def _build(tmp_path, cc: str, flags: list) -> Path:
    (tmp_path / "h.c").write_text(HARNESS)
    exe = tmp_path / "h"
    subprocess.run([cc, "-std=c99", "-O2", *flags, f"-I{CSRC}", str(tmp_path / "h.c"),
                    *SOURCES, "-o", str(exe)], check=True)
    return exe


def _run(exe: Path, runner: list, mode: str, data: bytes, spans: list) -> tuple:
    args = [str(x) for span in spans for x in span]
    out = subprocess.run([*runner, str(exe), mode, *args], input=data, capture_output=True,
                         check=True, timeout=120).stdout.decode().split()
    hardware = out[0] == "1"
    assert int(out[1]) == len(data)
    return hardware, out[2:]


def _check(exe, runner, expect_hardware):
    rng = random.Random(7)
    data = bytes(rng.getrandbits(8) for _ in range(1 << 16))
    # Every start offset mod 16, lengths around each 8-byte step, and a few large spans.
    spans = [(off, n) for off in range(16) for n in list(range(0, 40)) + [63, 64, 65, 1000]]
    spans += [(0, len(data)), (3, len(data) - 3), (5, 40_000)]
    # Around the three-stripe (3 * 8 KiB) blocks of the interleaved hardware loop.
    spans += [(o, 3 * 8192 + d) for o in (0, 1, 7) for d in (-1, 0, 1, 8, 8191)]
    spans += [(o, 6 * 8192 + d) for o in (0, 3) for d in (-9, 0, 13)]
    want = [f"{crc32c.crc32c(data[o:o + n]):08x}" for o, n in spans]
    for mode in ("extend", "portable"):
        hardware, got = _run(exe, runner, mode, data, spans)
        assert got == want, mode
    assert hardware == expect_hardware
    vectors = b"".join(VECTOR_INPUTS)
    spans, start = [], 0
    for v in VECTOR_INPUTS:
        spans.append((start, len(v)))
        start += len(v)
    for mode in ("extend", "portable"):
        assert _run(exe, runner, mode, vectors, spans)[1] == VECTORS


def _x86_has_sse42() -> bool:
    try:
        return " sse4_2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.mark.parametrize("cc", ["gcc", "clang"])
@pytest.mark.parametrize("flags", [[], ["-DTFS_NO_HW_CRC"]], ids=["dispatch", "portable"])
def test_crc32c_native(tmp_path, cc, flags):
    exe = _build(tmp_path, _need(cc), flags)
    import platform

    native_hw = platform.machine() in ("x86_64", "AMD64") and _x86_has_sse42()
    _check(exe, [], expect_hardware=native_hw and not flags)


@pytest.mark.parametrize("flags", [[], ["-DTFS_NO_HW_CRC"]], ids=["dispatch", "portable"])
def test_crc32c_aarch64_under_qemu(tmp_path, flags):
    cc = _need("aarch64-linux-gnu-gcc")
    qemu = _need("qemu-aarch64")
    exe = _build(tmp_path, cc, ["-static", *flags])
    # qemu's default CPU model ("max") has the ARMv8 CRC32 instructions.
    _check(exe, [qemu], expect_hardware=not flags)


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_core_compiles_as_strict_c99(tmp_path, cc):
    compiler = _need(cc)
    # The I/O header is included by the Cython layer only: compile it on its own too.
    (tmp_path / "io.c").write_text('#include "tfs_io.h"\n'
                                   'long long f(int fd) { return tfs_write(fd, "", 0); }\n')
    for source in SOURCES + [str(tmp_path / "io.c")]:
        subprocess.run([compiler, "-std=c99", "-pedantic", "-Wall", "-Wextra", "-Wvla",
                        "-Wdeclaration-after-statement", "-Werror", "-c", source,
                        f"-I{CSRC}", "-o", str(tmp_path / "x.o")], check=True)
