"""The C core on its own: CRC-32C test vectors on both code paths (SSE4.2 and table)."""

import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"

HARNESS = r"""
#include <stdio.h>
#include "tfs_format.h"
int main(void) {
    uint8_t zeros[32] = {0}, ones[32], up[32], down[32];
    int i;
    for (i = 0; i < 32; i++) { ones[i] = 0xff; up[i] = (uint8_t)i; down[i] = (uint8_t)(31 - i); }
    printf("%08x %08x %08x %08x %08x %08x\n",
           tfs_crc32c_extend(0, (const uint8_t *)"123456789", 9),
           tfs_crc32c_extend(0, zeros, 32), tfs_crc32c_extend(0, ones, 32),
           tfs_crc32c_extend(0, up, 32), tfs_crc32c_extend(0, down, 32),
           tfs_crc32c_extend(tfs_crc32c_extend(0, up, 13), up + 13, 19));
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
@pytest.mark.parametrize("flags", [[], ["-DTFS_NO_HW_CRC"]], ids=["native", "table"])
def test_crc32c_vectors(tmp_path, flags):
    (tmp_path / "h.c").write_text(HARNESS)
    exe = tmp_path / "h"
    subprocess.run(["cc", "-std=c99", "-O1", *flags, f"-I{CSRC}", str(tmp_path / "h.c"),
                    str(CSRC / "tfs_format.c"), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    # FORMAT.md §4 vectors; the last value checks that extending equals one pass.
    assert out == ["e3069283", "8a9136aa", "62a8ab43", "46dd794e", "113fdb5c", "46dd794e"]
