"""Build the compiled kernels: every ``csrc/_name.pyx`` becomes ``streamfusion._name``.

Compiler directives live here and nowhere else. ``STREAMFUSION_DEBUG=1`` turns on bounds
checking and drops optimisation for debug test runs. No ``-ffast-math`` (NaN checks must
work) and no ``-march=native`` (wheels must run on other machines).
"""

import os
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("STREAMFUSION_DEBUG") == "1"

directives = {
    "language_level": "3",
    "boundscheck": DEBUG,
    "wraparound": False,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "nonecheck": False,
}
compile_args = ["-O0", "-g"] if DEBUG else ["-O3"]
compile_args += ["-fopenmp", "-fno-strict-aliasing"]

extensions = [
    Extension(
        f"streamfusion.{src.stem}",
        [str(src)],
        include_dirs=[np.get_include(), "csrc"],
        extra_compile_args=compile_args,
        extra_link_args=["-fopenmp"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for src in sorted(Path("csrc").glob("_*.pyx"))
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives, quiet=True))
