"""Easing curves: smooth 0 → 1 ramps for gates, fades and feathered masks."""
from __future__ import annotations

import numpy as np


def smoothstep(x):
    """Hermite smoothstep ``3 x^2 - 2 x^3`` of ``x`` clipped to [0, 1] (0 below 0, 1 above 1, zero slope at
    both ends); same shape and float dtype as ``x``. Shared by the loudness gate (:mod:`ptalk_models.visemes`),
    the head-motion fade-in (:mod:`ptalk_models.motion`), the renderer's feathering and mouth shading
    (:mod:`ptalk_models.render`) and the dubbing warp's weights (:mod:`ptalk_models.dub_render`)."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)
