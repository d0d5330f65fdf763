"""streamfusion: online ResFusion click-through-rate prediction.

LightGBM trees are fitted first and a compiled FM/DeepFM learner fits their residual; the
final margin is the sum of the stage margins (Bao et al., CCIR 2020), blended as
``a * trees + b * residual + c`` with weights learned online.
"""

import os

# Before any OpenMP runtime starts: idle worker threads sleep rather than spin, so a busy
# machine (a tree refit, a broker, other jobs) never stalls a parallel region on a thread
# that spins on a core someone else needs. Users can still override it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from streamfusion._check_build import check_build  # noqa: E402

check_build()

__version__ = "0.1.0"
__all__ = ["ResFusion", "__version__"]


def __getattr__(name: str):
    # The API class on first use: `import streamfusion` (the CLI's first step) stays light.
    if name == "ResFusion":
        from streamfusion.api import ResFusion

        return ResFusion
    raise AttributeError(f"module 'streamfusion' has no attribute {name!r}")
