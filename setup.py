"""Build the tfshard extensions: Cython over the plain-C format core in csrc/.

Environment variables:

- ``TFSHARD_SANITIZE=1``: AddressSanitizer + UBSan, for scripts/sanitize.sh (gcc, clang).
- ``TFSHARD_DEBUG=1``: keep symbols and debug information (wheels are stripped).
"""

import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

# No -march=native or global SIMD flags: wheels must run on any x86-64/arm64 machine;
# the C core picks CPU-specific code (hardware CRC-32C) at run time.
MSVC = os.name == "nt"
# Hidden visibility: calls between the C core's functions (tfs_get_varint64 from
# tfs_parse_entry...) are then direct, not through the PLT; only the module init
# functions, which Python marks visible itself, are exported.
extra_compile = ["/O2"] if MSVC else ["-O2", "-fvisibility=hidden"]
extra_link = []
if os.environ.get("TFSHARD_SANITIZE"):
    extra_compile += ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined"]
    extra_link += ["-fsanitize=address,undefined"]
elif not os.environ.get("TFSHARD_DEBUG") and not MSVC:
    # Stripped binaries: a wheel needs only the exported module init functions, which
    # live in the dynamic symbol table that stripping keeps.  (MSVC keeps debug
    # information out of the .pyd already.)
    extra_link += ["-Wl,-x"] if sys.platform == "darwin" else ["-s"]

# One extension per concern; all link the C core, some also its encoders or decoders.
EXTENSIONS = (("_index", []), ("_data", []), ("_build", ["csrc/tfs_build.c"]),
              ("_v1", ["csrc/tfs_v1.c"]), ("_graph", []), ("_metagraph", []),
              ("_graphdef", []), ("_views", []))

extensions = [
    Extension(
        f"tfshard.{name}",
        sources=[f"tfshard/{name}.pyx", "csrc/tfs_format.c", *extra_sources],
        include_dirs=["csrc", numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=extra_compile,
        extra_link_args=extra_link,
    )
    for name, extra_sources in EXTENSIONS
]

setup(ext_modules=cythonize(extensions, language_level=3))
