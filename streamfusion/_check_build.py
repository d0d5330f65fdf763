"""Fail early and readably when the compiled kernels are missing or stale."""

import importlib
import os

KERNELS = ("_learner", "_parse", "_trees")
BUILD_COMMAND = "pip install -e .   (or: python setup.py build_ext --inplace)"


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
                f"({exc}).\nBuild it from the repository root with:\n    {BUILD_COMMAND}"
            ) from None
