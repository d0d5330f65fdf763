# cython: language_level=3
"""Compiled damped-Newton fit of the blend ``a * own + b * rest + c`` (``stages/blend.py``).

The live blend runs it after every mini-batch: in NumPy its three weights cost about 80 array
calls a batch (340 us, 5% of a 3M-event replay); here one pass over the events per step does
the work. float64 throughout, each sum in event order: the same events give the same weights
bit for bit.
"""

import numpy as np

from libc.math cimport exp, fabs, isfinite, log1p

cdef inline double _sigmoid(double z) noexcept nogil:
    # saturates at +-30 like evaluate.sigmoid (and river)
    z = 30.0 if z > 30.0 else (-30.0 if z < -30.0 else z)
    return 1.0 / (1.0 + exp(-z))


cdef double _objective(const double[::1] own, const double[::1] rest, const double[::1] y,
                       const double[::1] sw, const double *w, const double *center,
                       const double[:, ::1] pull) noexcept nogil:
    """sum(sw * logloss(y, X w)) + (w - center)' pull (w - center) / 2."""
    cdef Py_ssize_t i, r, q
    cdef double z, f = 0.0
    cdef double d[3]
    for i in range(own.shape[0]):
        z = w[0] * own[i] + w[1] * rest[i] + w[2]
        # logaddexp(0, z) - y z, stable at both ends
        f += sw[i] * ((z if z > 0.0 else 0.0) + log1p(exp(-fabs(z))) - y[i] * z)
    for r in range(3):
        d[r] = w[r] - center[r]
    for r in range(3):
        for q in range(3):
            f += 0.5 * d[r] * pull[r, q] * d[q]
    return f


cdef bint _solve3(double a[3][3], double *b, double *x) noexcept nogil:
    """x = a^-1 b by Gaussian elimination with partial pivoting (a, b overwritten); False when
    a is singular."""
    cdef int c, r, q, piv
    cdef double t, f
    for c in range(3):
        piv = c
        for r in range(c + 1, 3):
            if fabs(a[r][c]) > fabs(a[piv][c]):
                piv = r
        if a[piv][c] == 0.0:
            return False
        if piv != c:
            for q in range(3):
                a[c][q], a[piv][q] = a[piv][q], a[c][q]
            b[c], b[piv] = b[piv], b[c]
        for r in range(c + 1, 3):
            f = a[r][c] / a[c][c]
            for q in range(c, 3):
                a[r][q] -= f * a[c][q]
            b[r] -= f * b[c]
    for c in range(2, -1, -1):
        t = b[c]
        for q in range(c + 1, 3):
            t -= a[c][q] * x[q]
        x[c] = t / a[c][c]
    return True


def newton(const double[::1] own not None, const double[::1] rest not None,
           const double[::1] y not None, const double[::1] sw not None,
           const double[::1] center not None, const double[:, ::1] pull not None,
           int steps, double tol):
    """Minimise ``sum(sw * logloss(y, a own + b rest + c)) + (w - center)' pull (w - center)
    / 2`` over ``w = (a, b, c)`` by Newton steps from ``center``, each halved until the
    objective falls. Stops after ``steps``, or once a step would move no weight by ``tol``.

    Returns ``(w, h)``: the weights and the curvature where the last step started (float64
    [3] and [3, 3]); None when the numbers overflow or the curvature is singular.
    """
    cdef Py_ssize_t n = own.shape[0], i
    if rest.shape[0] != n or y.shape[0] != n or sw.shape[0] != n:
        raise ValueError("own, rest, y and sw must have the same length")
    if center.shape[0] != 3 or pull.shape[0] != 3 or pull.shape[1] != 3:
        raise ValueError("center must have 3 entries and pull 3 x 3")
    cdef double w[3]
    cdef double trial[3]
    cdef double grad[3]
    cdef double step[3]
    cdef double x[3]
    cdef double h[3][3]
    cdef double a[3][3]
    cdef double f, f_new, t, z, p, s, g, biggest
    cdef int it, r, q
    cdef bint finite, solved = True
    for r in range(3):
        w[r] = center[r]
        for q in range(3):
            h[r][q] = pull[r, q]
    with nogil:
        f = _objective(own, rest, y, sw, w, &center[0], pull)
        for it in range(steps):
            for r in range(3):
                grad[r] = 0.0
                for q in range(3):
                    h[r][q] = pull[r, q]
                    grad[r] += pull[r, q] * (w[q] - center[q])
            for i in range(n):
                x[0], x[1], x[2] = own[i], rest[i], 1.0
                z = w[0] * x[0] + w[1] * x[1] + w[2]
                p = _sigmoid(z)
                s = sw[i] * p * (1.0 - p)
                g = sw[i] * (p - y[i])
                for r in range(3):
                    grad[r] += g * x[r]
                    for q in range(3):
                        h[r][q] += s * x[r] * x[q]
            finite = True
            for r in range(3):
                finite = finite and isfinite(grad[r])
                for q in range(3):
                    finite = finite and isfinite(h[r][q])
                    a[r][q] = h[r][q]
            if not finite:
                solved = False
                break
            if not _solve3(a, grad, step):  # margins so large the pull drowns in rounding
                solved = False
                break
            biggest = 0.0
            for r in range(3):
                biggest = fabs(step[r]) if fabs(step[r]) > biggest else biggest
            if not biggest >= tol:
                break
            t = 1.0
            while True:  # halve down to t = 2**-13
                for r in range(3):
                    trial[r] = w[r] - t * step[r]
                f_new = _objective(own, rest, y, sw, trial, &center[0], pull)
                t /= 2
                if f_new < f or t <= 1e-4:
                    break
            if not f_new < f:  # no step falls: at the minimum
                break
            for r in range(3):
                w[r] = trial[r]
            f = f_new
    if not solved:
        return None
    return (np.array([w[0], w[1], w[2]]),
            np.array([[h[r][q] for q in range(3)] for r in range(3)]))
