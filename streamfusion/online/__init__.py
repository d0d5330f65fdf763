"""The one online loop shared by file replay and the Kafka daemon.

- ``source.py``: the :class:`Source` protocol (file reader, Kafka consumer);
- ``schedule.py``: the mini-batch schedule and the batches cut on it;
- ``model.py``: :class:`OnlineModel`, the chain run test-then-train, and its :class:`Scores`;
- ``loop.py``: :class:`OnlineLoop`, the per-batch order (refits, holdout, score, learn, sink)
  and the checkpoint points;
- ``flags.py``: the model flags of ``replay`` and ``serve``.
"""

from streamfusion.online.flags import add_model_arguments, config_from_args
from streamfusion.online.loop import OnlineLoop, Sink
from streamfusion.online.model import OnlineModel, Scores
from streamfusion.online.schedule import batch_schedule, batch_size_at, exact_batches
from streamfusion.online.source import Source

__all__ = ["OnlineLoop", "OnlineModel", "Scores", "Sink", "Source", "add_model_arguments",
           "batch_schedule", "batch_size_at", "config_from_args", "exact_batches"]
