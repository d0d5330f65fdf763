"""Build the compiled kernels: every ``csrc/_name.pyx`` becomes ``streamfusion._name``.

Compiler directives live here and nowhere else. ``STREAMFUSION_DEBUG=1`` turns on bounds
checking and drops optimisation for debug test runs. No ``-ffast-math`` (NaN checks must
work) and no ``-march=native`` (wheels must run on other machines).
"""

import importlib.util
import os
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import PlatformError

# the package cannot be imported before its kernels exist: load the one helper by its path
_spec = importlib.util.spec_from_file_location("_check_build", "streamfusion/_check_build.py")
_check_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_check_build)

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
compile_args += ["-fopenmp", "-fno-strict-aliasing", "-fno-math-errno"]

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



class BuildExt(build_ext):
    """``build_ext`` that first checks for a C compiler and Python's headers, and names what
    to install when one is missing (instead of a compiler's error halfway through)."""

    def build_extensions(self) -> None:
        command = getattr(self.compiler, "compiler_so", None)  # unix compilers; MSVC says
        if command:  # what it lacks itself
            missing = _check_build.missing_build_tools(command[0])
            if missing:
                raise PlatformError(f"streamfusion cannot build its compiled kernels: "
                                    f"{missing}.\n{_check_build.INSTALL_HINT}")
        super().build_extensions()


setup(ext_modules=cythonize(extensions, compiler_directives=directives, quiet=True),
      cmdclass={"build_ext": BuildExt})
