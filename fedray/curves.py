"""Rounds to target as the paper computes it (McMahan et al. 2017, section 3): make the learning
curve monotone (best test accuracy over all prior rounds), then find where it crosses the target,
linearly interpolated between the evaluated rounds on either side of the crossing."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def monotone(acc: Sequence[float]) -> np.ndarray:
    a = np.asarray(acc, dtype=float)
    return np.fmax.accumulate(a) if len(a) else a


def rounds_to_target(rounds: Sequence[float], acc: Sequence[float], target: float) -> float:
    """First crossing of `target` by the monotone curve; NaN if it never gets there."""
    r, a = np.asarray(rounds, dtype=float), monotone(acc)
    hit = np.flatnonzero(a >= target)
    if not len(hit):
        return math.nan
    i = int(hit[0])
    if i == 0:
        return float(r[0])
    # a[i-1] < target <= a[i] on a non-decreasing curve, so the slope is positive.
    return float(r[i - 1] + (target - a[i - 1]) * (r[i] - r[i - 1]) / (a[i] - a[i - 1]))
