"""Fail early and readably when the compiled kernels are missing or stale, or cannot be built.

``setup.py`` loads this file by its path (before the package can be imported) for
``missing_build_tools``, so that ``pip install`` on a machine without a C compiler says what to
install instead of showing a compiler's error.
"""

import importlib
import os
import shutil
import sysconfig

KERNELS = ("_blend", "_learner", "_parse", "_trees")
BUILD_COMMAND = "pip install -e .   (or: python setup.py build_ext --inplace)"
INSTALL_HINT = """\
Install a C compiler with OpenMP (gcc) and Python's C headers, then run the install again:
    Debian / Ubuntu:   sudo apt-get install build-essential python3-dev
    Fedora / RHEL:     sudo dnf install gcc python3-devel
    Alpine:            apk add build-base python3-dev
    conda:             conda install -c conda-forge c-compiler"""


def missing_build_tools(compiler_command: str) -> str | None:
    """What stops the kernels from being built here, in one sentence, or None.

    ``compiler_command`` is the C compiler the build would call (``gcc``, ``cc``, a path).
    """
    if shutil.which(compiler_command) is None:
        return f"no C compiler found (the build calls {compiler_command!r}, not on PATH)"
    include = sysconfig.get_paths()["include"]
    if not os.path.isfile(os.path.join(include, "Python.h")):
        return f"Python's C headers are missing (no Python.h in {include})"
    return None


def check_build() -> None:
    """Import each compiled kernel, raising ImportError that names the build command."""
    if os.environ.get("STREAMFUSION_SKIP_CHECK") == "1":  # while kernels are being built
        return
    for name in KERNELS:
        try:
            importlib.import_module(f"streamfusion.{name}")
        except ImportError as exc:
            raise ImportError(
                f"streamfusion's compiled kernel streamfusion.{name} is not built or is stale "
                f"({exc}).\nBuild it from the repository root with:\n    {BUILD_COMMAND}\n"
                f"(Building needs a C compiler. {INSTALL_HINT})"
            ) from None
