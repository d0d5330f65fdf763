"""The paper's batch setting behind ``streamfusion reproduce``.

``load`` reads a click log once into compact arrays split 9:1; ``views`` give each stage its
inputs from them; ``fit`` fits one stage on the residual of the stages before it;
``experiment`` is the registry of the paper's models (Tables 2 and 3); ``paper`` holds the
paper's published figures; ``blend`` is GBDT+DeepFM's combination.
"""

from streamfusion.batch.experiment import (
    CONVERGENCE,
    PIECES,
    TABLE2,
    TABLE3,
    Experiment,
    default_config,
)
from streamfusion.batch.fit import FitOptions
from streamfusion.batch.load import EncodedLog, load_log

__all__ = ["CONVERGENCE", "PIECES", "TABLE2", "TABLE3", "EncodedLog", "Experiment",
           "FitOptions", "default_config", "load_log"]
