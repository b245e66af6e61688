"""Build the tfshard extension: Cython over the plain-C format core in csrc/."""

import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

# No -march=native or global SIMD flags: wheels must run on any x86-64/arm64.
# TFSHARD_SANITIZE=1 builds with AddressSanitizer + UBSan for the fuzz/corruption runs.
extra_compile = ["-O2"] if os.name != "nt" else []
extra_link = []
if os.environ.get("TFSHARD_SANITIZE"):
    extra_compile += ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined"]
    extra_link += ["-fsanitize=address,undefined"]

# One extension per concern; all link the C core, the writer also its encoders.
extensions = [
    Extension(
        f"tfshard.{name}",
        sources=[f"tfshard/{name}.pyx", "csrc/tfs_format.c", *extra_sources],
        include_dirs=["csrc", numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=extra_compile,
        extra_link_args=extra_link,
    )
    for name, extra_sources in (("_index", []), ("_data", []), ("_build", ["csrc/tfs_build.c"]),
                                 ("_v1", ["csrc/tfs_v1.c"]), ("_graph", []),
                                 ("_metagraph", []), ("_graphdef", []))
]

setup(ext_modules=cythonize(extensions, language_level=3))
