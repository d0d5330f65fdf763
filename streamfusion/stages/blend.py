"""The end-of-stream blend: one scale for the trees, one for the other stages, and a bias.

Online, a residual learner learns the residual of whichever trees were live. The final refit
on the whole window knows much of what the residual learner learned against weaker trees, so
the plain sum counts it twice (the Criteo click-log sample: trees alone 0.7593 chrono-holdout
AUC, trees + residual 0.7436, with the residual scaled by 0.25 0.7627). The blend
``a * trees + b * rest + c`` is fitted on the refit's held-back rows, which neither the new
trees nor the scales saw before, with a ridge pull towards the plain sum.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from streamfusion.evaluate import logloss_from_margin, sigmoid

# The ridge pull of (a, b) towards (1, 1), in rows' worth of logloss: a few hundred held-back
# rows cannot move the scales far on noise.
RIDGE = 10.0
NEWTON_STEPS = 30


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
    X = np.column_stack([own, rest, np.ones(len(own))]).astype(np.float64)
    yy = np.asarray(y, np.float64)
    prior = np.array([1.0, 1.0, 0.0])
    pull = np.array([ridge, ridge, 1e-6])

    def objective(w: np.ndarray) -> float:  # the summed logloss plus the ridge pull
        z = X @ w
        return float(np.sum(np.logaddexp(0.0, z) - yy * z) + 0.5 * pull @ (w - prior) ** 2)

    w, f = prior.copy(), objective(prior)
    for _ in range(NEWTON_STEPS):
        p = sigmoid(X @ w)
        grad = X.T @ (p - yy) + pull * (w - prior)
        hess = (X * (p * (1 - p))[:, None]).T @ X + np.diag(pull)
        step = np.linalg.solve(hess, grad)
        # halve the step until the objective falls: a full Newton step from the plain sum
        # can overshoot and oscillate (a noisy ``rest``: b flips between +1 and -1)
        t = 1.0
        while t > 1e-4 and not (f_new := objective(w - t * step)) < f:
            t /= 2
        if t <= 1e-4:
            break
        w, f = w - t * step, f_new
        if np.abs(t * step).max() < 1e-9:
            break
    if not np.isfinite(w).all():
        w = prior
    return Blend(float(w[0]), float(w[1]), float(w[2]), logloss_from_margin(X @ w, yy))
