"""streamfusion: online ResFusion click-through-rate prediction.

LightGBM trees are fitted first and a compiled FM/DeepFM learner fits their residual; the
final margin is the sum of the stage margins (Bao et al., CCIR 2020).
"""

from streamfusion._check_build import check_build

check_build()

__version__ = "0.1.0"
