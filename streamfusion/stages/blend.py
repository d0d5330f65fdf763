"""Blends of the trees and the other stages: ``a * trees + b * rest + c``.

Two fits of the same three numbers:

- the live blend (:class:`LiveBlend`), learned from each mini-batch's events as they were
  scored, before any stage learned them, so every event it learns from is out of sample. A
  residual learner adds noise before it knows much, and on a stream with many columns that
  carry no signal its margin stays too confident: on the generated Criteo stream the blend
  settles near ``b = 0.7``. The live blend takes that scale from the stream instead of
  trusting the plain sum;
- the end-of-stream blend (:func:`fit_blend`). Online, a residual learner learns the residual
  of whichever trees were live. The final refit on the whole window knows much of what the
  residual learner learned against weaker trees, so the plain sum counts it twice (the Criteo
  click-log sample: trees alone 0.7593 chrono-holdout AUC, trees + residual 0.7436, with the
  residual scaled by 0.25 0.7627). It is fitted on the refit's held-back rows, which neither
  the new trees nor the scales saw before, with a ridge pull towards the plain sum; on a small
  window (``stages.trees.FOLD_BLEND_ROWS``), where those are at most 2,000 rows, on every
  window row with the trees' margins out of fold.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from streamfusion import _blend
from streamfusion.evaluate import logloss_from_margin

# The ridge pull of (a, b) towards (1, 1), in rows' worth of logloss: a few hundred held-back
# rows cannot move the scales far on noise.
RIDGE = 10.0
NEWTON_STEPS = 30
# The live blend starts at the plain sum with this much curvature on each weight (about
# 7,000 events' worth at margins near 1): a small file stays near the plain sum, a stream
# moves it. Its evidence fades over about MEMORY_ROWS learned events so it follows the stages
# as they change. Offline over the replays' progressive margins (memory 100k rows), progressive
# AUC against the plain sum, prior 300 / 1000 / 3000: generated Criteo 1M +0.0059 / +0.0055 /
# +0.0048, generated Avazu 1M +0.0005 / +0.0005 / +0.0004, the click-log samples -0.0006 to
# +0.0008 / -0.0002 to +0.0005 / -0.0001 to +0.0002.
LIVE_PRIOR = 1000.0
# Newton steps per batch towards the minimum of its loss plus the past's quadratic: one step
# from weights far off (a loud, noisy residual) swings past it and back
LIVE_NEWTON_STEPS = 4
MEMORY_ROWS = 100_000
PLAIN_SUM = (1.0, 1.0, 0.0)


class Blend(NamedTuple):
    """``a * own + b * rest + c`` and its mean logloss on the rows it was fitted on."""

    a: float
    b: float
    c: float
    loss: float


def fit_blend(own: np.ndarray, rest: np.ndarray, y: np.ndarray, ridge: float = RIDGE) -> Blend:
    """Fit the scales of ``own`` (one stage's margin) and ``rest`` (the other stages' sum)
    and a bias by penalised Newton steps on the logloss.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> own = rng.normal(size=2000)
    >>> y = (rng.random(2000) < 1 / (1 + np.exp(-own))).astype(float)
    >>> blend = fit_blend(own, 2 * rng.normal(size=2000), y)  # ``rest`` is noise
    >>> round(blend.a, 1), abs(blend.b) < 0.1
    (1.0, True)
    """
    prior = np.array(PLAIN_SUM)
    fit = _newton(own, rest, y, np.ones(len(y)), prior, np.diag([ridge, ridge, 1e-6]),
                  NEWTON_STEPS, 1e-9)
    a, b, c = prior if fit is None else fit[0]
    margin = a * np.asarray(own, np.float64) + b * np.asarray(rest, np.float64) + c
    return Blend(float(a), float(b), float(c), logloss_from_margin(margin, y))


def _newton(own: np.ndarray, rest: np.ndarray, y: np.ndarray, sw: np.ndarray,
            center: np.ndarray, pull: np.ndarray, steps: int,
            tol: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Both blends' fit: minimise ``sum(sw * logloss(y, a own + b rest + c)) + (w - center)'
    pull (w - center) / 2`` by Newton steps from ``center``, each halved until the objective
    falls. A full step from weights far off overshoots and swings back (a noisy or loud
    ``rest``: b flips between +1 and -1, or far below 0). Stops after ``steps``, or once a
    step would move no weight by ``tol``. Returns the weights (finite from a finite center: a
    step is taken only where the objective falls) and the curvature where the last step
    started; None when the numbers overflow. Compiled (``_blend.newton``): the
    live blend runs it after every mini-batch."""
    def f64(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, np.float64)

    return _blend.newton(f64(own), f64(rest), f64(y), f64(sw), f64(center), f64(pull),
                         steps, tol)


class LiveBlend:
    """The blend ``a * own + b * rest + c`` learned online, a few damped Newton steps a batch.

    Each batch's events, as they were scored, move the weights towards the minimum of their
    logloss plus a quadratic of the past (the curvature gathered so far: the prior's and the
    decayed events'), each step halved until that objective falls: a few hundred
    events barely move them, a long stream pins them down and keeps following the stages.
    float64 throughout: the same batches give the same weights bit for bit.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> live = LiveBlend()
    >>> for _ in range(50):  # ``rest`` is noise: its scale falls towards 0
    ...     own, rest = rng.normal(size=1000), rng.normal(size=1000)
    ...     live.update(own, rest, (rng.random(1000) < 1 / (1 + np.exp(-own))).astype(float))
    >>> a, b, c = live.weights
    >>> round(a, 1), b < 0.2
    (1.0, True)
    """

    def __init__(self) -> None:
        self.w = np.array(PLAIN_SUM)
        self.h = LIVE_PRIOR * np.eye(3)

    @property
    def weights(self) -> tuple[float, float, float]:
        return float(self.w[0]), float(self.w[1]), float(self.w[2])

    def start_from(self, a: float, b: float, c: float) -> None:
        """Learn on from these weights (a blend fitted elsewhere), with the curvature so far."""
        self.w = np.array([a, b, c], np.float64)

    def update(self, own: np.ndarray, rest: np.ndarray, y: np.ndarray,
               weight: np.ndarray | None = None) -> None:
        """Damped Newton steps on the events' margins as scored (``own`` / ``rest``), their
        labels ``y`` and, when given, their loss weights."""
        if len(y) == 0:
            return
        sw = np.ones(len(y)) if weight is None else weight
        fade = np.exp(-len(y) / MEMORY_ROWS)
        before = fade * self.h + (1 - fade) * LIVE_PRIOR * np.eye(3)  # what came before
        fit = _newton(own, rest, y, sw, self.w, before, LIVE_NEWTON_STEPS, 1e-6)
        if fit is not None:  # an overflowing batch moves nothing
            self.w, self.h = fit

    def state_dict(self) -> dict[str, list]:
        return {"w": self.w.tolist(), "h": self.h.tolist()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved state; ValueError unless it is finite weights (3) and curvature
        (3 x 3)."""
        try:
            w = np.array(state["w"], np.float64)
            h = np.array(state["h"], np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"the live blend's state is not readable: {e}") from None
        if w.shape != (3,) or h.shape != (3, 3) or not (np.isfinite(w).all()
                                                        and np.isfinite(h).all()):
            raise ValueError("the live blend's state must be 3 finite weights and a 3 x 3 "
                             "finite curvature")
        self.w, self.h = w, h
